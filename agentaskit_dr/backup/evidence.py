"""Evidence of backup jobs: one JSON file per job under ``<evidence_dir>/backups/`` (and
one JSON line per run in the job's backup log, ``TEST/dr/<job>.log`` by default), in
the shape of the failover evidence (schema version, run id, kind, outcome, timeline,
measured figures under ``extra``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.runtime.evidence import EVIDENCE_SCHEMA_VERSION, write_evidence
from agentaskit_dr.runtime.evidence_layout import append_backup_log

if TYPE_CHECKING:
    from agentaskit_dr.config import EvidenceLayout

KIND = "backups"


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


def job_evidence(
    *, job: str, run_id: str, started_at: float, finished_at: float, outcome: str,
    reason: str, detail: str = "", extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document of one job (``backup-full``, ``verify-backup``, ``test-restore``...)."""
    status = "done" if outcome == "ok" else "failed"
    return {
        "schema_version": EVIDENCE_SCHEMA_VERSION,
        "run_id": run_id,
        "kind": job,
        "reason": reason,
        "plan": [job],
        "created_at": _iso(started_at),
        "outcome": outcome,
        "timeline": [
            {"at": _iso(started_at), "at_unix": started_at, "step": job,
             "status": "started", "detail": reason, "data": {}},
            {"at": _iso(finished_at), "at_unix": finished_at, "step": job,
             "status": status, "detail": detail, "data": {}},
        ],
        "duration_seconds": round(finished_at - started_at, 3),
        "extra": dict(extra or {}),
    }


def write_job_evidence(directory: Path, document: Mapping[str, Any],
                       layout: EvidenceLayout | None = None) -> Path:
    """Write it to ``<directory>/backups/<run_id>.json`` and append its line to the job's
    backup log (``<directory>/<evidence_layout.backup_logs>/<job>.log``); the path."""
    path = write_evidence(directory, KIND, str(document["run_id"]), document)
    append_backup_log(directory, document, path, layout)
    return path
