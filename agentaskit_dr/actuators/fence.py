"""Fence a PostgreSQL server so that no client can write to it, whatever it asks for.

The second line of "one writable primary" (the first is the primary-side watchdog that
fences its own primary when it loses the majority). Used after a promotion on the old
primary, and on whatever server shows up writable in the standby slot. Two modes:

- **control** (``regions.<r>.database.control``: this watchdog runs on the server's
  host): if the server answers, the SQL fence first, so nothing lands while it stops;
  then ``standby.signal`` + ``primary_conninfo`` in its data directory, and the server is
  stopped for good (``pg_ctl`` fast, immediate, then SIGKILL; see ``pg_control``).
  Confirmed: no postmaster left, and any restart comes up in recovery (read-only).
- **SQL only**: ``default_transaction_read_only = on`` with ALTER SYSTEM (survives a
  restart), LOGIN taken from every other login role the watchdog may alter (recorded, so
  lifting restores exactly those; see ``role_fence``), and every other client session
  terminated. Confirmed: new sessions default to read-only, the recorded roles cannot
  log in, and no terminated or locked-out session is alive. Not covered: superusers,
  REPLICATION roles and the watchdog's own role can still log in and ``BEGIN READ WRITE``.

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

from agentaskit_dr.actuators.pg_control import ServerControl, postmaster_pid, stop_and_hold
from agentaskit_dr.actuators.role_fence import (
    RoleLockout,
    lock_out_roles,
    locked_role_oids,
    restore_locked_roles,
)
from agentaskit_dr.ports import MARKER_TABLE, StaleEpoch, refuse_newer_epoch

log = structlog.get_logger(__name__)

_APPLICATION_NAME = "agentaskit-dr"

# Client sessions only: walsenders keep streaming to the replica, which is what lets it
# catch up, and background workers hold no client writes. A watchdog that is not a
# superuser may not signal a superuser's session (PostgreSQL refuses the whole query).
# Another fencer's session (the same role, our application name: the old primary's own
# watchdog and the lock holder fence at once) is left alone: ending it would fail that
# fence for nothing. The watchdog's role is exempt from the lock-out anyway.
_TERMINATE_CLIENTS = f"""
SELECT coalesce(array_agg(a.pid) FILTER (WHERE pg_terminate_backend(a.pid)), '{{}}')
FROM pg_stat_activity AS a LEFT JOIN pg_roles AS r ON r.oid = a.usesysid
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
  AND NOT (a.usename = session_user AND a.application_name = '{_APPLICATION_NAME}')
  AND (NOT coalesce(r.rolsuper, false)
       OR (SELECT rolsuper FROM pg_roles WHERE rolname = session_user))
"""  # noqa: S608 -- a constant application name, no input
# Sessions of a locked-out role that passed authentication just before the lock-out
# committed are not in the first termination's list: each confirmation ends them too.
_TERMINATE_LOCKED_OUT = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int FROM pg_stat_activity
WHERE backend_type = 'client backend' AND usesysid = ANY($1::oid[])
"""
_CONFIRM_FENCED = """
SELECT current_setting('default_transaction_read_only') = 'on' AS read_only,
       ARRAY(SELECT rolname::text FROM pg_roles
             WHERE rolcanlogin AND oid = ANY($2::oid[]) ORDER BY 1) AS can_log_in,
       (SELECT count(*) FROM pg_stat_activity
        WHERE pid = ANY($1::int[])
           OR (backend_type = 'client backend' AND usesysid = ANY($2::oid[])))::int AS left_alive
"""


class PromotionRefused(Exception):
    """A promotion or fence was not done and must be logged loudly; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerUnreachable(PromotionRefused):
    """A server refused the connection, dropped it, or did not answer within the timeout."""


class TargetIsPromoted(PromotionRefused):
    """The fence target carries a marker at least as new as the fencing epoch: it is the
    new primary, and must be neither fenced nor stopped."""


@dataclass(frozen=True)
class FenceResult:
    """Outcome of a fence.

    ``fenced``: confirmed. SQL mode: a new session sees ``default_transaction_read_only =
    on``, the locked-out roles cannot log in and the sessions that were open are gone.
    Control mode: the postmaster is gone and ``standby.signal`` is in place. Either way,
    also a server that is a standby, which takes no writes.
    ``sessions_terminated``: client sessions this call ended. ``roles_locked_out``: roles
    this call took LOGIN from (SQL mode). ``server_stopped``: control mode stopped it.
    """

    fenced: bool
    sessions_terminated: int
    detail: str
    roles_locked_out: tuple[str, ...] = ()
    server_stopped: bool = False


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
    dsn: str,
    *,
    epoch: int | None,
    io_timeout: float,
    flog: FilteringBoundLogger,
    control: ServerControl | None = None,
    primary_conninfo: str | None = None,
) -> FenceResult:
    """Fence the server at ``dsn`` under ``epoch`` so no client can write; see the module doc.

    ``control``: this host runs that server (control mode); ``primary_conninfo``: where
    a restart in recovery should stream from (the new primary, when known; no password).
    Refuses (TargetIsPromoted) a server whose marker epoch is >= ``epoch``: that is the
    server this epoch promoted. ``epoch`` None is self-fencing: a watchdog fencing the
    primary of its own region, whatever epoch promoted it. A standby needs no fence.
    Idempotent. Every connect, query and confirmation is bounded by ``io_timeout``, every
    stop by ``control.stop_timeout``. SQL mode raises ServerUnreachable when the server
    does not answer; control mode stops it anyway, within 2 x ``io_timeout`` +
    4 x ``control.stop_timeout`` + 6 s in all. Logs what it did; a refusal is left to the
    caller to log, with its context.
    """
    if control is not None:
        return await _fence_by_stopping(
            dsn, epoch=epoch, io_timeout=io_timeout, flog=flog, control=control,
            primary_conninfo=primary_conninfo,
        )
    target = describe_dsn(dsn)
    async with session(dsn, role="fence target", io_timeout=io_timeout) as conn:
        if await conn.fetchval("SELECT pg_is_in_recovery()"):
            flog.info("fence_not_needed", target=target, fenced=True, detail="standby")
            return FenceResult(fenced=True, sessions_terminated=0, detail="standby")
        if epoch is not None:
            _refuse_promoted_target(target, await read_marker_epoch(conn), epoch)
        try:
            await _make_read_only(conn)
            # Lock out before terminating, so an ended session cannot come back.
            lockout = await lock_out_roles(conn, epoch=epoch)
            terminated: list[int] = list(await conn.fetchval(_TERMINATE_CLIENTS))
            locked_oids = await locked_role_oids(conn)
        except asyncpg.PostgresConnectionError:
            raise
        except asyncpg.PostgresError as exc:
            detail = f"could not fence {target}: {exc}"
            flog.error("fence_failed", target=target, fenced=False, reason=detail)
            return FenceResult(fenced=False, sessions_terminated=0, detail=detail)
    left = await _confirm_fenced(dsn, terminated, locked_oids, io_timeout)
    left = "; ".join(filter(None, [left, _skipped_roles(lockout)]))
    if left:
        flog.error("fence_not_confirmed", target=target, fenced=False, reason=left)
        return FenceResult(
            fenced=False, sessions_terminated=len(terminated), detail=left,
            roles_locked_out=lockout.locked,
        )
    detail = (
        f"{target} read-only; {len(terminated)} client sessions terminated; "
        f"{len(lockout.locked)} roles locked out"
    )
    flog.info("fenced", target=target, fenced=True, mode="sql",
              sessions_terminated=len(terminated), roles_locked_out=list(lockout.locked))
    return FenceResult(
        fenced=True, sessions_terminated=len(terminated), detail=detail,
        roles_locked_out=lockout.locked,
    )


async def _make_read_only(conn: asyncpg.Connection) -> None:
    await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    await conn.execute("SELECT pg_reload_conf()")


def _skipped_roles(lockout: RoleLockout) -> str:
    if not lockout.skipped:
        return ""
    return (
        f"roles the watchdog may not alter can still log in: {', '.join(lockout.skipped)} "
        "(grant it ADMIN OPTION on them: docs/postgres-privileges.md)"
    )


async def _fence_by_stopping(
    dsn: str,
    *,
    epoch: int | None,
    io_timeout: float,
    flog: FilteringBoundLogger,
    control: ServerControl,
    primary_conninfo: str | None,
) -> FenceResult:
    target = describe_dsn(dsn)
    terminated = 0
    try:
        # A slow server gets two io_timeouts in all for this part, not one per query.
        async with (
            asyncio.timeout(2 * io_timeout),
            session(dsn, role="fence target", io_timeout=io_timeout) as conn,
        ):
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                flog.info("fence_not_needed", target=target, fenced=True, detail="standby")
                return FenceResult(fenced=True, sessions_terminated=0, detail="standby")
            if epoch is not None:
                _refuse_promoted_target(target, await read_marker_epoch(conn), epoch)
            # Read-only and sessions ended first, so nothing commits while it stops.
            await _make_read_only(conn)
            terminated = len(await conn.fetchval(_TERMINATE_CLIENTS))
    except TargetIsPromoted:
        raise
    except PromotionRefused as exc:
        # Down, frozen or refusing us: stopping it is the fence all the same.
        flog.warning("fence_sql_part_skipped", target=target, reason=exc.reason)
    except TimeoutError:
        flog.warning("fence_sql_part_skipped", target=target,
                     reason=f"no answer within {2 * io_timeout:g}s")
    how, problems = await stop_and_hold(control, primary_conninfo)
    if problems:
        detail = f"{target} not fenced ({how}): {'; '.join(dict.fromkeys(problems))}"
        flog.error("fence_failed", target=target, fenced=False, mode="control", reason=detail)
        return FenceResult(fenced=False, sessions_terminated=terminated, detail=detail,
                           server_stopped=postmaster_pid(control) is None)
    detail = f"{target} {how}; standby.signal written, a restart comes up read-only"
    flog.info("fenced", target=target, fenced=True, mode="control", stopped=how,
              sessions_terminated=terminated)
    return FenceResult(
        fenced=True, sessions_terminated=terminated, detail=detail, server_stopped=True
    )


async def lift_fence_over_sql(
    dsn: str, *, io_timeout: float, flog: FilteringBoundLogger, epoch: int | None = None
) -> list[str] | None:
    """Undo the SQL fence: LOGIN back to exactly the roles it locked out, and
    ``default_transaction_read_only`` reset. The restored roles; None for a standby.

    ``epoch``: the automatic lift of a self-fence acts under the lock's epoch, and a server
    whose marker records a newer one refuses it (StaleEpoch): a newer holder promoted it or
    acted on it since. None: an operator's lift (``unfence``), which checks otherwise.
    """
    target = describe_dsn(dsn)
    async with session(dsn, role="fenced server", io_timeout=io_timeout) as conn:
        if await conn.fetchval("SELECT pg_is_in_recovery()"):
            return None
        if epoch is not None:
            refuse_newer_epoch(
                await read_marker_epoch(conn), epoch,
                f"refusing to lift the fence of {target} under epoch {epoch}: its marker "
                "records a newer epoch", on_refusal=lambda why: flog.error(
                    "fence_lift_stale_epoch", target=target, epoch=epoch, reason=why))
        roles = await restore_locked_roles(conn, inherited_only=False)
        await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await conn.execute("SELECT pg_reload_conf()")
    flog.warning("fence_lifted", target=target, roles_restored=roles)
    return roles


def _refuse_promoted_target(target: str, marker: int | None, epoch: int) -> None:
    if marker is not None and marker >= epoch:
        raise TargetIsPromoted(
            f"refusing to fence {target}: it was promoted under epoch {marker}, "
            f"not older than {epoch} (it is the new primary)"
        )


async def _confirm_fenced(
    dsn: str, terminated: list[int], locked_oids: list[int], io_timeout: float
) -> str:
    """Poll with new sessions until the fence shows; return what is still wrong, or "".

    The postmaster applies pg_reload_conf() asynchronously and terminated backends take
    a moment to exit, so the first look may be too early.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + io_timeout
    while True:
        async with session(dsn, role="fence target", io_timeout=io_timeout) as conn:
            row = await conn.fetchrow(_CONFIRM_FENCED, terminated, locked_oids)
            if row["left_alive"]:
                await conn.fetchval(_TERMINATE_LOCKED_OUT, locked_oids)
        if row["read_only"] and row["left_alive"] == 0 and not row["can_log_in"]:
            return ""
        if loop.time() >= deadline:
            can_log_in = ", ".join(row["can_log_in"]) or "none"
            return (
                f"fence not confirmed within {io_timeout:g}s: new sessions read-only="
                f"{row['read_only']}, {row['left_alive']} fenced sessions still alive, "
                f"locked-out roles that can still log in: {can_log_in}"
            )
        await asyncio.sleep(0.02)
