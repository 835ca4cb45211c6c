"""Failback and switchover runs as the core sees them: the automation does not fight them.

While a planned run (kind ``failback`` or ``switchover``) is active in the journal, the
server it fences or resyncs is not "primary down": nothing fails over, the standby slot
is neither adopted as promoted nor fenced (see ``machine``). When the run has made a
region the primary, every watchdog watches that region, armed at once: a planned switch
loses nothing, so no acknowledgement is owed.
"""

from __future__ import annotations

from dataclasses import replace

from agentaskit_dr.core.model import (
    Command,
    FailoverRecord,
    Phase,
    PlannedPrimary,
    PlannedRunActive,
    RecordedPrimary,
    WatchState,
    fresh_clocks,
)


def planned_run_active(state: WatchState, event: PlannedRunActive) -> WatchState:
    """Hold (or stop holding) for the run; the failure clocks start afresh at its end,
    as the run may have stopped a server for a while on purpose."""
    if event.run is None and state.planned_run is not None:
        return replace(state, planned_run=None, clocks=fresh_clocks(), retry_not_before=None)
    return replace(state, planned_run=event.run)


def planned_primary(state: WatchState, event: PlannedPrimary,
                    now: float) -> tuple[WatchState, list[Command]]:
    """Watch ``event.region`` as the primary made so by a planned run, armed."""
    record = FailoverRecord(condition=None, epoch=event.epoch, decided_at=now,
                            reason=f"run {event.run_id} made {event.region} the primary",
                            completed_at=now)
    verdict = (f"following run {event.run_id}: {event.region} is the primary under epoch "
               f"{event.epoch}; automatic failover armed")
    return replace(state, phase=Phase.WATCHING, failover=record, clocks=fresh_clocks(),
                   standby_ready=None, retry_not_before=None, incident_since=None,
                   verdict=verdict), []


def recorded_primary(state: WatchState, event: RecordedPrimary,
                     now: float) -> tuple[WatchState, list[Command]]:
    """Adopt a failover this watchdog missed, as the cluster record names it.

    Only a record of a newer epoch than the failover this watchdog knows of, and never
    while it runs a failover itself or a planned run holds: then its own run's outcome
    (or the planned run's recorded primary) comes first, and the record is offered again
    at the next read. Like a failover seen happening, it is ``failed_over`` until an
    operator acknowledged it.
    """
    known = state.failover.epoch if state.failover is not None else None
    if (state.phase is Phase.FAILING_OVER or state.planned_run is not None
            or (known is not None and event.epoch <= known)):
        return state, []
    record = FailoverRecord(condition=None, epoch=event.epoch, decided_at=now,
                            reason=f"recorded by run {event.run_id} in {event.source}",
                            completed_at=now)
    phase = Phase.WATCHING if event.acknowledged else Phase.FAILED_OVER
    verdict = (f"following {event.source}: {event.region} is the primary under epoch "
               f"{event.epoch} (failover {event.run_id}, missed by this watchdog)")
    return replace(state, phase=phase, failover=record, clocks=fresh_clocks(),
                   standby_ready=None, retry_not_before=None, verdict=verdict), []
