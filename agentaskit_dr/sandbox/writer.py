"""A client that writes continuously to whichever server takes writes, as an application would.

Used by the switchover test and benchmark to check "no acknowledged write is lost" and
"never two writable primaries" on real servers. Each writer task keeps one connection and
commits one row per transaction; on any error (refused connection, a server shutting down,
a read-only standby) it drops the connection and tries the other server next. Every
acknowledged commit is recorded with its server and time, every failed attempt too.

Each row records where it was written (``inet_server_port()``) and the server's clock at
insert: both servers of a sandbox pair share this machine's clock, so the rows of the
final primary, in time order, show which server accepted writes when.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import asyncpg

TABLE = "sandbox_writes"
CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigint PRIMARY KEY,
    server_port int NOT NULL DEFAULT inet_server_port(),
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
_INSERT = f"INSERT INTO {TABLE} (id) VALUES ($1)"  # noqa: S608 -- constant table name
_IDS_PER_WRITER = 1_000_000_000
# InternalClientError: asyncpg's protocol state after a server died mid-answer; like every
# other error here, the write is not acknowledged and the connection is dropped.
_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
           asyncpg.InternalClientError)


@dataclass(frozen=True)
class Attempt:
    """One write: ``row_id`` committed on ``server`` (acknowledged) or failed there, at
    ``at`` (``time.monotonic()`` when the answer came)."""

    row_id: int
    server: str
    at: float
    error: str = ""


@dataclass
class WriterLog:
    """Every acknowledged write and every failed attempt, of all writer tasks."""

    acked: list[Attempt] = field(default_factory=list)
    failed: list[Attempt] = field(default_factory=list)

    def acked_on(self, server: str) -> list[Attempt]:
        return [a for a in self.acked if a.server == server]

    def unavailable_window(self, since: float, new_primary: str) -> float | None:
        """Seconds from the first failed write after ``since`` to the first write acknowledged
        by ``new_primary`` after that; None when either did not happen."""
        failures = [a.at for a in self.failed if a.at >= since]
        if not failures:
            return None
        first_failure = min(failures)
        accepted = [a.at for a in self.acked_on(new_primary) if a.at > first_failure]
        return min(accepted) - first_failure if accepted else None


async def write_continuously(
    servers: dict[str, str], log: WriterLog, stop: asyncio.Event, *,
    writer: int = 0, connect_timeout: float = 1.0,
) -> None:
    """Commit rows until ``stop`` is set, to whichever of ``servers`` (name → DSN) takes them."""
    names = list(servers)
    current = 0
    next_id = writer * _IDS_PER_WRITER
    conn: asyncpg.Connection | None = None
    try:
        while not stop.is_set():
            name = names[current]
            next_id += 1
            try:
                if conn is None:
                    conn = await asyncpg.connect(servers[name], timeout=connect_timeout,
                                                 command_timeout=connect_timeout)
                await conn.execute(_INSERT, next_id)
            except _ERRORS as exc:
                log.failed.append(Attempt(next_id, name, time.monotonic(),
                                          str(exc) or type(exc).__name__))
                if conn is not None:
                    conn.terminate()
                    conn = None
                current = (current + 1) % len(names)
                await asyncio.sleep(0.005)
                continue
            log.acked.append(Attempt(next_id, name, time.monotonic()))
    finally:
        if conn is not None:
            with contextlib.suppress(*_ERRORS):
                await conn.close(timeout=connect_timeout)
