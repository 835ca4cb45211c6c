"""Three daemons at three sites with every link between them cuttable: the partition lab.

Nodes, by the names the :class:`~tests.integration.netcut.Network` knows them:

- site ``west`` (us-west-2, the primary's region): the watchdog ``west``, ``west-db`` (the
  PostgreSQL primary) and ``west-health`` (the region's health endpoint);
- site ``east`` (us-east-1): the watchdog ``east``, ``east-db`` (the streaming replica)
  and ``east-health``;
- ``witness``: a daemon with role witness at a third site;
- ``redis``: the lock store, at yet another place.

Every daemon reaches every target through a link of its own (a forwarder port from
``network.link``): its DSNs, health URLs, lock URL and its peers' and witness's API URLs,
in-region links included. The replica streams from the primary over the link
``east-db -> west-db``, so cutting the primary's site off also stops replication. Daemon
API ports are fixed before start so every config can name its peers.

Logs are read incrementally: a poll every 50 ms over three growing logs would otherwise
re-parse thousands of lines and starve the daemons on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from agentaskit_dr.local_servers.tcp import wait_for_port
from agentaskit_dr.sandbox.drill import event_time
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import Event, Predicate, WatchdogFleet, wait_until
from tests.integration.netcut import Network

WEST, EAST, WITNESS = "west", "east", "witness"
WEST_DB, EAST_DB = "west-db", "east-db"
WEST_HEALTH, EAST_HEALTH = "west-health", "east-health"
REDIS = "redis"
DAEMONS = (WEST, EAST, WITNESS)
WATCHDOGS = (WEST, EAST)
REGION = {WEST: "us-west-2", EAST: "us-east-1", WITNESS: "witness-site"}
#: The nodes of each region's site; the witness and the lock store are sites of their own.
SITES = {WEST: (WEST, WEST_DB, WEST_HEALTH), EAST: (EAST, EAST_DB, EAST_HEALTH)}
#: Bound on starting the three daemons and their first healthy assessment.
READY_TIMEOUT = 25.0
WRITES_TABLE = "partition_writes"


@dataclass(frozen=True, slots=True)
class Timing:
    """The daemons' timing (seconds), scaled down so a partition plays out in seconds.

    The probe interval is 0.5 s rather than the fleet's 0.4 s: three Python daemons and
    two PostgreSQL servers share two cores here. ``db_unreachable`` must leave room for
    ``stale_after`` + ``fence_after`` + two intervals and a timeout, so the cut-off primary
    side fences before the other side may promote; ``fence_after`` must stay below the
    config's ``self_fence_budget`` (it refuses anything else). The lock TTL is
    three socket timeouts, the least the config allows, so a takeover is quick.
    """

    interval: float = 0.5
    timeout: float = 0.4
    db_unreachable: float = 5.5
    region_unhealthy: float = 8.0
    fence_after: float = 2.0
    lock_ttl: float = 3.0
    socket_timeout: float = 0.5

    @property
    def stale_after(self) -> float:
        """How long a peer's report stays fresh (``runtime.outlook.stale_after``)."""
        return 2 * self.interval + self.timeout


def is_alert(containing: str, *, since: float | None = None) -> Predicate:
    """An ``alert`` event (logged at or after ``since``) whose message contains ``containing``."""
    return lambda e: (e.get("event") == "alert" and containing in str(e.get("message"))
                      and (since is None or event_time(e) >= since))


def is_assessment(verdict: str, *, since: float | None = None) -> Predicate:
    """A ``verdict`` event carrying the assessment ``verdict`` (``healthy``, ``degraded``...)."""
    return lambda e: (e.get("event") == "verdict" and e.get("assessment") == verdict
                      and (since is None or event_time(e) >= since))


class EventLog:
    """One daemon's JSON log, parsed as it grows; each event gets ``watchdog``: the node."""

    def __init__(self, node: str, path: Path) -> None:
        self.node = node
        self.path = path
        self.events: list[Event] = []
        self._offset = 0
        self._partial = b""

    def refresh(self) -> list[Event]:
        """Parse what was appended since the last call; every event so far."""
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return self.events
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    event["watchdog"] = self.node
                    self.events.append(event)
        return self.events


class PartitionLab:
    """The three daemons over ``pair`` and ``redis``, every link made through ``network``.

    A context manager: on the way out every daemon gets SIGTERM at once (then SIGKILL
    after 10 s) and the health endpoints close. The network and the servers belong to
    the caller (the test's fixtures), which closes them afterwards.
    """

    def __init__(
        self, pair: PostgresPair, redis: RedisServer, network: Network, workdir: Path,
        timing: Timing | None = None,
    ) -> None:
        self.pair = pair
        self.redis = redis
        self.network = network
        self.workdir = workdir
        self.timing = timing or Timing()
        self.api_ports = {node: api_port() for node in DAEMONS}
        self.links: dict[tuple[str, str], int] = {}
        self.logs: dict[str, EventLog] = {}
        self.fleet = WatchdogFleet(pair, redis, workdir, threshold=self.timing.db_unreachable,
                                   interval=self.timing.interval)
        self._target_ports: dict[str, int] = {}
        self._killed: set[str] = set()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> PartitionLab:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.fleet)
            # LIFO: all daemons get SIGTERM together before the fleet stops them one by one.
            stack.callback(self._terminate_all)
            self._target_ports = {
                WEST_DB: self.pair.primary.port, EAST_DB: self.pair.replica.port,
                WEST_HEALTH: _port_of(self.fleet.health[REGION[WEST]]),
                EAST_HEALTH: _port_of(self.fleet.health[REGION[EAST]]),
                REDIS: self.redis.port, **self.api_ports,
            }
            self.route_replication()
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()

    # ------------------------------------------------------------ wiring

    def link(self, observer: str, target: str) -> int:
        """The port ``observer`` dials to reach ``target`` (made on first use)."""
        port = self.network.link(observer, target, self._target_ports[target])
        self.links[observer, target] = port
        return port

    def route_replication(self, timeout: float = 10.0) -> None:
        """Make the replica stream through the link ``east-db -> west-db``."""
        port = self.link(EAST_DB, WEST_DB)
        conninfo = f"host=127.0.0.1 port={port} user=postgres application_name=replica"
        # Two statements: ALTER SYSTEM refuses to run inside a (multi-statement) transaction.
        self.pair.replica.sql(f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'")
        self.pair.replica.sql("SELECT pg_reload_conf()")
        wait_until(
            lambda: self.pair.replica.sql(
                "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'"
            ) == str(port),
            timeout, what=f"the replica streaming through the east-db->west-db link (:{port})",
            hint=self.pair.replica.log_tail(),
        )

    def config_overrides(self, node: str) -> dict[str, Any]:
        """What ``node``'s config changes in the drill's: every address goes through a link."""
        timing = self.timing

        def api(target: str) -> str:
            return f"http://127.0.0.1:{self.link(node, target)}"

        def region(db: str, health: str) -> dict[str, Any]:
            path = urlsplit(self.fleet.health[REGION[SITE_OF[health]]]).path
            return {
                "health_urls": [f"{api(health)}{path}"],
                "database": {"dsn": f"postgresql://postgres@127.0.0.1:{self.link(node, db)}"
                                    "/postgres"},
            }

        config: dict[str, Any] = {
            "role": "witness" if node == WITNESS else "watchdog",
            "regions": {REGION[WEST]: region(WEST_DB, WEST_HEALTH),
                        REGION[EAST]: region(EAST_DB, EAST_HEALTH)},
            "thresholds": {
                "db_unreachable": f"{timing.db_unreachable}s",
                "region_unhealthy": f"{timing.region_unhealthy}s",
                "recovery": f"{timing.db_unreachable}s",
                "retry_backoff": f"{timing.interval * 2}s",
            },
            "probe": {"interval": f"{timing.interval}s", "timeout": f"{timing.timeout}s",
                      "jitter": 0.1},
            "lock": {"url": f"redis://127.0.0.1:{self.link(node, REDIS)}/0",
                     "ttl": f"{timing.lock_ttl}s", "socket_timeout": f"{timing.socket_timeout}s"},
            "api": {"listen": f"127.0.0.1:{self.api_ports[node]}"},
            "evidence_dir": str(self.workdir / f"evidence-{node}"),
        }
        if node == WITNESS:
            config["peers"] = [api(WEST), api(EAST)]
        else:
            config["peers"] = [api(EAST if node == WEST else WEST)]
            config["witness"] = api(WITNESS)
            config["fence_after"] = f"{timing.fence_after}s"
        return config

    def environment(self, node: str) -> dict[str, str] | None:
        """The environment ``node``'s daemon runs with; None: the test's own."""
        return None

    # ------------------------------------------------------------ processes

    def start(self) -> None:
        """Start the witness and east, then west once their APIs listen.

        A watchdog that has not heard its peers yet counts as isolated; the primary-side
        one would fence its own primary if the others took longer than ``fence_after`` to
        come up, so it starts last.
        """
        for node in (WITNESS, EAST, WEST):
            if node == WEST:
                for other in (WITNESS, EAST):
                    wait_for_port(self.api_ports[other], READY_TIMEOUT,
                                  proc=self.fleet.dogs[other].proc)
            dog = self.fleet.start(REGION[node], name=node, overrides=self.config_overrides(node),
                                   env=self.environment(node))
            self.logs[node] = EventLog(node, dog.log_path)

    def wait_healthy(self, timeout: float = READY_TIMEOUT) -> str:
        """Wait until every daemon assessed the primary healthy and a watchdog holds the
        lock; the lock holder's name."""
        deadline = time.monotonic() + timeout
        for node in DAEMONS:
            self.wait_for(is_assessment("healthy"), deadline - time.monotonic(),
                          what=f"a healthy assessment by {node}", nodes=[node])
        acquired = self.wait_for(lambda e: e.get("event") == "lock_acquired",
                                 deadline - time.monotonic(), what="lock_acquired",
                                 nodes=WATCHDOGS)
        return str(acquired["watchdog"])

    def kill(self, node: str) -> None:
        """SIGKILL ``node``'s daemon, as if its host died; waits leave it out from now on."""
        dog = self.fleet.dogs[node]
        if dog.proc is None or dog.proc.poll() is not None:
            raise AssertionError(f"{node} is not running; see {dog.log_path}")
        dog.proc.kill()
        dog.proc.wait()
        self._killed.add(node)

    def restart(self, node: str) -> None:
        """Start a killed daemon again with the same config and environment, appending to
        its log; waits count it again."""
        dog = self.fleet.dogs[node]
        with dog.log_path.open("ab") as out:
            dog.proc = subprocess.Popen(
                [sys.executable, *dog.entry, "run", "--config", str(dog.config)],
                stdout=out, stderr=subprocess.STDOUT, env=self.environment(node))
        self._killed.discard(node)

    def live(self) -> list[str]:
        """The daemons not killed on purpose."""
        return [node for node in self.logs if node not in self._killed]

    def _terminate_all(self) -> None:
        for dog in self.fleet.dogs.values():
            if dog.proc is not None and dog.proc.poll() is None:
                dog.proc.send_signal(signal.SIGTERM)
        for dog in self.fleet.dogs.values():
            if dog.proc is not None:
                try:
                    dog.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    dog.proc.kill()
                    dog.proc.wait()

    # ------------------------------------------------------------ partitions

    def cut(self, links: Iterable[tuple[str, str]]) -> None:
        """Cut each (observer, target) link; connections over them hang."""
        for observer, target in links:
            self.network.cut(observer, target)

    def links_between(self, inside: Iterable[str]) -> list[tuple[str, str]]:
        """Every link between a node of ``inside`` and a node outside it, both ways."""
        group = set(inside)
        return [(a, b) for a, b in self.links if (a in group) != (b in group)]

    def isolate_site(self, site: str) -> list[tuple[str, str]]:
        """Cut every link between ``site`` (``west`` or ``east``: its watchdog, database
        and health endpoint) and everything else, both ways; the links cut."""
        cut = self.links_between(SITES[site])
        self.cut(cut)
        return cut

    def isolate(self, node: str) -> None:
        """Cut every link ``node`` observes through and every link others reach it by."""
        self.network.isolate(node)

    # ------------------------------------------------------------ logs

    def events(self, predicate: Predicate | None = None,
               nodes: Iterable[str] | None = None) -> list[Event]:
        """Every event of ``nodes`` (default: all) matching ``predicate``, in time order."""
        found = [event for node in (self.logs if nodes is None else nodes)
                 for event in self.logs[node].refresh()
                 if predicate is None or predicate(event)]
        return sorted(found, key=event_time)

    def wait_for(self, predicate: Predicate, timeout: float, *, what: str,
                 nodes: Iterable[str] | None = None) -> Event:
        """The first event of ``nodes`` (default: :meth:`live`) matching ``predicate``,
        polling for ``timeout`` s; fails naming ``what`` and the logs, or at once when a
        watched daemon exits."""
        watched = list(self.live() if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        scanned = dict.fromkeys(watched, 0)
        while True:
            self._check_running(watched, what)
            found = self._scan(predicate, scanned)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {what} within {timeout:g}s\n{self.describe()}")
            time.sleep(0.05)

    def assert_absent(self, predicate: Predicate, until: float, *, what: str,
                      nodes: Iterable[str] | None = None) -> None:
        """Poll until ``until`` (``time.monotonic()``) and fail at the first matching event
        (of any time) or when a watched daemon exits."""
        watched = list(self.live() if nodes is None else nodes)
        scanned = dict.fromkeys(watched, 0)
        while True:
            self._check_running(watched, what)
            found = self._scan(predicate, scanned)
            if found:
                raise AssertionError(f"unexpected {what}: {found[0]}\n{self.describe()}")
            if time.monotonic() >= until:
                return
            time.sleep(0.1)

    def _scan(self, predicate: Predicate, scanned: dict[str, int]) -> list[Event]:
        """Matching events among those logged since the last scan (``scanned``: how many
        of each node's events were looked at already), in time order."""
        found = []
        for node, seen in scanned.items():
            events = self.logs[node].refresh()
            found += [event for event in events[seen:] if predicate(event)]
            scanned[node] = len(events)
        return sorted(found, key=event_time)

    def _check_running(self, nodes: list[str], what: str) -> None:
        for node in nodes:
            dog = self.fleet.dogs[node]
            if dog.proc is not None and dog.proc.poll() is not None:
                raise AssertionError(f"daemon {node} exited ({dog.proc.returncode}) while "
                                     f"waiting for {what}\n{self.describe()}")

    def describe(self) -> str:
        """Log files, latest verdicts and assessments, and the links cut, for failures."""
        lines = [f"daemon logs in {self.workdir}:"]
        for node, log in self.logs.items():
            verdicts = [e for e in log.refresh() if e.get("event") == "verdict"]
            last = (f"{verdicts[-1].get('assessment')}: {verdicts[-1].get('verdict')}"
                    if verdicts else "(no verdict yet)")
            proc = self.fleet.dogs[node].proc
            code = proc.poll() if proc is not None else "not started"
            lines.append(f"  {node}: {log.path} (exit code {code}); last verdict: {last}")
        cut_ports = self.network.firewall.cut_ports()
        cut = [f"{a}->{b}" for (a, b), port in self.links.items() if port in cut_ports]
        lines.append(f"links cut: {', '.join(cut) or 'none'}")
        return "\n".join(lines)


SITE_OF = {node: site for site, nodes in SITES.items() for node in nodes}


def api_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a daemon's API.

    ``free_port()`` picks from the ephemeral range, which every forwarder and client
    socket draws from too: an API port chosen before the forwarders exist and bound
    seconds later was taken meanwhile (``api_listen_failed``: address already in use).
    Nothing is handed a port below that range unless it asks for it.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port between 10000 and {low}")


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise ValueError(f"no port in {url}")
    return port


class Writer:
    """An application writing to one server: every ``every`` s it tries a short INSERT
    (``timeout`` s at most) and records when one committed, as ``time.monotonic()``.

    Runs asyncpg on its own event loop in its own thread, so it keeps writing while the
    test blocks. It dials the server directly, never through a link: it stands for the
    applications of the server's own region.
    """

    def __init__(self, name: str, port: int, *, every: float = 0.05,
                 timeout: float = 0.3) -> None:
        self.name = name
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.every = every
        self.timeout = timeout
        self.successes: list[float] = []
        self.failures = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)

    @staticmethod
    def create_table(pair: PostgresPair) -> None:
        """The table writers insert into, on the primary and replayed on the replica."""
        pair.primary.sql(f"CREATE TABLE IF NOT EXISTS {WRITES_TABLE} "
                         "(side text, at timestamptz DEFAULT clock_timestamp())")
        pair.wait_replayed()

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError(f"writer {self.name} did not stop within 10s")

    def describe(self) -> str:
        return (f"writer {self.name}: {len(self.successes)} writes, {self.failures} failures, "
                f"last error: {self.last_error or 'none'}")

    def _run(self) -> None:
        asyncio.run(self._write_until_stopped())

    async def _write_until_stopped(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while not self._stop.is_set():
                conn = await self._attempt(conn)
                await asyncio.sleep(self.every)
        finally:
            if conn is not None:
                conn.terminate()

    async def _attempt(self, conn: asyncpg.Connection | None) -> asyncpg.Connection | None:
        """One INSERT; the connection to use next time (None: reconnect)."""
        try:
            if conn is None:
                conn = await asyncpg.connect(
                    self.dsn, timeout=self.timeout,
                    server_settings={"application_name": f"writer-{self.name}"},
                )
            await conn.execute(f"INSERT INTO {WRITES_TABLE} (side) VALUES ($1)", self.name,
                               timeout=self.timeout)
        except Exception as exc:  # any failure is a write that did not happen
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            # A refusal by the server (read-only) leaves the session usable; anything
            # else (timeout, reset, terminated session) may not (docs/operations-notes.md).
            if conn is not None and (not isinstance(exc, asyncpg.PostgresError)
                                     or conn.is_closed()):
                conn.terminate()
                return None
            return conn
        self.successes.append(time.monotonic())
        return conn
