"""A seeded random fault schedule: a pure function of (seed, duration, fault kinds).

Faults start at random moments of the fault phase, last a random while, and may
overlap, except that two faults never act on the same process at once (a kill and a
SIGSTOP of one server at the same time mean nothing new). Every fault is healed by the
end of the fault phase; a quiet period follows in which the system must converge.

The kinds drawn from are :data:`KINDS` unless the run names others (``--faults``): faults
added to the catalog later (:data:`EXTRA_KINDS`) are drawn only when named, so every seed
of the default catalog keeps the schedule it had.
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
#: Faults added after the first campaigns, drawn only when named (``--faults``): in
#: ``KINDS`` they would change every existing seed's schedule.
EXTRA_KINDS: dict[str, int] = {
    "slow_link": 3,
    "sentinel_failover": 2,
    "manual_failover": 1,
    "switchover": 1,
}
#: An operator's request (``POST /v1/failover``, ``POST /v1/switchover``): it stops and
#: cuts nothing; the watchdogs decide whether to carry it out.
OPERATOR_KINDS = frozenset({"manual_failover", "switchover"})
ALL_KINDS: dict[str, int] = {**KINDS, **EXTRA_KINDS}
#: Latency added per chunk on a slowed link (s): below, near and above what the lab's
#: 0.4 s probe timeout tolerates over a few round trips.
SLOW_DELAYS = (0.02, 0.05, 0.15, 0.5)
#: A Sentinel failover of the lock store: ``SENTINEL FAILOVER`` (param 0) or SIGKILL of
#: the master (param 1, restarted empty at the heal and rejoining as a replica).
SENTINEL_MODES = (0.0, 1.0)
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
    #: The slow link's delay (s); the Sentinel failover's mode; 0 for every other kind.
    param: float = 0.0

    @property
    def end(self) -> float:
        return self.at + self.duration

    def describe(self) -> str:
        param = f",{self.param:g}" if self.param else ""
        return f"{self.kind}({self.target}{param})@{self.at:.1f}+{self.duration:.1f}s"


def processes(fault: PlannedFault) -> set[str]:
    """The processes a fault acts on: no two overlapping faults share one."""
    if fault.kind in {"kill_daemon", "pause_daemon", "bad_config", "kill_db", "pause_db"}:
        return {fault.target}
    if fault.kind in {"kill_redis", "pause_redis", "sentinel_failover"}:
        return {"redis"}
    return set()


def _target(kind: str, rng: random.Random) -> str:
    if kind in {"kill_daemon", "pause_daemon", "bad_config"}:
        return rng.choice(DAEMONS)
    if kind in {"kill_db", "pause_db"}:
        return rng.choice(DATABASES)
    if kind in {"kill_redis", "pause_redis", "sentinel_failover"}:
        return "redis"
    if kind == "cut_wal":
        return "east-db|west-db"
    if kind in OPERATOR_KINDS:
        return "operator"
    if kind == "cut_one_way":
        # The lock store dials nobody: a cut from its side would sever no link.
        a = rng.choice(DAEMONS)
        b = rng.choice([site for site in SITES if site != a])
        return f"{a}|{b}"
    a, b = rng.sample(SITES, 2)
    return f"{a}|{b}"


def _param(kind: str, rng: random.Random) -> float:
    if kind == "slow_link":
        return rng.choice(SLOW_DELAYS)
    if kind == "sentinel_failover":
        return rng.choice(SENTINEL_MODES)
    return 0.0


def parse_kinds(text: str) -> dict[str, int]:
    """``--faults``: comma-separated kinds, ``default`` for :data:`KINDS`, ``all`` for
    :data:`ALL_KINDS`; each with its catalog weight."""
    chosen: dict[str, int] = {}
    for word in (w.strip() for w in text.split(",") if w.strip()):
        if word == "default":
            chosen.update(KINDS)
        elif word == "all":
            chosen.update(ALL_KINDS)
        elif word in ALL_KINDS:
            chosen[word] = ALL_KINDS[word]
        else:
            raise ValueError(f"--faults: unknown fault kind {word!r}; known: default, all, "
                             f"{', '.join(ALL_KINDS)}")
    if not chosen:
        raise ValueError("--faults: name at least one fault kind")
    return chosen


def generate(seed: int, duration: float,
             kinds_weights: dict[str, int] | None = None) -> list[PlannedFault]:
    """The schedule of ``seed`` for a fault phase of ``duration`` s, by start time, drawn
    from ``kinds_weights`` (:data:`KINDS` by default)."""
    if duration < MIN_FAULT:
        raise ValueError(f"duration: {duration}s is shorter than a fault ({MIN_FAULT}s)")
    rng = random.Random(seed)
    catalog = KINDS if kinds_weights is None else kinds_weights
    kinds = list(catalog)
    weights = [catalog[k] for k in kinds]
    count = max(1, round(duration / SECONDS_PER_FAULT))
    planned: list[PlannedFault] = []
    for _ in range(count):
        for _attempt in range(20):
            kind = rng.choices(kinds, weights)[0]
            length = round(rng.uniform(MIN_FAULT, min(MAX_FAULT, duration)), 1)
            at = round(rng.uniform(0.0, duration - length), 1)
            fault = PlannedFault(kind, _target(kind, rng), at, length, _param(kind, rng))
            if not any(processes(fault) & processes(other)
                       and fault.at < other.end and other.at < fault.end
                       for other in planned):
                planned.append(fault)
                break
    return sorted(planned, key=lambda f: (f.at, f.kind, f.target))
