"""The fault catalog: inject and heal each kind of planned fault on a :class:`World`.

Each injection returns what it stopped and cut, so the fault log says, per fault, which
processes were down and which links were cut from when to when: the checker judges
every failover against exactly that. Overlapping cuts of one link are counted, so a
heal never reopens a link another fault still holds cut.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.history import FaultRecord
from tests.chaos.schedule import PlannedFault
from tests.chaos.world import OPERATOR_TOKEN, ChaosLab, World
from tests.integration.partition_harness import EAST, EAST_DB, REGION, SITES, WEST, WEST_DB

#: The nodes of each site a cut may sever.
SITE_NODES = {**{site: set(nodes) for site, nodes in SITES.items()},
              "witness": {"witness"}, "redis": {"redis"}}
#: A config the daemon must refuse on SIGHUP (and keep running on the good one).
BAD_CONFIG = "thresholds:\n  db_unreachable: soon\nrole: [not, a, role]\n"
#: Bound on the start gate and a restarted server coming up.
START_TIMEOUT = 30.0
#: A link slower than the probe timeout over this many one-way trips (a PostgreSQL probe's
#: connect, startup and query) is down for a probe: the checker counts it as cut.
SLOW_AS_CUT_TRIPS = 6


@dataclass(slots=True)
class Injected:
    """A fault in place: its plan, when it started, what it did."""

    plan: PlannedFault
    start: float
    down: tuple[str, ...] = ()
    cut: tuple[tuple[str, str], ...] = ()
    error: str = ""
    notes: list[str] = field(default_factory=list)
    #: For the fault log: what the injection found that the plan did not say.
    note: str = ""
    slowed: tuple[tuple[str, str], ...] = ()
    server: Any = None  # the Redis server a lock-store fault stopped


class FaultCatalog:
    """Inject and heal faults on ``world``; :attr:`log` is the fault log."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.log: list[FaultRecord] = []
        self._cuts: Counter[tuple[str, str]] = Counter()
        self._delays: dict[tuple[str, str], list[float]] = {}

    @property
    def lab(self) -> ChaosLab:
        assert self.world.lab is not None
        return self.world.lab

    def inject(self, plan: PlannedFault) -> Injected:
        fault = Injected(plan, time.time())
        try:
            with self.world.holding(plan.target):
                getattr(self, f"_inject_{plan.kind}")(fault)
        except Exception as exc:  # the fault log says it did not happen as planned
            fault.error = f"inject: {type(exc).__name__}: {exc}"[:300]
        return fault

    def heal(self, fault: Injected) -> FaultRecord:
        try:
            with self.world.holding(fault.plan.target):
                getattr(self, f"_heal_{fault.plan.kind}")(fault)
        except Exception as exc:
            fault.error += f" heal: {type(exc).__name__}: {exc}"[:300]
        end = time.time()
        binding = self.world.binding
        if binding is not None and fault.plan.kind in {"kill_daemon", "pause_daemon"}:
            # Its service manager started it again before the heal: down until then.
            restarted = binding.restarted_after(fault.plan.target, fault.start)
            if restarted is not None:
                end = min(end, restarted)
        record = FaultRecord(fault.plan.kind, fault.plan.target, fault.start, end,
                             fault.down, fault.cut, fault.error.strip(), fault.note)
        self.log.append(record)
        return record

    # ------------------------------------------------------------ daemons

    def _inject_kill_daemon(self, fault: Injected) -> None:
        fault.down = (fault.plan.target,)
        self.lab.kill(fault.plan.target)

    def _heal_kill_daemon(self, fault: Injected) -> None:
        proc = self.lab.fleet.dogs[fault.plan.target].proc
        if proc is not None and proc.poll() is None:
            fault.notes.append("restarted by its service manager")
            return
        self.lab.restart(fault.plan.target)

    def _inject_pause_daemon(self, fault: Injected) -> None:
        fault.down = (fault.plan.target,)
        proc = self.lab.fleet.dogs[fault.plan.target].proc
        fault.notes.append(f"pid {proc.pid if proc is not None else None}")
        self.lab.signal_daemon(fault.plan.target, signal.SIGSTOP)

    def _heal_pause_daemon(self, fault: Injected) -> None:
        proc = self.lab.fleet.dogs[fault.plan.target].proc
        if proc is None or f"pid {proc.pid}" not in fault.notes or proc.poll() is not None:
            # Its service manager's watchdog killed the frozen process (and started a
            # new one, or will): nothing of the paused one is left to resume.
            fault.notes.append("killed by its service manager's watchdog")
            return
        self.lab.signal_daemon(fault.plan.target, signal.SIGCONT)

    def _inject_bad_config(self, fault: Injected) -> None:
        dog = self.lab.fleet.dogs[fault.plan.target]
        path = Path(dog.config)
        fault.notes.append(path.read_text())
        path.write_text(BAD_CONFIG)
        self.lab.signal_daemon(fault.plan.target, signal.SIGHUP)

    def _heal_bad_config(self, fault: Injected) -> None:
        dog = self.lab.fleet.dogs[fault.plan.target]
        Path(dog.config).write_text(fault.notes[0])
        self.lab.signal_daemon(fault.plan.target, signal.SIGHUP)

    # ------------------------------------------------------------ databases

    def _inject_kill_db(self, fault: Injected) -> None:
        # Whoever started the server (we, its binding, its watchdog's pg_ctl): the kill
        # finds its postmaster. Nothing running: the log says so, and nothing is down by
        # this fault (a server its watchdog stopped is down by the watchdog's record).
        if not self.world.servers[fault.plan.target].kill():
            fault.notes.append("already down")
            fault.note = "nothing running to kill: already down"
            return
        fault.down = (fault.plan.target,)

    def _heal_kill_db(self, fault: Injected) -> None:
        """Start it again as its service manager would (``Restart=on-failure``), behind
        the start gate (``ExecStartPre=``), as the docs deploy it in either fence mode."""
        if fault.notes == ["already down"]:
            return
        target = fault.plan.target
        if self.world.servers[target].running:
            fault.notes.append("running again: its binding or its watchdog started it")
            return
        if not self.world.start_behind_gate(target, "the kill_db heal"):
            fault.notes.append("start gate refused")

    def _inject_pause_db(self, fault: Injected) -> None:
        if not self.world.servers[fault.plan.target].pause():
            fault.note = "nothing running to pause: already down"
            return
        fault.down = (fault.plan.target,)

    def _heal_pause_db(self, fault: Injected) -> None:
        if not self.world.servers[fault.plan.target].resume() and fault.down:
            # Its watchdog or its binding killed the frozen postmaster meanwhile.
            fault.notes.append("the paused postmaster was gone")

    # ------------------------------------------------------------ lock store

    def _inject_kill_redis(self, fault: Injected) -> None:
        fault.down = ("redis",)
        fault.server = self.world.lock_master()
        fault.server.kill()

    def _heal_kill_redis(self, fault: Injected) -> None:
        # Empty (no persistence); under Sentinel it rejoins as a replica of the new master.
        fault.server.start()

    def _inject_pause_redis(self, fault: Injected) -> None:
        fault.down = ("redis",)
        fault.server = self.world.lock_master()
        fault.server.pause()

    def _heal_pause_redis(self, fault: Injected) -> None:
        fault.server.resume()

    def _inject_sentinel_failover(self, fault: Injected) -> None:
        """Force a Sentinel failover of the lock store: ``SENTINEL FAILOVER`` (param 0),
        or SIGKILL of the master (param 1). Asynchronous replication may lose the last
        epoch increment or journal write: the epoch floor and the journal must hold."""
        sentinels = self.world.sentinels
        if sentinels is None:
            raise RuntimeError("the world runs no Sentinels (--sentinel)")
        fault.server = self.world.lock_master()
        fault.notes.append(f"master was :{fault.server.port}")
        if fault.plan.param:
            fault.down = ("redis",)
            fault.server.kill()
        else:
            sentinels.force_failover()

    def _heal_sentinel_failover(self, fault: Injected) -> None:
        if fault.plan.param and fault.server.proc is None:
            fault.server.start()  # empty; the Sentinels make it a replica of the new master

    # ------------------------------------------------------------ operator requests

    def _inject_manual_failover(self, fault: Injected) -> None:
        """``POST /v1/failover`` as an operator, to each watchdog until one takes it (the
        others answer 409: not the lock holder); the daemons may refuse it."""
        self._operator(fault, "/v1/failover", {"reason": "chaos campaign"})

    def _heal_manual_failover(self, fault: Injected) -> None:
        pass  # a request is not undone; the quiet period shows where it left the system

    def _inject_switchover(self, fault: Injected) -> None:
        """``POST /v1/switchover`` to the region that is not the primary now (as the
        watchdogs' status says; the initial primary's other region if none answers)."""
        primary = self._primary_region()
        to = REGION[EAST] if primary in (None, REGION[WEST]) else REGION[WEST]
        self._operator(fault, "/v1/switchover", {"to": to})

    def _heal_switchover(self, fault: Injected) -> None:
        pass

    def _operator(self, fault: Injected, path: str, body: dict[str, Any]) -> None:
        statuses = []
        for node in (WEST, EAST):
            status, text = _call(self.lab.api_ports[node], path, body)
            statuses.append(status)
            fault.notes.append(f"{node} {path}: {status} {text[:160]}")
            if 200 <= status < 300:
                return
        if not any(statuses):
            raise RuntimeError(f"no watchdog answered {path}: {'; '.join(fault.notes)}")

    def _primary_region(self) -> str | None:
        for node in (WEST, EAST):
            status, text = _call(self.lab.api_ports[node], "/v1/status", None)
            if status == 200:
                with contextlib.suppress(ValueError, AttributeError):
                    region = json.loads(text).get("primary_region")
                    if isinstance(region, str):
                        return region
        return None

    # ------------------------------------------------------------ links

    def _links(self, fault: Injected) -> list[tuple[str, str]]:
        first, second = fault.plan.target.split("|")
        if fault.plan.kind == "cut_wal":
            return [(EAST_DB, WEST_DB)]
        a, b = SITE_NODES[first], SITE_NODES[second]
        one_way = fault.plan.kind == "cut_one_way"
        return sorted((o, t) for (o, t) in self.lab.links
                      if (o in a and t in b) or (not one_way and o in b and t in a))

    def _cut(self, fault: Injected) -> None:
        fault.cut = tuple(self._links(fault))
        for link in fault.cut:
            if self._cuts[link] == 0:
                self.lab.network.cut(*link)
            self._cuts[link] += 1

    def _heal_cut(self, fault: Injected) -> None:
        for link in fault.cut:
            self._cuts[link] -= 1
            if self._cuts[link] == 0:
                self.lab.network.heal(*link)

    _inject_cut_sites = _inject_cut_one_way = _inject_cut_wal = _cut
    _heal_cut_sites = _heal_cut_one_way = _heal_cut_wal = _heal_cut

    def _inject_slow_link(self, fault: Injected) -> None:
        """Add ``param`` s of latency per chunk to every link between the two sites, both
        ways; a link that slow is down for a probe is also recorded as cut."""
        fault.slowed = tuple(self._links(fault))
        for link in fault.slowed:
            self._delays.setdefault(link, []).append(fault.plan.param)
            self.lab.network.slow(*link, max(self._delays[link]))
        if fault.plan.param * SLOW_AS_CUT_TRIPS >= self.world.timing.timeout:
            fault.cut = fault.slowed

    def _heal_slow_link(self, fault: Injected) -> None:
        for link in fault.slowed:
            delays = self._delays[link]
            delays.remove(fault.plan.param)
            self.lab.network.slow(*link, max(delays, default=0.0))



def _call(port: int, path: str, body: dict[str, Any] | None) -> tuple[int, str]:
    """An operator's request to a watchdog's API (straight to its port: the operator is
    not behind the lab's links); (HTTP status, body), status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5.0) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
