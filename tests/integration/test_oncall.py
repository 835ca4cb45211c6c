"""The runbook's on-call commands, run as the real CLI against real parts.

PostgreSQL pair, Redis (the lock and journal), moto (Route 53) and the Kubernetes API
emulation. The CLI runs as a subprocess so the emulations keep serving on the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.drill import health_endpoint
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    aws_credentials_fixture,  # noqa: F401
    create_zone,
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
    record_sets,
    upsert,
)
from tests.integration.kube_api import KubeApi, kube_api_fixture  # noqa: F401

pytestmark = pytest.mark.integration

WEST, EAST = "us-west-2", "us-east-1"
RECORD = "api.agentaskit.example"
NAMESPACE = "agentaskit-production"
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "dr"


@dataclass
class Setup:
    config: Path
    pair: PostgresPair
    redis: RedisServer
    moto: str
    zone: str
    kube: KubeApi
    evidence: Path


@pytest.fixture
def health() -> Iterator[dict[str, str]]:
    with health_endpoint() as west, health_endpoint() as east:
        yield {WEST: west, EAST: east}


@pytest.fixture
async def setup(tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
                moto_server: str, kube_api: KubeApi, health: dict[str, str]) -> Setup:
    zone = await create_zone(moto_server, "agentaskit.example")
    await upsert(moto_server, zone, RECORD, "CNAME", "west-lb.agentaskit.example")
    kube_api.add_deployment(NAMESPACE, "api", 4)
    kube_api.add_deployment(NAMESPACE, "worker", 3)
    dsn = {WEST: pg_pair.primary.dsn, EAST: pg_pair.replica.dsn}
    target = {WEST: "west-lb.agentaskit.example", EAST: "east-lb.agentaskit.example"}
    regions = {
        name: {"health_urls": [health[name]], "database": {"dsn": dsn[name]},
               "dns_target": target[name]}
        for name in (WEST, EAST)
    }
    regions[EAST]["kubernetes"] = {"api_url": kube_api.url, "namespace": NAMESPACE,
                                   "ready_timeout": "10s"}
    config = {
        "region": EAST, "primary_region": WEST, "node_name": "oncall-test",
        "regions": regions,
        "thresholds": {"db_unreachable": "3s", "region_unhealthy": "6s", "recovery": "1s",
                       "retry_backoff": "1s"},
        "probe": {"interval": "0.5s", "timeout": "0.4s"},
        "lock": {"url": redis_server.url, "ttl": "3s", "socket_timeout": "0.5s"},
        "promotion": {"timeout": "10s"},
        "dns": {"route53": {"hosted_zone_id": zone, "record_name": RECORD,
                            "endpoint_url": moto_server}},
        "runbook": {"verify_timeout": "10s", "notify_timeout": "2s"},
        "evidence_dir": str(tmp_path / "evidence"),
        "api": {"listen": None},
    }
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(config))
    return Setup(path, pg_pair, redis_server, moto_server, zone, kube_api, tmp_path / "evidence")


async def cli(setup: Setup, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``agentaskit-dr ARGS --config ...`` and return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentaskit_dr", *args, "--config", str(setup.config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def dns_value(setup: Setup) -> str:
    [cname] = [r for r in await record_sets(setup.moto, setup.zone, RECORD)
               if r["Type"] == "CNAME"]
    return str(cname["ResourceRecords"][0]["Value"])


@contextlib.asynccontextmanager
async def lock_held_by_a_watchdog(setup: Setup) -> AsyncIterator[int]:
    lock = RedisLeaderLock(setup.redis.url, holder="watchdog-west", ttl=30, socket_timeout=0.5)
    lease = await lock.acquire()
    assert lease is not None
    try:
        yield lease.epoch
    finally:
        await lock.release(lease)
        await lock.close()


async def test_check_primary_says_up_then_down_after_the_primary_dies(setup: Setup) -> None:
    code, out, _ = await cli(setup, "check-primary")
    assert code == 1
    assert "up: do not fail over" in out
    code, out, _ = await cli(setup, "check-primary", "--recovered", "--json")
    assert code == 0
    assert json.loads(out)["database"]["writable"] is True
    setup.pair.primary.kill()
    code, out, _ = await cli(setup, "check-primary")
    assert code == 0
    assert "down: failover is justified" in out
    assert "unreachable" in out


async def test_check_primary_says_up_when_the_primary_answers_with_an_error(
    setup: Setup,
) -> None:
    # The database the watchdog was given is gone: the server answers 3D000, it is up.
    config = yaml.safe_load(setup.config.read_text())
    server = setup.pair.primary.dsn.rpartition("/")[0]
    config["regions"][WEST]["database"]["dsn"] = f"{server}/no_such_database"
    setup.config.write_text(yaml.safe_dump(config))

    code, out, _ = await cli(setup, "check-primary")
    assert code == 1, out
    assert "up: do not fail over" in out
    assert "refuses the watchdog: database_missing" in out
    code, out, _ = await cli(setup, "check-primary", "--recovered", "--json")
    assert code == 1, "answering with an error is not recovered"
    database = json.loads(out)["database"]
    assert (database["reachable"], database["refusal"], database["sqlstate"]) == (
        True, "database_missing", "3D000")


async def test_commands_refuse_while_a_watchdog_holds_the_lock_and_name_it(setup: Setup) -> None:
    async with lock_held_by_a_watchdog(setup) as epoch:
        for args in (["promote"], ["update-dns", "--target", "secondary"],
                     ["scale", "--region", EAST, "--percent", "+50"], ["failover", "--yes"]):
            code, _, err = await cli(setup, *args)
            assert code == 1, args
            assert f"held by watchdog-west (epoch {epoch})" in err, (args, err)
            # ... and says how to go on while the watchdogs run.
            assert "agentaskit-dr pause" in err
            assert "request-failover" in err
    assert await dns_value(setup) == "west-lb.agentaskit.example"
    assert setup.kube.writes() == []
    assert setup.pair.replica.sql("SELECT pg_is_in_recovery()") == "t"


async def test_runbook_steps_one_by_one(setup: Setup) -> None:
    code, out, err = await cli(setup, "update-dns", "--target", "secondary")
    assert code == 0, err
    assert await dns_value(setup) == "east-lb.agentaskit.example"
    code, out, err = await cli(setup, "scale", "--region", EAST, "--percent", "+50")
    assert code == 0, err
    assert setup.kube.get(NAMESPACE, "api").replicas == 6
    assert setup.kube.get(NAMESPACE, "worker").replicas == 5
    scale_patches = len(setup.kube.requests("PATCH", "/scale"))
    assert scale_patches == 2
    # Again: scaled from the recorded original, so not 6 -> 9; no /scale call.
    code, out, err = await cli(setup, "scale", "--region", EAST, "--percent", "+50")
    assert code == 0, err
    assert "all already scaled" in out
    assert setup.kube.get(NAMESPACE, "api").replicas == 6
    assert len(setup.kube.requests("PATCH", "/scale")) == scale_patches
    setup.pair.primary.kill()
    code, out, err = await cli(setup, "promote")
    assert code == 0, err
    assert setup.pair.replica.sql("SELECT pg_is_in_recovery()") == "f"
    code, out, err = await cli(setup, "verify-failover")
    assert code == 0, err
    assert "took a write" in out


async def test_failover_dry_run_changes_nothing_then_the_real_run_does_it_all(
    setup: Setup,
) -> None:
    code, out, err = await cli(setup, "failover", "--dry-run")
    assert code == 0, err
    for step in ("check_primary", "promote", "update_dns", "scale_up", "verify_services"):
        assert step in out
    assert "west-lb.agentaskit.example -> east-lb.agentaskit.example" in out
    assert "api 4 -> 6" in out
    assert await dns_value(setup) == "west-lb.agentaskit.example"
    assert setup.kube.writes() == []

    code, _, err = await cli(setup, "failover")  # not a terminal, no --yes
    assert code == 1
    assert "--yes" in err

    setup.pair.primary.kill()
    code, out, err = await cli(setup, "failover", "--yes")
    assert code == 0, err
    assert await dns_value(setup) == "east-lb.agentaskit.example"
    assert setup.kube.get(NAMESPACE, "api").replicas == 6
    assert setup.pair.replica.sql("SELECT pg_is_in_recovery()") == "f"

    code, out, err = await cli(setup, "journal", "show")
    assert code == 0, err
    [line] = out.splitlines()
    run_id = line.split()[0]
    assert " done " in line
    code, out, err = await cli(setup, "journal", "show", run_id)
    assert code == 0, err
    assert out.count(" done ") >= 5
    code, out, err = await cli(setup, "evidence", "list")
    assert code == 0, err
    assert run_id in out
    code, out, err = await cli(setup, "evidence", "show", run_id)
    assert code == 0, err
    assert json.loads(out)["run_id"] == run_id

    # The run recorded the cluster's new primary: the commands follow it, not the file.
    code, out, err = await cli(setup, "check-primary", "--json")
    assert json.loads(out)["primary_region"] == EAST
    assert "from the cluster record" in err
    assert code == 1  # the promoted server in us-east-1 is up: do not fail over


async def test_pause_resume_and_ack_go_to_the_lock_store_when_no_watchdog_answers(
    setup: Setup, tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    nobody = f"http://127.0.0.1:{free_port()}"
    common = ("--url", nobody, "--token-file", str(token))
    code, out, err = await cli(setup, "pause", "--reason", "failing over by hand", *common)
    assert code == 0, err
    assert "using the lock store" in err
    code, out, err = await cli(setup, "status", "--url", nobody)
    assert code == 0, err
    assert "failing over by hand" in out
    store = RedisClusterStore(setup.redis.url)
    try:
        controls = (await store.read()).controls
        assert controls.paused
        assert controls.paused_by.endswith("(lock store, no watchdog answered)")
        code, _, err = await cli(setup, "ack", *common)
        assert code == 0, err
        code, _, err = await cli(setup, "resume", *common)
        assert code == 0, err
        controls = (await store.read()).controls
    finally:
        await store.close()
    assert not controls.paused
    assert controls.ack_generation == 1


async def test_bad_arguments_get_one_line_not_a_traceback(setup: Setup) -> None:
    code, _, err = await cli(setup, "scale", "--region", "mars-1", "--percent", "+50")
    assert code == 1
    assert "--region 'mars-1'" in err
    assert "Traceback" not in err
    code, _, err = await cli(setup, "scale", "--region", EAST, "--percent", "lots")
    assert code == 2
    assert "expected a percentage" in err
    code, _, err = await cli(setup, "evidence", "show", "no-such-run")
    assert code == 2
    assert "Traceback" not in err
    code, _, err = await cli(setup, "journal", "show", "no-such-run")
    assert code == 1
    assert "no run 'no-such-run'" in err


async def test_the_plans_scripts_run_the_same_commands(setup: Setup) -> None:
    scripts = SCRIPTS
    env = {**os.environ, "AGENTASKIT_DR_CONFIG": str(setup.config)}
    proc = await asyncio.create_subprocess_exec(
        "bash", str(scripts / "check-primary.sh"), stdout=asyncio.subprocess.PIPE, env=env)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1
    assert b"up: do not fail over" in out
    proc = await asyncio.create_subprocess_exec(
        "bash", str(scripts / "update-dns.sh"), "--target=secondary", env=env,
        stdout=asyncio.subprocess.PIPE)
    await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0
    assert await dns_value(setup) == "east-lb.agentaskit.example"
    proc = await asyncio.create_subprocess_exec(
        "bash", str(scripts / "verify-failover.sh"), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    # The standby is still a standby: verification fails, with the reason.
    assert proc.returncode == 1
    assert b"read-only" in err
