"""Which links each cut fault severs, and cuts that overlap on one link (no real parts:
a stand-in network records what is cut)."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, cast

from agentaskit_dr.local_servers.tcp import free_port
from tests.chaos.faults import FaultCatalog
from tests.chaos.schedule import PlannedFault
from tests.chaos.world import OPERATOR_TOKEN, World

LINKS = [(o, t) for o in ("west", "east", "witness")
         for t in ("west", "east", "witness", "west-db", "east-db", "west-health",
                   "east-health", "redis") if o != t] + [("east-db", "west-db")]


class Cuts:
    """A network that remembers which links are cut, and how slow."""

    def __init__(self) -> None:
        self.cut_now: set[tuple[str, str]] = set()
        self.delays: dict[tuple[str, str], float] = {}

    def cut(self, observer: str, target: str) -> None:
        self.cut_now.add((observer, target))

    def heal(self, observer: str, target: str) -> None:
        self.cut_now.discard((observer, target))

    def slow(self, observer: str, target: str, delay: float) -> None:
        self.delays[observer, target] = delay
        if not delay:
            del self.delays[observer, target]


def catalog() -> tuple[FaultCatalog, Cuts]:
    network = Cuts()
    lab: Any = SimpleNamespace(links=dict.fromkeys(LINKS, 0), network=network)
    world = SimpleNamespace(lab=lab, timing=SimpleNamespace(timeout=0.4), binding=None,
                            holding=lambda _: contextlib.nullcontext())
    return FaultCatalog(cast(World, world)), network


def test_a_site_cut_severs_both_directions_and_nothing_else() -> None:
    faults, network = catalog()
    fault = faults.inject(PlannedFault("cut_sites", "west|witness", 0, 5))
    assert not fault.error
    assert set(fault.cut) == {("west", "witness"), ("witness", "west"),
                              ("witness", "west-db"), ("witness", "west-health")}
    assert network.cut_now == set(fault.cut)
    faults.heal(fault)
    assert network.cut_now == set()


def test_a_one_way_cut_severs_only_what_the_first_site_dials() -> None:
    faults, _ = catalog()
    fault = faults.inject(PlannedFault("cut_one_way", "east|west", 0, 5))
    assert set(fault.cut) == {("east", "west"), ("east", "west-db"), ("east", "west-health"),
                              ("east-db", "west-db")}


def test_the_wal_cut_severs_the_replication_link_only() -> None:
    faults, _ = catalog()
    assert faults.inject(PlannedFault("cut_wal", "east-db|west-db", 0, 5)).cut == (
        ("east-db", "west-db"),)


def test_a_heal_leaves_a_link_another_fault_still_holds_cut() -> None:
    faults, network = catalog()
    wal = faults.inject(PlannedFault("cut_wal", "east-db|west-db", 0, 5))
    sites = faults.inject(PlannedFault("cut_sites", "east|west", 1, 5))
    faults.heal(wal)
    assert ("east-db", "west-db") in network.cut_now
    record = faults.heal(sites)
    assert network.cut_now == set()
    assert [r.kind for r in faults.log] == ["cut_wal", "cut_sites"]
    assert record.end is not None
    assert record.end >= record.start


def test_a_slow_link_delays_both_directions_and_counts_as_cut_only_when_too_slow() -> None:
    faults, network = catalog()
    slight = faults.inject(PlannedFault("slow_link", "west|witness", 0, 5, 0.05))
    assert not slight.error
    assert slight.cut == ()  # only slow: a failover it provoked would be false
    assert set(network.delays) == {("west", "witness"), ("witness", "west"),
                                   ("witness", "west-db"), ("witness", "west-health")}
    heavy = faults.inject(PlannedFault("slow_link", "witness|west", 1, 5, 0.5))
    assert set(heavy.cut) == set(network.delays)  # down for a probe
    assert set(network.delays.values()) == {0.5}  # the larger delay wins while both hold
    faults.heal(heavy)
    assert set(network.delays.values()) == {0.05}
    faults.heal(slight)
    assert network.delays == {}
    assert network.cut_now == set()  # slowing never cuts a real link


class _Watchdogs:
    """Two stand-in watchdog APIs on loopback: west answers 409 (not the lock holder),
    east takes the request; both report ``primary`` as the primary region."""

    def __init__(self, primary: str) -> None:
        self.requests: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.servers = {node: self._serve(node, primary) for node in ("west", "east")}

    def _serve(self, node: str, primary: str) -> ThreadingHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                owner.requests.append((node, "GET", self.path, None))
                self._answer(200, {"primary_region": primary})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                owner.requests.append((node, self.headers.get("Authorization", ""),
                                       self.path, body))
                if node == "west":
                    self._answer(409, {"error": "not the lock holder"})
                else:
                    self._answer(202, {"started": True})

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def ports(self) -> dict[str, int]:
        return {node: server.server_address[1] for node, server in self.servers.items()}

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


def test_a_manual_failover_goes_to_each_watchdog_until_one_takes_it() -> None:
    dogs = _Watchdogs(primary="us-west-2")
    try:
        faults, _ = catalog()
        faults.lab.api_ports = dogs.ports()
        fault = faults.inject(PlannedFault("manual_failover", "operator", 1.0, 2.0))
        record = faults.heal(fault)
    finally:
        dogs.close()
    assert record.error == ""
    posts = [r for r in dogs.requests if r[1] != "GET"]
    assert [(node, path) for node, _, path, _ in posts] == [("west", "/v1/failover"),
                                                             ("east", "/v1/failover")]
    assert all(auth == f"Bearer {OPERATOR_TOKEN}" for _, auth, _, _ in posts)
    assert record.kind == "manual_failover"
    assert (record.down, record.cut) == ((), ())


def test_a_switchover_asks_for_the_region_that_is_not_the_primary_now() -> None:
    for primary, expected in (("us-west-2", "us-east-1"), ("us-east-1", "us-west-2")):
        dogs = _Watchdogs(primary=primary)
        try:
            faults, _ = catalog()
            faults.lab.api_ports = dogs.ports()
            faults.heal(faults.inject(PlannedFault("switchover", "operator", 1.0, 2.0)))
        finally:
            dogs.close()
        bodies = [body for _, auth, path, body in dogs.requests if path == "/v1/switchover"]
        assert bodies
        assert all(body == {"to": expected} for body in bodies)


def test_an_operator_request_nobody_answers_is_an_injection_error() -> None:
    faults, _ = catalog()
    faults.lab.api_ports = {"west": free_port(), "east": free_port()}
    record = faults.heal(faults.inject(PlannedFault("manual_failover", "operator", 1.0, 2.0)))
    assert "no watchdog answered /v1/failover" in record.error
