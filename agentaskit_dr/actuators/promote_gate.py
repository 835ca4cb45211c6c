"""What must hold before ``pg_promote``: the old primary fenced, the standby caught up.

Two gates of the promoter (``actuators.promote``):

- **The fence gate.** An old primary that answers at all (it connects, or it answers with
  an error: a ``pg_hba`` reject, "too many connections", a missing role) may still take
  writes, so the promotion waits until its fence is *confirmed*; a fence that fails or
  cannot be confirmed refuses the promotion. So does an old primary the promoter cannot
  reach while another vantage sees it answering. Only an old primary that nobody reaches
  (refused, reset, no answer within the timeout) is promoted past: that rests on the
  primary side's self-fence (``fence_after``), which makes it read-only before the
  secondary's earliest promotion.
- **The catch-up gate (zero loss).** Once fenced, the old primary's client sessions are
  gone and nothing new commits: its WAL position read on a new session is final. The
  standby must replay up to it within ``catch_up_timeout`` before ``pg_promote``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from structlog.typing import FilteringBoundLogger

from agentaskit_dr.actuators.fence import (
    PromotionRefused,
    ServerUnreachable,
    describe_dsn,
    fence_server,
    session,
)
from agentaskit_dr.actuators.pg_control import ServerControl

# NULL on a server in recovery: a standby takes no writes, so it has no final position.
_FINAL_LSN = """
SELECT CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE (pg_current_wal_lsn() - '0/0')::bigint END
"""
_REPLICATION_STATE = """
SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint AS replay_lsn,
       (pg_last_wal_receive_lsn() - '0/0')::bigint AS receive_lsn,
       pg_is_wal_replay_paused() AS replay_paused
"""
_CATCH_UP_POLL = 0.05


@dataclass(frozen=True)
class OldPrimaryFence:
    """How the old primary stands before ``pg_promote``.

    ``fenced``: True when the fence is confirmed, None when nobody can reach the old
    primary (promoted past on the strength of its self-fence). ``final_lsn``: its WAL
    position read after the fence (bytes), None when it could not be read.
    """

    fenced: bool | None
    final_lsn: int | None
    detail: str


@dataclass(frozen=True)
class Gates:
    """The gates passed before pg_promote: ``lag_bytes`` is what the promotion loses
    (0 when the standby replayed the fenced old primary's final position),
    ``replay_lsn`` the standby's replay position, ``catch_up_seconds`` the wait for it
    (None when the old primary's final position was unknown)."""

    old_primary: OldPrimaryFence
    lag_bytes: int | None
    replay_lsn: int | None
    catch_up_seconds: float | None
    replay_paused: bool


@dataclass(frozen=True)
class CatchUp:
    """The standby's replay measured against the old primary's final position.

    ``replay_lsn``: the standby's replay position when the wait ended. ``lag_bytes``: the
    final position minus that (0 when caught up: nothing the old primary committed is
    lost). ``waited_seconds``: time spent waiting. ``replay_paused``: WAL replay was paused.
    """

    caught_up: bool
    replay_lsn: int | None
    lag_bytes: int | None
    waited_seconds: float
    replay_paused: bool


async def fence_before_promotion(
    dsn: str,
    *,
    epoch: int,
    io_timeout: float,
    answering_elsewhere: bool,
    plog: FilteringBoundLogger,
    control: ServerControl | None = None,
    primary_conninfo: str | None = None,
) -> OldPrimaryFence:
    """Fence the old primary at ``dsn`` and read its final WAL position; see the module doc.

    ``answering_elsewhere``: some vantage sees the old primary answering, so failing to
    reach it from here is no reason to promote past it.
    Raises PromotionRefused when the old primary answers (here or elsewhere) and its fence
    is not confirmed.
    """
    target = describe_dsn(dsn)
    try:
        result = await fence_server(dsn, epoch=epoch, io_timeout=io_timeout, flog=plog,
                                    control=control, primary_conninfo=primary_conninfo)
    except ServerUnreachable as exc:
        if answering_elsewhere:
            raise PromotionRefused(
                f"fence not confirmed: the old primary {target} answers another vantage but "
                f"not the promoter ({exc.reason}); no promotion while it may take writes"
            ) from exc
        detail = (f"not fenced, {exc.reason}; promoted past it on the strength of the "
                  "primary side's self-fence")
        plog.error("old_primary_not_fenced", fenced=None, reason=exc.reason,
                   detail="nobody reaches it; the primary side's self-fence (fence_after) "
                   "made it read-only before this promotion could start")
        return OldPrimaryFence(fenced=None, final_lsn=None, detail=detail)
    except PromotionRefused as exc:
        raise PromotionRefused(
            f"fence not confirmed: the old primary {target} answers but could not be "
            f"fenced ({exc.reason}); no promotion while it may take writes"
        ) from exc
    if not result.fenced:
        raise PromotionRefused(
            f"fence not confirmed: the old primary {target} answers but its fence did not "
            f"hold ({result.detail}); no promotion while it may take writes"
        )
    final_lsn = await _final_lsn(dsn, io_timeout=io_timeout, plog=plog)
    plog.info("old_primary_fence_confirmed", final_lsn=final_lsn, detail=result.detail)
    return OldPrimaryFence(fenced=True, final_lsn=final_lsn, detail=result.detail)


async def _final_lsn(dsn: str, *, io_timeout: float, plog: FilteringBoundLogger) -> int | None:
    """The fenced server's WAL position, on a new session: the fence ended the old ones."""
    try:
        async with session(dsn, role="fenced old primary", io_timeout=io_timeout) as conn:
            value = await conn.fetchval(_FINAL_LSN)
    except PromotionRefused as exc:
        # A fence that stops the server leaves nothing to ask; the lag gate then rests on
        # the last position seen before the failover.
        plog.warning("old_primary_final_lsn_unknown", reason=exc.reason)
        return None
    return None if value is None else int(value)


async def wait_for_replay(
    conn: asyncpg.Connection,
    final_lsn: int,
    *,
    within: float,
    clock: Callable[[], float],
) -> CatchUp:
    """Poll the standby on ``conn`` until it replayed ``final_lsn`` or ``within`` passed."""
    started = clock()
    while True:
        state = await conn.fetchrow(_REPLICATION_STATE)
        replay, paused = state["replay_lsn"], bool(state["replay_paused"])
        waited = clock() - started
        if replay is not None and replay >= final_lsn:
            return CatchUp(True, int(replay), 0, waited, paused)
        if waited >= within:
            lag = None if replay is None else int(final_lsn - replay)
            return CatchUp(False, None if replay is None else int(replay), lag, waited, paused)
        await asyncio.sleep(min(_CATCH_UP_POLL, max(0.0, within - waited)))


async def pass_gates(
    conn: asyncpg.Connection,
    plog: FilteringBoundLogger,
    old: OldPrimaryFence,
    *,
    primary_last_lsn: int | None,
    max_lag_bytes: int,
    catch_up_within: float,
    clock: Callable[[], float],
    force: bool,
) -> Gates:
    """The catch-up gate on the fenced old primary's final position, else the lag gate on
    its last known one (``primary_last_lsn``); raises PromotionRefused unless ``force``."""
    if old.final_lsn is None:
        lag, replay, paused = await _lag_gate(conn, plog, primary_last_lsn,
                                              max_lag_bytes=max_lag_bytes, force=force)
        return Gates(old, lag, replay, None, paused)
    caught = await wait_for_replay(conn, old.final_lsn, within=catch_up_within, clock=clock)
    measured = {
        "final_lsn": old.final_lsn, "replay_lsn": caught.replay_lsn,
        "lag_bytes": caught.lag_bytes, "waited_seconds": round(caught.waited_seconds, 4),
        "replay_paused": caught.replay_paused,
    }
    if caught.caught_up:
        plog.info("promotion_caught_up", **measured,
                  detail="the standby replayed the fenced old primary's final position")
    else:
        lag_text = "nothing replayed" if caught.lag_bytes is None else (
            f"{caught.lag_bytes} bytes behind")
        reason = (
            f"the standby did not replay the fenced old primary's final WAL position "
            f"within promotion.catch_up_timeout {catch_up_within:g}s ({lag_text})"
        )
        if caught.replay_paused:
            reason += "; WAL replay is paused on the standby (pg_wal_replay_resume() to catch up)"
        if not force:
            raise PromotionRefused(reason)
        plog.warning("catch_up_overridden", **measured, reason=reason)
    return Gates(old, caught.lag_bytes, caught.replay_lsn, round(caught.waited_seconds, 4),
                 caught.replay_paused)


async def _lag_gate(
    conn: asyncpg.Connection,
    plog: FilteringBoundLogger,
    primary_last_lsn: int | None,
    *,
    max_lag_bytes: int,
    force: bool,
) -> tuple[int | None, int | None, bool]:
    """The lag to promote with, the replay position and whether replay is paused;
    refuses above ``max_lag_bytes``."""
    state = await conn.fetchrow(_REPLICATION_STATE)
    replay, paused = state["replay_lsn"], bool(state["replay_paused"])
    if primary_last_lsn is None:
        plog.warning(
            "promotion_primary_lsn_unknown",
            detail="lag measured as received minus replayed WAL; "
            "WAL the primary wrote but never shipped is not counted",
        )
        reference = state["receive_lsn"]
    else:
        reference = primary_last_lsn
    lag = None if reference is None or replay is None else max(0, int(reference - replay))
    replay = None if replay is None else int(replay)
    if lag is not None and lag <= max_lag_bytes:
        plog.info("promotion_lag_gate_passed", lag_bytes=lag, max_lag_bytes=max_lag_bytes,
                  replay_paused=paused)
        return lag, replay, paused
    lag_text = "unknown (no WAL received yet)" if lag is None else f"{lag} bytes"
    reason = f"replication lag {lag_text} exceeds max_lag_bytes {max_lag_bytes}"
    if paused:
        reason += "; WAL replay is paused on the standby (pg_wal_replay_resume() to catch up)"
    if not force:
        raise PromotionRefused(reason)
    plog.warning("lag_gate_overridden", lag_bytes=lag, max_lag_bytes=max_lag_bytes,
                 replay_paused=paused, reason=reason)
    return lag, replay, paused
