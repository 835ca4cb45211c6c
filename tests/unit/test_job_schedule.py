"""When a backup job is due, on an injected clock: one run per slot, catch-up once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agentaskit_dr.config import BackupJobsConfig, load_backup_config
from agentaskit_dr.runtime.job_schedule import (
    MAX_ATTEMPTS,
    LastRun,
    Schedule,
    decide,
    describe,
    finished,
    job_specs,
    latest_slot,
    next_slot,
    started,
)

HOURLY = Schedule(cron="0 * * * *")
DAILY_2AM = Schedule(cron="0 2 * * *")


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_the_latest_slot_of_a_cron_is_the_last_match_at_or_before_now() -> None:
    assert latest_slot(DAILY_2AM, at("2026-11-29T02:00:00")) == at("2026-11-29T02:00:00")
    assert latest_slot(DAILY_2AM, at("2026-11-29T02:00:59")) == at("2026-11-29T02:00:00")
    assert latest_slot(DAILY_2AM, at("2026-11-29T01:59:59")) == at("2026-11-28T02:00:00")
    assert next_slot(DAILY_2AM, at("2026-11-29T02:00:00")) == at("2026-11-30T02:00:00")


def test_an_interval_schedule_has_slots_on_multiples_of_the_interval() -> None:
    every = Schedule(every=300.0)
    assert latest_slot(every, 1000.0) == 900.0
    assert next_slot(every, 1000.0) == 1200.0
    assert str(every) == "every 300s"


def test_a_job_never_seen_starts_its_record_and_waits_for_the_next_slot() -> None:
    decision = decide(DAILY_2AM, at("2026-11-29T12:00:00"), None, lease_free=True)
    assert (decision.action, decision.due) == ("baseline", at("2026-11-29T02:00:00"))


def test_a_job_runs_once_per_slot_whatever_the_outcome() -> None:
    now = at("2026-11-29T02:00:05")
    baseline = LastRun(due=at("2026-11-28T02:00:00"), outcome="baseline")
    first = decide(DAILY_2AM, now, baseline, lease_free=True)
    assert (first.action, first.due) == ("run", at("2026-11-29T02:00:00"))
    running = started(first, baseline, holder="west", now=now)
    failed = finished(running, "failed", now=now + 60, nbytes=None, detail="boom")
    for record in (running, failed):
        later = decide(DAILY_2AM, now + 3600, record, lease_free=record.outcome != "running")
        assert later.action == "wait"
    assert decide(DAILY_2AM, at("2026-11-30T02:00:00"), failed,
                  lease_free=True).action == "run"


def test_slots_missed_while_down_collapse_into_one_run_at_start() -> None:
    last = LastRun(due=at("2026-11-20T02:00:00"), outcome="ok", finished_at=1.0)
    now = at("2026-11-29T12:00:00")  # nine daily slots missed
    decision = decide(DAILY_2AM, now, last, lease_free=True)
    assert (decision.action, decision.due) == ("run", at("2026-11-29T02:00:00"))
    assert "catching up" in decision.reason
    record = started(decision, last, holder="east", now=now)
    runs = [t for t in range(int(now), int(now) + 3 * 3600, 60)
            if decide(DAILY_2AM, t, record, lease_free=False).action == "run"]
    assert runs == []


def test_a_run_whose_watchdog_died_is_run_again_a_bounded_number_of_times() -> None:
    now = at("2026-11-29T02:10:00")
    record = LastRun(due=at("2026-11-29T02:00:00"), outcome="running", holder="west",
                     attempt=1)
    held = decide(DAILY_2AM, now, record, lease_free=False)
    assert held.action == "wait"
    again = decide(DAILY_2AM, now, record, lease_free=True)
    assert (again.action, again.attempt) == ("run", 2)
    spent = LastRun(due=record.due, outcome="running", holder="west", attempt=MAX_ATTEMPTS)
    assert decide(DAILY_2AM, now, spent, lease_free=True).action == "wait"


def test_the_last_success_survives_a_failed_run() -> None:
    record = LastRun(due=0.0, outcome="running", started_at=10.0, last_success=5.0)
    ok = finished(record, "ok", now=20.0, nbytes=7, detail="")
    assert ok.last_success == 20.0
    failed = finished(started(decide(HOURLY, 7200.0, ok, lease_free=True), ok,
                              holder="w", now=7200.0), "failed", now=7201.0, nbytes=None,
                      detail="x")
    assert failed.last_success == 20.0
    assert LastRun.from_json(failed.to_json()) == failed
    assert LastRun.from_json("not json") is None
    row = describe_row(failed)
    assert row["last_outcome"] == "failed"
    assert row["last_success"] == "1970-01-01T00:00:20+00:00"


def describe_row(record: LastRun) -> dict[str, object]:
    from agentaskit_dr.runtime.job_schedule import JobSpec

    return describe(JobSpec("x", HOURLY, ()), record, now=7300.0, running_here=False)


@pytest.fixture
def backup_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JOBS_TEST_KEY", "ab" * 32)
    path = tmp_path / "backup.yaml"
    path.write_text("""
postgresql: {dsn: "postgresql://backup@127.0.0.1:1/postgres"}
storage:
  primary: {url: s3://bucket-one}
  replica: {url: s3://bucket-two}
encryption: {key_env: JOBS_TEST_KEY}
application_state:
  redis: {method: rdb+aof, schedule: "15 * * * *", retention: 7d, url: "redis://127.0.0.1:1/0"}
restore_targets:
  staging: {workdir: /tmp/restore-staging, port: 55432}
""")
    return path


def test_the_jobs_of_a_backup_config_each_only_if_configured(backup_yaml: Path) -> None:
    settings = BackupJobsConfig(config=backup_yaml)
    specs = {spec.name: spec for spec in job_specs(load_backup_config(backup_yaml),
                                                   backup_yaml, settings)}
    assert set(specs) == {"backup-full", "backup-incremental", "retention", "verify-backup",
                          "test-restore", "appstate-redis", "appstate-configs",
                          "failover-drill"}
    assert specs["backup-full"].steps == (
        ("backup", "run", "--kind", "full", "--config", str(backup_yaml), "--json"),)
    assert str(specs["appstate-configs"].schedule) == "every 300s"
    assert str(specs["appstate-redis"].schedule) == "15 * * * *"
    assert str(specs["retention"].schedule) == "30 1 * * *"
    assert [step[:3] for step in specs["retention"].steps] == [
        ("backup", "prune", "--config"), ("appstate", "prune", "redis"),
        ("appstate", "prune", "configs")]
    assert specs["verify-backup"].dr_test == "backup_verification"
    assert [step[:3] for step in specs["verify-backup"].steps] == [
        ("verify-backup", "--config", str(backup_yaml)), ("appstate", "verify", "redis"),
        ("appstate", "verify", "configs")]
    assert specs["test-restore"].dr_test == "restore_test"


def test_the_failover_drill_is_a_job_whose_time_limit_fits_two_switchovers(
        backup_yaml: Path, tmp_path: Path) -> None:
    backup_yaml.write_text(backup_yaml.read_text() + 'drills:\n  failover: '
                           '{schedule: "0 10 1 1,4,7,10 *", timeout: 5m}\n')
    settings = BackupJobsConfig(config=backup_yaml)
    specs = {spec.name: spec for spec in job_specs(load_backup_config(backup_yaml),
                                                   backup_yaml, settings,
                                                   evidence_dir=tmp_path / "evidence")}
    drill = specs["failover-drill"]
    assert drill.dr_test == "failover_drill"
    assert [name for name, spec in specs.items() if spec.drill] == ["failover-drill"]
    assert str(drill.schedule) == "0 10 1 1,4,7,10 *"
    assert drill.steps == (("drill-failover", "--config", str(backup_yaml), "--json",
                            "--evidence-dir", str(tmp_path / "evidence")),)
    assert drill.time_limit is not None
    assert drill.time_limit >= 2 * 300  # there and back, each up to drills.failover.timeout
    assert drill.time_limit < 3 * 300
    assert all(spec.time_limit is None for spec in specs.values() if spec is not drill)


def test_without_a_server_or_a_target_the_postgresql_jobs_are_not_scheduled(
        backup_yaml: Path) -> None:
    text = backup_yaml.read_text().replace('postgresql: {dsn: "postgresql://backup@127.0.0.1:1'
                                           '/postgres"}', "")
    backup_yaml.write_text(text)
    settings = BackupJobsConfig(config=backup_yaml, configs_every=60)
    names = [spec.name for spec in job_specs(load_backup_config(backup_yaml), backup_yaml,
                                             settings)]
    assert names == ["retention", "verify-backup", "appstate-redis", "appstate-configs",
                     "failover-drill"]


def test_the_backup_section_names_a_bad_value(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be an existing backup YAML file"):
        BackupJobsConfig(config=tmp_path / "missing.yaml")
    (tmp_path / "b.yaml").write_text("{}")
    with pytest.raises(ValidationError, match="stop_grace"):
        BackupJobsConfig(config=tmp_path / "b.yaml", stop_grace=30)


def test_a_watchdog_config_names_its_backup_config_or_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentaskit_dr.config import ConfigError, load_config
    from tests.unit.test_cli import SECRETS, WATCHDOG_YAML

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "backup.yaml").write_text("{}")
    text = WATCHDOG_YAML.read_text()
    good = tmp_path / "watchdog.yaml"
    good.write_text(text + "backup: {config: backup.yaml, configs_every: 1m}\n")
    settings = load_config(good).backup
    assert settings is not None
    assert (settings.config, settings.configs_every) == (tmp_path / "backup.yaml", 60.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "backup: {config: nowhere.yaml}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(bad)
    assert "backup.config" in str(raised.value)
    assert "must be an existing backup YAML file" in str(raised.value)


def test_the_status_page_shows_the_backups_rows() -> None:
    from agentaskit_dr.api.status_html import render_main
    from agentaskit_dr.runtime.job_schedule import JobSpec

    record = LastRun(due=at("2026-11-29T02:00:00"), outcome="ok",
                     started_at=at("2026-11-29T02:00:01"), finished_at=at("2026-11-29T02:09:00"),
                     bytes=2**30, last_success=at("2026-11-29T02:09:00"))
    row = describe(JobSpec("backup-full", DAILY_2AM, ()), record,
                   now=at("2026-11-29T12:00:00"), running_here=False)
    html = render_main({"backups": {"backup-full": row}}, [], now=at("2026-11-29T12:00:00"),
                       evidence_dir=None)
    section = html.split("Backup freshness", 1)[1].split("DR drills", 1)[0]
    assert "not configured" not in section
    for text in ("backup-full", "0 2 * * *", "2026-11-29T02:09:00+00:00",
                 "2026-11-30T02:00:00+00:00", str(2**30)):
        assert text in section


def test_the_status_page_shows_drills_apart_from_the_backups() -> None:
    from agentaskit_dr.api.status_html import render_main
    from agentaskit_dr.runtime.job_schedule import JobSpec, describe_drill

    quarterly = Schedule(cron="0 10 1 1,4,7,10 *")
    drill = JobSpec("failover-drill", quarterly, (), dr_test="failover_drill", drill=True)
    running = LastRun(due=at("2026-10-01T10:00:00"), outcome="running",
                      started_at=at("2026-10-01T10:00:02"), holder="west")
    record = finished(running, "failed", now=at("2026-10-01T10:03:00"), nbytes=None,
                      detail="switchover drill FAILED in staging: no watchdog answers",
                      evidence="/ev/operational_audit/dr_drills/failover-drill-1.json")
    now = at("2026-11-29T12:00:00")
    status = {
        "backups": {"backup-full": describe(JobSpec("backup-full", DAILY_2AM, ()), None,
                                            now=now, running_here=False)},
        "drills": {"failover-drill": describe_drill(drill, record, now=now,
                                                    running_here=False)},
    }
    html = render_main(status, [], now=now, evidence_dir=None)
    backups = html.split("Backup freshness", 1)[1].split("DR drills", 1)[0]
    drills = html.split("DR drills", 1)[1].split("DR testing schedule", 1)[0]
    assert "backup-full" in backups
    assert "failover-drill" not in backups
    for text in ("failover-drill", "last_run", "result", "next_run", "evidence",
                 "2026-10-01T10:00:02+00:00",
                 "failed: switchover drill FAILED in staging: no watchdog answers",
                 "2027-01-01T10:00:00+00:00",
                 "/ev/operational_audit/dr_drills/failover-drill-1.json"):
        assert text in drills, text
    assert describe_drill(drill, None, now=now, running_here=False)["result"] is None
