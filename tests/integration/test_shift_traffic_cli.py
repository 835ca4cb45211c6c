"""``agentaskit-dr shift-traffic`` and ``scripts/dr/shift-traffic.sh``, run as the real CLI
against Redis (the leader lock) and moto in server mode (Route 53)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.drill import health_endpoint
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    aws_credentials_fixture,  # noqa: F401
    create_zone,
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
    record_sets,
    upsert,
)

pytestmark = pytest.mark.integration

WEST, EAST = "us-west-2", "us-east-1"  # WEST is the file's primary, failed over from
RECORD = "api.agentaskit.example"
TARGETS = {WEST: "west-lb.agentaskit.example", EAST: "east-lb.agentaskit.example"}
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "dr"


@dataclass
class Setup:
    config: Path
    moto: str
    zone: str


@pytest.fixture
def health() -> Iterator[dict[str, str]]:
    with health_endpoint() as west, health_endpoint() as east:
        yield {WEST: west, EAST: east}


async def make_setup(tmp_path: Path, redis: RedisServer, moto: str,
                     health: dict[str, str], *, style: str) -> Setup:
    zone = await create_zone(moto, "agentaskit.example")
    if style == "weighted":  # after the failover: EAST serves everything
        for region, weight in ((EAST, 100), (WEST, 0)):
            await upsert(moto, zone, RECORD, "CNAME", TARGETS[region], SetIdentifier=region,
                         Weight=weight)
    else:
        await upsert(moto, zone, RECORD, "CNAME", TARGETS[EAST])
    # No database answers: the lock's epoch floor finds none to read, as when the
    # databases are down; shift-traffic itself never talks to them.
    nowhere = f"postgresql://dr@127.0.0.1:{free_port()}/postgres"
    config: dict[str, Any] = {
        "region": EAST, "primary_region": WEST, "node_name": "shift-test",
        "regions": {name: {"health_urls": [health[name]], "database": {"dsn": nowhere},
                           "dns_target": TARGETS[name]} for name in (WEST, EAST)},
        "probe": {"interval": "0.5s", "timeout": "0.4s"},
        "lock": {"url": redis.url, "ttl": "3s", "socket_timeout": "0.5s"},
        "dns": {"route53": {"hosted_zone_id": zone, "record_name": RECORD, "style": style,
                            "endpoint_url": moto}},
        "evidence_dir": str(tmp_path / "evidence"),
        "api": {"listen": None},
    }
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(config))
    return Setup(path, moto, zone)


async def cli(setup: Setup, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentaskit_dr", "shift-traffic", *args,
        "--config", str(setup.config), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cnames(setup: Setup) -> dict[str, dict[str, Any]]:
    return {r.get("SetIdentifier", ""): r
            for r in await record_sets(setup.moto, setup.zone, RECORD) if r["Type"] == "CNAME"}


async def test_shift_traffic_sets_the_weights_10_90_then_the_script_50_50(
    tmp_path: Path, redis_server: RedisServer, moto_server: str, health: dict[str, str]
) -> None:
    setup = await make_setup(tmp_path, redis_server, moto_server, health, style="weighted")

    code, out, err = await cli(setup, "--target=primary", "--percent=10", "--yes")

    assert code == 0, err
    assert out.startswith("update_dns: changed: ")
    assert {k: r["Weight"] for k, r in (await cnames(setup)).items()} == {WEST: 10, EAST: 90}
    # The script runs the installed agentaskit-dr: the one of the venv running the tests.
    env = {**os.environ, "AGENTASKIT_DR_CONFIG": str(setup.config),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SCRIPTS / "shift-traffic.sh"), "--target=primary", "--percent=50",
        "--yes", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err_bytes = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err_bytes
    assert {k: r["Weight"] for k, r in (await cnames(setup)).items()} == {WEST: 50, EAST: 50}
    code, _, err = await cli(setup, f"--target={WEST}", "--percent=100", "--yes")
    assert code == 0, err
    assert {k: r["Weight"] for k, r in (await cnames(setup)).items()} == {WEST: 100, EAST: 0}


async def test_a_simple_record_refuses_10_percent_and_switches_at_100(
    tmp_path: Path, redis_server: RedisServer, moto_server: str, health: dict[str, str]
) -> None:
    setup = await make_setup(tmp_path, redis_server, moto_server, health, style="simple")

    code, out, err = await cli(setup, "--target=primary", "--percent=10", "--yes")

    assert code == 1
    assert out == ""
    assert "a simple record is switched at 100 only" in err
    assert "nothing changed" in err
    assert "Traceback" not in err
    assert (await cnames(setup))[""]["ResourceRecords"] == [{"Value": TARGETS[EAST]}]
    code, _, err = await cli(setup, "--target=primary", "--percent=100", "--yes")
    assert code == 0, err
    assert (await cnames(setup))[""]["ResourceRecords"] == [{"Value": TARGETS[WEST]}]


async def test_bad_input_and_no_confirmation_get_one_line(
    tmp_path: Path, redis_server: RedisServer, moto_server: str, health: dict[str, str]
) -> None:
    setup = await make_setup(tmp_path, redis_server, moto_server, health, style="weighted")

    code, _, err = await cli(setup, "--target=mars-1", "--percent=10", "--yes")
    assert code == 2
    assert "--target 'mars-1'" in err
    code, _, err = await cli(setup, "--target=primary", "--percent=0", "--yes")
    assert code == 2
    assert "between 1 and 100" in err
    code, _, err = await cli(setup, "--target=primary", "--percent=10")
    assert code == 1
    assert "pass --yes" in err
    assert "Traceback" not in err
    assert {k: r["Weight"] for k, r in (await cnames(setup)).items()} == {EAST: 100, WEST: 0}


async def test_shift_traffic_refuses_while_a_watchdog_holds_the_lock_and_names_it(
    tmp_path: Path, redis_server: RedisServer, moto_server: str, health: dict[str, str]
) -> None:
    setup = await make_setup(tmp_path, redis_server, moto_server, health, style="weighted")
    lock = RedisLeaderLock(redis_server.url, holder="watchdog-west", ttl=30,
                           socket_timeout=0.5)
    lease = await lock.acquire()
    assert lease is not None
    try:
        code, _, err = await cli(setup, "--target=primary", "--percent=10", "--yes")
    finally:
        await lock.release(lease)
        await lock.close()

    assert code == 1
    assert "held by watchdog-west" in err
    assert {k: r["Weight"] for k, r in (await cnames(setup)).items()} == {EAST: 100, WEST: 0}
