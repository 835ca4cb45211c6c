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
    """A network that remembers which links are cut."""

    def __init__(self) -> None:
        self.cut_now: set[tuple[str, str]] = set()

    def cut(self, observer: str, target: str) -> None:
        self.cut_now.add((observer, target))

    def heal(self, observer: str, target: str) -> None:
        self.cut_now.discard((observer, target))


def catalog() -> tuple[FaultCatalog, Cuts]:
    network = Cuts()
    lab: Any = SimpleNamespace(links=dict.fromkeys(LINKS, 0), network=network)
    world = SimpleNamespace(lab=lab, binding=None, holding=lambda _: contextlib.nullcontext())
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
