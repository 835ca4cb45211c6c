"""A seeded random fault schedule: a pure function of (seed, duration).

Faults start at random moments of the fault phase, last a random while, and may
overlap, except that two faults never act on the same process at once (a kill and a
SIGSTOP of one server at the same time mean nothing new). Every fault is healed by the
end of the fault phase; a quiet period follows in which the system must converge.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Sites whose links a cut fault severs; ``redis`` is the lock store's own place.
SITES = ("west", "east", "witness", "redis")
DAEMONS = ("west", "east", "witness")
DATABASES = ("west-db", "east-db")

#: Each kind of fault with its relative weight in a schedule; the databases' faults weigh
#: most, as they are the ones that lead to failovers.
KINDS: dict[str, int] = {
    "kill_daemon": 2,
    "pause_daemon": 2,
    "kill_db": 3,
    "pause_db": 3,
    "kill_redis": 1,
    "pause_redis": 1,
    "cut_sites": 3,
    "cut_one_way": 2,
    "cut_wal": 1,
    "bad_config": 1,
}
MIN_FAULT = 2.0
MAX_FAULT = 20.0
#: One fault per this many seconds of fault phase, on average.
SECONDS_PER_FAULT = 8.0


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """A fault to inject ``at`` s after the fault phase starts and heal ``duration`` s
    later. ``target``: a node (``west``, ``east-db``, ``redis``) or a site pair
    (``west|east``; one-way cuts sever the links from the first site to the second)."""

    kind: str
    target: str
    at: float
    duration: float

    @property
    def end(self) -> float:
        return self.at + self.duration

    def describe(self) -> str:
        return f"{self.kind}({self.target})@{self.at:.1f}+{self.duration:.1f}s"


def processes(fault: PlannedFault) -> set[str]:
    """The processes a fault acts on: no two overlapping faults share one."""
    if fault.kind in {"kill_daemon", "pause_daemon", "bad_config", "kill_db", "pause_db"}:
        return {fault.target}
    if fault.kind in {"kill_redis", "pause_redis"}:
        return {"redis"}
    return set()


def _target(kind: str, rng: random.Random) -> str:
    if kind in {"kill_daemon", "pause_daemon", "bad_config"}:
        return rng.choice(DAEMONS)
    if kind in {"kill_db", "pause_db"}:
        return rng.choice(DATABASES)
    if kind in {"kill_redis", "pause_redis"}:
        return "redis"
    if kind == "cut_wal":
        return "east-db|west-db"
    if kind == "cut_one_way":
        # The lock store dials nobody: a cut from its side would sever no link.
        a = rng.choice(DAEMONS)
        b = rng.choice([site for site in SITES if site != a])
        return f"{a}|{b}"
    a, b = rng.sample(SITES, 2)
    return f"{a}|{b}"


def generate(seed: int, duration: float) -> list[PlannedFault]:
    """The schedule of ``seed`` for a fault phase of ``duration`` s, by start time."""
    if duration < MIN_FAULT:
        raise ValueError(f"duration: {duration}s is shorter than a fault ({MIN_FAULT}s)")
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k] for k in kinds]
    count = max(1, round(duration / SECONDS_PER_FAULT))
    planned: list[PlannedFault] = []
    for _ in range(count):
        for _attempt in range(20):
            kind = rng.choices(kinds, weights)[0]
            length = round(rng.uniform(MIN_FAULT, min(MAX_FAULT, duration)), 1)
            at = round(rng.uniform(0.0, duration - length), 1)
            fault = PlannedFault(kind, _target(kind, rng), at, length)
            if not any(processes(fault) & processes(other)
                       and fault.at < other.end and other.at < fault.end
                       for other in planned):
                planned.append(fault)
                break
    return sorted(planned, key=lambda f: (f.at, f.kind, f.target))
