"""The DR testing schedule on an injected clock: due, overdue, failed, alert once, remind
daily, resolve; and its records (state file, backup job evidence)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from agentaskit_dr.core import Severity
from agentaskit_dr.drtesting.records import (
    DEFAULT_CRONS,
    record_run,
    schedule_rows,
)
from agentaskit_dr.drtesting.schedule import (
    AlertState,
    RecordedRun,
    evaluate,
    next_after,
    schedule_alerts,
)

DAY = 86400.0
HOUR = 3600.0


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


WEEKLY = "0 4 * * 0"  # Sundays 04:00
SUNDAY = at("2026-11-29T04:00:00")


def test_next_after_follows_the_cron_in_utc() -> None:
    assert next_after(WEEKLY, SUNDAY) == at("2026-12-06T04:00:00")
    assert next_after(WEEKLY, SUNDAY - 1) == SUNDAY
    assert next_after("0 10 1 1,4,7,10 *", at("2026-11-29T00:00:00")) == at("2027-01-01T10:00:00")


def test_a_test_run_on_time_is_ok_until_its_next_due_time() -> None:
    last = RecordedRun(SUNDAY + 60, True, "passed")
    row = evaluate("backup_verification", WEEKLY, last, since=0, now=SUNDAY + 6 * DAY, grace=DAY)
    assert (row.status, row.next_due) == ("ok", at("2026-12-06T04:00:00"))


def test_a_test_past_its_due_time_is_due_then_overdue_after_the_grace() -> None:
    last = RecordedRun(SUNDAY, True, "passed")
    due = at("2026-12-06T04:00:00")
    row = evaluate("backup_verification", WEEKLY, last, since=0, now=due + HOUR, grace=DAY)
    assert row.status == "due"
    row = evaluate("backup_verification", WEEKLY, last, since=0, now=due + DAY, grace=DAY)
    assert row.status == "overdue"


def test_a_test_never_run_counts_from_the_day_the_schedule_started() -> None:
    since = at("2026-11-30T00:00:00")
    row = evaluate("restore_test", "0 5 1 * *", None, since=since, now=since + HOUR, grace=DAY)
    assert (row.status, row.next_due) == ("never", at("2026-12-01T05:00:00"))
    late = at("2026-12-02T05:00:00")
    assert evaluate("restore_test", "0 5 1 * *", None, since=since, now=late,
                    grace=DAY).status == "overdue"


def test_a_failed_last_run_is_failed_whatever_the_time() -> None:
    last = RecordedRun(SUNDAY, False, "failed: segment missing")
    row = evaluate("backup_verification", WEEKLY, last, since=0, now=SUNDAY + 1, grace=DAY)
    assert row.status == "failed"
    assert row.as_dict()["result"] == "failed: segment missing"


def overdue_row(now: float) -> list:  # type: ignore[type-arg]
    return [evaluate("failover_drill", "0 10 1 1,4,7,10 *", None, since=at("2026-01-01T00:00:00"),
                     now=now, grace=DAY)]


def test_an_overdue_test_alerts_once_then_reminds_daily_then_resolves() -> None:
    now = at("2026-02-01T00:00:00")  # the 1 January drill never ran
    alerts, state = schedule_alerts(overdue_row(now), AlertState({}), now=now, remind_every=DAY)
    assert [(a.key, a.severity) for a in alerts] == [("dr_testing:failover_drill",
                                                      Severity.WARNING)]
    assert "Failover drill (quarterly) is overdue" in alerts[0].message
    assert not alerts[0].message.startswith("reminder")
    for later in (now + 60, now + 12 * HOUR, now + DAY - 1):
        again, state = schedule_alerts(overdue_row(later), state, now=later, remind_every=DAY)
        assert again == []
    reminders, state = schedule_alerts(overdue_row(now + DAY), state, now=now + DAY,
                                       remind_every=DAY)
    assert len(reminders) == 1
    assert reminders[0].message.startswith("reminder: ")
    assert reminders[0].message != alerts[0].message  # news to the router's dedup
    done = [evaluate("failover_drill", "0 10 1 1,4,7,10 *", RecordedRun(now + DAY, True, "passed"),
                     since=0, now=now + DAY + 60, grace=DAY)]
    resolved, state = schedule_alerts(done, state, now=now + DAY + 60, remind_every=DAY)
    assert [(a.resolve, a.key) for a in resolved] == [(True, "dr_testing:failover_drill")]
    assert state.sent == {}


def test_a_failed_test_is_a_critical_alert() -> None:
    row = evaluate("restore_test", "0 5 1 * *", RecordedRun(SUNDAY, False, "failed: amcheck"),
                   since=0, now=SUNDAY + 60, grace=DAY)
    alerts, _ = schedule_alerts([row], AlertState({}), now=SUNDAY + 60, remind_every=DAY)
    assert alerts[0].severity is Severity.CRITICAL
    assert "amcheck" in alerts[0].message


def test_a_test_that_is_fine_sends_nothing() -> None:
    row = evaluate("restore_test", "0 5 1 * *", RecordedRun(SUNDAY, True, "passed"), since=0,
                   now=SUNDAY + 60, grace=DAY)
    assert schedule_alerts([row], AlertState({}), now=SUNDAY + 60, remind_every=DAY)[0] == []


def backup_job(directory: Path, run_id: str, kind: str, finished: float, outcome: str) -> None:
    folder = directory / "backups"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run_id}.json").write_text(json.dumps({
        "schema_version": 1, "run_id": run_id, "kind": kind, "outcome": outcome,
        "timeline": [{"at_unix": finished - 10, "status": "started", "detail": ""},
                     {"at_unix": finished, "status": "done" if outcome == "ok" else "failed",
                      "detail": "" if outcome == "ok" else "segment 0000000100000000000000A2 "
                                                           "missing"}],
    }))


def test_backup_job_evidence_fills_the_verification_and_restore_rows(tmp_path: Path) -> None:
    backup_job(tmp_path, "verify-1", "verify-backup", SUNDAY, "ok")
    backup_job(tmp_path, "restore-1", "test-restore", SUNDAY - DAY, "failed")
    backup_job(tmp_path, "backup-1", "backup-full", SUNDAY, "ok")
    rows = {r.key: r for r in schedule_rows(tmp_path, DEFAULT_CRONS, now=SUNDAY + 60,
                                            grace=DAY)}
    assert rows["backup_verification"].status == "ok"
    assert rows["backup_verification"].last is not None
    assert rows["backup_verification"].last.evidence == str(tmp_path / "backups/verify-1.json")
    assert rows["restore_test"].status == "failed"
    assert "A2 missing" in rows["restore_test"].as_dict()["result"]


def test_a_test_run_by_hand_updates_last_test_and_the_newest_run_wins(tmp_path: Path) -> None:
    backup_job(tmp_path, "verify-1", "verify-backup", SUNDAY, "failed")
    record_run(tmp_path, "backup_verification", RecordedRun(SUNDAY + 60, True, "passed by hand"),
               now=SUNDAY + 60)
    record_run(tmp_path, "backup_verification", RecordedRun(SUNDAY - 60, False, "older"),
               now=SUNDAY + 61)
    rows = schedule_rows(tmp_path, DEFAULT_CRONS, now=SUNDAY + 120, grace=DAY)
    assert rows[0].as_dict()["result"] == "passed by hand"
    assert rows[0].status == "ok"


def test_the_schedule_starts_the_first_time_it_is_read(tmp_path: Path) -> None:
    first = schedule_rows(tmp_path, DEFAULT_CRONS, now=SUNDAY, grace=DAY)
    later = schedule_rows(tmp_path, DEFAULT_CRONS, now=SUNDAY + 30 * DAY, grace=DAY)
    assert [r.status for r in first] == ["never"] * 4
    assert later[0].status == "overdue"
    assert later[0].next_due == at("2026-12-06T04:00:00")


def test_an_unknown_test_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown test 'restore'"):
        record_run(tmp_path, "restore", RecordedRun(SUNDAY, True, "x"), now=SUNDAY)
