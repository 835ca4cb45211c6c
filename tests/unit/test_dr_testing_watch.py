"""The daemon's DR testing watch on an injected wall clock: status keys, metrics, and an
overdue test alerted through the real AlertRouter once, reminded daily, then resolved."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agentaskit_dr.config import BackupConfig
from agentaskit_dr.drtesting.records import record_run
from agentaskit_dr.drtesting.schedule import RecordedRun
from agentaskit_dr.ports import Notification
from agentaskit_dr.runtime.alerts import AlertRouter
from agentaskit_dr.runtime.dr_testing import DrTestingMetrics, DrTestingWatch

DAY = 86400.0
START = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def setup(tmp_path: Path) -> tuple[DrTestingWatch, list[Notification], Clock, CollectorRegistry]:
    clock = Clock()
    sent: list[Notification] = []
    router = AlertRouter(sent.append, node="west-1", clock=clock)
    registry = CollectorRegistry()
    watch = DrTestingWatch(lambda: tmp_path, lambda: router,
                           metrics=DrTestingMetrics(registry), wall_clock=clock)
    return watch, sent, clock, registry


async def test_the_status_carries_the_plans_table_and_the_objectives(tmp_path: Path) -> None:
    watch, sent, _, registry = setup(tmp_path)
    assert watch.status() == {}
    await watch.check()
    status = watch.status()
    assert list(status["dr_testing"]) == ["backup_verification", "restore_test",
                                          "failover_drill", "dr_exercise"]
    assert status["dr_testing"]["failover_drill"]["frequency"] == "Quarterly"
    assert status["objectives"]["rpo"]["target_seconds"] == 3600.0
    assert sent == []
    text = generate_latest(registry).decode()
    assert 'agentaskit_dr_dr_test_overdue{test="restore_test"} 0.0' in text
    assert 'agentaskit_dr_dr_test_last_success_timestamp{test="restore_test"} NaN' in text
    assert 'agentaskit_dr_objective_target_seconds{objective="mttr"} 7200.0' in text


async def test_an_overdue_test_is_alerted_once_reminded_daily_and_resolved(
        tmp_path: Path) -> None:
    watch, sent, clock, registry = setup(tmp_path)
    await watch.check()  # the schedule starts now
    # The monthly restore test ran (7 December): next due 1 January.
    record_run(tmp_path, "restore_test", RecordedRun(START + 8 * DAY, True, "passed"),
               now=START + 8 * DAY)
    clock.now = START + 9 * DAY  # the weekly verification (6 Dec 04:00) is a day late
    await watch.check()
    assert [n.details["key"] for n in sent] == ["dr_testing:backup_verification"]
    assert "Backup verification (weekly) is overdue" in sent[0].summary
    assert 'agentaskit_dr_dr_test_overdue{test="backup_verification"} 1.0' in (
        generate_latest(registry).decode())
    for hours in (1, 6, 23):
        clock.now = START + 9 * DAY + hours * 3600
        await watch.check()
    assert len(sent) == 1
    clock.now = START + 10 * DAY
    await watch.check()
    assert len(sent) == 2
    assert "reminder: " in sent[1].summary
    record_run(tmp_path, "backup_verification", RecordedRun(clock.now, True, "passed"),
               now=clock.now)
    clock.now += 60
    await watch.check()
    assert [(n.details["key"], n.resolve) for n in sent[2:]] == [
        ("dr_testing:backup_verification", True)]
    assert sample(registry, "agentaskit_dr_dr_test_overdue", "backup_verification") == 0
    assert sample(registry, "agentaskit_dr_dr_test_last_success_timestamp",
                  "backup_verification") == START + 10 * DAY


def sample(registry: CollectorRegistry, name: str, test: str) -> float:
    value = registry.get_sample_value(name, {"test": test})
    assert value is not None
    return value


async def test_the_backup_configs_schedules_and_targets_are_used_when_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_BACKUP_KEY", "00" * 32)
    config = BackupConfig.model_validate({
        "storage": {"primary": {"url": "s3://a-primary"}, "replica": {"url": "s3://a-replica"}},
        "encryption": {"key_env": "TEST_BACKUP_KEY"},
        "drills": {"failover": {"schedule": "0 10 1 * *"}, "grace": "1h"},
        "objectives": {"rto": "30m"},
    })
    clock = Clock()
    watch = DrTestingWatch(lambda: tmp_path, lambda: AlertRouter(lambda _n: None, node="n",
                                                                  clock=clock),
                           backup_config=lambda: config, wall_clock=clock)
    await watch.check()
    status = watch.status()
    assert status["dr_testing"]["failover_drill"]["schedule"] == "0 10 1 * *"
    assert status["dr_testing"]["failover_drill"]["next_test"] == "2026-12-01T10:00:00+00:00"
    assert status["objectives"]["rto"]["target_seconds"] == 1800.0
