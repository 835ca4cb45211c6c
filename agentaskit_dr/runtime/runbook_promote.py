"""The runbook's promote step: the promoter called with what the run knows.

What the run knows, besides its epoch and id: whether pg_promote was sent before by this
run (the journal says the step started), whether some vantage saw the old primary
answering (its fence must then be confirmed), and which earlier attempts of the same
incident may have sent pg_promote (their promotion is adopted, not refused).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from agentaskit_dr.ports import Journal, RunJournal, StepOutcome
from agentaskit_dr.runtime.executor import FailoverExecutor, Promoter
from agentaskit_dr.runtime.rpo import promotion_rpo

log = structlog.get_logger(__name__)

PROMOTE = "promote"
#: Journal header keys the promote step reads: some vantage saw the old primary answering
#: (so its fence must be confirmed), and earlier runs of the same incident whose
#: pg_promote may have landed (their promotion is adopted, not refused).
OLD_PRIMARY_ANSWERING = "old_primary_answering"
ADOPTS_PROMOTION_OF = "adopts_promotion_of"
# How far back the journal is searched for earlier attempts of the same incident.
_INCIDENT_LOOKBACK = 20


async def promotions_in_doubt(journal: Journal, *, kind: str, to_region: str) -> list[str]:
    """Earlier attempts of this incident whose pg_promote may have landed: the runs of
    ``kind`` to ``to_region`` since the last completed one that closed failed with their
    promote step started."""
    found = []
    for run in await journal.recent(_INCIDENT_LOOKBACK):
        if run.kind != kind:
            continue
        if run.finished == "done":
            break
        if (run.finished == "failed" and run.meta.get("to_region") == to_region
                and run.last_status(PROMOTE) is not None):
            found.append(run.run_id)
    return found


async def promote_step(
    executor: FailoverExecutor,
    promoter: Promoter,
    *,
    epoch: int,
    run: RunJournal,
    meta: Mapping[str, Any],
    wall_clock: Callable[[], float],
) -> StepOutcome:
    """Promote for ``run``; raises PromotionRefused (PromotionInDoubt once pg_promote was
    sent) or StaleEpoch."""
    lsn = meta.get("primary_last_lsn")
    adopt_from = meta.get(ADOPTS_PROMOTION_OF)
    result = await executor.promote_for_run(
        promoter, epoch=epoch, run_id=run.run_id,
        primary_last_lsn=lsn if isinstance(lsn, int) else None,
        # The journal saying the step started before means pg_promote may have landed.
        resuming=run.last_status(PROMOTE) is not None,
        old_primary_answering=meta.get(OLD_PRIMARY_ANSWERING) is True,
        adopt_from=[str(run_id) for run_id in adopt_from] if isinstance(adopt_from, list)
        else (),
    )
    # writable_at is on the promoter's monotonic clock; the decision is in wall time.
    writable_wall = wall_clock() - (time.monotonic() - result.writable_at)
    decided = meta.get("decided_at")
    to_writable = round(writable_wall - decided, 4) if isinstance(decided, int | float) else None
    seen_at = meta.get("primary_last_seen_at")
    rpo = promotion_rpo(lag_bytes=result.lag_bytes, final_lsn=result.final_lsn,
                        primary_last_lsn=lsn if isinstance(lsn, int) else None,
                        promoted_at=writable_wall,
                        last_seen_at=seen_at if isinstance(seen_at, int | float) else None)
    log.info("promotion_done", failover_id=run.run_id, epoch=epoch,
             already_promoted=result.already_promoted, lag_bytes=result.lag_bytes,
             rpo_basis=rpo["basis"], rpo_lower_bound=rpo["lower_bound"],
             rpo_lag_bytes_at_last_view=rpo["rpo_lag_bytes_at_last_view"],
             last_view_age_seconds=rpo["last_view_age_seconds"],
             promote_seconds=round(result.promote_seconds, 4),
             decision_to_writable=to_writable, old_primary_fenced=result.old_primary_fenced,
             final_lsn=result.final_lsn, replay_lsn=result.replay_lsn,
             catch_up_seconds=result.catch_up_seconds, detail=result.detail)
    return StepOutcome(not result.already_promoted, result.detail, {
        "lag_bytes": result.lag_bytes, "promote_seconds": round(result.promote_seconds, 4),
        "old_primary_fenced": result.old_primary_fenced,
        "decision_to_writable": to_writable,
        # RPO measured: the fenced old primary's final position against the standby's
        # replay at pg_promote (lag 0 when it caught up).
        "old_primary_final_lsn": result.final_lsn,
        "standby_replay_lsn": result.replay_lsn,
        "catch_up_seconds": result.catch_up_seconds,
        # What the lag above is measured against, and whether it is only a lower bound.
        "rpo": rpo,
    })
