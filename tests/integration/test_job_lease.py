"""Two job schedulers on one real redis-server: exactly one runs each due job, the other
sees its last-run record; missed slots run once; a stop records ``cancelled`` and frees
the lease."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from agentaskit_dr.config import BackupJobsConfig
from agentaskit_dr.runtime.job_process import JobOutcome
from agentaskit_dr.runtime.job_schedule import LastRun
from agentaskit_dr.runtime.jobs import JobScheduler
from tests.integration.job_harness import PREFIX, T0, Clock, job_scheduler, look

pytestmark = pytest.mark.integration
JOB = "appstate-configs"
SUNDAY_4AM = 1_795_924_800.0  # 2026-11-29T04:00:00Z


@dataclass
class Runner:
    """Records who ran what; each run waits for ``go``."""

    holder: str
    runs: list[tuple[str, str]]
    go: asyncio.Event
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, steps: Sequence[Sequence[str]], grace: float) -> JobOutcome:
        self.runs.append((self.holder, " ".join(steps[0][:3])))
        self.started.set()
        await self.go.wait()
        return JobOutcome("ok", 1234, "ok")


@pytest.fixture
def backup_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JOBS_TEST_KEY", "cd" * 32)
    path = tmp_path / "backup.yaml"
    path.write_text("storage:\n  primary: {url: s3://bucket-one}\n"
                    "  replica: {url: s3://bucket-two}\nencryption: {key_env: JOBS_TEST_KEY}\n")
    return path


def scheduler(name: str, backup_yaml: Path, client: Redis, clock: Clock, runs: list[Any],
              go: asyncio.Event, tmp_path: Path) -> tuple[JobScheduler, Runner]:
    runner = Runner(name, runs, go)
    jobs = job_scheduler(name, BackupJobsConfig(config=backup_yaml, configs_every=60), client,
                         clock, tmp_path, runner=runner, registry=CollectorRegistry())
    return jobs, runner


def west_and_east(backup_yaml: Path, client: Redis, clock: Clock,
                  tmp_path: Path) -> tuple[JobScheduler, JobScheduler, list[tuple[str, str]]]:
    """West's and east's schedulers, whose runs finish at once, and the runs they record."""
    runs: list[tuple[str, str]] = []
    go = asyncio.Event()
    go.set()
    west, _ = scheduler("west", backup_yaml, client, clock, runs, go, tmp_path)
    east, _ = scheduler("east", backup_yaml, client, clock, runs, go, tmp_path)
    return west, east, runs


async def test_one_of_two_watchdogs_runs_a_due_job_and_the_other_sees_its_record(
        redis_client: Redis, backup_yaml: Path, tmp_path: Path) -> None:
    clock, runs, go = Clock(), [], asyncio.Event()
    (west, west_runner), (east, east_runner) = (
        scheduler(name, backup_yaml, redis_client, clock, runs, go, tmp_path)
        for name in ("west", "east"))
    await look(west, east)  # first sight: a baseline record, nothing runs
    assert runs == []
    assert LastRun.from_json(await redis_client.get(f"{PREFIX}:job:{JOB}:last")) == LastRun(
        due=T0, outcome="baseline")

    clock.now = T0 + 61
    await look(west, east)
    await look(east, west)
    assert runs == [(runs[0][0], "appstate backup configs")]
    runner = west_runner if runs[0][0] == "west" else east_runner
    await runner.started.wait()
    assert await redis_client.get(f"{PREFIX}:job:{JOB}") is not None  # the lease, held
    go.set()
    await asyncio.gather(*west.running.values(), *east.running.values())
    assert await redis_client.get(f"{PREFIX}:job:{JOB}") is None  # released

    await look(west, east)
    assert len(runs) == 1
    for jobs in (west, east):
        row = jobs.status()["backups"][JOB]
        assert (row["last_outcome"], row["last_bytes"]) == ("ok", 1234)
        assert row["next_due"] == "2027-01-15T08:02:00+00:00"
    record = LastRun.from_json(await redis_client.get(f"{PREFIX}:job:{JOB}:last"))
    assert record is not None
    assert (record.due, record.holder, record.outcome) == (T0 + 60, runs[0][0], "ok")


async def test_slots_missed_while_both_were_down_run_once(
        redis_client: Redis, backup_yaml: Path, tmp_path: Path) -> None:
    clock = Clock()
    west, east, runs = west_and_east(backup_yaml, redis_client, clock, tmp_path)
    await look(west, east)
    clock.now = T0 + 60 * 30 + 5  # thirty slots later
    for _ in range(3):
        await look(west, east)
        await asyncio.gather(*west.running.values(), *east.running.values())
    assert [job for _, job in runs] == ["appstate backup configs"]


async def test_a_stop_cancels_the_running_job_records_it_and_frees_the_lease(
        redis_client: Redis, backup_yaml: Path, tmp_path: Path) -> None:
    clock, runs, go = Clock(), [], asyncio.Event()
    west, runner = scheduler("west", backup_yaml, redis_client, clock, runs, go, tmp_path)
    await look(west)
    clock.now = T0 + 60
    await look(west)
    await runner.started.wait()
    await west.stop()
    assert await redis_client.get(f"{PREFIX}:job:{JOB}") is None
    record = LastRun.from_json(await redis_client.get(f"{PREFIX}:job:{JOB}:last"))
    assert record is not None
    assert (record.outcome, record.due) == ("cancelled", T0 + 60)
    clock.now = T0 + 70  # the same slot: a stopped run is not run again
    east, _ = scheduler("east", backup_yaml, redis_client, clock, runs, go, tmp_path)
    await look(east)
    assert len(runs) == 1


@pytest.fixture
def with_postgres(backup_yaml: Path) -> Path:
    """The backup config with a server: the PostgreSQL jobs are scheduled too."""
    backup_yaml.write_text(backup_yaml.read_text() + (
        'postgresql: {dsn: "postgresql://backup@127.0.0.1:1/postgres"}\n'
        'verification: {verify_backup: {schedule: "0 4 * * 0"}}\n'))
    return backup_yaml


async def test_a_verification_run_is_the_schedules_last_test_on_both_watchdogs(
        redis_client: Redis, with_postgres: Path, tmp_path: Path) -> None:
    from agentaskit_dr.drtesting.records import load_state

    backup_yaml = with_postgres
    clock = Clock(now=SUNDAY_4AM - 3600)
    west, east, runs = west_and_east(backup_yaml, redis_client, clock, tmp_path)
    await look(west, east)
    clock.now += 3600 + 30  # Sunday 04:00:30: the weekly verification is due
    await look(west, east)
    await asyncio.gather(*west.running.values(), *east.running.values())
    assert sum(job.startswith("verify-backup") for _, job in runs) == 1
    await look(west, east)  # the one that did not run it reads the record
    for name in ("west", "east"):
        state = load_state(tmp_path / name, now=clock.now)
        recorded = state["runs"]["backup_verification"]
        assert recorded["passed"] is True
        assert recorded["result"].startswith("passed (on ")
        assert state["last_success"]["backup_verification"] > clock.now - 60


async def test_a_slot_finished_by_the_other_between_look_and_claim_is_not_run_again(
        redis_client: Redis, backup_yaml: Path, tmp_path: Path) -> None:
    clock = Clock()
    west, east, runs = west_and_east(backup_yaml, redis_client, clock, tmp_path)
    await look(west, east)
    clock.now = T0 + 61
    await look(east)
    await asyncio.gather(*east.running.values())
    # West looked before east's run began (its read said "due"), and claims only now.
    assert west.leases is not None
    await west._start(west.leases, next(s for s in west.specs if s.name == JOB), clock.now)
    assert [holder for holder, _ in runs] == ["east"]
    assert not west.running
    assert await redis_client.get(f"{PREFIX}:job:{JOB}") is None


async def test_a_job_whose_lease_is_lost_is_stopped(
        redis_client: Redis, backup_yaml: Path, tmp_path: Path) -> None:
    clock, runs, go = Clock(), [], asyncio.Event()
    runner = Runner("west", runs, go)
    west = job_scheduler("west", BackupJobsConfig(config=backup_yaml, configs_every=60,
                                                  lease_ttl=3), redis_client, clock, tmp_path,
                         runner=runner)
    await look(west)
    clock.now = T0 + 60
    await look(west)
    await runner.started.wait()
    await redis_client.delete(f"{PREFIX}:job:{JOB}")  # an operator, or a store that lost it
    await asyncio.gather(*west.running.values())
    record = LastRun.from_json(await redis_client.get(f"{PREFIX}:job:{JOB}:last"))
    assert record is not None
    assert (record.outcome, record.detail) == ("cancelled", "stopped: its lease was lost")
