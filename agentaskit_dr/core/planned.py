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
