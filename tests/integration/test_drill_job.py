"""The failover drill as a scheduled job of the daemon: two job schedulers on one real
redis-server, the real job runner (``agentaskit-dr drill-failover --json`` as a process):
the due drill runs once across both, its evidence lands in the plan's layout, and the DR
testing schedule's row of the watchdog that ran it is the command's own record (not a
second one by the runner); the other watchdog records it from the lease record. A
production drill environment is refused while that cluster is not healthy."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from aiohttp import web
from redis.asyncio import Redis

from agentaskit_dr.api.status_html import render_main
from agentaskit_dr.config import BackupJobsConfig, ConfigError, load_backup_config
from agentaskit_dr.drtesting.records import load_state, schedule_rows
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.runtime import job_schedule
from agentaskit_dr.runtime.job_schedule import LastRun
from agentaskit_dr.runtime.jobs import JobScheduler
from tests.integration.job_harness import PREFIX, Clock, Watchdog, job_scheduler, look

pytestmark = pytest.mark.integration
JOB = "failover-drill"
QUARTERLY = "0 10 1 1,4,7,10 *"
#: A due time of the quarterly drill, after the real now: the drill command records at
#: the real time, the job runner at this clock's, so a second record by the runner would
#: replace the command's (newer wins) and the test would see it.
JANUARY_1ST = dt.datetime(2030, 1, 1, 10, 0, tzinfo=dt.UTC).timestamp()
TOKEN = "drill-token-0123456789abcdef"


def drill_environment(tmp_path: Path, port: int, name: str = "staging") -> Path:
    """A drill environment's watchdog config whose API is ``127.0.0.1:port``."""
    folder = tmp_path / name
    folder.mkdir()
    token = folder / "api-token"
    token.write_text(TOKEN + "\n")
    path = folder / "watchdog.yaml"
    path.write_text(yaml.safe_dump({
        "region": "us-east-1", "primary_region": "us-west-2", "node_name": f"{name}-east",
        "regions": {region: {"health_urls": [f"http://127.0.0.1:9/{region}/healthz"],
                             "database": {"dsn": f"postgresql://postgres@127.0.0.1:9/{region}"}}
                    for region in ("us-west-2", "us-east-1")},
        "api": {"listen": f"127.0.0.1:{port}", "token_file": str(token)},
        "evidence_dir": str(folder / "evidence"),
    }))
    return path


def backup_yaml(tmp_path: Path, drill_config: Path, monkeypatch: pytest.MonkeyPatch,
                **failover: Any) -> Path:
    monkeypatch.setenv("DRILL_JOB_KEY", "ab" * 32)
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"primary": {"url": "s3://drill-one"}, "replica": {"url": "s3://drill-two"}},
        "encryption": {"key_env": "DRILL_JOB_KEY"},
        # No other job is due at the drill's time (and none writes outside tmp_path).
        "application_state": {"configs": {"method": "git+s3", "schedule": "30 3 * * *",
                                          "retention": "365d"}},
        "evidence_dir": str(tmp_path / "backup-evidence"),
        "drills": {"failover": {"config": str(drill_config), "schedule": QUARTERLY,
                                "timeout": "20s", **failover}},
    }))
    return path


def scheduler(name: str, backup: Path, client: Redis, clock: Clock,
              tmp_path: Path) -> JobScheduler:
    return job_scheduler(name, BackupJobsConfig(config=backup), client, clock, tmp_path)


async def test_the_due_drill_runs_once_across_two_watchdogs_and_is_recorded_once(
        redis_client: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The drill environment does not answer: the drill fails fast, and says why.
    staging = drill_environment(tmp_path, free_port())
    backup = backup_yaml(tmp_path, staging, monkeypatch)
    clock = Clock(now=JANUARY_1ST - 60)
    west = scheduler("west", backup, redis_client, clock, tmp_path)
    east = scheduler("east", backup, redis_client, clock, tmp_path)
    await look(west, east)  # first seen: runs from the next due time
    assert not west.running
    assert not east.running
    clock.now = JANUARY_1ST + 30
    await look(west, east)
    assert {name for jobs in (west, east) for name in jobs.running} == {JOB}
    runners = [jobs for jobs in (west, east) if JOB in jobs.running]
    assert len(runners) == 1, "exactly one watchdog runs the due drill"
    (holder,) = runners
    other = east if holder is west else west
    await asyncio.wait_for(asyncio.gather(*holder.running.values()), 120)
    await look(west, east)  # the same slot: not run again; the other reads the record
    assert not west.running
    assert not east.running

    record = LastRun.from_json(await redis_client.get(f"{PREFIX}:job:{JOB}:last"))
    assert record is not None
    assert record.outcome == "failed"
    assert record.due == JANUARY_1ST
    assert "no watchdog of the drill environment answers" in record.detail

    name = cast(Watchdog, holder.config()).holder
    here = tmp_path / name
    (evidence,) = (here / "operational_audit" / "dr_drills").glob("failover-drill-*.json")
    document = json.loads(evidence.read_text())
    assert document["outcome"] == "failed"
    assert document["environment"] == str(staging)
    # The holder's row is the command's record, with its evidence: recorded once.
    state = load_state(here, now=clock.now)
    run = state["runs"]["failover_drill"]
    assert run["evidence"] == str(evidence)
    assert run["result"].startswith(f"switchover drill FAILED in {staging}: no watchdog")
    assert "(on " not in run["result"]
    row = {r.key: r for r in schedule_rows(here, {"backup_verification": "0 4 * * 0",
                                                  "restore_test": "0 5 1 * *",
                                                  "failover_drill": QUARTERLY,
                                                  "dr_exercise": "0 10 15 3 *"},
                                           now=clock.now, grace=86400)}["failover_drill"]
    assert row.status == "failed"  # an alert (critical) from the schedule watch
    assert row.last is not None
    assert row.last.evidence == str(evidence)
    # The other watchdog's schedule has the run too, from the lease record.
    theirs = load_state(tmp_path / cast(Watchdog, other.config()).holder, now=clock.now)
    assert theirs["runs"]["failover_drill"]["passed"] is False
    assert theirs["runs"]["failover_drill"]["result"].endswith(f"(on {name})")
    assert not (tmp_path / cast(Watchdog, other.config()).holder / "operational_audit").exists()
    # The status (and its page) lists the drill under its own section, with its evidence,
    # on both watchdogs (the other one from the lease record), not as a backup.
    for jobs in (holder, other):
        status = jobs.status()
        assert JOB not in status["backups"]
        assert "configs" not in status["drills"]
        row = status["drills"][JOB]
        assert row["evidence"] == str(evidence)
        assert row["last_run"] == job_schedule.iso(record.started_at)
        assert row["result"].startswith("failed: switchover drill FAILED in ")
        assert row["next_run"] == "2030-04-01T10:00:00+00:00"
        html = render_main(status, [], now=clock.now, evidence_dir=None)
        drills = html.split("<h2>DR drills</h2>", 1)[1].split("<h2>", 1)[0]
        assert str(evidence) in drills
        assert JOB not in html.split("<h2>Backup freshness</h2>", 1)[1].split("<h2>", 1)[0]


async def test_a_drill_over_its_time_limit_is_stopped_and_recorded_failed(
        redis_client: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_schedule, "DRILL_MARGIN", 0.0)  # the limit is 2 x 1 s
    staging = drill_environment(tmp_path, free_port())
    backup = backup_yaml(tmp_path, staging, monkeypatch, timeout="1s")
    hung = asyncio.Event()

    async def hangs(steps: Any, grace: float) -> Any:
        hung.set()
        await asyncio.Event().wait()

    clock = Clock(now=JANUARY_1ST - 60)
    west = job_scheduler("west", BackupJobsConfig(config=backup), redis_client, clock,
                         tmp_path, runner=hangs)
    await look(west)
    clock.now = JANUARY_1ST + 30
    await look(west)
    await asyncio.wait_for(hung.wait(), 5)
    await asyncio.wait_for(asyncio.gather(*west.running.values()), 10)
    record = LastRun.from_json(await redis_client.get(f"{PREFIX}:job:{JOB}:last"))
    assert record is not None
    assert (record.outcome, record.detail) == ("failed", "stopped: over its time limit of 2s")
    assert await redis_client.get(f"{PREFIX}:job:{JOB}") is None  # the lease is freed
    run = load_state(tmp_path / "west", now=clock.now)["runs"]["failover_drill"]
    assert run["passed"] is False
    assert "over its time limit" in run["result"]


def test_a_production_drill_config_without_allow_production_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    production = drill_environment(tmp_path, free_port(), name="prod-east")
    backup = backup_yaml(tmp_path, production, monkeypatch)
    with pytest.raises(ConfigError) as refused:
        load_backup_config(backup)
    message = str(refused.value)
    assert "drills.failover.config" in message
    assert "allow_production: true" in message
    # The command says so in one line, exit 2, nothing drilled or recorded.
    done = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "drill-failover", "--config", str(backup),
         "--evidence-dir", str(tmp_path / "evidence")], capture_output=True, text=True,
        timeout=60, check=False)
    assert done.returncode == 2
    assert "allow_production" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "evidence" / "operational_audit").exists()


class ProductionApi:
    """A drill environment's watchdog API that answers ``/v1/status`` with ``status`` and
    counts switchover requests (none may come while it is not healthy)."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.switchovers: list[Any] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/status", self._status)
        app.router.add_post("/v1/switchover", self._switchover)
        return app

    async def _status(self, request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == f"Bearer {TOKEN}"
        return web.json_response(self.status)

    async def _switchover(self, request: web.Request) -> web.Response:
        self.switchovers.append(await request.json())
        return web.json_response({"would_run": False, "blocked_by": ["test"]})


async def test_a_production_drill_is_refused_while_production_is_failing_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = ProductionApi({
        "node": "prod-east", "primary_region": "us-west-2", "phase": "failing_over",
        "assessment": {"verdict": "primary_down"}, "paused": False, "self_fenced": False,
        "conditions": {"db_unreachable": {"failing": True}}, "planned_run": None,
    })
    runner = web.AppRunner(api.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        production = drill_environment(tmp_path, port, name="prod-east")
        backup = backup_yaml(tmp_path, production, monkeypatch, allow_production=True)
        evidence_dir = tmp_path / "evidence"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentaskit_dr", "drill-failover", "--config", str(backup),
            "--evidence-dir", str(evidence_dir), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await runner.cleanup()
    assert proc.returncode == 1, err.decode()[-2000:]
    answer = json.loads(out)
    assert answer["outcome"] == "refused"
    assert answer["result"].startswith(f"switchover drill REFUSED in {production}: the drill "
                                       "environment is production")
    assert "prod-east: phase 'failing_over'" in answer["result"]
    assert "the primary is assessed 'primary_down'" in answer["result"]
    assert "failing: db_unreachable" in answer["result"]
    assert api.switchovers == []  # nothing was asked to switch, not even a dry run
    run = load_state(evidence_dir, now=0.0)["runs"]["failover_drill"]
    assert (run["passed"], run["result"], run["evidence"]) == (
        False, answer["result"], answer["evidence"])
    kept = json.loads(await asyncio.to_thread(Path(answer["evidence"]).read_text))
    assert kept["production"] is True
    assert kept["figures"]["refused"] is True
    assert kept["figures"]["legs"] == []
