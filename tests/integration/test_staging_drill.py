"""The failover drill in a drill environment: real watchdog processes, a real PostgreSQL
pair and Redis; ``drill-failover`` with ``drills.failover.config`` asks the lock holder for
a switchover to the secondary and back over the API and records it in the schedule."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from redis.asyncio import Redis

from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration import api_fleet
from tests.integration.api_fleet import start_fleet, token_file
from tests.integration.daemon_harness import REGIONS, WatchdogFleet, is_event
from tests.integration.test_failback_run import prepare

pytestmark = pytest.mark.integration

fleet = api_fleet.fleet

WEST, EAST = REGIONS


def backup_config(tmp_path: Path, drill_config: Path) -> Path:
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"primary": {"url": "s3://drill-primary"},
                    "replica": {"url": "s3://drill-replica"}},
        "encryption": {"key_env": "TEST_BACKUP_KEY"},
        "drills": {"failover": {"config": str(drill_config), "timeout": "120s"}},
    }))
    return path


def test_the_drill_switches_over_and_back_through_the_api_and_is_recorded(
    fleet: WatchdogFleet, pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    prepare(pg_pair)
    start_fleet(fleet, pg_pair, token_file(tmp_path))
    holder = fleet.wait_ready()
    (other,) = [dog for dog in fleet.dogs.values() if dog is not holder]
    evidence = tmp_path / "evidence"
    # The drill config is the watchdog that does not hold the lock: it finds the holder.
    config = backup_config(tmp_path, other.config)
    done = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "drill-failover", "--config", str(config),
         "--evidence-dir", str(evidence)], capture_output=True, text=True, timeout=400,
        env={**os.environ, "TEST_BACKUP_KEY": "00" * 32}, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (kept,) = sorted((evidence / "operational_audit" / "dr_drills").glob("failover-drill-*.json"))
    document = json.loads(kept.read_text())
    legs = document["figures"]["legs"]
    assert [leg["to"] for leg in legs] == [EAST, WEST]
    assert all(leg["run_id"] and leg["seconds"] is not None for leg in legs)
    switched = fleet.events(is_event("switchover_promoted"))
    assert len(switched) == 2
    assert pg_pair.primary.sql("SELECT pg_is_in_recovery()") == "f"  # home again

    shown = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "schedule", "--json", "--evidence-dir",
         str(evidence)], capture_output=True, text=True, timeout=60, check=False)
    row = json.loads(shown.stdout)["failover_drill"]
    assert row["status"] == "ok"
    assert row["result"].startswith(f"switchover drill passed in {other.config}: to {EAST} in ")
    assert row["evidence"] == str(kept)


async def test_the_daemons_scheduled_drill_switches_over_and_back_and_fills_the_row(
    fleet: WatchdogFleet, pg_pair: PostgresPair, redis_client: Redis, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drill as the job of two job schedulers (the real runner: the command as a
    process), due at its quarterly time: one of them runs it, the staging watchdogs
    switch over and back, and that scheduler's schedule row is the passed drill."""
    from agentaskit_dr.drtesting.records import load_state
    from tests.integration.job_harness import Clock, look
    from tests.integration.test_drill_job import JANUARY_1ST, backup_yaml, scheduler

    await asyncio.to_thread(prepare, pg_pair)
    await asyncio.to_thread(start_fleet, fleet, pg_pair, token_file(tmp_path))
    holder = await asyncio.to_thread(fleet.wait_ready)
    (other,) = [dog for dog in fleet.dogs.values() if dog is not holder]
    # No other job is due then, none writes outside tmp_path.
    config = backup_yaml(tmp_path, other.config, monkeypatch, timeout="120s")
    clock = Clock(now=JANUARY_1ST - 60)
    jobs = [scheduler(name, config, redis_client, clock, tmp_path) for name in ("job-a", "job-b")]
    await look(*jobs)
    clock.now = JANUARY_1ST + 5
    await look(*jobs)
    (runner,) = [job for job in jobs if "failover-drill" in job.running]
    await asyncio.wait_for(asyncio.gather(*runner.running.values()), 400)

    assert len(fleet.events(is_event("switchover_promoted"))) == 2
    here = tmp_path / runner.config().holder
    (kept,) = sorted((here / "operational_audit" / "dr_drills").glob("failover-drill-*.json"))
    assert json.loads(kept.read_text())["outcome"] == "passed"
    run = load_state(here, now=clock.now)["runs"]["failover_drill"]
    assert run["passed"] is True
    assert run["evidence"] == str(kept)
    assert run["result"].startswith(f"switchover drill passed in {other.config}: to {EAST} in ")
