"""The promotion itself, on the standby: ``pg_promote`` with its in-doubt cases, and the
LOGIN given back to the roles the old primary's fence locked out (the lock-out replicated).
``promote.py`` decides when; these run once its gates are passed."""

from __future__ import annotations

import math
from collections.abc import Callable

import asyncpg
from structlog.typing import FilteringBoundLogger

from agentaskit_dr.actuators.promote_marker import PromotionInDoubt
from agentaskit_dr.actuators.role_fence import restore_locked_roles


async def pg_promote(
    conn: asyncpg.Connection, plog: FilteringBoundLogger, *, replay_paused: bool,
    promote_timeout: float, connect_timeout: float, standby: str, clock: Callable[[], float],
) -> float:
    """``pg_promote(wait => true)`` on the standby; the seconds it took. ``PromotionInDoubt``
    when it may have been sent but not confirmed (``standby`` names the server)."""
    if replay_paused:
        # Promotion ends a pause anyway and replays what was received first, but a
        # paused startup process notices the request only at its next 1 s wake-up.
        await conn.execute("SELECT pg_wal_replay_resume()")
        plog.info("wal_replay_resumed", reason="replay was paused; promotion replays it")
    wait_seconds = max(1, math.ceil(promote_timeout))
    started = clock()
    try:
        done = await conn.fetchval(
            "SELECT pg_promote(wait => true, wait_seconds => $1)",
            wait_seconds,
            timeout=wait_seconds + connect_timeout,
        )
    except (TimeoutError, OSError, asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError) as exc:
        # The request may sit unread in a hung server's socket and run when it wakes.
        conn.terminate()
        what = "timeout" if isinstance(exc, TimeoutError) else f"connection lost ({exc})"
        raise PromotionInDoubt(
            f"standby {standby} unreachable: {what} during "
            "pg_promote; it may still complete the promotion when it answers again: "
            "the next attempt adopts it if it is seen promoted",
            promoted=False,
        ) from exc
    promote_seconds = clock() - started
    if not done:
        raise PromotionInDoubt(
            f"pg_promote did not finish within {wait_seconds}s; the standby may still "
            "complete it: the next attempt adopts it if it is seen promoted",
            promoted=False,
        )
    plog.info("pg_promote_done", promote_seconds=round(promote_seconds, 4))
    return promote_seconds


async def give_login_back(conn: asyncpg.Connection, plog: FilteringBoundLogger) -> None:
    """The SQL fence's role lock-out replicated here before the promotion: the new
    primary gives LOGIN back to the roles the old primary's fence locked out (rows of an
    older timeline only; harmless when repeated)."""
    try:
        restored = await restore_locked_roles(conn, inherited_only=True)
    except asyncpg.PostgresError as exc:
        raise PromotionInDoubt(
            f"promoted, but LOGIN could not be given back to the roles the old primary's "
            f"fence locked out: {exc}", promoted=True) from exc
    if restored:
        plog.warning("login_restored_on_new_primary", roles=restored)
