"""The whole failback run (``agentaskit-dr failback``) on a real pair, Redis and a health
endpoint (issue 9): after a failover by killing the primary, the run brings the primary
back to its original region (timelines 1 -> 2 -> 3) while clients write throughout, with
no acknowledged write lost; a step that fails is resumed, not repeated from the start.

No DNS and no Kubernetes are configured here: those parts are checked as skipped with
their reasons (they have their own tests against moto and the Kubernetes emulation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from agentaskit_dr.actuators.kube_scale import (
    ANNOTATION_EPOCH,
    ANNOTATION_ORIGINAL,
    ANNOTATION_RUN,
)
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.journal import RedisJournal
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.ports import StepStatus
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from agentaskit_dr.sandbox.writer import CREATE_TABLE
from tests.integration.kube_api import KubeApi, kube_api_fixture  # noqa: F401 -- fixture
from tests.integration.test_start_gate import EAST, WEST, fail_over
from tests.integration.test_switchover import (
    missing_on,
    servers_stopped_after,
    streaming_at_lag_zero,
    writer_runs,
    writers,
    written_on,
)
from tests.integration.test_sync_primary import old_primary  # noqa: F401 -- fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("old_primary")]

NAMESPACE = "agentaskit"


@contextlib.asynccontextmanager
async def health_endpoint() -> AsyncIterator[str]:
    """An HTTP endpoint answering 200: both regions' health URLs."""
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/healthz"
    finally:
        await runner.cleanup()


def control_of(server: PostgresServer) -> dict[str, str]:
    return {"data_directory": str(server.datadir), "bin_dir": str(server.bindir),
            "os_user": "postgres", "stop_timeout": "10s"}


def write_config(tmp_path: Path, pair: PostgresPair, *, redis_url: str, health: str,
                 east_control: bool = True, kube: KubeApi | None = None) -> Path:
    """West (the file's primary region) and east, both servers on this host; east's
    Kubernetes cluster is ``kube``'s, when given."""
    east: dict[str, Any] = {"dsn": pair.replica.dsn}
    if east_control:
        east["control"] = control_of(pair.replica)
    east_region: dict[str, Any] = {"health_urls": [health], "database": east}
    if kube is not None:
        (tmp_path / "kube-token").write_text("token\n")
        east_region["kubernetes"] = {"api_url": kube.url, "namespace": NAMESPACE,
                                     "token_file": str(tmp_path / "kube-token"),
                                     "ready_timeout": "10s"}
    config = {
        "region": WEST, "primary_region": WEST,
        "regions": {
            WEST: {"health_urls": [health],
                   "database": {"dsn": pair.primary.dsn, "control": control_of(pair.primary)}},
            EAST: east_region,
        },
        "probe": {"interval": "3s", "timeout": "2s"},
        "promotion": {"catch_up_timeout": "20s", "timeout": "20s"},
        "api": {"listen": None},
        "lock": {"url": redis_url, "ttl": "5s", "socket_timeout": "1s"},
        "evidence_dir": str(tmp_path / "evidence"),
    }
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def failback(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentaskit_dr", "failback", *args, "--config", str(config),
        "--sync-timeout", "60s", "--integrity-wait", "20s",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), timeout=240)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def record_east_primary(redis_url: str) -> None:
    """What the failover runbook records after its promotion: east is the primary."""
    lock = RedisLeaderLock(redis_url, holder="watchdog-east", ttl=5.0)
    store = RedisClusterStore(redis_url)
    try:
        lease = await lock.acquire()
        assert lease is not None
        await store.record_primary(EAST, epoch=lease.epoch, run_id="failover-test",
                                   lease=lease)
        await lock.release(lease)
    finally:
        await store.close()
        await lock.close()


async def failback_runs(redis_url: str) -> list[Any]:
    journal = RedisJournal(redis_url)
    try:
        return [run for run in await journal.recent() if run.kind == "failback"]
    finally:
        await journal.close()


def read_text(path: str) -> str:
    return Path(path).read_text()


def prepare(pair: PostgresPair) -> None:
    """The writers' table, and amcheck for verify_data_integrity (created on the primary:
    a standby cannot)."""
    pair.primary.sql(f"CREATE EXTENSION amcheck; {CREATE_TABLE}")
    pair.wait_replayed()


async def fail_over_with_writes(pair: PostgresPair, redis_url: str) -> None:
    fail_over(pair)
    await record_east_primary(redis_url)
    await asyncio.sleep(0.5)  # the writers find east and write there


async def test_failback_brings_the_primary_home_with_no_acknowledged_write_lost(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    west, east = pg_pair.primary, pg_pair.replica
    prepare(pg_pair)
    async with servers_stopped_after(pg_pair), health_endpoint() as health:
        config = write_config(tmp_path, pg_pair, redis_url=redis_server.url, health=health)
        async with writers(pg_pair) as log:
            await written_on(log, west)
            await fail_over_with_writes(pg_pair, redis_server.url)
            await written_on(log, east)  # writer_runs below: west, east, west

            code, out, err = await failback(config, "--yes")

            assert code == 0, err
            await written_on(log, west)  # writes land on west again
        assert await missing_on(west, log) == set()
        assert writer_runs(west) == [west.port, east.port, west.port]
        assert west.sql("SELECT pg_is_in_recovery()") == "f"
        assert await streaming_at_lag_zero(east, west)

        again, _, refusal = await failback(config, "--yes")

        assert again == 1
        assert f"{WEST} is already the cluster's primary region" in refusal

    result = json.loads(out[out.index("{"):])
    assert result["outcome"] == "done"
    evidence = json.loads(read_text(result["evidence"]))
    figures = evidence["extra"]
    # A primary killed mid-write may leave a torn last WAL record that pg_rewind cannot
    # read past: then it is re-cloned, and the evidence says why.
    assert figures["sync"]["method"] in ("rewind", "reclone")
    assert (figures["sync"]["method"] == "rewind") == (figures["sync"]["reclone_reason"] is None)
    assert figures["sync"]["timeline"] == 2
    assert figures["integrity"]["same"] is True
    switch = figures["switchover"]
    assert (switch["old_timeline"], switch["new_timeline"]) == (2, 3)
    assert switch["write_unavailable_seconds"] is not None
    assert evidence["rpo"]["lag_bytes"] == 0
    assert figures["final_epoch"] >= 2
    assert figures["total_seconds"] > 0
    assert "## Failback figures" in read_text(result["evidence"].replace(".json", ".md"))
    steps = {s["step"]: s["status"] for s in evidence["steps"]}
    assert steps == {"check_recovered": "done", "sync_primary": "done",
                     "verify_data_integrity": "done", "shift_traffic": "skipped",
                     "restore_standby": "done"}
    shift = next(e for e in evidence["timeline"]
                 if e["step"] == "shift_traffic" and e["status"] == "skipped")
    assert "dns.route53 is not configured" in shift["detail"]
    assert "kubernetes is not set" in figures["scale"]["detail"]
    store = RedisClusterStore(redis_server.url)
    try:
        record = await store.read()
    finally:
        await store.close()
    assert record.primary is not None
    assert record.primary.region == WEST
    assert record.controls.ack_generation >= 1


async def test_a_failed_step_is_resumed_without_repeating_sync_primary(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer, kube_api: KubeApi,
) -> None:
    west, east = pg_pair.primary, pg_pair.replica
    prepare(pg_pair)
    # East's deployment as the failover left it: 4 replicas scaled to 6 under epoch 1.
    kube_api.add_deployment(NAMESPACE, "api", 6, annotations={
        ANNOTATION_ORIGINAL: "4", ANNOTATION_EPOCH: "1", ANNOTATION_RUN: "failover-test"})
    async with servers_stopped_after(pg_pair), health_endpoint() as health:
        # This host may not stop east's server: restore_standby cannot run here.
        config = write_config(tmp_path, pg_pair, redis_url=redis_server.url, health=health,
                              east_control=False, kube=kube_api)
        async with writers(pg_pair) as log:
            await fail_over_with_writes(pg_pair, redis_server.url)

            code, _, err = await failback(config, "--yes")

            assert code == 1
            assert (f"restore_standby needs regions.{EAST}.database.control on the host "
                    "that runs failback") in err
            assert await streaming_at_lag_zero(west, east)  # sync_primary was done
            # The operator fixes the config and runs it again.
            config = write_config(tmp_path, pg_pair, redis_url=redis_server.url,
                                  health=health, kube=kube_api)

            code, out, err = await failback(config, "--yes")

            assert code == 0, err
            await asyncio.sleep(0.3)
        assert await missing_on(west, log) == set()
        assert west.sql("SELECT pg_is_in_recovery()") == "f"

    assert json.loads(out[out.index("{"):])["resumed_at"] == "restore_standby"
    second, first = await failback_runs(redis_server.url)
    assert (first.finished, second.finished) == ("failed", "done")
    assert second.meta["continues"] == first.run_id
    started = [e.step for e in second.entries if e.status.value == "started"]
    assert "sync_primary" not in started  # carried over, not run again
    assert started[0] == "restore_standby"
    # East's deployments are back at their original replicas, the failover's mark gone.
    api = kube_api.get(NAMESPACE, "api")
    assert api.replicas == 4
    assert ANNOTATION_ORIGINAL not in api.annotations
    restored = next(e for e in second.entries
                    if e.step == "restore_standby" and e.status is StepStatus.DONE)
    assert restored.data["scale"]["deployments"]["api"]["original"] == 4
    carried = next(e for e in second.entries if e.step == "sync_primary")
    assert carried.status.value == "skipped"
    assert carried.data["lag_bytes"] == 0


async def test_dry_run_names_what_this_host_is_missing(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = write_config(tmp_path, pg_pair, redis_url="redis://127.0.0.1:9/0",
                          health="http://127.0.0.1:9/healthz", east_control=False)

    code, out, err = await failback(config, "--dry-run")

    assert code == 0, err
    assert "MISSING: restore_standby needs regions.us-east-1.database.control" in out
    assert "shift_traffic: skipped: dns.route53 is not configured" in out

    code, _, err = await failback(config)  # stdin is not a terminal

    assert code == 1
    assert "pass --yes" in err


async def kill_when(proc: asyncio.subprocess.Process, redis_url: str, step: str,
                    status: StepStatus = StepStatus.DONE, after: float = 0.0) -> str:
    """SIGKILL the failback process ``after`` seconds past the journal showing ``step``
    with ``status``; the run id."""
    journal = RedisJournal(redis_url)
    try:
        while proc.returncode is None:
            run = await journal.active()
            if run is not None and run.last_status(step) is status:
                await asyncio.sleep(after)
                proc.kill()
                await proc.wait()
                return run.run_id
            await asyncio.sleep(0.02)
    finally:
        await journal.close()
    raise AssertionError(f"the run ended before {step} was done")


@pytest.mark.parametrize(("step", "status", "after"), [
    ("sync_primary", StepStatus.DONE, 0.0),
    ("restore_standby", StepStatus.STARTED, 0.15),  # in the middle of the switchover
])
async def test_a_killed_failback_resumes_its_run(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer, step: str,
    status: StepStatus, after: float,
) -> None:
    west = pg_pair.primary
    prepare(pg_pair)
    async with servers_stopped_after(pg_pair), health_endpoint() as health:
        config = write_config(tmp_path, pg_pair, redis_url=redis_server.url, health=health)
        async with writers(pg_pair) as log:
            await fail_over_with_writes(pg_pair, redis_server.url)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentaskit_dr", "failback", "--yes",
                "--config", str(config), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            killed_run = await kill_when(proc, redis_server.url, step, status, after)

            # The killed process's lease runs out (lock.ttl) before anyone may take over.
            for _ in range(30):
                code, out, err = await failback(config, "--yes")
                if "leader lock is held" not in err:
                    break
                await asyncio.sleep(0.5)

            assert code == 0, err
            await asyncio.sleep(0.3)
        assert await missing_on(west, log) == set()
        assert west.sql("SELECT pg_is_in_recovery()") == "f"
        marker_epoch = west.sql("SELECT epoch FROM agentaskit_dr.failover_epoch")

    result = json.loads(out[out.index("{"):])
    assert result["run_id"] == killed_run  # the same run, resumed
    plan = ["check_recovered", "sync_primary", "verify_data_integrity", "shift_traffic",
            "restore_standby"]
    assert result["resumed_at"] in plan[plan.index(step) + (status is StepStatus.DONE):]
    (run,) = await failback_runs(redis_server.url)
    assert run.finished == "done"
    sync_started = [e for e in run.entries
                    if e.step == "sync_primary" and e.status.value == "started"]
    assert len(sync_started) == 1  # not run again
    assert len({e.epoch for e in run.entries}) == 2  # the killed run's epoch and the resumer's
    # One promotion for the switchover, under the epoch that finished it.
    assert marker_epoch == str(max(e.epoch for e in run.entries if e.step == "restore_standby"))
