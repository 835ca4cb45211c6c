"""A primary-side watchdog in control mode holds its own unreachable primary before the
other region may promote (core/own_hold.py): tables in runbook words, the vantage points
assessed by the real ``assess``. Production thresholds: db_unreachable 120 s, the hold at
100 s (a margin of 20 s), probes every 5 s.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agentaskit_dr.core import (
    Alert,
    Assessed,
    Command,
    HoldOwnPrimary,
    OwnPrimaryHoldFailed,
    Paused,
    Phase,
    RegionView,
    Role,
    StartFailover,
    Thresholds,
    Vantage,
    WatchState,
    assess,
    transition,
)

WEST, EAST = "us-west-2", "us-east-1"
HOLD_AFTER = 100.0
CONTROL = Thresholds(region_unhealthy=300.0, db_unreachable=120.0, recovery=30.0,
                     fence_after=90.0, hold_after=HOLD_AFTER)
NO_CONTROL = replace(CONTROL, hold_after=None)

UNREACHABLE = RegionView(db_reachable=False, health_ok=True)
REACHABLE = RegionView(db_reachable=True, health_ok=True)
REFUSES = RegionView(db_reachable=True, health_ok=True, db_refusal="too_many_connections")


def views(own: RegionView, witness: RegionView | None) -> Assessed:
    """The primary-side watchdog's own view and the witness's fresh report (None: the
    witness is unheard); the other region's watchdog is never heard (seed 1013)."""
    me = Vantage("west", Role.WATCHDOG, WEST, regions={WEST: own})
    others = [Vantage("east", Role.WATCHDOG, EAST, fresh=False)]
    others.append(Vantage("witness", Role.WITNESS, "eu", fresh=witness is not None,
                          regions={WEST: witness} if witness else {}))
    return Assessed(assess(me, others, WEST, secondary_region=EAST), primary_side=True,
                    db_evidence=True)


def probes(event: Assessed, until: float, *, state: WatchState | None = None,
           start: float = 0.0, every: float = 5.0) -> tuple[WatchState, list[tuple[float,
                                                                                 Command]]]:
    state = state or WatchState(thresholds=CONTROL)
    out: list[tuple[float, Command]] = []
    now = start
    while now <= until:
        state, commands = transition(state, event, now)
        out.extend((now, c) for c in commands)
        now += every
    return state, out


def holds(out: list[tuple[float, Command]]) -> list[tuple[float, HoldOwnPrimary]]:
    return [(t, c) for t, c in out if isinstance(c, HoldOwnPrimary)]


def test_unreachable_for_100s_with_the_witness_agreeing_holds_once_before_120s() -> None:
    state, out = probes(views(UNREACHABLE, UNREACHABLE), 130.0)
    assert [(t, c.held_for) for t, c in holds(out)] == [(100.0, 100.0)]
    assert state.own_primary_held_at == 100.0
    said = [c.message for _, c in out if isinstance(c, Alert) and c.key == "own_primary_held"]
    assert len(said) == 1
    assert "holding the primary" in said[0]
    # No failover of its own: this watchdog holds no lock here; the hold needs none.
    assert not any(isinstance(c, StartFailover) for _, c in out)


@pytest.mark.parametrize(("name", "own", "witness", "thresholds", "primary_side"), [
    ("the server answers with an error", REFUSES, UNREACHABLE, CONTROL, True),
    ("the witness reaches it (only this watchdog's link is cut)", UNREACHABLE, REACHABLE,
     CONTROL, True),
    ("the witness gets an error from it", UNREACHABLE, REFUSES, CONTROL, True),
    ("nobody else is heard (isolated: the self-fence's case)", UNREACHABLE, None, CONTROL,
     True),
    ("not control mode", UNREACHABLE, UNREACHABLE, NO_CONTROL, True),
    ("a watchdog of the other region", UNREACHABLE, UNREACHABLE, CONTROL, False),
])
def test_no_hold(name: str, own: RegionView, witness: RegionView | None,
                 thresholds: Thresholds, primary_side: bool) -> None:
    event = replace(views(own, witness), primary_side=primary_side)
    _, out = probes(event, 200.0, state=WatchState(thresholds=thresholds))
    assert holds(out) == [], name


@pytest.mark.parametrize(("name", "state"), [
    ("failed over, awaiting acknowledgement", WatchState(thresholds=CONTROL,
                                                          phase=Phase.FAILED_OVER)),
    ("failing over itself", WatchState(thresholds=CONTROL, phase=Phase.FAILING_OVER)),
    ("no standby to promote", WatchState(thresholds=CONTROL, standby_ready=False)),
])
def test_no_hold_when_no_promotion_can_follow(name: str, state: WatchState) -> None:
    _, out = probes(views(UNREACHABLE, UNREACHABLE), 200.0, state=state)
    assert holds(out) == [], name


def test_unreachable_for_95s_does_not_hold() -> None:
    _, out = probes(views(UNREACHABLE, UNREACHABLE), 95.0)
    assert holds(out) == []


def test_one_probe_that_reaches_it_restarts_the_hold_clock() -> None:
    state, out = probes(views(UNREACHABLE, UNREACHABLE), 95.0)
    state, more = probes(views(REACHABLE, REACHABLE), 100.0, state=state, start=100.0)
    _, later = probes(views(UNREACHABLE, UNREACHABLE), 220.0, state=state, start=105.0)
    assert holds(out + more) == []
    assert [t for t, _ in holds(later)] == [205.0]  # 100 s after the clock restarted at 105


def test_a_failed_hold_is_issued_again_at_the_next_assessment() -> None:
    state, out = probes(views(UNREACHABLE, UNREACHABLE), 100.0)
    state, _ = transition(state, OwnPrimaryHoldFailed("postmaster still running"), 101.0)
    assert state.own_primary_held_at is None
    _, again = probes(views(UNREACHABLE, UNREACHABLE), 105.0, state=state, start=105.0)
    assert [t for t, _ in holds(out)] == [100.0]
    assert [t for t, _ in holds(again)] == [105.0]


def test_paused_only_says_it_would_hold() -> None:
    state, _ = transition(WatchState(thresholds=CONTROL), Paused("maintenance"), 0.0)
    _, out = probes(views(UNREACHABLE, UNREACHABLE), 130.0, state=state)
    said = [c.message for _, c in out if isinstance(c, Alert) and c.key == "own_primary_held"]
    assert holds(out) == []
    assert len(said) == 1
    assert said[0].startswith("paused: would")


def test_reachable_again_after_a_hold_rearms_it() -> None:
    state, _ = probes(views(UNREACHABLE, UNREACHABLE), 100.0)
    state, _ = transition(state, views(REACHABLE, REACHABLE), 300.0)
    assert state.own_primary_held_at is None
