"""``evidence_layout:``: where each kind of evidence goes under ``evidence_dir``.

The operations plan's layout by default: backup logs in ``TEST/dr/`` (one ``<job>.log``
of JSON lines per job), failover tests (failover, failback and switchover runs) in
``TEST/dr/failover/``, drills in ``operational_audit/dr_drills/``. Each value is a
directory relative to ``evidence_dir``: never absolute, never out of it with ``..``.
The same section exists in the watchdog config (run evidence) and the backup config
(backup logs, drills); readers also look in the layout before it (docs/configuration.md).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._base import ConfigModel


def _relative_dir(value: str) -> str:
    path = PurePosixPath(value)
    if not value.strip() or value.strip() in (".", "./"):
        raise PydanticCustomError("evidence_subdir", "must name a directory under "
                                  "evidence_dir, like 'TEST/dr' (got an empty path)")
    if path.is_absolute() or value.startswith("~") or "\\" in value:
        raise PydanticCustomError("evidence_subdir", "must be relative to evidence_dir, "
                                  "like 'TEST/dr', not an absolute path")
    if ".." in path.parts:
        raise PydanticCustomError("evidence_subdir", "must stay under evidence_dir: no "
                                  "'..' in it")
    return str(path)


#: A directory under ``evidence_dir``, checked: relative, no ``..``.
EvidenceSubdir = Annotated[str, AfterValidator(_relative_dir)]


class EvidenceLayout(ConfigModel):
    """Where evidence goes under ``evidence_dir`` (the plan's layout by default)."""

    backup_logs: EvidenceSubdir = "TEST/dr"
    """Backup logs: one ``<job>.log`` per job (``backup-full.log``...), a JSON line per run
    (start, end, outcome, bytes, evidence file). The JSON evidence stays in ``backups/``."""
    failover_tests: EvidenceSubdir = "TEST/dr/failover"
    """Failover, failback and switchover evidence: ``<kind>/<run_id>.json`` (+ ``.md``
    review, ``.svg`` timeline) under it. Before the layout: ``<evidence_dir>/<kind>/``."""
    drills: EvidenceSubdir = "operational_audit/dr_drills"
    """Failover drill evidence (``failover-drill-*.json``, ``sandbox-drill-*.json``)."""
