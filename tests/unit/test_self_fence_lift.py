"""The automatic lift of a self-fence, as tables: each blocking condition alone keeps the
fence; with every condition holding for ``recovery`` (30 s) the lift is issued once.

The story of chaos seed 1011: this region's watchdog holds the lock under epoch 3 (it
promoted this server in failover epoch 3), is isolated 95 s and fences its own primary,
then hears its peers again.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agentaskit_dr.core import (
    Acknowledged,
    Alert,
    Assessed,
    Command,
    Event,
    FailoverSucceeded,
    LeadershipChanged,
    LiftSelfFence,
    Paused,
    Phase,
    SelfFenceFacts,
    SelfFenceLiftDone,
    StartFailover,
    Thresholds,
    Tick,
    WatchState,
    transition,
)
from tests.unit.test_machine_vantage import (
    HEALTHY,
    SELF_ISOLATED,
    THRESHOLDS,
    assessed_every,
    leader_state,
    of_type,
    run,
)

HERE = "us-east-1"
OTHER = "us-west-2"
GOOD = SelfFenceFacts(region=HERE, recorded_region=HERE, recorded_epoch=3,
                      other_in_recovery=True, other_detail="streaming")


def self_fenced_state(thresholds: Thresholds = THRESHOLDS, *,
                      acknowledged: bool = True) -> WatchState:
    """Failed over to this region under epoch 3, acknowledged, then isolated and fenced."""
    state = leader_state(thresholds, epoch=3)
    state, _ = transition(state, FailoverSucceeded(epoch=3), 0.0)
    if acknowledged:
        state, _ = transition(state, Acknowledged(), 1.0)
    state, _commands = run(assessed_every(5, 10, 105, SELF_ISOLATED, primary_side=True), state)
    assert state.self_fenced
    assert state.self_fence_epoch == 3
    return state


def healed(state: WatchState, start: float, end: float,
           facts: SelfFenceFacts = GOOD) -> tuple[WatchState, list[tuple[float, Command]]]:
    """The isolation healed at ``start``: a healthy assessment and the facts every 5 s."""
    timeline: list[tuple[float, Event]] = []
    for now, event in assessed_every(5, start, end, HEALTHY, primary_side=True):
        timeline += [(now, event), (now, facts)]
    return run(timeline, state)


def test_every_condition_healthy_for_30s_lifts_once_under_the_current_epoch() -> None:
    state, commands = healed(self_fenced_state(), 110, 200)

    lifts = of_type(commands, LiftSelfFence)
    assert [t for t, _ in lifts] == [140.0], "the first facts 30 s after the heal"
    lift = lifts[0][1]
    assert lift.epoch == 3
    assert lift.fence_epoch == 3
    conditions = dict(lift.conditions)
    assert conditions["other_is_standby"] == "standby"
    assert conditions["recorded_primary"] == HERE
    assert state.lift_pending
    assert state.self_fenced

    state, commands2 = transition(state, SelfFenceLiftDone(True, "writable again"), 141.0)
    assert not state.self_fenced
    assert [a.resolve for a in commands2 if isinstance(a, Alert)] == [True, True]


def test_lift_for_29s_is_not_yet_issued() -> None:
    _, commands = healed(self_fenced_state(), 110, 135)

    assert of_type(commands, LiftSelfFence) == []


BLOCKERS: list[tuple[str, object]] = [
    ("recorded_primary", replace(GOOD, recorded_region=OTHER)),
    ("recorded_primary", replace(GOOD, recorded_region=None)),
    ("no_newer_failover", replace(GOOD, recorded_epoch=4)),
    ("other_is_standby", replace(GOOD, other_in_recovery=False, other_detail="writable")),
    ("other_is_standby", replace(GOOD, other_in_recovery=None, other_detail="timeout")),
]


@pytest.mark.parametrize(("blocker", "facts"), BLOCKERS)
def test_each_unsafe_fact_alone_keeps_the_fence(blocker: str, facts: SelfFenceFacts) -> None:
    state, commands = healed(self_fenced_state(), 110, 600, facts)

    assert of_type(commands, LiftSelfFence) == []
    assert state.self_fenced
    assert f"not lifted: {blocker}" in state.lift_status
    stuck = [a for _, a in of_type(commands, Alert) if a.key == "self_fence_stuck"]
    assert len(stuck) == 1, "alerted once, past self_fence_stuck_after"
    assert blocker in stuck[0].message
    if facts.other_detail != GOOD.other_detail:
        assert f"the other server: {facts.other_detail}" in stuck[0].message


def test_without_the_lock_the_fence_stays() -> None:
    state = self_fenced_state()
    state, _ = transition(state, LeadershipChanged(epoch=None, holder="watchdog-west"), 106.0)
    state, commands = healed(state, 110, 600)

    assert of_type(commands, LiftSelfFence) == []
    assert "not lifted: lock" in state.lift_status


def test_still_isolated_the_fence_stays() -> None:
    state = self_fenced_state()
    timeline: list[tuple[float, Event]] = []
    for now, event in assessed_every(5, 110, 600, SELF_ISOLATED, primary_side=True):
        timeline += [(now, event), (now, GOOD)]
    state, commands = run(timeline, state)

    assert of_type(commands, LiftSelfFence) == []
    assert "not lifted: not_isolated" in state.lift_status


def test_auto_lift_off_keeps_the_fence_for_an_operator() -> None:
    state = self_fenced_state(replace(THRESHOLDS, self_fence_auto_lift=False))
    state, commands = healed(state, 110, 600)

    assert of_type(commands, LiftSelfFence) == []
    assert "not lifted: auto_lift" in state.lift_status


def test_paused_the_fence_stays() -> None:
    state = self_fenced_state()
    state, _ = transition(state, Paused("maintenance"), 106.0)
    state, commands = healed(state, 110, 600)

    assert of_type(commands, LiftSelfFence) == []
    assert "not lifted: armed" in state.lift_status


def test_one_blocking_observation_restarts_the_debounce() -> None:
    state = self_fenced_state()
    timeline: list[tuple[float, Event]] = []
    for now, event in assessed_every(5, 110, 200, HEALTHY, primary_side=True):
        facts = replace(GOOD, other_in_recovery=None) if now == 135 else GOOD
        timeline += [(now, event), (now, facts)]
    _, commands = run(timeline, state)

    assert [t for t, _ in of_type(commands, LiftSelfFence)] == [170.0]


def test_a_refused_lift_debounces_afresh_and_alerts() -> None:
    state, _ = healed(self_fenced_state(), 110, 140)
    assert state.lift_pending
    state, commands = transition(state, SelfFenceLiftDone(False, "marker epoch 4"), 141.0)

    assert state.self_fenced
    assert not state.lift_pending
    assert [a.key for a in commands if isinstance(a, Alert)] == ["self_fence_stuck"]
    _, later = healed(state, 145, 200)
    assert [t for t, _ in of_type(later, LiftSelfFence)] == [175.0]


def test_facts_without_a_self_fence_do_nothing() -> None:
    state, commands = run([(5.0, Assessed(HEALTHY, primary_side=True)), (5.0, GOOD)])

    assert commands == []
    assert not state.self_fenced


def test_no_failover_starts_while_the_lift_runs() -> None:
    state, _ = healed(self_fenced_state(), 110, 140)
    assert state.lift_pending
    # The server is stopped (control mode) and every vantage sees it down past 120 s.
    state = replace(state, clocks={c: replace(k, failing_since=0.0, last_failing=140.0)
                                   for c, k in state.clocks.items()})
    state, commands = transition(state, Tick(), 141.0)

    assert of_type([(141.0, c) for c in commands], StartFailover) == []
    assert "lifting the self-fence" in state.verdict


def test_failed_over_awaiting_acknowledgement_still_lifts_the_fence_of_its_new_primary() -> None:
    # Seed 1011: the new primary's watchdog fenced it before anyone acknowledged.
    state = self_fenced_state(acknowledged=False)
    assert state.phase is Phase.FAILED_OVER
    state, commands = healed(state, 110, 200)

    assert [t for t, _ in of_type(commands, LiftSelfFence)] == [140.0]
    assert of_type(commands, StartFailover) == []
