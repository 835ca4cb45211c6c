"""A failover run's evidence: the measured figures from its journal, written as files.

Split from the runbook: what the promote step recorded (lag, the fenced old primary's
final position, the standby's replay at ``pg_promote``) and the run's header become the
evidence document (``evidence.failover_evidence``) and the incident review draft.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.ports import RunJournal, StepStatus
from agentaskit_dr.runtime.evidence import (
    failover_evidence,
    write_evidence,
)
from agentaskit_dr.runtime.incident_review import write_incident_review
from agentaskit_dr.runtime.runbook_parts import as_float, as_int
from agentaskit_dr.runtime.runbook_promote import PROMOTE

log = structlog.get_logger("agentaskit_dr.runtime.runbook")

FAILOVER_KIND = "failover"


def write_run_evidence(evidence_dir: Path, run: RunJournal, meta: dict[str, Any],
                       outcome: str) -> str:
    """Write a failover run's evidence file and incident review draft under
    ``evidence_dir``; the evidence file's path, or why it was not written."""
    promote = next((e for e in reversed(run.entries)
                    if e.step == PROMOTE and e.status is StepStatus.DONE), None)
    lag = promote.data.get("lag_bytes") if promote else None
    rpo = promote.data.get("rpo") if promote else None
    measured = {key: promote.data.get(key) for key in (
        "old_primary_final_lsn", "standby_replay_lsn", "catch_up_seconds")} if promote else {}
    document = failover_evidence(
        run,
        detected_at=as_float(meta.get("detected_at")),
        decided_at=as_float(meta.get("decided_at")),
        lag_bytes=lag if isinstance(lag, int) else as_int(meta.get("lag_bytes")),
        lag_seconds=as_float(meta.get("lag_seconds")),
        outcome=outcome,
        # No promote step measured it (adopted, or failed before): a lower bound at most.
        rpo_detail=rpo if isinstance(rpo, dict) else {"basis": None, "lower_bound": True},
        extra={"failback": "planned" if outcome == "done" else "not needed",
               "from_region": meta.get("from_region"), "to_region": meta.get("to_region"),
               "condition": meta.get("condition"),
               # Zero loss shown, not claimed: a fenced old primary's final position
               # against the standby's replay at pg_promote.
               "promotion": measured},
    )
    try:
        path = write_evidence(evidence_dir, FAILOVER_KIND, run.run_id, document)
        review = write_incident_review(evidence_dir, FAILOVER_KIND, run.run_id,
                                       document)
    except OSError as exc:
        # Never lose the failover over a full disk: the journal keeps the timeline.
        log.error("evidence_not_written", run_id=run.run_id, directory=str(  # noqa: TRY400
            evidence_dir), reason=exc.strerror or str(exc))
        return f"not written: {exc.strerror or exc}"
    log.info("evidence_written", run_id=run.run_id, path=str(path), review=str(review),
             rto_seconds=document.get("rto_seconds"), outcome=outcome)
    return str(path)
