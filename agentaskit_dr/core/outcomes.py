"""What comes back to the core after it acted: a run's outcome (succeeded or refused), the
standby seen promoted or writable, a self-fence not confirmed, an operator's
acknowledgement. Pure, like the rest of ``core``; ``machine.transition`` dispatches here.
"""

from __future__ import annotations

from dataclasses import replace

from agentaskit_dr.core.model import (
    Alert,
    CloseIncident,
    Command,
    FailoverRecord,
    FailoverRefused,
    FailoverSucceeded,
    FenceOldPrimary,
    Phase,
    Severity,
    StandbyObserved,
    WatchState,
    fresh_clocks,
)

Step = tuple[WatchState, list[Command]]


def with_verdict(state: WatchState, verdict: str) -> Step:
    """The state with ``verdict`` and no commands."""
    return replace(state, verdict=verdict), []


def failover_succeeded(state: WatchState, event: FailoverSucceeded, now: float) -> Step:
    base = state.failover or FailoverRecord(
        condition=None, epoch=event.epoch, decided_at=now, reason=event.detail
    )
    record = replace(base, epoch=event.epoch, completed_at=now)
    state = replace(
        state,
        phase=Phase.FAILED_OVER,
        failover=record,
        clocks=fresh_clocks(),
        standby_ready=None,
        incident_since=None,  # the run's last notification resolves it
        verdict=f"failed over under epoch {event.epoch}: {event.detail}".rstrip(": "),
    )
    return state, [Alert(Severity.CRITICAL, f"failover done under epoch {event.epoch}"),
                   Alert(Severity.INFO, "the failover went through", key="failover_refused",
                         resolve=True)]


def failover_refused(state: WatchState, event: FailoverRefused, now: float) -> Step:
    if state.phase is not Phase.FAILING_OVER:
        return with_verdict(state, f"ignored a late refusal: {event.reason}")
    # Every refusal backs off, a stale epoch too: retrying at once would only meet the
    # same newer epoch again (a hot loop); the keeper raises its epoch floor meanwhile.
    retry_at = now + state.thresholds.retry_backoff
    stale = "" if event.retry else " (stale epoch: raising the epoch before the retry)"
    state = replace(
        state,
        phase=Phase.WATCHING,
        failover=None,
        retry_not_before=retry_at,
        verdict=f"failover refused{stale}: {event.reason}",
    )
    commands: list[Command] = [Alert(Severity.CRITICAL, f"failover refused: {event.reason}",
                                     key="failover_refused")]
    if not event.retry and state.incident_since is not None:
        state = replace(state, incident_since=None)
        commands.append(CloseIncident(f"refused for good: {event.reason}"))
    return state, commands


def standby_observed(
    state: WatchState, event: StandbyObserved, now: float
) -> tuple[WatchState, list[Command], bool]:
    """Returns the new state, commands, and whether its verdict is final for this step."""
    if event.in_recovery:
        return replace(state, standby_ready=True), [], False
    if state.planned_run is not None:
        # The run promotes and fences on purpose: neither a promotion to adopt nor an old
        # primary to fence; the run's end says who the primary is (PlannedPrimary).
        return replace(state, standby_ready=False), [], False
    known = state.failover.epoch if state.failover else None
    newer = event.marker_epoch is not None and (known is None or event.marker_epoch > known)
    if (
        state.phase is Phase.WATCHING
        and event.marker_epoch is None
        and state.failover is None
        and state.epoch is None
        and state.lock_holder is not None
    ):
        # Between pg_promote and the marker write of another holder's promotion.
        verdict = (f"no action: the standby accepts writes without an epoch marker yet "
                   f"(promotion by {state.lock_holder} in progress?)")
        return replace(state, standby_ready=False, verdict=verdict), [], True
    if state.phase is Phase.WATCHING and (newer or state.failover is None):
        # Promoted by a peer (newer epoch marker) or by hand (no marker, no failover yet).
        who = f"epoch {event.marker_epoch}" if event.marker_epoch else "outside agentaskit-dr"
        record = FailoverRecord(
            condition=None,
            epoch=event.marker_epoch,
            decided_at=now,
            reason=f"standby already promoted ({who})",
            completed_at=now,
        )
        state = replace(
            state,
            phase=Phase.FAILED_OVER,
            failover=record,
            clocks=fresh_clocks(),
            standby_ready=None,
            verdict=f"no action: the standby was already promoted ({who})",
        )
        return state, [Alert(Severity.CRITICAL, f"standby found promoted ({who})")], True
    if event.marker_epoch is not None and known is not None and event.marker_epoch >= known:
        # The server we promoted, seen through a probe that still aims at the old slot.
        return state, [], False
    state = replace(state, standby_ready=False)
    if (event.writable and state.epoch is not None and state.phase is not Phase.FAILING_OVER
            and not state.paused):
        reason = "old primary in the standby slot accepts writes"
        return state, [
            Alert(Severity.CRITICAL, f"fencing: {reason}", key="fence"),
            FenceOldPrimary(epoch=state.epoch, reason=reason),
        ], False
    return state, [], False


def self_fence_failed(state: WatchState, reason: str, now: float) -> Step:
    """Not confirmed: the primary may still take writes. Try again while isolated."""
    if not state.self_fenced:
        return with_verdict(state, f"ignored a late self-fence failure: {reason}")
    backoff = state.thresholds.retry_backoff
    state = replace(state, self_fenced=False, self_fence_retry_at=now + backoff,
                    verdict=f"self-fence failed: {reason}; retrying in {backoff:g}s")
    return state, [Alert(Severity.CRITICAL, f"self-fence failed, the primary may still take "
                                            f"writes: {reason}; retrying in {backoff:g}s",
                         key="self_fence")]


def acknowledged(state: WatchState) -> Step:
    if state.phase is not Phase.FAILED_OVER:
        if state.self_fenced:
            state = replace(state, self_fenced=False, isolated_since=None,
                            self_fenced_at=None, lift_ready_since=None, lift_pending=False)
            return with_verdict(state, "acknowledged: self-fence cleared; the primary stays "
                                        "read-only until an operator lifts the fence")
        return with_verdict(state, f"acknowledged; nothing to clear in phase {state.phase}")
    state = replace(
        state,
        phase=Phase.WATCHING,
        clocks=fresh_clocks(),
        self_fenced=False,
        verdict="acknowledged: watching again",
    )
    return state, [Alert(Severity.INFO, "failover acknowledged; automatic failover re-armed")]

