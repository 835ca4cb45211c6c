"""The failover decision: ``transition(state, event, now) -> (state, commands)``.

Debounce rule (DESIGN.md invariant 2): a condition fails over only when failing
observations span more than its threshold with no healthy observation in between.
The span is measured from the first to the latest failing *observation*, so the
decision always rests on evidence, never on the mere absence of news.
"""

from __future__ import annotations

from dataclasses import replace

from agentaskit_dr.core.answers import refusal_alerts, target_health
from agentaskit_dr.core.assess import Verdict
from agentaskit_dr.core.model import (
    Acknowledged,
    Alert,
    Assessed,
    Clock,
    CloseIncident,
    Command,
    Condition,
    Event,
    FailoverRecord,
    FailoverRefused,
    FailoverRequested,
    FailoverSucceeded,
    FenceOldPrimary,
    FenceOwnPrimary,
    LeadershipChanged,
    Observed,
    Paused,
    Phase,
    PlannedPrimary,
    PlannedRunActive,
    Resumed,
    SelfFenceFailed,
    Severity,
    StandbyObserved,
    StartFailover,
    ThresholdsChanged,
    Tick,
    WatchState,
    fresh_clocks,
)
from agentaskit_dr.core.planned import planned_primary, planned_run_active

Step = tuple[WatchState, list[Command]]


def transition(state: WatchState, event: Event, now: float) -> Step:
    """Apply one event at time ``now`` and decide; pure and total."""
    commands: list[Command] = []
    match event:
        case Observed():
            state = replace(state, clocks=_observe(state, event, now))
        case Assessed():
            state, commands = _assessed(state, event, now)
        case Paused(reason=reason):
            state = replace(state, paused=True, pause_reason=reason)
            commands = [Alert(Severity.WARNING, f"paused: {reason or 'maintenance'}; "
                                                "nothing will be actuated", key="pause")]
        case Resumed():
            state = replace(state, paused=False, pause_reason="")
            commands = [Alert(Severity.INFO, "resumed: automatic actions armed again",
                              key="pause", resolve=True)]
        case FailoverRequested():
            return _failover_requested(state, event, now)
        case LeadershipChanged(epoch=epoch, holder=holder):
            state = replace(state, epoch=epoch, lock_holder=holder)
        case ThresholdsChanged(thresholds=thresholds):
            state = replace(state, thresholds=thresholds)
        case FailoverSucceeded():
            return _failover_succeeded(state, event, now)
        case FailoverRefused():
            return _failover_refused(state, event, now)
        case StandbyObserved():
            state, commands, final = _standby_observed(state, event, now)
            if final:
                return state, commands
        case Acknowledged():
            return _acknowledged(state)
        case SelfFenceFailed(reason=reason):
            return _self_fence_failed(state, reason, now)
        case PlannedRunActive():
            state = planned_run_active(state, event)
        case PlannedPrimary():
            return planned_primary(state, event, now)
        case Tick():
            pass
    state, decided = _decide(state, now)
    return state, commands + decided


def _assessed(state: WatchState, event: Assessed, now: float) -> Step:
    """Move the clocks the assessment has news for, and the self-fencing clock."""
    assessment = event.assessment
    commands: list[Command] = []
    # A provisional verdict moves the clocks but is not announced until peers confirm it.
    if assessment.verdict is not state.assessed and not assessment.provisional:
        if assessment.verdict in _ALERTING and not (
            assessment.verdict is Verdict.DEGRADED and state.assessed in _ALERTING
        ):
            commands.append(Alert(_ALERTING[assessment.verdict], assessment.detail,
                                  key="assessment"))
        elif assessment.verdict not in _ALERTING and state.assessed in _ALERTING:
            commands.append(Alert(Severity.INFO, f"cleared: {assessment.detail}",
                                  key="assessment", resolve=True))
        state = replace(state, assessed=assessment.verdict, assessed_since=now)
    state = replace(state, assessment_detail=assessment.detail)
    if event.db_evidence:
        commands += refusal_alerts(state.primary_refusal, assessment)
        state = replace(state, primary_refusal=assessment.primary_refusal)
    state, held = target_health(state, assessment)
    commands += held
    clocks = state.clocks
    if event.db_evidence:
        observed = Observed(Condition.DB_UNREACHABLE, assessment.db_failing, assessment.detail)
        clocks = _observe(replace(state, clocks=clocks), observed, now)
    if event.region_evidence:
        observed = Observed(Condition.REGION_UNHEALTHY, assessment.region_failing,
                            assessment.detail)
        clocks = _observe(replace(state, clocks=clocks), observed, now)
    state = replace(state, clocks=clocks)
    if not (assessment.self_isolated and event.primary_side):
        return replace(state, isolated_since=None, self_fence_deferred=False,
                       self_fence_retry_at=None), commands
    since = state.isolated_since if state.isolated_since is not None else now
    state = replace(state, isolated_since=since)
    fence_after = state.thresholds.fence_after
    if fence_after is None or state.self_fenced or now - since <= fence_after:
        return state, commands
    if state.self_fence_retry_at is not None and now < state.self_fence_retry_at:
        return state, commands
    reason = f"isolated from peer and witness for {now - since:.1f}s (> {fence_after:g}s)"
    if state.paused:
        if state.self_fence_deferred:  # said once per isolation; resuming fences at once
            return state, commands
        state = replace(state, self_fence_deferred=True)
        return state, [*commands, Alert(Severity.CRITICAL, f"paused: would self-fence, {reason}",
                                               key="self_fence")]
    state = replace(state, self_fenced=True, self_fence_retry_at=None)
    return state, [*commands, Alert(Severity.CRITICAL, f"self-fencing the primary: {reason}",
                                         key="self_fence"),
                   FenceOwnPrimary(reason=reason)]


_ALERTING = {
    Verdict.SELF_ISOLATED: Severity.CRITICAL,
    Verdict.PRIMARY_ISOLATED: Severity.CRITICAL,
    Verdict.PRIMARY_DOWN: Severity.CRITICAL,
    Verdict.PARTIAL_PARTITION: Severity.CRITICAL,
    Verdict.REGION_UNHEALTHY: Severity.WARNING,
    Verdict.DEGRADED: Severity.WARNING,
}


def _observe(state: WatchState, event: Observed, now: float) -> dict[Condition, Clock]:
    clocks = dict(state.clocks)
    clock = clocks[event.condition]
    if event.failing:
        if clock.failing_since is None:
            clock = Clock(failing_since=now, last_failing=now, detail=event.detail)
        else:
            clock = replace(clock, last_failing=now, detail=event.detail)
    elif clock.failing:
        # One healthy observation restarts the debounce clock.
        clock = Clock(healthy_since=now, detail=event.detail)
    elif clock.healthy_since is not None and (
        now - clock.healthy_since >= state.thresholds.recovery
    ):
        clock = Clock(detail=event.detail)
    else:
        clock = replace(clock, detail=event.detail)
    clocks[event.condition] = clock
    return clocks


def _ripe(state: WatchState) -> Condition | None:
    """The first condition whose evidence spans more than its threshold."""
    for condition in Condition:
        clock = state.clocks[condition]
        if clock.failing and clock.held_for() > state.thresholds.for_condition(condition):
            return condition
    return None


def _describe(state: WatchState, condition: Condition) -> str:
    clock = state.clocks[condition]
    threshold = state.thresholds.for_condition(condition)
    text = f"{condition.value} for {clock.held_for():.1f}s of {threshold:g}s"
    return f"{text} ({clock.detail})" if clock.detail else text


def _decide(state: WatchState, now: float) -> Step:
    if state.phase is Phase.FAILING_OVER:
        return _with_verdict(state, f"no action: failover in progress under epoch {state.epoch}")
    if state.planned_run is not None:
        return _with_verdict(state, f"no action: {state.planned_run} is running; the "
                                    "automation does not fight it")
    if state.phase is Phase.FAILED_OVER:
        record = state.failover
        epoch = record.epoch if record else None
        return _with_verdict(
            state, f"no action: failed over (epoch {epoch}); waiting for acknowledgement"
        )
    condition = _ripe(state)
    if condition is None:
        failing = [c for c in Condition if state.clocks[c].failing]
        if not failing and state.incident_since is not None:
            state = replace(state, incident_since=None, retry_not_before=None,
                            verdict="no action: the failover incident closed, its condition "
                                    "cleared")
            return state, [CloseIncident("the condition cleared before a failover succeeded"),
                           Alert(Severity.INFO, "the failover condition cleared",
                                 key="failover_refused", resolve=True)]
        if failing:
            parts = "; ".join(_describe(state, c) for c in failing)
            return _with_verdict(state, f"no action: waiting, {parts}{_refusing(state)}")
        recovering = [c.value for c in Condition if state.clocks[c].healthy_since is not None]
        if recovering:
            return _with_verdict(
                state, f"no action: primary healthy, recovering ({', '.join(recovering)})"
            )
        if state.primary_refusal is not None:
            return _with_verdict(state, "no action: the primary answers but refuses the "
                                        f"watchdog ({state.primary_refusal})")
        return _with_verdict(state, "no action: primary healthy")
    reason = _describe(state, condition)
    if state.paused:
        return _with_verdict(state, f"paused: {reason}; would fail over (nothing is actuated)")
    if state.standby_ready is False:
        return _with_verdict(state, f"no action: {reason}, but there is no standby to promote")
    if state.target_unhealthy is not None:
        state, _ = _with_verdict(state, f"no action: {reason}, but the {state.target_unhealthy}"
                                        "; holding the failover")
        if state.target_hold_alerted:
            return state, []
        return replace(state, target_hold_alerted=True), [Alert(
            Severity.CRITICAL, f"holding the failover: {reason}, but the "
                               f"{state.target_unhealthy}; failing over into it would not help",
            key="failover_held")]
    if state.epoch is None:
        holder = state.lock_holder or "nobody reachable"
        return _with_verdict(state, f"no action: {reason}, but the lock is held by {holder}")
    if state.retry_not_before is not None and now < state.retry_not_before:
        return _with_verdict(
            state,
            f"no action: {reason}; retrying the refused failover at {state.retry_not_before:.1f}",
        )
    clock = state.clocks[condition]
    assert clock.failing_since is not None  # guaranteed by _ripe
    incident = state.incident_since if state.incident_since is not None else now
    command = StartFailover(
        condition=condition,
        epoch=state.epoch,
        reason=reason,
        failing_since=clock.failing_since,
        decided_at=now,
        incident_since=incident,
    )
    state = replace(
        state,
        incident_since=incident,
        phase=Phase.FAILING_OVER,
        failover=FailoverRecord(
            condition=condition, epoch=state.epoch, decided_at=now, reason=reason
        ),
        retry_not_before=None,
        verdict=f"failover: {reason}; promoting the standby under epoch {state.epoch}",
    )
    return state, [Alert(Severity.CRITICAL, f"failing over: {reason}"), command]


def _failover_requested(state: WatchState, event: FailoverRequested, now: float) -> Step:
    """A manual failover: the same gates as an automatic one, minus the debounce."""
    reason = f"requested by an operator: {event.reason}" if event.reason else (
        "requested by an operator")
    refusal = None
    if state.phase is not Phase.WATCHING:
        refusal = f"phase is {state.phase.value}"
    elif state.planned_run is not None:
        refusal = f"{state.planned_run} is running"
    elif state.paused:
        refusal = "paused; resume first"
    elif state.standby_ready is False:
        refusal = "there is no standby to promote"
    elif state.target_unhealthy is not None:
        refusal = f"the {state.target_unhealthy}"
    elif state.epoch is None:
        refusal = f"the lock is held by {state.lock_holder or 'nobody reachable'}"
    if refusal is not None:
        return _with_verdict(state, f"manual failover refused: {refusal}")
    assert state.epoch is not None
    incident = state.incident_since if state.incident_since is not None else now
    command = StartFailover(condition=None, epoch=state.epoch, reason=reason,
                            failing_since=now, decided_at=now, incident_since=incident)
    state = replace(
        state,
        incident_since=incident,
        phase=Phase.FAILING_OVER,
        failover=FailoverRecord(condition=None, epoch=state.epoch, decided_at=now,
                                reason=reason),
        retry_not_before=None,
        verdict=f"failover: {reason}; promoting the standby under epoch {state.epoch}",
    )
    return state, [Alert(Severity.CRITICAL, f"failing over: {reason}"), command]


def _failover_succeeded(state: WatchState, event: FailoverSucceeded, now: float) -> Step:
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


def _failover_refused(state: WatchState, event: FailoverRefused, now: float) -> Step:
    if state.phase is not Phase.FAILING_OVER:
        return _with_verdict(state, f"ignored a late refusal: {event.reason}")
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


def _standby_observed(
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


def _self_fence_failed(state: WatchState, reason: str, now: float) -> Step:
    """Not confirmed: the primary may still take writes. Try again while isolated."""
    if not state.self_fenced:
        return _with_verdict(state, f"ignored a late self-fence failure: {reason}")
    backoff = state.thresholds.retry_backoff
    state = replace(state, self_fenced=False, self_fence_retry_at=now + backoff,
                    verdict=f"self-fence failed: {reason}; retrying in {backoff:g}s")
    return state, [Alert(Severity.CRITICAL, f"self-fence failed, the primary may still take "
                                            f"writes: {reason}; retrying in {backoff:g}s",
                         key="self_fence")]


def _acknowledged(state: WatchState) -> Step:
    if state.phase is not Phase.FAILED_OVER:
        if state.self_fenced:
            state = replace(state, self_fenced=False, isolated_since=None)
            return _with_verdict(state, "acknowledged: self-fence cleared; the primary stays "
                                        "read-only until an operator lifts the fence")
        return _with_verdict(state, f"acknowledged; nothing to clear in phase {state.phase}")
    state = replace(
        state,
        phase=Phase.WATCHING,
        clocks=fresh_clocks(),
        self_fenced=False,
        verdict="acknowledged: watching again",
    )
    return state, [Alert(Severity.INFO, "failover acknowledged; automatic failover re-armed")]


def _refusing(state: WatchState) -> str:
    if state.primary_refusal is None:
        return ""
    return f"; the primary refuses the watchdog ({state.primary_refusal})"


def _with_verdict(state: WatchState, verdict: str) -> Step:
    return replace(state, verdict=verdict), []
