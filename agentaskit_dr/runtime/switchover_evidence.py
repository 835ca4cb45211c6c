"""A switchover run's evidence file, in the failover evidence's layout and format.

``<run_root>/switchover/<run_id>.json`` (``evidence_layout.run_root``; ``TEST/dr/failover``
by default) with its incident review draft and timeline picture, written when the run
ends done or failed (a run left open for a resume writes none yet). The document is
``evidence.failover_evidence``'s, so every reader of run evidence lists it; ``extra``
carries what the switchover measured (``actuators/switchover_result.SwitchoverResult``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.ports import RunJournal
from agentaskit_dr.runtime.evidence import (
    failover_evidence,
    write_evidence,
)
from agentaskit_dr.runtime.incident_review import write_incident_review
from agentaskit_dr.runtime.rpo import SWITCHOVER

log = structlog.get_logger(__name__)

SWITCHOVER_EVIDENCE_KIND = "switchover"
#: The switchover's own figures copied into ``extra`` (``SwitchoverResult`` fields).
_MEASURED = ("write_unavailable_seconds", "final_lsn", "promoted_replay_lsn",
             "lag_bytes_at_promotion", "old_timeline", "new_timeline", "phases",
             "total_seconds", "resumed_at", "stopped", "rejoined", "rejoin_detail",
             "old_primary", "new_primary")


def switchover_document(run: RunJournal, outcome: str,
                        result: Mapping[str, Any]) -> dict[str, Any]:
    """The evidence document of a switchover run ended ``outcome``; ``result``: the
    switchover's ``SwitchoverResult.as_dict()`` (empty when it failed before one)."""
    lag = result.get("lag_bytes_at_promotion")
    lag_bytes = lag if isinstance(lag, int) else None
    ended = max((e.at for e in run.entries), default=run.created_at)
    epoch = result.get("epoch")
    extra = {
        "from_region": run.meta.get("from_region"), "to_region": run.meta.get("to_region"),
        "epoch": epoch if isinstance(epoch, int) else run.created_epoch,
        "started_at_unix": run.created_at, "ended_at_unix": ended,
        "duration_seconds": round(ended - run.created_at, 3),
        **{key: result.get(key) for key in _MEASURED},
        "step_outcomes": _step_outcomes(run),
    }
    # Measured, not assumed: the standby's replay at pg_promote against the old primary's
    # shutdown checkpoint. A resumed run that did not promote measured nothing.
    return failover_evidence(
        run, detected_at=run.created_at, decided_at=run.created_at,
        lag_bytes=lag_bytes, lag_seconds=0.0 if lag_bytes == 0 else None, outcome=outcome,
        rpo_detail={"basis": SWITCHOVER, "lower_bound": lag_bytes is None,
                    "old_primary_final_lsn": result.get("final_lsn"),
                    "new_primary_replay_lsn": result.get("promoted_replay_lsn")},
        extra=extra,
    )


def write_switchover_evidence(directory: Path, run: RunJournal, outcome: str,
                              result: Mapping[str, Any]) -> str:
    """Write the evidence file and incident review draft under ``directory`` (the run
    root); the file's path, or why it was not written (never fails the run)."""
    document = switchover_document(run, outcome, result)
    try:
        path = write_evidence(directory, SWITCHOVER_EVIDENCE_KIND, run.run_id, document)
        write_incident_review(directory, SWITCHOVER_EVIDENCE_KIND, run.run_id, document)
    except OSError as exc:
        log.error("evidence_not_written", run_id=run.run_id,  # noqa: TRY400
                  directory=str(directory), reason=exc.strerror or str(exc))
        return f"not written: {exc.strerror or exc}"
    return str(path)


def _step_outcomes(run: RunJournal) -> list[dict[str, Any]]:
    """Each planned step's last status and detail (``not started`` when never begun)."""
    outcomes = []
    for step in run.plan:
        last = next((e for e in reversed(run.entries) if e.step == step), None)
        outcomes.append({"step": step,
                         "status": last.status.value if last else "not started",
                         "detail": last.detail if last else ""})
    return outcomes
