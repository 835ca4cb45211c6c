"""The plan's testing schedule as data, and when a test is overdue or failed. Pure.

Every function takes ``now`` (Unix seconds) instead of reading a clock, so the schedule
is tested on an injected clock. Cron expressions are evaluated by ``croniter`` in UTC.

A test is due at the first cron time after its last run (after ``since``, the day the
schedule started, for a test never run); it is **overdue** ``grace`` after that. A test
whose last run failed is **failed** until a run passes. Either is an alert, once, then a
reminder every ``remind_every`` (:func:`schedule_alerts`), and a resolve when it clears.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from croniter import croniter  # type: ignore[import-untyped,unused-ignore]

from agentaskit_dr.core import Alert, Severity

Status = Literal["ok", "due", "overdue", "failed", "never"]

#: The plan's rows, in its order: (key, test type, frequency).
PLAN_TESTS: tuple[tuple[str, str, str], ...] = (
    ("backup_verification", "Backup verification", "Weekly"),
    ("restore_test", "Restore test", "Monthly"),
    ("failover_drill", "Failover drill", "Quarterly"),
    ("dr_exercise", "Full DR exercise", "Annually"),
)
ALERT_KEY_PREFIX = "dr_testing:"


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """One run of a test as recorded (evidence file or the schedule's state file)."""

    at: float
    passed: bool
    result: str
    evidence: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One row of the plan's table, evaluated at ``now``."""

    key: str
    test_type: str
    frequency: str
    cron: str
    last: RecordedRun | None
    next_due: float
    status: Status

    def as_dict(self) -> dict[str, Any]:
        """The row as ``schedule --json``, ``/v1/status`` ``dr_testing`` and the page show it."""
        last = self.last
        return {
            "test_type": self.test_type,
            "frequency": self.frequency,
            "schedule": self.cron,
            "last_test": None if last is None else iso(last.at),
            "next_test": iso(self.next_due),
            "result": "never run" if last is None else last.result,
            "status": self.status,
            "evidence": None if last is None else last.evidence,
        }


def next_after(cron: str, after: float) -> float:
    """The first time ``cron`` fires strictly after ``after``."""
    start = dt.datetime.fromtimestamp(after, dt.UTC)
    nxt: dt.datetime = croniter(cron, start).get_next(dt.datetime)
    return nxt.timestamp()


def evaluate(key: str, cron: str, last: RecordedRun | None, *, since: float, now: float,
             grace: float) -> ScheduleRow:
    """The row of test ``key`` (one of :data:`PLAN_TESTS`) at ``now``."""
    names = {k: (name, freq) for k, name, freq in PLAN_TESTS}
    test_type, frequency = names[key]
    due = next_after(cron, since if last is None else last.at)
    status: Status
    if last is not None and not last.passed:
        status = "failed"
    elif now >= due + grace:
        status = "overdue"
    elif now >= due:
        status = "due"
    else:
        status = "ok" if last is not None else "never"
    return ScheduleRow(key, test_type, frequency, cron, last, due, status)


@dataclass(frozen=True, slots=True)
class AlertState:
    """When each test's alert was last sent (``key -> time``); kept between checks."""

    sent: Mapping[str, float]


def schedule_alerts(rows: Sequence[ScheduleRow], state: AlertState, *, now: float,
                    remind_every: float) -> tuple[list[Alert], AlertState]:
    """The alerts to send now, and the state after sending them.

    An overdue or failed test opens its alert once, then is reminded every
    ``remind_every`` (the reminder says how long it has been, so it is news to the
    router); a test that is fine again resolves its alert.
    """
    alerts: list[Alert] = []
    sent = dict(state.sent)
    for row in rows:
        key = ALERT_KEY_PREFIX + row.key
        if row.status in ("overdue", "failed"):
            previous = sent.get(row.key)
            if previous is not None and now - previous < remind_every:
                continue
            alerts.append(Alert(_severity(row), _message(row, now, reminder=previous is not None),
                                key=key))
            sent[row.key] = now
        elif row.key in sent:
            del sent[row.key]
            alerts.append(Alert(Severity.INFO, f"DR testing: {row.test_type} is {row.status} "
                                f"again", key=key, resolve=True))
    return alerts, AlertState(sent)


def _severity(row: ScheduleRow) -> Severity:
    return Severity.CRITICAL if row.status == "failed" else Severity.WARNING


def _message(row: ScheduleRow, now: float, *, reminder: bool) -> str:
    prefix = "reminder: " if reminder else ""
    if row.status == "failed" and row.last is not None:
        return (f"{prefix}DR testing: {row.test_type} failed on {iso(row.last.at)}: "
                f"{row.last.result}")
    days = (now - row.next_due) / 86400
    last = "never run" if row.last is None else f"last run {iso(row.last.at)}"
    return (f"{prefix}DR testing: {row.test_type} ({row.frequency.lower()}) is overdue: "
            f"due {iso(row.next_due)}, {days:.1f} days ago; {last}")


def iso(at: float) -> str:
    """Unix seconds as an ISO 8601 UTC time, to the second."""
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")
