"""The decision core with vantage points: assessments, self-fencing, pause and manual failover.

Tables in runbook words; time is a plain number. Production thresholds throughout
(db_unreachable 120 s, region_unhealthy 300 s) with ``fence_after`` 90 s, the default a
config with peers gets (three quarters of the shortest threshold).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from agentaskit_dr.core import (
    Acknowledged,
    Alert,
    Assessed,
    Assessment,
    Command,
    Condition,
    Event,
    FailoverRequested,
    FailoverSucceeded,
    FenceOldPrimary,
    FenceOwnPrimary,
    LeadershipChanged,
    Paused,
    Phase,
    Resumed,
    SelfFenceFailed,
    Severity,
    StandbyObserved,
    StartFailover,
    Thresholds,
    Tick,
    Verdict,
    WatchState,
    transition,
)

DB = Condition.DB_UNREACHABLE
FENCE_AFTER = 90.0
THRESHOLDS = Thresholds(region_unhealthy=300.0, db_unreachable=120.0, recovery=30.0,
                        fence_after=FENCE_AFTER)
Timeline = list[tuple[float, Event]]
CommandT = TypeVar("CommandT")


def run(events: Iterable[tuple[float, Event]], state: WatchState | None = None) -> tuple[
    WatchState, list[tuple[float, Command]]
]:
    state = state or leader_state()
    out: list[tuple[float, Command]] = []
    for now, event in events:
        state, commands = transition(state, event, now)
        out.extend((now, c) for c in commands)
    return state, out


def leader_state(thresholds: Thresholds = THRESHOLDS, epoch: int = 3) -> WatchState:
    """A watchdog holding the lock under ``epoch`` whose standby is streaming."""
    state = WatchState(thresholds=thresholds)
    state, _ = transition(state, LeadershipChanged(epoch=epoch, holder="watchdog-east"), 0.0)
    state, _ = transition(state, StandbyObserved(in_recovery=True), 0.0)
    return state


def follower_state() -> WatchState:
    state = WatchState(thresholds=THRESHOLDS)
    state, _ = transition(state, LeadershipChanged(epoch=None, holder="watchdog-west"), 0.0)
    state, _ = transition(state, StandbyObserved(in_recovery=True), 0.0)
    return state


def verdict_of(kind: Verdict, *, db: bool = False, region: bool = False,
               isolated: bool = False) -> Assessment:
    return Assessment(kind, db_failing=db, region_failing=region, self_isolated=isolated,
                      detail=f"{kind.value} (test)")


PRIMARY_DOWN = verdict_of(Verdict.PRIMARY_DOWN, db=True)
PARTIAL = verdict_of(Verdict.PARTIAL_PARTITION)
HEALTHY = verdict_of(Verdict.HEALTHY)
DEGRADED = verdict_of(Verdict.DEGRADED)
SELF_ISOLATED = verdict_of(Verdict.SELF_ISOLATED, isolated=True)


def assessed_every(interval: float, start: float, end: float, assessment: Assessment, *,
                   primary_side: bool = False, db_evidence: bool = True,
                   region_evidence: bool = False) -> Timeline:
    event = Assessed(assessment, primary_side=primary_side, db_evidence=db_evidence,
                     region_evidence=region_evidence)
    count = int((end - start) / interval + 1e-9) + 1
    return [(start + i * interval, event) for i in range(count)]


def of_type(commands: list[tuple[float, Command]], kind: type[CommandT]) -> list[
    tuple[float, CommandT]
]:
    return [(t, c) for t, c in commands if isinstance(c, kind)]


def alerts(commands: list[tuple[float, Command]], containing: str = "") -> list[
    tuple[float, Alert]
]:
    return [(t, a) for t, a in of_type(commands, Alert) if containing in a.message]


# ---------------------------------------------------------------- assessed: the db clock


def test_primary_down_assessed_for_125s_fails_over_once() -> None:
    state, commands = run(assessed_every(5, 0, 300, PRIMARY_DOWN))

    [(decided_at, command)] = of_type(commands, StartFailover)
    assert decided_at == 125.0, "first evidence spanning more than 120 s is at 125 s"
    assert (command.condition, command.epoch, command.failing_since) == (DB, 3, 0.0)
    assert state.phase is Phase.FAILING_OVER


def test_primary_down_assessed_for_exactly_120s_does_not_fail_over() -> None:
    state, commands = run([*assessed_every(5, 0, 120, PRIMARY_DOWN), (124.0, Tick())])

    assert of_type(commands, StartFailover) == []
    assert state.verdict.startswith("no action: waiting, db_unreachable for 120.0s of 120s")


def test_assessments_without_db_evidence_never_move_the_db_clock() -> None:
    # Only the first assessment carries news of the database; the rest come from the
    # region probe. Time passing is no evidence: nothing fails over.
    timeline = [
        (0.0, Assessed(PRIMARY_DOWN, primary_side=False, db_evidence=True)),
        *assessed_every(5, 5, 600, PRIMARY_DOWN, db_evidence=False, region_evidence=True),
    ]
    state, commands = run(timeline)

    assert of_type(commands, StartFailover) == []
    assert state.clocks[DB].held_for() == 0.0


def test_partial_partition_restarts_the_db_clock_and_never_fails_over() -> None:
    timeline = [
        *assessed_every(5, 0, 100, PRIMARY_DOWN),
        *assessed_every(5, 105, 3600, PARTIAL),
    ]
    state, commands = run(timeline)

    assert of_type(commands, StartFailover) == []
    assert not state.clocks[DB].failing
    assert state.assessed is Verdict.PARTIAL_PARTITION
    assert state.assessed_since == 105.0


def test_partial_partition_alerts_once_per_change_of_verdict() -> None:
    timeline = [
        *assessed_every(5, 0, 100, PARTIAL),
        *assessed_every(5, 105, 200, HEALTHY),
        *assessed_every(5, 205, 300, PARTIAL),
    ]
    _, commands = run(timeline)

    partial = alerts(commands, "partial_partition (test)")
    assert [(t, a.severity) for t, a in partial] == [
        (0.0, Severity.CRITICAL), (205.0, Severity.CRITICAL),
    ]
    cleared = alerts(commands, "healthy (test)")
    assert [(t, a.severity, a.key, a.resolve) for t, a in cleared] == [
        (105.0, Severity.INFO, "assessment", True)], "a healthy verdict only resolves the alert"
    assert {a.key for _, a in partial} == {"assessment"}


def test_degraded_alerts_once_and_does_not_repeat_while_it_stays_degraded() -> None:
    timeline = [
        *assessed_every(5, 0, 20, HEALTHY),
        *assessed_every(5, 25, 1000, DEGRADED),
    ]
    _, commands = run(timeline)

    assert [(t, a.severity) for t, a in alerts(commands, "degraded (test)")] == [
        (25.0, Severity.WARNING),
    ]


def test_degraded_after_an_alerting_verdict_adds_no_alert() -> None:
    # The operator already heard of the partial partition; degraded is the milder news.
    timeline = [
        *assessed_every(5, 0, 20, PARTIAL),
        *assessed_every(5, 25, 100, DEGRADED),
    ]
    _, commands = run(timeline)

    assert alerts(commands, "degraded (test)") == []
    assert len(alerts(commands, "partial_partition (test)")) == 1


# ---------------------------------------------------------------- self isolation


def test_primary_side_watchdog_isolated_for_95s_fences_its_own_primary_exactly_once() -> None:
    state, commands = run(assessed_every(5, 0, 600, SELF_ISOLATED, primary_side=True))

    fences = of_type(commands, FenceOwnPrimary)
    assert [t for t, _ in fences] == [95.0], "fenced once, at the first evidence past 90 s"
    assert "isolated from peer and witness for 95.0s (> 90s)" in fences[0][1].reason
    assert state.self_fenced
    assert alerts(commands, "self-fencing the primary") != []
    assert of_type(commands, StartFailover) == []


def test_primary_side_watchdog_isolated_for_exactly_fence_after_does_not_fence() -> None:
    _, commands = run(assessed_every(5, 0, FENCE_AFTER, SELF_ISOLATED, primary_side=True))

    assert of_type(commands, FenceOwnPrimary) == []


def test_secondary_side_watchdog_never_self_fences() -> None:
    state, commands = run(assessed_every(5, 0, 3600, SELF_ISOLATED, primary_side=False))

    assert of_type(commands, FenceOwnPrimary) == []
    assert of_type(commands, StartFailover) == []
    assert state.isolated_since is None
    assert not state.self_fenced


def test_hearing_a_peer_again_restarts_the_isolation_clock() -> None:
    timeline = [
        *assessed_every(5, 0, 80, SELF_ISOLATED, primary_side=True),
        (85.0, Assessed(DEGRADED, primary_side=True, db_evidence=True)),
        *assessed_every(5, 90, 300, SELF_ISOLATED, primary_side=True),
    ]
    _, commands = run(timeline)

    assert [t for t, _ in of_type(commands, FenceOwnPrimary)] == [185.0]


def test_without_fence_after_a_watchdog_never_self_fences() -> None:
    state = leader_state(Thresholds(region_unhealthy=300.0, db_unreachable=120.0))
    state, commands = run(assessed_every(5, 0, 3600, SELF_ISOLATED, primary_side=True), state)

    assert of_type(commands, FenceOwnPrimary) == []
    assert not state.self_fenced


def test_paused_watchdog_only_says_it_would_self_fence() -> None:
    timeline: Timeline = [
        (0.0, Paused("patching the lock store")),
        *assessed_every(5, 5, 300, SELF_ISOLATED, primary_side=True),
    ]
    state, commands = run(timeline)

    assert of_type(commands, FenceOwnPrimary) == []
    would = alerts(commands, "paused: would self-fence")
    assert would, "a paused watchdog must still say loudly that it would self-fence"
    assert would[0][0] == 100.0
    assert would[0][1].severity is Severity.CRITICAL
    assert not state.self_fenced


def test_resuming_while_still_isolated_self_fences_at_the_next_assessment() -> None:
    timeline: Timeline = [
        (0.0, Paused("drill")),
        *assessed_every(5, 5, 300, SELF_ISOLATED, primary_side=True),
        (301.0, Resumed()),
        *assessed_every(5, 305, 400, SELF_ISOLATED, primary_side=True),
    ]
    _, commands = run(timeline)

    assert [t for t, _ in of_type(commands, FenceOwnPrimary)] == [305.0]


def test_acknowledging_clears_the_self_fence() -> None:
    state, _ = run(assessed_every(5, 0, 100, SELF_ISOLATED, primary_side=True))
    assert state.self_fenced

    state, _ = run([(101.0, Acknowledged())], state)

    assert not state.self_fenced
    assert state.isolated_since is None
    assert state.verdict.startswith("acknowledged: self-fence cleared")


def test_a_self_fence_that_fails_is_retried_after_the_backoff_with_an_alert_each_time() -> None:
    # Default retry_backoff is 10 s: fenced at 95, failed twice, the third one holds.
    timeline: Timeline = [
        *assessed_every(5, 0, 95, SELF_ISOLATED, primary_side=True),
        (96.0, SelfFenceFailed("fence target refused the session: too many connections")),
        *assessed_every(5, 100, 110, SELF_ISOLATED, primary_side=True),
        (111.0, SelfFenceFailed("timeout after 2s")),
        *assessed_every(5, 115, 400, SELF_ISOLATED, primary_side=True),
    ]
    state, commands = run(timeline)

    assert [t for t, _ in of_type(commands, FenceOwnPrimary)] == [95.0, 110.0, 125.0]
    failures = alerts(commands, "self-fence failed")
    assert [(t, a.severity) for t, a in failures] == [(96.0, Severity.CRITICAL),
                                                      (111.0, Severity.CRITICAL)]
    assert "too many connections" in failures[0][1].message
    assert state.self_fenced


def test_a_self_fence_failure_after_the_isolation_ended_changes_nothing() -> None:
    state, _ = run(assessed_every(5, 0, 95, SELF_ISOLATED, primary_side=True))
    state, commands = run([
        (96.0, Assessed(HEALTHY, primary_side=True, db_evidence=True)),
        (97.0, Acknowledged()),
        (98.0, SelfFenceFailed("late")),
    ], state)
    assert not state.self_fenced
    assert state.self_fence_retry_at is None
    assert alerts(commands, "self-fence failed") == []


def test_still_isolated_after_acknowledging_fences_again_only_after_another_fence_after() -> (
    None
):
    state, _ = run(assessed_every(5, 0, 100, SELF_ISOLATED, primary_side=True))
    state, commands = run(
        [(101.0, Acknowledged()),
         *assessed_every(5, 105, 400, SELF_ISOLATED, primary_side=True)],
        state,
    )

    assert [t for t, _ in of_type(commands, FenceOwnPrimary)] == [200.0]


# ---------------------------------------------------------------- pause and resume


def test_paused_watchdog_does_not_fail_over_on_a_ripe_condition() -> None:
    state, commands = run([(0.0, Paused("maintenance")), *assessed_every(5, 5, 600, PRIMARY_DOWN)])

    assert of_type(commands, StartFailover) == []
    assert state.phase is Phase.WATCHING
    assert state.verdict.startswith("paused: db_unreachable for 595.0s of 120s")
    assert "would fail over (nothing is actuated)" in state.verdict
    assert [a.severity for _, a in alerts(commands, "paused: maintenance")] == [Severity.WARNING]


def test_paused_watchdog_does_not_fence_a_writable_old_primary() -> None:
    state, _ = run([*assessed_every(5, 0, 125, PRIMARY_DOWN), (126.0, FailoverSucceeded(epoch=3))])
    writable_old_primary = StandbyObserved(in_recovery=False, marker_epoch=None, writable=True)

    paused, commands = run([(127.0, Paused()), (130.0, writable_old_primary)], state)
    assert of_type(commands, FenceOldPrimary) == []

    _, commands = run([(131.0, Resumed()), (135.0, writable_old_primary)], paused)
    assert [c for _, c in of_type(commands, FenceOldPrimary)] == [
        FenceOldPrimary(epoch=3, reason="old primary in the standby slot accepts writes")
    ]


def test_resume_re_arms_the_failover_at_the_next_evaluation() -> None:
    state, commands = run([(0.0, Paused()), *assessed_every(5, 5, 200, PRIMARY_DOWN)])
    assert of_type(commands, StartFailover) == []

    state, commands = run([(201.0, Resumed()), (205.0, Tick())], state)

    [(decided_at, command)] = of_type(commands, StartFailover)
    assert decided_at == 201.0
    assert command.condition is DB
    assert not state.paused
    assert state.phase is Phase.FAILING_OVER
    assert alerts(commands, "resumed: automatic actions armed again") != []


# ---------------------------------------------------------------- manual failover


def test_requested_failover_starts_at_once_without_a_failing_condition() -> None:
    state, commands = run([*assessed_every(5, 0, 20, HEALTHY),
                           (21.0, FailoverRequested("quarterly drill"))])

    [(decided_at, command)] = of_type(commands, StartFailover)
    assert decided_at == 21.0
    assert command == StartFailover(condition=None, epoch=3,
                                    reason="requested by an operator: quarterly drill",
                                    failing_since=21.0, decided_at=21.0,
                                    incident_since=21.0)
    assert state.phase is Phase.FAILING_OVER
    assert state.failover is not None
    assert state.failover.condition is None


def refused(state: WatchState, reason: str = "drill") -> WatchState:
    after, commands = transition(state, FailoverRequested(reason), 50.0)
    assert commands == []
    assert after.phase is state.phase
    return after


def test_requested_failover_is_refused_when_another_watchdog_holds_the_lock() -> None:
    assert refused(follower_state()).verdict == (
        "manual failover refused: the lock is held by watchdog-west"
    )


def test_requested_failover_is_refused_while_paused() -> None:
    state, _ = run([(1.0, Paused())])
    assert refused(state).verdict == "manual failover refused: paused; resume first"


def test_requested_failover_is_refused_without_a_standby() -> None:
    # After a failover and its acknowledgement the standby slot holds the fenced old primary.
    state, _ = run([(1.0, FailoverRequested("first")), (2.0, FailoverSucceeded(epoch=3)),
                    (3.0, Acknowledged()),
                    (4.0, StandbyObserved(in_recovery=False, marker_epoch=None))])
    assert state.standby_ready is False
    assert refused(state).verdict == "manual failover refused: there is no standby to promote"


def test_requested_failover_is_refused_when_already_failed_over() -> None:
    state, _ = run([(1.0, FailoverRequested("first")), (2.0, FailoverSucceeded(epoch=3))])
    assert state.phase is Phase.FAILED_OVER
    assert refused(state).verdict == "manual failover refused: phase is failed_over"


def test_requested_failover_is_refused_while_one_is_in_progress() -> None:
    state, _ = run([(1.0, FailoverRequested("first"))])
    assert refused(state).verdict == "manual failover refused: phase is failing_over"


# ---------------------------------------------------------------- property


DB_WINDOW = THRESHOLDS.db_unreachable
REGION_WINDOW = THRESHOLDS.region_unhealthy
_VERDICTS = st.sampled_from(list(Verdict))
_STEP = st.tuples(
    st.floats(min_value=0.0, max_value=60.0, allow_nan=False),  # gap since the previous one
    _VERDICTS,
    st.booleans(),  # db_failing
    st.booleans(),  # region_failing
    st.booleans(),  # db_evidence
    st.booleans(),  # region_evidence
    st.booleans(),  # primary_side
    st.booleans(),  # self_isolated
)


def reachable_within_every_window(steps: list[tuple[float, Verdict, bool, bool, bool, bool,
                                                    bool, bool]]) -> Timeline:
    """Assessed events in which the primary is seen reachable within every threshold window:
    an assessment about to leave a window without a healthy one in it is made healthy."""
    timeline: Timeline = []
    now = 0.0
    db_healthy_at = region_healthy_at = 0.0
    for gap, kind, db_drawn, region_drawn, db_drawn_news, region_drawn_news, primary_side, \
            isolated in steps:
        now += gap
        db_due = now - db_healthy_at >= DB_WINDOW
        region_due = now - region_healthy_at >= REGION_WINDOW
        db, db_news = (False, True) if db_due else (db_drawn, db_drawn_news)
        region, region_news = (False, True) if region_due else (region_drawn, region_drawn_news)
        if db_news and not db:
            db_healthy_at = now
        if region_news and not region:
            region_healthy_at = now
        assessment = Assessment(kind, db_failing=db, region_failing=region,
                                self_isolated=isolated, detail=kind.value)
        timeline.append((now, Assessed(assessment, primary_side=primary_side,
                                       db_evidence=db_news, region_evidence=region_news)))
    return timeline


@settings(max_examples=300, deadline=None)
@given(st.lists(_STEP, max_size=120))
def test_primary_seen_reachable_within_every_window_never_fails_over(
    steps: list[tuple[float, Verdict, bool, bool, bool, bool, bool, bool]],
) -> None:
    _, commands = run(reachable_within_every_window(steps))

    assert of_type(commands, StartFailover) == []


def test_a_provisional_verdict_moves_the_clock_without_an_alert() -> None:
    provisional = Assessment(Verdict.PRIMARY_DOWN, db_failing=True, region_failing=False,
                             self_isolated=False, detail="primary down", provisional=True)
    state, commands = transition(WatchState(), Assessed(provisional, primary_side=False,
                                                        db_evidence=True), 10.0)
    assert state.clocks[Condition.DB_UNREACHABLE].failing_since == 10.0
    assert commands == []
    assert state.assessed is None
    confirmed = Assessment(Verdict.PRIMARY_DOWN, db_failing=True, region_failing=False,
                           self_isolated=False, detail="primary down")
    state, commands = transition(state, Assessed(confirmed, primary_side=False,
                                                 db_evidence=True), 10.5)
    assert state.clocks[Condition.DB_UNREACHABLE].failing_since == 10.0
    assert [c.message for c in commands if isinstance(c, Alert)] == ["primary down"]
