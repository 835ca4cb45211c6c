"""Two watchdog processes driven over their API for planned runs (switchover, failback, the
failover drill), with control of both servers of the pair: the ``fleet`` fixture, the
configs that give each watchdog its API and its peer, and what a test asks of the API.

A test module takes the fixture with ``fleet = api_fleet.fleet``. Both servers live on
this host, so both watchdogs get ``database.control`` of both."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from agentaskit_dr.sandbox.writer import WriterLog, write_continuously
from tests.integration.daemon_harness import REGIONS, Watchdog, WatchdogFleet, wait_until
from tests.integration.test_failback_run import control_of

TOKEN = "s3cret-api-token"
WEST, EAST = REGIONS
#: The watchdogs' db_unreachable threshold: with peers, self-fencing needs one above peer
#: staleness + probes.
PEER_THRESHOLD = 3.0


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    """Watchdogs over ``pg_pair`` and ``redis_server``; after the test, every watchdog and
    every server the runs started outside the pair are stopped."""
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        try:
            yield started
        finally:
            started.stop_all()
            stop_servers_started_outside(pg_pair)


def stop_servers_started_outside(pair: PostgresPair) -> None:
    """The runs start servers with pg_ctl, outside the pair's own process handles."""
    for datadir in pair.base_dir.iterdir():
        if (datadir / "postmaster.pid").exists():
            subprocess.run([str(pair.primary.bindir / "pg_ctl"), "stop", "-D", str(datadir),
                            "-m", "immediate"], user="postgres", capture_output=True,
                           check=False, cwd="/")


def token_file(folder: Path) -> Path:
    """The operator token (``TOKEN``) written to ``folder/api-token``."""
    path = folder / "api-token"
    path.write_text(TOKEN + "\n")
    return path


def call(url: str, body: dict[str, Any] | None = None,
         token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextlib.contextmanager
def background_writers(pair: PostgresPair, count: int = 3) -> Iterator[WriterLog]:
    """Clients writing to whichever server takes writes, on a loop of their own."""
    log, stop = WriterLog(), threading.Event()

    async def write() -> None:
        done = asyncio.Event()
        servers = {pair.primary.name: pair.primary.dsn, pair.replica.name: pair.replica.dsn}
        tasks = [asyncio.create_task(write_continuously(servers, log, done, writer=n))
                 for n in range(1, count + 1)]
        await asyncio.to_thread(stop.wait)
        done.set()
        await asyncio.gather(*tasks)

    thread = threading.Thread(target=asyncio.run, args=(write(),), name="writers")
    thread.start()
    try:
        yield log
    finally:
        stop.set()
        thread.join(30)


def wait_written_on(log: WriterLog, server: PostgresServer, timeout: float = 10.0) -> None:
    """Wait until ``server`` acknowledges a write from now on: the background writers
    found it (not a fixed pause, which a busy machine can outlast)."""
    before = len(log.acked_on(server.name))
    wait_until(lambda: len(log.acked_on(server.name)) > before, timeout,
               what=f"a write acknowledged by {server.name}", hint=f"failures: {log.failed[-3:]}")


def fleet_overrides(pair: PostgresPair, token: Path, *,
                    peers: bool = True) -> dict[str, dict[str, Any]]:
    """Per region: each with control of both servers; peers of each other (``peers``)."""
    ports = {region: free_port() for region in REGIONS}
    controls = {WEST: {"database": {"control": control_of(pair.primary)}},
                EAST: {"database": {"control": control_of(pair.replica)}}}
    overrides = {}
    for region in REGIONS:
        (other,) = [r for r in REGIONS if r != region]
        overrides[region] = {
            "api": {"listen": f"127.0.0.1:{ports[region]}", "token_file": str(token)},
            "peers": [f"http://127.0.0.1:{ports[other]}"] if peers else [],
            "regions": controls,
            "promotion": {"catch_up_timeout": "20s"},
            "thresholds": {"db_unreachable": f"{PEER_THRESHOLD:g}s"},
        }
    return overrides


def api_url(dog: Watchdog) -> str:
    return "http://" + str(yaml.safe_load(dog.config.read_text())["api"]["listen"])


def start_fleet(fleet: WatchdogFleet, pair: PostgresPair, token: Path) -> dict[str, str]:
    """Both watchdogs (``fleet_overrides``); their API base URLs by watchdog name."""
    overrides = fleet_overrides(pair, token)
    dogs = [fleet.start(region, overrides=overrides[region]) for region in REGIONS]
    return {dog.region: api_url(dog) for dog in dogs}
