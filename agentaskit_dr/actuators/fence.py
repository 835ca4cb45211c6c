"""Fence a PostgreSQL server: make it read-only and end its client sessions.

The second line of "one writable primary" (the first is the primary-side watchdog that
fences its own primary when it loses the majority). Used after a promotion on the old
primary, and on whatever server shows up writable in the standby slot.

The fence is ``default_transaction_read_only = on`` set with ALTER SYSTEM, so it survives
a restart, plus the termination of every client session that could still write. It is a
soft fence: a client that explicitly asks for ``READ WRITE`` can still write. Applications
do not do that; stopping the server is the hard fence, left to failback.

Also home to what the promoter shares with it: the refusal errors, DSN redaction, a
bounded asyncpg session and the fencing-marker read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
import structlog
from structlog.typing import FilteringBoundLogger

from agentaskit_dr.ports import MARKER_TABLE, StaleEpoch

log = structlog.get_logger(__name__)

_APPLICATION_NAME = "agentaskit-dr"

# Client sessions only: walsenders keep streaming to the replica, which is what lets it
# catch up, and background workers hold no client writes.
_TERMINATE_CLIENTS = """
SELECT coalesce(array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)), '{}')
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""
_CONFIRM_FENCED = """
SELECT current_setting('default_transaction_read_only') = 'on' AS read_only,
       (SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]))::int AS left_alive
"""


class PromotionRefused(Exception):
    """A promotion or fence was not done and must be logged loudly; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerUnreachable(PromotionRefused):
    """A server refused the connection, dropped it, or did not answer within the timeout."""


@dataclass(frozen=True)
class FenceResult:
    """Outcome of a fence.

    ``fenced``: a new session sees ``default_transaction_read_only = on`` and the sessions
    that were open are gone (or the server is a standby, which takes no writes anyway).
    ``sessions_terminated``: client sessions this call ended.
    """

    fenced: bool
    sessions_terminated: int
    detail: str


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN: no user, password or query, so safe to log."""
    parts = urlsplit(dsn)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.hostname or '?'}{port}{parts.path}"


@contextlib.asynccontextmanager
async def session(dsn: str, *, role: str, io_timeout: float) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection whose connect and every query are bounded by ``io_timeout``.

    Errors come out as refusals naming ``role`` and the redacted target: a timeout or a
    lost connection as ServerUnreachable, a server error as PromotionRefused. The
    connection is closed on the way out; after a timeout or a lost link it is dropped at
    once, since an asyncpg connection is unusable after a query timed out.
    """
    target = describe_dsn(dsn)
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=io_timeout,
            command_timeout=io_timeout,
            server_settings={"application_name": _APPLICATION_NAME},
        )
    except TimeoutError as exc:
        raise ServerUnreachable(
            f"{role} {target} unreachable: timeout after {io_timeout:g}s"
        ) from exc
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
        raise ServerUnreachable(f"{role} {target} unreachable: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise PromotionRefused(f"{role} {target} refused the session: {exc}") from exc
    healthy = False
    try:
        yield conn
        healthy = True
    except TimeoutError as exc:
        raise ServerUnreachable(
            f"{role} {target} unreachable: timeout (no answer within the time allowed)"
        ) from exc
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
        raise ServerUnreachable(f"{role} {target} unreachable: {exc}") from exc
    except asyncpg.PostgresError as exc:
        healthy = True
        raise PromotionRefused(f"{role} {target} failed: {exc}") from exc
    except ServerUnreachable:
        raise
    except (PromotionRefused, StaleEpoch):
        healthy = True
        raise
    finally:
        if healthy:
            await _close(conn, io_timeout)
        else:
            conn.terminate()


async def _close(conn: asyncpg.Connection, io_timeout: float) -> None:
    try:
        await conn.close(timeout=io_timeout)
    except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError):
        # close() has already aborted the connection; nothing is left open.
        conn.terminate()


async def read_marker_epoch(conn: asyncpg.Connection) -> int | None:
    """The fencing epoch recorded on this server by the last promotion, if any."""
    if await conn.fetchval("SELECT to_regclass($1::text) IS NULL", MARKER_TABLE):
        return None
    epoch = await conn.fetchval(f"SELECT epoch FROM {MARKER_TABLE} WHERE id = 1")  # noqa: S608 -- constant name
    return None if epoch is None else int(epoch)


async def fence_server(
    dsn: str, *, epoch: int | None, io_timeout: float, flog: FilteringBoundLogger
) -> FenceResult:
    """Make the server at ``dsn`` read-only and end its client sessions, under ``epoch``.

    Refuses (PromotionRefused) a server whose marker epoch is >= ``epoch``: that is the
    server this epoch promoted. ``epoch`` None is self-fencing: a watchdog fencing the
    primary of its own region, whatever epoch promoted it. A standby needs no fence.
    Idempotent. Connect, each query and the confirmation are bounded by ``io_timeout``;
    ServerUnreachable when it does not answer. Logs what it did; a refusal is left to the
    caller to log, with its context.
    """
    target = describe_dsn(dsn)
    async with session(dsn, role="fence target", io_timeout=io_timeout) as conn:
        if await conn.fetchval("SELECT pg_is_in_recovery()"):
            flog.info("fence_not_needed", target=target, fenced=True, detail="standby")
            return FenceResult(fenced=True, sessions_terminated=0, detail="standby")
        if epoch is not None:
            _refuse_promoted_target(target, await read_marker_epoch(conn), epoch)
        try:
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await conn.execute("SELECT pg_reload_conf()")
            terminated: list[int] = list(await conn.fetchval(_TERMINATE_CLIENTS))
        except asyncpg.PostgresConnectionError:
            raise
        except asyncpg.PostgresError as exc:
            detail = f"could not fence {target}: {exc}"
            flog.error("fence_failed", target=target, fenced=False, reason=detail)
            return FenceResult(fenced=False, sessions_terminated=0, detail=detail)
    left = await _confirm_fenced(dsn, terminated, io_timeout)
    if left:
        flog.error("fence_not_confirmed", target=target, fenced=False, reason=left)
        return FenceResult(fenced=False, sessions_terminated=len(terminated), detail=left)
    detail = f"{target} read-only; {len(terminated)} client sessions terminated"
    flog.info("fenced", target=target, fenced=True, sessions_terminated=len(terminated))
    return FenceResult(fenced=True, sessions_terminated=len(terminated), detail=detail)


def _refuse_promoted_target(target: str, marker: int | None, epoch: int) -> None:
    if marker is not None and marker >= epoch:
        raise PromotionRefused(
            f"refusing to fence {target}: it was promoted under epoch {marker}, "
            f"not older than {epoch} (it is the new primary)"
        )


async def _confirm_fenced(dsn: str, terminated: list[int], io_timeout: float) -> str:
    """Poll with new sessions until the fence shows; return what is still wrong, or "".

    The postmaster applies pg_reload_conf() asynchronously and terminated backends take
    a moment to exit, so the first look may be too early.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + io_timeout
    while True:
        async with session(dsn, role="fence target", io_timeout=io_timeout) as conn:
            row = await conn.fetchrow(_CONFIRM_FENCED, terminated)
        if row["read_only"] and row["left_alive"] == 0:
            return ""
        if loop.time() >= deadline:
            return (
                f"fence not confirmed within {io_timeout:g}s: new sessions read-only="
                f"{row['read_only']}, {row['left_alive']} terminated sessions still alive"
            )
        await asyncio.sleep(0.02)
