"""Roles and traffic on a real pair: the watchdog's role apart from the application's, a
``pg_hba`` reject line, and an application writer that records what was acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import asyncpg

from agentaskit_dr.local_servers.postgres import PostgresServer

WATCHDOG, APP = "watchdog", "app"
# The least a watchdog needs on the standby to promote it (the fence needs more).
_PROMOTE_ONLY = (
    f"GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {WATCHDOG}; "
    f"GRANT EXECUTE ON FUNCTION pg_wal_replay_resume() TO {WATCHDOG}; "
    f"GRANT pg_read_all_stats TO {WATCHDOG}"
)


def dsn_as(server: PostgresServer, role: str) -> str:
    return f"postgresql://{role}@127.0.0.1:{server.port}/postgres"


def create_roles(primary: PostgresServer, *, watchdog_superuser: bool) -> None:
    """On the primary (they replicate): the application role, owner of ``orders``, and the
    watchdog's role, a superuser or one that may promote but neither fence nor create the
    marker schema."""
    watchdog = (f"CREATE ROLE {WATCHDOG} LOGIN SUPERUSER" if watchdog_superuser
                else f"CREATE ROLE {WATCHDOG} LOGIN; {_PROMOTE_ONLY}")
    primary.sql(
        f"{watchdog}; CREATE ROLE {APP} LOGIN; "
        f"CREATE TABLE orders (id int PRIMARY KEY, pad text); "
        f"GRANT SELECT, INSERT ON orders TO {APP}"
    )


def reject_in_pg_hba(server: PostgresServer, role: str) -> None:
    """Prepend a ``reject`` line for ``role`` and reload: it is refused, the rest is not."""
    hba = Path(server.datadir) / "pg_hba.conf"
    stat = hba.stat()
    hba.write_text(f"host all {role} 127.0.0.1/32 reject\n{hba.read_text()}")
    os.chown(hba, stat.st_uid, stat.st_gid)
    server.sql("SELECT pg_reload_conf()")


def walreceiver_pid(standby: PostgresServer) -> int:
    return int(standby.sql("SELECT pid FROM pg_stat_wal_receiver"))


def signal_process(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Writer:
    """An application session inserting rows one by one; ``acknowledged`` holds the ids
    whose COMMIT returned. Stops at the first error (the fence ends its session)."""

    def __init__(self, dsn: str, *, pad: int = 200) -> None:
        self.dsn = dsn
        self.pad = "x" * pad
        self.acknowledged: list[int] = []
        self.stopped_by: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._progress = asyncio.Event()

    async def __aenter__(self) -> Writer:
        self._task = asyncio.create_task(self._write())
        await self._started.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wrote(self, rows: int) -> None:
        """Wait until at least ``rows`` rows are acknowledged."""
        while len(self.acknowledged) < rows and self.stopped_by is None:
            self._progress.clear()
            await self._progress.wait()

    async def _write(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            next_id = 1
            while True:
                try:
                    await conn.execute("INSERT INTO orders VALUES ($1, $2)", next_id, self.pad)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    self.stopped_by = exc
                    self._progress.set()
                    return
                self.acknowledged.append(next_id)
                next_id += 1
                self._started.set()
                self._progress.set()
        finally:
            self._started.set()
            self._progress.set()
            conn.terminate()
