"""Application writers: insert continuously into whichever server accepts writes.

Each writer stands for an application whose connection string names both servers
(``host=a,b``, ``target_session_attrs=read-write``): it keeps one connection while it
works, and on any error drops it and tries the hosts in order again. It logs in as the
application's role (not a superuser, not the watchdog's), so a role fence applies to
it. Every acknowledged commit is recorded as a :class:`~tests.chaos.history.Commit`
with the server and timeline the INSERT itself returned.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import asyncpg

from tests.chaos.history import Commit

TABLE = "chaos_writes"
APP_ROLE = "chaos_app"
SETUP = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, writer text NOT NULL, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp())",
    f"CREATE ROLE {APP_ROLE} LOGIN",
    f"GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}",
)
INSERT = (f"INSERT INTO {TABLE} (id, writer) VALUES ($1, $2) "
          "RETURNING inet_server_port(), pg_walfile_name(pg_current_wal_lsn())")


def timeline_of(walfile: str) -> int:
    """The timeline in a WAL file name (its first 8 hex digits)."""
    return int(walfile[:8], 16)


def app_dsn(port: int) -> str:
    return f"postgresql://{APP_ROLE}@127.0.0.1:{port}/postgres"


class AppWriter:
    """One application: ``hosts`` (server name → port) in the order it tries them."""

    def __init__(self, name: str, hosts: Mapping[str, int], *, every: float = 0.05,
                 timeout: float = 1.0, recycle_after: int | None = None) -> None:
        self.name = name
        #: Reconnect (hosts in order again) after this many writes on one connection,
        #: as a pool with a connection lifetime does; None keeps a working connection.
        self.recycle_after = recycle_after
        self.hosts = dict(hosts)
        self.every = every
        self.timeout = timeout
        self.commits: list[Commit] = []
        self.failures = 0
        self.last_error = ""
        self._server_of = {port: server for server, port in self.hosts.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)
        self._seq = 0

    def start(self) -> AppWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        if self._thread.is_alive():
            raise RuntimeError(f"writer {self.name} did not stop within 15s")

    def describe(self) -> str:
        return (f"writer {self.name}: {len(self.commits)} commits, {self.failures} failures, "
                f"last error: {self.last_error or 'none'}")

    def _run(self) -> None:
        asyncio.run(self._write_until_stopped())

    async def _write_until_stopped(self) -> None:
        conn: asyncpg.Connection | None = None
        used = 0
        try:
            while not self._stop.is_set():
                if conn is not None and self.recycle_after and used >= self.recycle_after:
                    conn.terminate()
                    conn = None
                if conn is None:
                    conn = await self._connect(list(self.hosts.values()))
                    used = 0
                if conn is not None:
                    used += 1
                    if not await self._insert(conn):
                        conn.terminate()
                        conn = None
                await asyncio.sleep(self.every)
        finally:
            if conn is not None:
                conn.terminate()

    async def _connect(self, ports: Sequence[int]) -> asyncpg.Connection | None:
        """The first host that accepts a session and is not read-only."""
        for port in ports:
            try:
                conn = await asyncpg.connect(
                    app_dsn(port), timeout=self.timeout,
                    server_settings={"application_name": f"writer-{self.name}"})
            except Exception as exc:  # refused, hung, fenced role: try the next host
                self._failed(exc)
                continue
            try:
                read_only = await conn.fetchval("SHOW transaction_read_only",
                                                timeout=self.timeout)
            except Exception as exc:
                self._failed(exc)
                conn.terminate()
                continue
            if read_only == "off":
                return conn
            conn.terminate()
        return None

    async def _insert(self, conn: asyncpg.Connection) -> bool:
        """One INSERT; False when the connection should be dropped."""
        self._seq += 1
        row_id = f"{self.name}-{self._seq}"
        sent = time.time()
        try:
            port, walfile = await conn.fetchrow(INSERT, row_id, self.name, timeout=self.timeout)
        except Exception as exc:  # not acknowledged: its outcome is unknown
            self._failed(exc)
            return False
        acked = time.time()
        self.commits.append(Commit(row_id, self.name, self._server_of.get(port, str(port)),
                                   timeline_of(walfile), sent, acked))
        return True

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
