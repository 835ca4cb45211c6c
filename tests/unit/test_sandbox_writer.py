"""The writer log's write-unavailability window: first refused write -> first write the new
primary acknowledged."""

from __future__ import annotations

from agentaskit_dr.sandbox.writer import Attempt, WriterLog


def test_window_runs_from_the_first_refusal_to_the_new_primary_s_first_ack() -> None:
    log = WriterLog(
        acked=[Attempt(1, "old", 10.0), Attempt(2, "old", 10.1), Attempt(5, "new", 10.45),
               Attempt(6, "new", 10.5)],
        failed=[Attempt(3, "old", 10.2, "shutting down"), Attempt(4, "new", 10.3, "read-only")],
    )
    assert round(log.unavailable_window(since=10.05, new_primary="new") or 0, 3) == 0.25


def test_no_refusal_or_no_new_ack_gives_no_window() -> None:
    log = WriterLog(acked=[Attempt(1, "old", 10.0)], failed=[Attempt(2, "old", 9.0, "x")])
    assert log.unavailable_window(since=9.5, new_primary="new") is None
    log.failed.append(Attempt(3, "old", 10.2, "x"))
    assert log.unavailable_window(since=9.5, new_primary="new") is None
