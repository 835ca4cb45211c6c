"""The core while a failback or switchover run is active, and after it (issue 9): the
automation does not fight the runbook, then protects the primary the run left."""

from __future__ import annotations

from agentaskit_dr.core import (
    FailoverRequested,
    FailoverSucceeded,
    FenceOldPrimary,
    Phase,
    PlannedPrimary,
    PlannedRunActive,
    StandbyObserved,
    StartFailover,
)
from tests.unit.test_machine import DB, every, failovers, run

RUN = "failback run failback-20261129T120000Z-e4"


def test_primary_down_during_a_planned_run_never_fails_over() -> None:
    state, commands = run([(0.0, PlannedRunActive(RUN)), *every(5, 1, 400, DB, True)])

    assert failovers(commands) == []
    assert state.phase is Phase.WATCHING
    assert state.verdict == f"no action: {RUN} is running; the automation does not fight it"


def test_a_promoted_standby_during_a_planned_run_is_neither_adopted_nor_fenced() -> None:
    state, _ = run([*every(5, 0, 125, DB, True), (126.0, FailoverSucceeded(epoch=3))])
    state, commands = run([
        (130.0, PlannedRunActive(RUN)),
        (131.0, StandbyObserved(in_recovery=False, marker_epoch=4, writable=True)),
        (132.0, StandbyObserved(in_recovery=False, marker_epoch=None, writable=True)),
    ], state)

    assert not [c for _, c in commands if isinstance(c, FenceOldPrimary)]
    assert state.failover is not None
    assert state.failover.epoch == 3  # not taken for a failover by someone else


def test_a_manual_failover_is_refused_while_a_planned_run_is_active() -> None:
    state, commands = run([(0.0, PlannedRunActive(RUN)), (1.0, FailoverRequested("x"))])

    assert failovers(commands) == []
    assert state.verdict == f"manual failover refused: {RUN} is running"


def test_after_the_run_the_recorded_primary_is_armed_and_its_loss_fails_over_again() -> None:
    state, _ = run([*every(5, 0, 125, DB, True), (126.0, FailoverSucceeded(epoch=3))])
    assert state.phase is Phase.FAILED_OVER
    state, commands = run([
        (130.0, PlannedRunActive(RUN)),
        *every(5, 131, 300, DB, True),  # the run stops the primary it switches away from
        (301.0, PlannedPrimary("us-west-2", 4, "failback-x")),
        (301.0, PlannedRunActive(None)),
    ], state)
    assert failovers(commands) == []
    assert state.phase is Phase.WATCHING
    assert state.failover is not None
    assert state.failover.epoch == 4
    assert not state.clocks[DB].failing  # counted afresh from the end of the run

    state, commands = run([(302.0, PlannedRunActive(None)), *every(5, 305, 430, DB, True)],
                          state)

    (_, command), = failovers(commands)
    assert isinstance(command, StartFailover)
    assert command.failing_since == 305
