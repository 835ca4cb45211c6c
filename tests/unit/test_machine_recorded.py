"""A failover this watchdog missed (paused, cut off or down through it), adopted from the
cluster record at runtime (issue 13, seed 1011): only a newer epoch, never mid-run."""

from __future__ import annotations

from agentaskit_dr.core import (
    FailoverSucceeded,
    Phase,
    PlannedRunActive,
    RecordedPrimary,
    StartFailover,
)
from tests.unit.test_machine import DB, every, failovers, run

EAST = "us-east-1"


def test_a_missed_failover_is_adopted_unacknowledged_like_one_seen_happening() -> None:
    state, commands = run([(10.0, RecordedPrimary(EAST, 4, "fo-4", acknowledged=False))])

    assert commands == []
    assert state.phase is Phase.FAILED_OVER
    assert state.failover is not None
    assert state.failover.epoch == 4
    assert state.verdict.startswith(f"following the cluster record: {EAST} is the primary "
                                    "under epoch 4")


def test_an_acknowledged_missed_failover_is_watched_armed_and_its_loss_fails_over() -> None:
    state, _ = run([(10.0, RecordedPrimary(EAST, 4, "fo-4", acknowledged=True))])
    assert state.phase is Phase.WATCHING

    state, commands = run(every(5, 20, 145, DB, failing=True), state)

    (_, command), = failovers(commands)
    assert isinstance(command, StartFailover)


def test_a_record_no_newer_than_the_failover_known_is_ignored() -> None:
    state, _ = run([*every(5, 0, 125, DB, True), (126.0, FailoverSucceeded(epoch=5))])
    before = state

    for epoch in (3, 5):  # older, and the very failover this watchdog made
        state, commands = run([(130.0, RecordedPrimary(EAST, epoch, "fo", acknowledged=True))],
                              state)
        assert (state, commands) == (before, [])


def test_a_record_is_not_adopted_mid_failover_nor_during_a_planned_run() -> None:
    failing_over, _ = run(every(5, 0, 125, DB, True))
    assert failing_over.phase is Phase.FAILING_OVER
    state, _ = run([(126.0, RecordedPrimary(EAST, 9, "fo-9", acknowledged=True))],
                   failing_over)
    assert state == failing_over

    planned, _ = run([(0.0, PlannedRunActive("failback run fb-1"))])
    state, _ = run([(1.0, RecordedPrimary(EAST, 9, "fo-9", acknowledged=True))], planned)
    assert state == planned
