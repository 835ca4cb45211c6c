"""The chaos world: the partition lab, both databases under their watchdogs' control (or
not), application writers, and what the checker needs read back at the end.

Built on :class:`~tests.integration.partition_harness.PartitionLab`: west and east
watchdogs and a witness as real processes, a real PostgreSQL primary and streaming
replica, Redis, every link through its own cuttable forwarder. With ``control`` each
watchdog controls its own region's server (``regions.<r>.database.control``), so it
can stop it and write ``standby.signal``; without it only the SQL fence exists. With
``bound`` (the default) each region's server is bound to its watchdog as the systemd
units bind them (:mod:`tests.chaos.binding`): a dead or hung watchdog stops its server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from agentaskit_dr.sandbox.sentinel import SERVICE, SentinelSet
from tests.chaos.binding import BOUND, Binding, BindingTiming
from tests.chaos.history import FinalState, ServerStart
from tests.chaos.writers import INSERT, SETUP, TABLE, AppWriter, app_dsn
from tests.integration.netcut import Network
from tests.integration.partition_harness import (
    DAEMONS,
    EAST,
    EAST_DB,
    REGION,
    WEST,
    WEST_DB,
    PartitionLab,
    Timing,
)

PEER_TOKEN = "chaos-peer-token"
#: The operator's bearer token (``api.token_file``): the campaign's manual failover and
#: switchover requests carry it.
OPERATOR_TOKEN = "chaos-operator-token"
#: Bound on the start gate and a restarted server coming up.
START_TIMEOUT = 30.0


class ChaosLab(PartitionLab):
    """The partition lab, with each watchdog controlling its own region's server."""

    def __init__(self, *args: Any, control: bool, sentinels: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control = control
        #: The lock store's Sentinels (``host:port``), dialled directly (no cuttable link).
        self.sentinels = sentinels
        #: Per daemon, the last lines SIGKILL cut in the middle (not the daemon's doing).
        self.torn: dict[str, list[str]] = {}
        #: The service manager's binding, when the world runs one.
        self.binding: Binding | None = None

    def environment(self, node: str) -> dict[str, str] | None:
        return None if self.binding is None else self.binding.environment(node)

    def kill(self, node: str) -> None:
        """SIGKILL ``node``; a log line it was writing is ended, and noted as torn."""
        super().kill(node)
        path = self.fleet.dogs[node].log_path
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.torn.setdefault(node, []).append(
                data.rsplit(b"\n", 1)[-1].decode(errors="replace"))
            with path.open("ab") as log:
                log.write(b"\n")

    def config_overrides(self, node: str) -> dict[str, Any]:
        config = super().config_overrides(node)
        # A peer credential: without one a watchdog refuses its peer's fence request
        # (HTTP 403) and the promotion goes ahead on the self-fence alone.
        token = self.workdir / "peer-token"
        if not token.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            token.write_text(PEER_TOKEN + "\n")
        config["api"]["peer_token_file"] = str(token)
        operator = self.workdir / "operator-token"
        if not operator.exists():
            operator.write_text(OPERATOR_TOKEN + "\n")
        config["api"]["token_file"] = str(operator)
        if self.sentinels:
            config["lock"]["sentinels"] = list(self.sentinels)
            config["lock"]["service_name"] = SERVICE
        if self.control and node in (WEST, EAST):
            server = self.pair.primary if node == WEST else self.pair.replica
            config["regions"][REGION[node]]["database"]["control"] = {
                "data_directory": str(server.datadir), "bin_dir": str(server.bindir),
                "os_user": "postgres", "stop_timeout": "3s",
            }
        if self.binding is not None and node in BOUND:
            timing = self.binding.timing
            config["binding"] = {"liveness_timeout": f"{timing.watchdog_sec}s",
                                 "postgres_stop_timeout": f"{timing.postgres_stop}s"}
        return config

    def signal_daemon(self, node: str, sig: signal.Signals) -> None:
        proc = self.fleet.dogs[node].proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"daemon {node} is not running")
        proc.send_signal(sig)

    def exited(self) -> list[str]:
        """Daemons that are not running though nothing killed them on purpose."""
        return [node for node in DAEMONS
                if node not in self._killed
                and (self.fleet.dogs[node].proc is None
                     or self.fleet.dogs[node].proc.poll() is not None)]  # type: ignore[union-attr]


class World:
    """Everything of one run, started in ``__enter__`` and torn down in ``__exit__``."""

    def __init__(self, workdir: Path, *, control: bool = True, bound: bool = True,
                 timing: Timing | None = None, binding: BindingTiming | None = None,
                 sentinel: bool = False) -> None:
        self.workdir = workdir
        self.control = control
        self.bound = bound
        #: The lock store as a Sentinel-managed master and replica (three Sentinels).
        self.sentinels = SentinelSet() if sentinel else None
        self.timing = timing or Timing()
        #: One lock per watchdog, over its process and its server: the fault catalog and
        #: the binding never act on one of them at the same time.
        self.locks = {node: threading.RLock() for node in BOUND}
        self.binding: Binding | None = None
        self._binding_timing = binding
        self.pair = PostgresPair()
        self.redis = RedisServer()
        self.network: Network | None = None
        self.lab: ChaosLab | None = None
        self.writers: list[AppWriter] = []
        #: Every server this world started again (the checker: up from then).
        self.starts: list[ServerStart] = []
        self._stack = contextlib.ExitStack()

    @property
    def servers(self) -> dict[str, PostgresServer]:
        return {WEST_DB: self.pair.primary, EAST_DB: self.pair.replica}

    def __enter__(self) -> World:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.pair)
            if self.sentinels is not None:
                stack.enter_context(self.sentinels)
                self.redis = self.sentinels.master
            else:
                stack.enter_context(self.redis)
            self.network = Network()
            stack.callback(self.network.close)
            for statement in SETUP:
                self.pair.primary.sql(statement)
            self.pair.wait_replayed()
            lab = ChaosLab(self.pair, self.redis, self.network, self.workdir / "daemons",
                           self.timing, control=self.control,
                           sentinels=self.sentinels.addresses if self.sentinels else None)
            stack.enter_context(lab)
            self.lab = lab
            if self.bound:
                timing = self._binding_timing or BindingTiming.scaled(self.timing)
                self.binding = Binding(
                    lab, self.servers,
                    lambda db: self.start_behind_gate(db, "the binding (its watchdog READY)"),
                    timing, self.locks)
                lab.binding = self.binding
                self.binding.start()
                stack.callback(self.binding.close)
            lab.start()
            lab.wait_healthy()
            ports = {name: server.port for name, server in self.servers.items()}
            self.writers = [
                # Both applications recycle their connections (a pool's lifetime), so
                # each keeps trying its own region's server first: west's app knocks on
                # the old primary after a failover, east's on a server promoted early.
                AppWriter("app-west", ports, recycle_after=10),
                AppWriter("app-east", dict(reversed(list(ports.items()))), recycle_after=25),
            ]
            for writer in self.writers:
                writer.start()
                stack.callback(writer.stop)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.binding is not None:  # no more restarts while everything stops
            self.binding.close()
        # Resume anything paused first, or the teardown's stops hang on it.
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.resume()
        for redis in ((self.sentinels.master, self.sentinels.replica) if self.sentinels
                      else (self.redis,)):
            with contextlib.suppress(Exception):
                redis.resume()
        self._stack.close()

    def lock_master(self) -> RedisServer:
        """The lock store's Redis taking writes now (under Sentinel: the one they name)."""
        return self.sentinels.master_server() if self.sentinels is not None else self.redis

    @contextlib.contextmanager
    def holding(self, target: str) -> Iterator[None]:
        """Hold the lock of the watchdog ``target`` is (or whose server it is), if any."""
        owner = {db: node for node, db in BOUND.items()}.get(target, target)
        lock = self.locks.get(owner)
        if lock is None:
            yield
            return
        with lock:
            yield

    def start_behind_gate(self, target: str, by: str) -> bool:
        """Start server ``target`` as its service manager would, behind the start gate
        (``ExecStartPre=``); False when the gate refused (the server stays down). A start
        is recorded in :attr:`starts` once the server answers (``by``: what started it)."""
        assert self.lab is not None
        node = WEST if target == WEST_DB else EAST
        dog = self.lab.fleet.dogs[node]
        done = subprocess.run(
            [sys.executable, "-m", "agentaskit_dr", "start-gate", "--config", str(dog.config),
             "--region", REGION[node]],
            capture_output=True, timeout=START_TIMEOUT, check=False)
        if done.returncode != 0:
            return False
        self.servers[target].start(START_TIMEOUT, accepting=False)
        self.starts.append(ServerStart(target, time.time(), by))
        return True

    def stop_writers(self) -> None:
        for writer in self.writers:
            writer.stop()

    # ------------------------------------------------------------ the end state

    def final_state(self) -> FinalState:
        """Probe writes as the application, each server's role and rows, each daemon's
        status; after the writers stopped."""
        final = FinalState()
        for name, server in self.servers.items():
            final.in_recovery[name] = _in_recovery(server)
            if _takes_a_write(server.port, name):
                final.writable.append(name)
            rows = _rows(server)
            if rows is not None:
                final.rows[name] = rows
        if len(final.writable) == 1:
            primary = self.servers[final.writable[0]]
            with contextlib.suppress(Exception):
                final.streaming = primary.sql(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    timeout=5) != "0"
        assert self.lab is not None
        for node in DAEMONS:
            final.status[node] = _status(self.lab.api_ports[node])
        return final


def _in_recovery(server: PostgresServer) -> bool | None:
    try:
        answer = server.sql("SELECT pg_is_in_recovery()", timeout=5)
    except Exception:
        return None
    return {"t": True, "f": False}.get(answer)


def _rows(server: PostgresServer) -> set[str] | None:
    try:
        answer = server.sql(f"SELECT id FROM {TABLE}", timeout=10)
    except Exception:
        return None
    return set(answer.split())


def _takes_a_write(port: int, name: str) -> bool:
    """A real write as the application's role, as a client would try it."""

    async def attempt() -> bool:
        try:
            conn = await asyncpg.connect(app_dsn(port), timeout=3)
        except Exception:
            return False
        try:
            await conn.execute("SET default_transaction_read_only = off")
            await conn.fetchrow(INSERT, f"probe-{name}", "checker", timeout=3)
        except Exception:
            return False
        finally:
            conn.terminate()
        return True

    return asyncio.run(attempt())


def _status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=3) as answer:
            status = json.loads(answer.read())
    except Exception:
        return None
    return status if isinstance(status, dict) else None
