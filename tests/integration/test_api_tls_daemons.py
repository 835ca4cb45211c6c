"""Real daemons across "regions" over HTTPS: two watchdogs and a witness with one private
CA and one peer token, the way the shipped configs set them up.

Before TLS, configs naming ``https://`` peers met an API serving plain HTTP: the
primary-side watchdog heard nobody and fenced its own primary after ``fence_after``.
Here each daemon must hear the others, and the primary side must never self-fence.
Each daemon's stdout and stderr go to separate files: every line of both must be JSON,
through peers polling, clients that drop mid-request and a SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.api.client import ApiClient, ApiError
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.drill import event_time, health_endpoint
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.tls_material import TlsMaterial, make_tls_material

pytestmark = pytest.mark.integration

WEST, EAST, WITNESS = "us-west-2", "us-east-1", "witness-site"
INTERVAL = 0.3
#: Far below the thresholds, so an isolated primary side would fence within the test.
FENCE_AFTER = 2.0
#: Bound on a start: Python imports, config, TLS files, the first probe and poll rounds.
READY_TIMEOUT = 30.0
PROMPT = 10.0


class Daemon:
    """One ``agentaskit-dr run`` with stdout and stderr in separate files."""

    def __init__(self, workdir: Path, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.stdout = workdir / f"{name}.stdout"
        self.stderr = workdir / f"{name}.stderr"
        self.port = int(config["api"]["listen"].rpartition(":")[2])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentaskit_dr", "run", "--config", str(self.config_path)],
                stdout=out, stderr=err,
            )
        return self

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.stdout.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def wait_for(self, name: str, timeout: float,
                 where: Callable[[dict[str, Any]], bool] = lambda _e: True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [event for event in self.events(name) if where(event)]
            if found:
                return found[0]
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before {name}; "
                            f"see {self.stdout} and {self.stderr}")
            if time.monotonic() >= deadline:
                pytest.fail(f"no {name} from {self.name} within {timeout:g}s; see {self.stdout}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Cluster:
    """Configs for three sites sharing ``tls``; every daemon started is stopped at the end."""

    def __init__(self, workdir: Path, tls: TlsMaterial, databases: dict[str, str],
                 lock_url: str, health: dict[str, str]) -> None:
        self.workdir = workdir
        self.tls = tls
        self.databases = databases
        self.lock_url = lock_url
        self.health = health
        self.ports = {site: free_port() for site in (WEST, EAST, WITNESS)}
        self.daemons: list[Daemon] = []

    def url(self, site: str) -> str:
        return f"https://127.0.0.1:{self.ports[site]}"

    def config(self, site: str, **changes: Any) -> dict[str, Any]:
        others = [self.url(other) for other in (WEST, EAST) if other != site]
        config: dict[str, Any] = {
            "region": site,
            "primary_region": WEST,
            "node_name": f"tls-{site}",
            "role": "witness" if site == WITNESS else "watchdog",
            "regions": {name: {"health_urls": [self.health[name]],
                               "database": {"dsn": self.databases[name]}}
                        for name in (WEST, EAST)},
            "thresholds": {"region_unhealthy": "60s", "db_unreachable": "30s",
                           "recovery": "1s", "retry_backoff": "1s"},
            "probe": {"interval": f"{INTERVAL}s", "timeout": f"{INTERVAL * 0.8:.2f}s"},
            "lock": {"url": self.lock_url, "ttl": "10s", "socket_timeout": "0.5s",
                     "key_prefix": "tls-cluster"},
            "api": {
                "listen": f"127.0.0.1:{self.ports[site]}",
                "peer_token_file": str(self.tls.peer_token),
                "tls": {"cert_file": str(self.tls.site.cert), "key_file": str(self.tls.site.key),
                        "client_ca_file": str(self.tls.ca)},
            },
            "peers": others,
            "evidence_dir": str(self.workdir / "evidence"),
        }
        if site != WITNESS:
            config.update(witness=self.url(WITNESS), fence_after=f"{FENCE_AFTER}s")
        config.update(changes)
        return config

    def start(self, site: str, **changes: Any) -> Daemon:
        daemon = Daemon(self.workdir, site, self.config(site, **changes)).start()
        self.daemons.append(daemon)
        return daemon

    def status(self, daemon: Daemon) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        client = ApiClient(f"https://127.0.0.1:{daemon.port}", ssl_context=context)
        return asyncio.run(client.get("/v1/status"))

    def stop_all(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return make_tls_material(tmp_path / "tls")


@pytest.fixture
def health() -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(health_endpoint()) for name in (WEST, EAST)}


def nothing_listens() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not seen within {timeout:g}s")
        time.sleep(0.1)


def hears_everyone(cluster: Cluster, daemon: Daemon) -> Callable[[], bool]:
    def check() -> bool:
        try:
            links = cluster.status(daemon)["peers"]
        except ApiError:  # not listening yet
            return False
        return bool(links) and all(links.values())
    return check


def test_two_watchdogs_and_a_witness_over_https_hear_each_other_and_never_self_fence(
    tmp_path: Path, tls: TlsMaterial, pg_pair: PostgresPair, redis_server: RedisServer,
    health: dict[str, str],
) -> None:
    databases = {WEST: pg_pair.primary.dsn, EAST: pg_pair.replica.dsn}
    cluster = Cluster(tmp_path, tls, databases, redis_server.url, health)
    try:
        # Start order as docs/architecture.md says: the witness and the standby side first.
        witness, east = cluster.start(WITNESS), cluster.start(EAST)
        for daemon in (witness, east):
            daemon.wait_for("api_started", READY_TIMEOUT)
        west = cluster.start(WEST)
        west.wait_for("api_started", READY_TIMEOUT)

        for daemon in (west, east, witness):
            wait_until(hears_everyone(cluster, daemon), READY_TIMEOUT,
                       f"{daemon.name} hearing every peer over https")
        heard_at = time.time()
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started > 2 * FENCE_AFTER, 3 * FENCE_AFTER,
                   "twice fence_after")

        status = cluster.status(west)
        assert status["self_fenced"] is False, f"see {west.stdout}"
        assert all(status["peers"].values()), status["peers"]
        for daemon in (west, east, witness):
            assert daemon.events("self_fenced") == [], f"see {daemon.stdout}"
            assert daemon.events("peer_unauthorized") == [], f"see {daemon.stdout}"
            assert [e["scheme"] for e in daemon.events("api_started")] == ["https"]
        # Before its first poll a daemon hears nobody yet (self isolated, a moment); once it
        # heard everyone over https it never is again.
        assert not any(e.get("assessment") == "self_isolated" and event_time(e) >= heard_at
                       for e in west.events("verdict"))
    finally:
        cluster.stop_all()


def test_a_watchdog_with_the_wrong_peer_token_is_refused_and_counts_the_peer_unreachable(
    tmp_path: Path, tls: TlsMaterial, redis_server: RedisServer, health: dict[str, str],
) -> None:
    databases = {WEST: nothing_listens(), EAST: nothing_listens()}
    cluster = Cluster(tmp_path, tls, databases, redis_server.url, health)
    wrong = tmp_path / "wrong-peer-token"
    wrong.write_text("not-the-cluster-token\n")
    # West takes the token alone (no client CA): east's certificate is no credential there.
    token_only = cluster.config(WEST)["api"]
    token_only["tls"].pop("client_ca_file")
    stranger_api = {**cluster.config(EAST)["api"], "peer_token_file": str(wrong)}
    try:
        west = cluster.start(WEST, witness=None, fence_after=None, api=token_only,
                             peer_tls={"ca_file": str(tls.ca)})
        east = cluster.start(EAST, witness=None, fence_after=None, api=stranger_api)
        west.wait_for("api_started", READY_TIMEOUT)

        refused = east.wait_for("peer_unauthorized", READY_TIMEOUT)
        assert "HTTP 401" in refused["reason"]
        west.wait_for("observations_unauthorized", PROMPT)
        wait_until(lambda: cluster.status(east)["peers"] == {"peer1": False}, PROMPT,
                   "east counting west unreachable")
        wait_until(hears_everyone(cluster, west), READY_TIMEOUT, "west hearing east")
        # Logged when it started, not at every poll.
        assert len(east.events("peer_unauthorized")) == 1, f"see {east.stdout}"
        assert "not-the-cluster-token" not in east.stdout.read_text()
    finally:
        cluster.stop_all()


def drop_mid_request(port: str | int, ca: Path) -> None:
    """Clients that hang up half-way: in the TLS handshake, in a body, before the answer."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", int(port))) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello
    with socket.create_connection(("127.0.0.1", int(port))) as raw:
        raw.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to TLS
    with context.wrap_socket(socket.create_connection(("127.0.0.1", int(port))),
                             server_hostname="127.0.0.1") as tls_socket:
        tls_socket.sendall(b"POST /v1/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
        time.sleep(0.1)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", int(port))),
                             server_hostname="127.0.0.1") as tls_socket:
        tls_socket.sendall(b"GET /v1/observations HTTP/1.1\r\nHost: x\r\n\r\n")


def test_every_line_the_daemons_write_is_json_through_tls_peers_dropped_clients_and_sigterm(
    tmp_path: Path, tls: TlsMaterial, pg_pair: PostgresPair, redis_server: RedisServer,
    health: dict[str, str],
) -> None:
    databases = {WEST: pg_pair.primary.dsn, EAST: pg_pair.replica.dsn}
    cluster = Cluster(tmp_path, tls, databases, redis_server.url, health)
    try:
        east = cluster.start(EAST, witness=None, fence_after=None)
        west = cluster.start(WEST, witness=None, fence_after=None)
        for daemon in (west, east):
            wait_until(hears_everyone(cluster, daemon), READY_TIMEOUT,
                       f"{daemon.name} hearing its peer")
        drop_mid_request(west.port, tls.ca)
        # A client holding a connection open while the daemon stops.
        held = ssl.create_default_context(cafile=str(tls.ca)).wrap_socket(
            socket.create_connection(("127.0.0.1", west.port)), server_hostname="127.0.0.1")
        held.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert west.stop() == 0, f"see {west.stdout}"
        finally:
            held.close()
        assert east.stop() == 0, f"see {east.stdout}"
    finally:
        cluster.stop_all()

    for daemon in (west, east):
        for stream in (daemon.stdout, daemon.stderr):
            for line in stream.read_text().splitlines():
                try:
                    assert isinstance(json.loads(line), dict)
                except ValueError:
                    pytest.fail(f"{stream} has a line that is not JSON: {line!r}")
        assert daemon.events("daemon_stopped"), f"see {daemon.stdout}"
