"""The failover decision: ``transition(state, event, now) -> (state, commands)``.

Debounce rule (safety invariant 2, docs/architecture.md): a condition fails over only when failing
observations span more than its threshold with no healthy observation in between.
The span is measured from the first to the latest failing *observation*, so the
decision always rests on evidence, never on the mere absence of news.
"""

from __future__ import annotations

from dataclasses import replace

from agentaskit_dr.core.answers import refusal_alerts, target_health
from agentaskit_dr.core.assess import Verdict
from agentaskit_dr.core.hold_types import OwnPrimaryHoldFailed
from agentaskit_dr.core.lift_types import SelfFenceFacts, SelfFenceLiftDone
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
    FenceOwnPrimary,
    LeadershipChanged,
    Observed,
    Paused,
    Phase,
    PlannedPrimary,
    PlannedRunActive,
    RecordedPrimary,
    Resumed,
    SelfFenceFailed,
    Severity,
    StandbyObserved,
    StartFailover,
    ThresholdsChanged,
    Tick,
    WatchState,
)
from agentaskit_dr.core.outcomes import (
    Step,
    acknowledged,
    failover_refused,
    failover_succeeded,
    self_fence_failed,
    standby_observed,
    with_verdict,
)
from agentaskit_dr.core.own_hold import own_primary_hold, own_primary_hold_failed
from agentaskit_dr.core.planned import planned_primary, planned_run_active, recorded_primary
from agentaskit_dr.core.self_fence import (
    fenced,
    refence_restored,
    self_fence_facts,
    self_fence_lift_done,
)


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
            return failover_succeeded(state, event, now)
        case FailoverRefused():
            return failover_refused(state, event, now)
        case StandbyObserved():
            state, commands, final = standby_observed(state, event, now)
            if final:
                return state, commands
        case Acknowledged():
            return acknowledged(state)
        case SelfFenceFailed(reason=reason):
            return self_fence_failed(state, reason, now)
        case PlannedRunActive():
            state = planned_run_active(state, event)
        case PlannedPrimary():
            return planned_primary(state, event, now)
        case RecordedPrimary():
            return recorded_primary(state, event, now)
        case SelfFenceFacts():
            return self_fence_facts(state, event, now)
        case SelfFenceLiftDone():
            return self_fence_lift_done(state, event, now)
        case OwnPrimaryHoldFailed():
            return own_primary_hold_failed(state, event)
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
    if event.db_evidence:
        state, held = own_primary_hold(state, primary_side=event.primary_side, now=now)
        commands += held
    if not (assessment.self_isolated and event.primary_side):
        return replace(state, isolated_since=None, self_fence_deferred=False,
                       self_fence_retry_at=None), commands
    since = state.isolated_since if state.isolated_since is not None else now
    state = replace(state, isolated_since=since)
    fence_after = state.thresholds.fence_after
    if fence_after is None or now - since <= fence_after:
        return state, commands
    if state.self_fenced:
        state, again = refence_restored(state, now)
        return state, [*commands, *again]
    if state.self_fence_retry_at is not None and now < state.self_fence_retry_at:
        return state, commands
    reason = f"isolated from peer and witness for {now - since:.1f}s (> {fence_after:g}s)"
    if state.paused:
        if state.self_fence_deferred:  # said once per isolation; resuming fences at once
            return state, commands
        state = replace(state, self_fence_deferred=True)
        return state, [*commands, Alert(Severity.CRITICAL, f"paused: would self-fence, {reason}",
                                               key="self_fence")]
    state = fenced(replace(state, self_fenced=True, self_fence_retry_at=None), now)
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
        return with_verdict(state, f"no action: failover in progress under epoch {state.epoch}")
    if state.planned_run is not None:
        return with_verdict(state, f"no action: {state.planned_run} is running; the "
                                    "automation does not fight it")
    if state.lift_pending:
        # The lift checked that the other server is a standby: no promotion races it.
        return with_verdict(state, "no action: lifting the self-fence; no failover meanwhile")
    if state.phase is Phase.FAILED_OVER:
        record = state.failover
        epoch = record.epoch if record else None
        return with_verdict(
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
            return with_verdict(state, f"no action: waiting, {parts}{_refusing(state)}")
        recovering = [c.value for c in Condition if state.clocks[c].healthy_since is not None]
        if recovering:
            return with_verdict(
                state, f"no action: primary healthy, recovering ({', '.join(recovering)})"
            )
        if state.primary_refusal is not None:
            return with_verdict(state, "no action: the primary answers but refuses the "
                                        f"watchdog ({state.primary_refusal})")
        return with_verdict(state, "no action: primary healthy")
    reason = _describe(state, condition)
    if state.paused:
        return with_verdict(state, f"paused: {reason}; would fail over (nothing is actuated)")
    if state.standby_ready is False:
        return with_verdict(state, f"no action: {reason}, but there is no standby to promote")
    if state.target_unhealthy is not None:
        state, _ = with_verdict(state, f"no action: {reason}, but the {state.target_unhealthy}"
                                        "; holding the failover")
        if state.target_hold_alerted:
            return state, []
        return replace(state, target_hold_alerted=True), [Alert(
            Severity.CRITICAL, f"holding the failover: {reason}, but the "
                               f"{state.target_unhealthy}; failing over into it would not help",
            key="failover_held")]
    if state.epoch is None:
        holder = state.lock_holder or "nobody reachable"
        return with_verdict(state, f"no action: {reason}, but the lock is held by {holder}")
    if state.retry_not_before is not None and now < state.retry_not_before:
        return with_verdict(
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
        return with_verdict(state, f"manual failover refused: {refusal}")
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


def _refusing(state: WatchState) -> str:
    if state.primary_refusal is None:
        return ""
    return f"; the primary refuses the watchdog ({state.primary_refusal})"
