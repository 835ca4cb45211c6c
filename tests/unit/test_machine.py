"""The decision core as tables and properties; time is a plain number here."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentaskit_dr.core import (
    Acknowledged,
    Alert,
    CloseIncident,
    Command,
    Condition,
    Event,
    FailoverRefused,
    FailoverSucceeded,
    FenceOldPrimary,
    LeadershipChanged,
    Observed,
    Phase,
    StandbyObserved,
    StartFailover,
    Thresholds,
    ThresholdsChanged,
    Tick,
    WatchState,
    transition,
)

DB = Condition.DB_UNREACHABLE
REGION = Condition.REGION_UNHEALTHY
PRODUCTION = Thresholds(region_unhealthy=300.0, db_unreachable=120.0, recovery=30.0)


def run(events: Iterable[tuple[float, Event]], state: WatchState | None = None) -> tuple[
    WatchState, list[tuple[float, Command]]
]:
    state = state or leader_state()
    out: list[tuple[float, Command]] = []
    for now, event in events:
        state, commands = transition(state, event, now)
        out.extend((now, c) for c in commands)
    return state, out


def leader_state(epoch: int = 3, thresholds: Thresholds = PRODUCTION) -> WatchState:
    state, _ = transition(WatchState(thresholds=thresholds), LeadershipChanged(epoch=epoch), 0.0)
    return state


def every(interval: float, start: float, end: float, condition: Condition, failing: bool) -> list[
    tuple[float, Event]
]:
    times: list[tuple[float, Event]] = []
    t = start
    while t <= end + 1e-9:
        times.append((t, Observed(condition, failing)))
        t += interval
    return times


def failovers(commands: list[tuple[float, Command]]) -> list[tuple[float, StartFailover]]:
    return [(t, c) for t, c in commands if isinstance(c, StartFailover)]


# ---------------------------------------------------------------- tables


def test_db_unreachable_for_119s_does_not_fail_over() -> None:
    state, commands = run([*every(5, 0, 119, DB, failing=True), (119.0, Tick())])
    assert failovers(commands) == []
    assert state.phase is Phase.WATCHING
    assert "db_unreachable for 115.0s of 120s" in state.verdict


def test_db_unreachable_for_121s_promotes_replica_once() -> None:
    state, commands = run(every(1, 0, 200, DB, failing=True))
    [(decided_at, command)] = failovers(commands)
    assert decided_at == 121.0
    assert command == StartFailover(
        condition=DB, epoch=3, reason=command.reason, failing_since=0.0, decided_at=121.0,
        incident_since=121.0,
    )
    assert state.phase is Phase.FAILING_OVER


def test_region_unhealthy_for_5m_plus_one_probe_fails_over() -> None:
    _, commands = run(every(5, 0, 400, REGION, failing=True))
    [(decided_at, command)] = failovers(commands)
    assert decided_at == 305.0
    assert command.condition is REGION


def test_one_healthy_observation_restarts_the_clock() -> None:
    events = [*every(5, 0, 100, DB, True), (105.0, Observed(DB, False))]
    events += every(5, 110, 225, DB, True)
    _, commands = run(events)
    assert failovers(commands) == []
    _, commands = run([*events, (235.0, Observed(DB, True))])
    assert [t for t, _ in failovers(commands)] == [235.0]


def test_condition_met_without_the_lock_waits_and_names_the_holder() -> None:
    state = WatchState(thresholds=PRODUCTION)
    state, _ = transition(state, LeadershipChanged(epoch=None, holder="east/us-east-1"), 0.0)
    state, commands = run(every(5, 0, 200, DB, True), state)
    assert failovers(commands) == []
    assert "lock is held by east/us-east-1" in state.verdict
    # The lock comes back while the condition still holds: decide at once.
    state, commands = run([(201.0, LeadershipChanged(epoch=9))], state)
    assert [c.epoch for _, c in failovers(commands)] == [9]


def test_after_failover_no_second_failover_until_acknowledged() -> None:
    state, commands = run(every(5, 0, 150, DB, True))
    assert len(failovers(commands)) == 1
    state, _ = run([(151.0, FailoverSucceeded(epoch=3, detail="promoted"))], state)
    assert state.phase is Phase.FAILED_OVER
    state, commands = run(every(5, 155, 600, DB, True), state)
    assert failovers(commands) == []
    assert "waiting for acknowledgement" in state.verdict
    state, commands = run([(601.0, Acknowledged())], state)
    assert state.phase is Phase.WATCHING
    assert any(isinstance(c, Alert) for _, c in commands)
    # The clock restarted at the acknowledgement.
    state, commands = run(every(5, 605, 720, DB, True), state)
    assert failovers(commands) == []
    state, commands = run(every(5, 725, 730, DB, True), state)
    assert len(failovers(commands)) == 1


def test_refused_failover_is_retried_after_backoff() -> None:
    state, commands = run(every(5, 0, 125, DB, True))
    assert len(failovers(commands)) == 1
    state, commands = run([(126.0, FailoverRefused("lag 9000000 > 65536 bytes"))], state)
    assert state.phase is Phase.WATCHING
    assert "lag 9000000" in state.verdict
    state, commands = run(every(1, 127, 135, DB, True), state)
    assert failovers(commands) == []
    state, commands = run([(136.0, Observed(DB, True))], state)
    assert len(failovers(commands)) == 1


def test_recovery_hysteresis_reports_recovering_then_healthy() -> None:
    state, _ = run(every(5, 0, 30, DB, True) + every(5, 35, 60, DB, False))
    assert "recovering" in state.verdict
    state, _ = run([(66.0, Observed(DB, False))], state)
    assert state.verdict == "no action: primary healthy"


def test_standby_promoted_by_peer_is_seen_as_failed_over() -> None:
    state, commands = run([(10.0, StandbyObserved(in_recovery=False, marker_epoch=4))])
    assert state.phase is Phase.FAILED_OVER
    assert state.failover is not None
    assert state.failover.epoch == 4
    assert not failovers(commands)


def test_unmarked_promotion_while_another_holds_the_lock_waits_for_the_marker() -> None:
    state = WatchState(thresholds=PRODUCTION)
    state, _ = transition(state, LeadershipChanged(epoch=None, holder="west (epoch 1)"), 0.0)
    state, commands = run([(5.0, StandbyObserved(in_recovery=False, marker_epoch=None))], state)
    assert state.phase is Phase.WATCHING
    assert "promotion by west (epoch 1) in progress" in state.verdict
    assert commands == []
    state, _ = run([(6.0, StandbyObserved(in_recovery=False, marker_epoch=1))], state)
    assert state.phase is Phase.FAILED_OVER
    assert state.failover is not None
    assert state.failover.epoch == 1


def test_unmarked_promotion_with_nobody_holding_the_lock_is_an_outside_promotion() -> None:
    state = WatchState(thresholds=PRODUCTION)
    state, _ = run([(5.0, StandbyObserved(in_recovery=False, marker_epoch=None))], state)
    assert state.phase is Phase.FAILED_OVER
    assert "outside agentaskit-dr" in state.verdict


def test_writable_old_primary_in_standby_slot_is_fenced_after_failover() -> None:
    state, _ = run([*every(5, 0, 125, DB, True), (126.0, FailoverSucceeded(epoch=3))])
    state, commands = run(
        [(130.0, StandbyObserved(in_recovery=False, marker_epoch=None, writable=True))], state
    )
    assert [c for _, c in commands if isinstance(c, FenceOldPrimary)] == [
        FenceOldPrimary(epoch=3, reason="old primary in the standby slot accepts writes")
    ]


def test_the_promoted_server_is_never_fenced_through_a_stale_probe() -> None:
    state, _ = run([*every(5, 0, 125, DB, True), (126.0, FailoverSucceeded(epoch=3))])
    state, commands = run(
        [(127.0, StandbyObserved(in_recovery=False, marker_epoch=3, writable=True))], state
    )
    assert not [c for _, c in commands if isinstance(c, FenceOldPrimary)]


def test_no_failover_when_the_standby_slot_holds_no_standby() -> None:
    state, _ = run([*every(5, 0, 125, DB, True), (126.0, FailoverSucceeded(epoch=3))])
    state, _ = run([(200.0, Acknowledged())], state)
    # The slot now holds the fenced old primary: no marker, not in recovery, read-only.
    state, _ = run([(201.0, StandbyObserved(in_recovery=False, marker_epoch=None))], state)
    state, commands = run(every(5, 205, 400, DB, True), state)
    assert failovers(commands) == []
    assert "no standby to promote" in state.verdict


def test_lowered_threshold_applies_to_the_evidence_already_gathered() -> None:
    state, commands = run(every(5, 0, 60, DB, True))
    assert failovers(commands) == []
    state, commands = run([(61.0, ThresholdsChanged(Thresholds(db_unreachable=30.0)))], state)
    assert [c.reason for _, c in failovers(commands)] == ["db_unreachable for 60.0s of 30s"]


def test_raised_threshold_delays_a_running_clock() -> None:
    state, _ = run(every(5, 0, 60, DB, True))
    state, _ = run([(61.0, ThresholdsChanged(Thresholds(db_unreachable=600.0)))], state)
    state, commands = run(every(5, 65, 600, DB, True), state)
    assert failovers(commands) == []
    state, commands = run(every(5, 605, 605, DB, True), state)
    assert len(failovers(commands)) == 1


# ---------------------------------------------------------------- properties

observation_gaps = st.floats(min_value=0.01, max_value=20.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(observation_gaps, st.booleans(), st.sampled_from(list(Condition))),
                   min_size=1, max_size=200),
    db_threshold=st.floats(min_value=1.0, max_value=200.0),
    region_threshold=st.floats(min_value=1.0, max_value=400.0),
)
def test_never_fails_over_before_the_condition_held_for_its_threshold(
    steps: list[tuple[float, bool, Condition]], db_threshold: float, region_threshold: float
) -> None:
    """Invariant 2: at every decision, an unbroken failing streak spans more than the threshold."""
    thresholds = Thresholds(region_unhealthy=region_threshold, db_unreachable=db_threshold)
    state = leader_state(thresholds=thresholds)
    streak_start: dict[Condition, float | None] = dict.fromkeys(Condition)
    now = 0.0
    for gap, failing, condition in steps:
        now += gap
        if failing and streak_start[condition] is None:
            streak_start[condition] = now
        elif not failing:
            streak_start[condition] = None
        state, commands = transition(state, Observed(condition, failing), now)
        for command in commands:
            if isinstance(command, StartFailover):
                start = streak_start[command.condition]
                assert start is not None
                assert now - start > thresholds.for_condition(command.condition)
                assert command.failing_since == start


@settings(max_examples=300, deadline=None)
@given(
    interval=st.floats(min_value=0.1, max_value=10.0),
    jitters=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=400, max_size=400),
    threshold=st.floats(min_value=1.0, max_value=120.0),
    condition=st.sampled_from(list(Condition)),
    healthy_prefix=st.integers(min_value=0, max_value=10),
)
def test_fails_over_within_threshold_plus_one_interval_when_the_condition_persists(
    interval: float, jitters: list[float], threshold: float, condition: Condition,
    healthy_prefix: int,
) -> None:
    """Invariant 3: probes at most one interval apart, condition persisting → timely decision."""
    thresholds = Thresholds(region_unhealthy=threshold, db_unreachable=threshold)
    state = leader_state(thresholds=thresholds)
    now = 0.0
    onset: float | None = None
    decided: float | None = None
    for i, jitter in enumerate(jitters):
        now += interval * (0.5 + 0.5 * jitter)  # gaps in [interval/2, interval]
        failing = i >= healthy_prefix
        if failing and onset is None:
            onset = now
        state, commands = transition(state, Observed(condition, failing), now)
        if any(isinstance(c, StartFailover) for c in commands):
            decided = now
            break
    if onset is not None and now - onset > threshold + interval:
        assert decided is not None
    if decided is not None:
        assert onset is not None
        assert decided <= onset + threshold + interval + 1e-9


@pytest.mark.parametrize("phase_events", [
    [],
    [(125.0, FailoverSucceeded(epoch=3))],
])
def test_acknowledge_outside_failed_over_changes_nothing_but_the_verdict(
    phase_events: list[tuple[float, Event]],
) -> None:
    state, _ = run(every(5, 0, 120, DB, True) + phase_events)
    before = state.phase
    state, _ = run([(130.0, Acknowledged())], state)
    if before is Phase.FAILED_OVER:
        assert state.phase is Phase.WATCHING
    else:
        assert state.phase is before
        assert "nothing to clear" in state.verdict


# ---------------------------------------------------------------- one incident per attempt window


def closes(commands: list[tuple[float, Command]]) -> list[tuple[float, CloseIncident]]:
    return [(t, c) for t, c in commands if isinstance(c, CloseIncident)]


def test_retries_after_refusals_carry_the_first_attempts_incident() -> None:
    state, commands = run(every(1, 0, 121, DB, failing=True))
    state, more = run([(121.5, FailoverRefused("lag gate")),
                       *every(1, 122, 140, DB, failing=True),
                       (140.5, FailoverRefused("fence not confirmed")),
                       *every(1, 141, 160, DB, failing=True),
                       (160.5, FailoverSucceeded(epoch=3))], state)
    attempts = failovers(commands + more)
    assert [t for t, _ in attempts] == [121.0, 132.0, 151.0]
    assert {c.incident_since for _, c in attempts} == {121.0}
    assert closes(commands + more) == []  # the run's own last notification resolves it
    assert state.incident_since is None


def test_an_incident_whose_condition_clears_after_a_refusal_is_closed_once() -> None:
    state, _ = run(every(1, 0, 121, DB, failing=True))
    state, more = run([(121.5, FailoverRefused("lag gate")),
                       *every(1, 122, 125, DB, failing=False),
                       *every(1, 125, 400, DB, failing=True)], state)
    [(closed_at, close)] = closes(more)
    assert closed_at == 122.0
    assert "cleared" in close.reason
    # The next streak is a new incident.
    [(decided_at, again)] = failovers(more)
    assert again.incident_since == decided_at == 246.0


def test_a_refusal_that_can_never_succeed_closes_the_incident() -> None:
    state, _ = run(every(1, 0, 121, DB, failing=True))
    state, commands = run([(121.5, FailoverRefused("stale epoch", retry=False))], state)
    assert [c.reason for _, c in closes(commands)] == ["refused for good: stale epoch"]
    assert state.incident_since is None


def test_a_refused_failover_is_an_alert_that_the_success_resolves() -> None:
    state, _ = run(every(1, 0, 121, DB, failing=True))
    state, refused = run([(121.5, FailoverRefused("fence not confirmed"))], state)
    state, retried = run([*every(1, 122, 135, DB, failing=True),
                          (135.5, FailoverSucceeded(epoch=3))], state)
    opened = [c for _, c in refused if isinstance(c, Alert) and c.key == "failover_refused"]
    closed = [c for _, c in retried if isinstance(c, Alert) and c.key == "failover_refused"]
    assert [(a.resolve, "fence not confirmed" in a.message) for a in opened] == [(False, True)]
    assert [a.resolve for a in closed] == [True]
