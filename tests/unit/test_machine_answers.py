"""The decision core on answers that are not outages, and on a target that is no refuge.

- A primary that answers the watchdog with an error (pg_hba, too many connections,
  starting up, in recovery where it should be primary) is up: it never counts toward
  db_unreachable, and it is one loud alert when it starts and one info alert when it ends.
- A failover into a region that is itself unhealthy holds (alert once); a manual failover
  is refused with that reason.

Tables in runbook words; time is a plain number; production thresholds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentaskit_dr.core import (
    Alert,
    Assessed,
    Command,
    Event,
    FailoverRequested,
    LeadershipChanged,
    Phase,
    RegionView,
    Role,
    Severity,
    StandbyObserved,
    StartFailover,
    Thresholds,
    Vantage,
    Verdict,
    WatchState,
    assess,
    transition,
)

WEST, EAST, SITE = "us-west-2", "us-east-1", "witness-site"
THRESHOLDS = Thresholds(region_unhealthy=300.0, db_unreachable=120.0, recovery=30.0)
REFUSES = "primary refuses the watchdog"
HOLDING = "holding the failover"


def run(events: Iterable[tuple[float, Event]], state: WatchState | None = None) -> tuple[
    WatchState, list[tuple[float, Command]]
]:
    state = state or leader_state()
    out: list[tuple[float, Command]] = []
    for now, event in events:
        state, commands = transition(state, event, now)
        out.extend((now, c) for c in commands)
    return state, out


def leader_state() -> WatchState:
    state = WatchState(thresholds=THRESHOLDS)
    state, _ = transition(state, LeadershipChanged(epoch=3, holder="watchdog-east"), 0.0)
    state, _ = transition(state, StandbyObserved(in_recovery=True), 0.0)
    return state


def seen(*, db: bool | None = True, refusal: str | None = None, health: bool | None = True,
         target_health: bool | None = True) -> Vantage:
    """East's own view: the primary (WEST) database and health, the target's health."""
    return Vantage("east (self)", Role.WATCHDOG, EAST, regions={
        WEST: RegionView(db_reachable=db, health_ok=health, db_refusal=refusal),
        EAST: RegionView(db_reachable=True, health_ok=target_health),
    })


def assessed(own: Vantage, *, others: tuple[Vantage, ...] = (), db: bool = True,
             region: bool = False, detail: str = "") -> Assessed:
    assessment = assess(own, list(others), WEST, secondary_region=EAST)
    if detail:  # the runtime adds the server's own words
        assessment = dataclasses.replace(assessment, refusal_detail=detail)
    return Assessed(assessment, primary_side=False, db_evidence=db, region_evidence=region)


def every(interval: float, start: float, end: float, event: Event) -> list[tuple[float, Event]]:
    count = int((end - start) / interval + 1e-9) + 1
    return [(start + i * interval, event) for i in range(count)]


def alerts(commands: list[tuple[float, Command]], containing: str) -> list[tuple[float, Alert]]:
    return [(t, c) for t, c in commands if isinstance(c, Alert) and containing in c.message]


def starts(commands: list[tuple[float, Command]]) -> list[tuple[float, StartFailover]]:
    return [(t, c) for t, c in commands if isinstance(c, StartFailover)]


# ---------------------------------------------------------------- assess: answers count as up


@pytest.mark.parametrize("refusal", ["auth_rejected", "too_many_connections", "starting_up",
                                     "database_missing", "in_recovery"])
def test_a_refusing_primary_is_not_failing_and_is_named(refusal: str) -> None:
    assessment = assess(seen(refusal=refusal), [], WEST)

    assert assessment.verdict is Verdict.HEALTHY
    assert not assessment.db_failing
    assert assessment.primary_refusal == refusal
    assert f"refuses this watchdog ({refusal})" in assessment.detail


def test_a_peer_that_is_refused_does_not_count_the_primary_as_failing() -> None:
    own = seen(db=False)  # this watchdog gets no answer...
    peer = Vantage("west (peer1)", Role.WATCHDOG, WEST, regions={
        WEST: RegionView(db_reachable=True, health_ok=True, db_refusal="too_many_connections")})
    witness = Vantage("witness", Role.WITNESS, SITE, regions={
        WEST: RegionView(db_reachable=True, health_ok=True, db_refusal="auth_rejected")})

    assessment = assess(own, [peer, witness], WEST)

    # ...but the others get an answer: the primary is up; the link from here is the fault.
    assert assessment.verdict is Verdict.PARTIAL_PARTITION
    assert not assessment.db_failing


# ---------------------------------------------------------------- machine: the refusal alert


def test_primary_refusing_for_10_minutes_never_fails_over_and_alerts_once() -> None:
    refusing = assessed(seen(refusal="auth_rejected"), detail="28000: pg_hba.conf rejects")
    state, commands = run(every(5, 0, 600, refusing))

    assert starts(commands) == []
    [(at, alert)] = alerts(commands, REFUSES)
    assert at == 0.0
    assert alert.severity is Severity.CRITICAL
    assert alert.message.startswith(f"{REFUSES}: auth_rejected (28000: pg_hba.conf rejects)")
    assert state.primary_refusal == "auth_rejected"
    assert state.verdict == ("no action: the primary answers but refuses the watchdog "
                             "(auth_rejected)")


def test_the_refusal_alert_clears_once_with_an_info_alert() -> None:
    timeline = [
        *every(5, 0, 100, assessed(seen(refusal="too_many_connections"))),
        *every(5, 105, 200, assessed(seen())),
    ]
    state, commands = run(timeline)

    assert [(t, a.severity) for t, a in alerts(commands, "refuses the watchdog")] == [
        (0.0, Severity.CRITICAL), (105.0, Severity.INFO)]
    assert alerts(commands, "no longer refuses the watchdog (was too_many_connections)")
    assert state.primary_refusal is None
    assert state.verdict == "no action: primary healthy"


def test_a_new_reason_is_a_new_alert_and_the_same_reason_is_not() -> None:
    timeline = [
        *every(5, 0, 50, assessed(seen(refusal="shutting_down"))),
        *every(5, 55, 100, assessed(seen(refusal="starting_up"))),
        (105, assessed(seen(refusal="starting_up"))),
    ]
    _, commands = run(timeline)

    assert [(t, a.message.split(";")[0]) for t, a in alerts(commands, REFUSES)] == [
        (0.0, f"{REFUSES}: shutting_down"), (55.0, f"{REFUSES}: starting_up")]


def test_a_refusal_only_moves_with_database_evidence() -> None:
    _, commands = run([
        (0, assessed(seen(refusal="auth_rejected"))),
        # Health news carries the same views but is no news about the database.
        (2, assessed(seen(), db=False, region=True)),
    ])
    assert len(alerts(commands, "refuses the watchdog")) == 1


def test_a_refusing_primary_that_then_stops_answering_fails_over_after_the_threshold() -> None:
    timeline = [
        *every(5, 0, 60, assessed(seen(refusal="shutting_down"))),
        *every(5, 65, 300, assessed(seen(db=False))),
    ]
    state, commands = run(timeline)

    [(decided_at, command)] = starts(commands)
    assert decided_at == 190.0, "the clock starts at the first silence (65), not before"
    assert command.failing_since == 65.0
    assert state.phase is Phase.FAILING_OVER


# ---------------------------------------------------------------- the target region's health


def test_a_primary_down_while_the_secondary_region_is_unhealthy_holds_and_alerts_once() -> None:
    both_down = assessed(seen(db=False, target_health=False))
    state, commands = run(every(5, 0, 600, both_down))

    assert starts(commands) == []
    [(at, alert)] = alerts(commands, HOLDING)
    assert at == 125.0, "said when the failover would have started"
    assert alert.severity is Severity.CRITICAL
    assert "secondary region us-east-1 unhealthy as seen from east (self)" in alert.message
    assert state.phase is Phase.WATCHING
    assert state.verdict.startswith("no action: db_unreachable for ")
    assert state.verdict.endswith("; holding the failover")


def test_the_held_failover_goes_as_soon_as_the_secondary_region_is_healthy() -> None:
    timeline = [
        *every(5, 0, 200, assessed(seen(db=False, target_health=False))),
        (202.5, assessed(seen(db=False, target_health=True), db=False)),  # a health probe
    ]
    state, commands = run(timeline)

    [(decided_at, command)] = starts(commands)
    assert decided_at == 202.5
    assert command.failing_since == 0.0
    assert [a.severity for _, a in alerts(commands, "secondary region healthy again")] == [
        Severity.INFO]
    assert state.phase is Phase.FAILING_OVER


def test_a_vantage_that_sees_the_secondary_region_healthy_lets_the_failover_go() -> None:
    peer = Vantage("witness", Role.WITNESS, SITE, regions={
        WEST: RegionView(db_reachable=False, health_ok=True),
        EAST: RegionView(db_reachable=True, health_ok=True)})
    event = assessed(seen(db=False, target_health=False), others=(peer,))
    _, commands = run(every(5, 0, 200, event))

    assert [t for t, _ in starts(commands)] == [125.0]


def test_an_unknown_secondary_health_does_not_hold() -> None:
    _, commands = run(every(5, 0, 200, assessed(seen(db=False, target_health=None))))
    assert [t for t, _ in starts(commands)] == [125.0]


def test_a_manual_failover_into_an_unhealthy_region_is_refused_with_the_reason() -> None:
    state, commands = run([
        (0, assessed(seen(target_health=False))),
        (1, FailoverRequested("drill")),
    ])
    assert starts(commands) == []
    assert state.verdict == ("manual failover refused: the secondary region us-east-1 "
                             "unhealthy as seen from east (self)")


def test_a_manual_failover_into_a_healthy_region_starts() -> None:
    _, commands = run([(0, assessed(seen())), (1, FailoverRequested("drill"))])
    assert [t for t, _ in starts(commands)] == [1.0]


# ---------------------------------------------------------------- properties

_ANSWER = st.sampled_from([None, "auth_rejected", "too_many_connections", "starting_up",
                           "in_recovery"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 30.0), _ANSWER, st.booleans()), max_size=80))
def test_a_primary_that_always_answers_never_fails_over(
    steps: list[tuple[float, str | None, bool]],
) -> None:
    """Whatever it answers, and with whatever health news in between: up is up."""
    now, timeline = 0.0, []
    for gap, refusal, health_news in steps:
        now += gap
        timeline.append((now, assessed(seen(refusal=refusal), db=not health_news,
                                       region=health_news)))
    _, commands = run(timeline)
    assert starts(commands) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 30.0), st.booleans()), max_size=80))
def test_no_failover_starts_while_the_target_region_fails_its_health(
    steps: list[tuple[float, bool]],
) -> None:
    """The primary is down throughout; the target's health comes and goes. Every
    StartFailover comes at a moment when the target was last seen healthy."""
    now, timeline = 0.0, []
    for gap, target_ok in steps:
        now += gap
        timeline.append((now, assessed(seen(db=False, target_health=target_ok))))
    _, commands = run(timeline)
    healthy_at = {t for t, event in timeline
                  if isinstance(event, Assessed) and not event.assessment.target_failing}
    assert all(t in healthy_at for t, _ in starts(commands))
