"""Evidence of application-state jobs: one JSON file per job under
``<evidence_dir>/backups/<job>-<id>.json`` (and a line in the job's backup log,
``TEST/dr/<job>.log`` by default), in the shape of the failover evidence (and of
the base backups' job evidence): schema version, run id, kind, outcome, timeline, and the
measured figures under ``extra``."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.runtime.evidence import EVIDENCE_SCHEMA_VERSION, write_evidence
from agentaskit_dr.runtime.evidence_layout import append_backup_log

if TYPE_CHECKING:
    from agentaskit_dr.config import EvidenceLayout

KIND = "backups"


@dataclass
class JobResult:
    """One job's outcome (``ok``, ``failed``, ``unchanged``) and figures."""

    job: str
    backup_id: str
    started_at: float
    outcome: str
    detail: str
    finished_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
    evidence: Path | None = None

    @property
    def run_id(self) -> str:
        return f"{self.job}-{self.backup_id}"

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "backup_id": self.backup_id, "outcome": self.outcome,
                "detail": self.detail, "seconds": round(self.finished_at - self.started_at, 3),
                "evidence": None if self.evidence is None else str(self.evidence),
                **self.extra}


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


def job_document(result: JobResult) -> dict[str, Any]:
    status = "done" if result.outcome in ("ok", "unchanged") else "failed"
    return {
        "schema_version": EVIDENCE_SCHEMA_VERSION,
        "run_id": result.run_id,
        "kind": result.job,
        "reason": "appstate",
        "plan": [result.job],
        "created_at": _iso(result.started_at),
        "outcome": result.outcome,
        "timeline": [
            {"at": _iso(result.started_at), "at_unix": result.started_at, "step": result.job,
             "status": "started", "detail": "", "data": {}},
            {"at": _iso(result.finished_at), "at_unix": result.finished_at,
             "step": result.job, "status": status, "detail": result.detail, "data": {}},
        ],
        "duration_seconds": round(result.finished_at - result.started_at, 3),
        "extra": {"backup_id": result.backup_id, **result.extra},
    }


def write_job(directory: Path, layout: EvidenceLayout | None, result: JobResult) -> Path:
    """Write the job's evidence and its backup log line (``evidence_layout.backup_logs``);
    sets and returns ``result.evidence``."""
    result.finished_at = max(result.finished_at, time.time())
    document = job_document(result)
    result.evidence = write_evidence(directory, KIND, result.run_id, document)
    append_backup_log(directory, document, result.evidence, layout)
    return result.evidence
