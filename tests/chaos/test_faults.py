"""Which links each cut fault severs, and cuts that overlap on one link (no real parts:
a stand-in network records what is cut)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, cast

from tests.chaos.faults import FaultCatalog
from tests.chaos.schedule import PlannedFault
from tests.chaos.world import World

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
