"""systemd's ``BindsTo=`` between a region's PostgreSQL and its watchdog, emulated in the
chaos world (docs/deploy.md, "The primary's life bound to its watchdog").

What the deployment does, and this supervisor plays at the world's scaled timings:

- ``agentaskit-dr.service`` is ``Type=notify`` with ``WatchdogSec=``: each watchdog gets its
  own ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``; one that sends no ``WATCHDOG=1`` for
  ``watchdog_sec`` (frozen, or its engine stalled) is killed, as systemd does (SIGABRT
  plus SIGCONT, then SIGKILL; here SIGKILL at once);
- ``Restart=on-failure`` with ``RestartSec=``: a dead watchdog is started again
  ``restart_sec`` later;
- the PostgreSQL unit's drop-in ``BindsTo=agentaskit-dr.service`` + ``After=``: while the
  watchdog is not active its server is stopped. A frozen (SIGSTOPped) postmaster does
  not stop on a request, so this is SIGKILL of the postmaster and its backends, which is
  where systemd's stop of a frozen server ends (``TimeoutStopSec=``);
- ``Wants=`` from the watchdog's unit: once the restarted watchdog is READY, the server
  it stopped is started again behind the start gate (``ExecStartPre=``). A server down
  for another reason (a fault, a fence) is left to whatever stopped it.

Every stop and kill is also a fault record (``binding_stop``, ``binding_kill``): the
checker must count a server the binding stopped as down, as it counts a self-fence.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentaskit_dr.local_servers.postgres import PostgresServer
from tests.chaos.history import FaultRecord
from tests.integration.partition_harness import EAST, EAST_DB, WEST, WEST_DB, Timing
from tests.notify_socket import NotifySocket

if TYPE_CHECKING:
    from tests.chaos.world import ChaosLab

#: Each watchdog and the server bound to it.
BOUND = {WEST: WEST_DB, EAST: EAST_DB}
_POLL = 0.05


@dataclass(frozen=True, slots=True)
class BindingTiming:
    """The units' timing, scaled like the world's thresholds.

    In production ``WatchdogSec=30s`` and ``RestartSec=2s`` sit under a 120 s
    ``db_unreachable``; here the watchdog timeout is the same quarter of the threshold.
    ``postgres_stop`` is what the daemons are told the server's stop takes
    (``binding.postgres_stop_timeout``): a SIGKILL, well under it.
    """

    watchdog_sec: float
    restart_sec: float
    postgres_stop: float = 0.2

    @classmethod
    def scaled(cls, timing: Timing) -> BindingTiming:
        return cls(watchdog_sec=round(timing.db_unreachable / 4, 3),
                   restart_sec=max(0.5, round(timing.db_unreachable * 2 / 120, 3)))


@dataclass(slots=True)
class _Unit:
    """What the supervisor knows of one watchdog incarnation."""

    pid: int | None = None
    started: float = 0.0  # time.monotonic() it was seen started
    ready: bool = False
    last_pet: float = 0.0
    dead_since: float | None = None
    seen: int = 0  # notify messages already read
    stopped_server: float | None = None  # wall clock the binding stopped the server
    kill_started: float | None = None  # wall clock of our watchdog kill
    restarts: list[float] = field(default_factory=list)


class Binding:
    """Supervises the west and east watchdogs and binds each region's server to them.

    ``lab`` is the :class:`~tests.chaos.world.ChaosLab` (kill, restart, fleet), ``servers``
    the servers by node name, ``start_server(db)`` starts a server behind its start gate
    (False when the gate refused), ``locks`` one lock per watchdog, shared with the fault
    catalog, covering that watchdog's process and its server.
    """

    def __init__(self, lab: ChaosLab, servers: dict[str, PostgresServer],
                 start_server: Callable[[str], bool], timing: BindingTiming,
                 locks: dict[str, threading.RLock]) -> None:
        self.lab = lab
        self.servers = servers
        self.start_server = start_server
        self.timing = timing
        self.locks = locks
        self.sockets = {node: NotifySocket("abstract") for node in BOUND}
        self.units = {node: _Unit() for node in BOUND}
        #: binding_stop and binding_kill records, closed or still open (end None).
        self.records: list[FaultRecord] = []
        self.notes: list[str] = []
        #: Watchdogs that exited though nothing killed them (restarted, but a failure the
        #: checker must still see).
        self.crashed: list[str] = []
        self._open: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._supervise, args=(node,),
                                          name=f"binding-{node}", daemon=True)
                         for node in BOUND]

    def environment(self, node: str) -> dict[str, str] | None:
        """The daemon's environment under its unit: a notify socket and the watchdog."""
        if node not in BOUND:
            return None
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = self.sockets[node].address
        env["WATCHDOG_USEC"] = str(int(self.timing.watchdog_sec * 1_000_000))
        env.pop("WATCHDOG_PID", None)
        return env

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)
        for sock in self.sockets.values():
            sock.close()
        for (kind, target), began in sorted(self._open.items()):
            self.records.append(FaultRecord(kind, target, began, None, down=(target,)))
        self._open.clear()

    def fault_records(self) -> list[FaultRecord]:
        """Every record so far, the open ones with no end (still down)."""
        open_now = [FaultRecord(kind, target, began, None, down=(target,))
                    for (kind, target), began in self._open.items()]
        return sorted([*self.records, *open_now], key=lambda f: f.start)

    def restarted_after(self, node: str, since: float) -> float | None:
        """When the binding started ``node`` again after ``since`` (wall clock), if it did."""
        later = [at for at in self.units[node].restarts if at >= since] if node in BOUND else []
        return min(later) if later else None

    # ------------------------------------------------------------ the supervisor

    def _supervise(self, node: str) -> None:
        while not self._stop.is_set():
            with self.locks[node]:
                self._step(node)
            time.sleep(_POLL)

    def _step(self, node: str) -> None:
        unit = self.units[node]
        dog = self.lab.fleet.dogs.get(node)
        proc = dog.proc if dog is not None else None
        now = time.monotonic()
        if proc is None:
            return
        if proc.pid != unit.pid:  # started (again), by us or by a fault's heal
            unit.pid, unit.started, unit.ready = proc.pid, now, False
            unit.last_pet, unit.dead_since = now, None
            unit.seen = len(self.sockets[node].received())
            self._close_record("binding_kill", node)
        if proc.poll() is None:
            self._read_notifications(node, unit)
            if unit.ready and now - unit.last_pet > self.timing.watchdog_sec:
                self.notes.append(f"{node}: no WATCHDOG=1 for {now - unit.last_pet:.2f}s: "
                                  "killed")
                self._open[("binding_kill", node)] = time.time()
                self.lab.kill(node)
                return
            if unit.ready and unit.stopped_server is not None:
                self._start_bound_server(node, unit)
            return
        if unit.dead_since is None:  # the unit left active: BindsTo= stops the server
            unit.dead_since = now
            if node in self.lab.live():  # nothing killed it on purpose: it exited
                self.crashed.append(node)
                self.notes.append(f"{node}: exited by itself ({proc.returncode})")
            self._stop_bound_server(node, unit)
        if now - unit.dead_since >= self.timing.restart_sec:
            unit.restarts.append(time.time())
            self.lab.restart(node)

    def _read_notifications(self, node: str, unit: _Unit) -> None:
        messages = self.sockets[node].received()
        for message in messages[unit.seen:]:
            if message.at < unit.started:
                continue  # a datagram of the previous incarnation
            if "READY" in message:
                unit.ready = True
                unit.last_pet = max(unit.last_pet, message.at)
            if "WATCHDOG" in message:
                unit.last_pet = max(unit.last_pet, message.at)
        unit.seen = len(messages)

    def _stop_bound_server(self, node: str, unit: _Unit) -> None:
        # Whoever started it (we, or its watchdog's pg_ctl); works on a SIGSTOPped
        # postmaster too. Nothing running: nothing to stop.
        if not self.servers[BOUND[node]].kill():
            return
        unit.stopped_server = time.time()
        self._open[("binding_stop", BOUND[node])] = unit.stopped_server
        self.notes.append(f"{BOUND[node]}: stopped, {node} is not active")

    def _start_bound_server(self, node: str, unit: _Unit) -> None:
        db = BOUND[node]
        unit.stopped_server = None
        if self.servers[db].running:
            self._close_record("binding_stop", db)
            return
        try:
            started = self.start_server(db)
        except Exception as exc:  # the record stays open: the server stays down
            self.notes.append(f"{db}: start failed: {type(exc).__name__}: {exc}"[:300])
            return
        if started:
            self._close_record("binding_stop", db)
            self.notes.append(f"{db}: started again behind its start gate, {node} is ready")
        else:
            self.notes.append(f"{db}: the start gate refused the start")

    def _close_record(self, kind: str, target: str) -> None:
        began = self._open.pop((kind, target), None)
        if began is not None:
            self.records.append(FaultRecord(kind, target, began, time.time(),
                                            down=(target,)))
