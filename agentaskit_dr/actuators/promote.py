"""Fence the old primary, then promote the PostgreSQL standby under a fencing epoch.

Runbook step 2, "promote the secondary database", done over SQL with ``pg_promote()``.
Each step is one log event carrying the failover id and epoch:

1. leadership is confirmed before any change and again right before ``pg_promote``;
2. the target must be a standby; a primary already promoted under this epoch is a
   resume after a crash (nothing is done twice), one promoted under a newer epoch means
   we are stale, any other primary is refused (it may be the old primary);
3. the lag gate: the WAL the standby has not replayed is the data a promotion loses;
4. the old primary is fenced (read-only, sessions ended) if it can be reached, before
   the standby can take writes (DESIGN invariant 1); on a resume it is fenced again;
5. ``pg_promote(wait => true)``;
6. one read-write transaction proves the new primary takes writes and records the epoch
   in the marker row, refusing to overwrite a newer epoch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import structlog
from structlog.typing import FilteringBoundLogger

from agentaskit_dr.actuators.fence import (
    FenceResult,
    PromotionRefused,
    ServerUnreachable,
    describe_dsn,
    fence_server,
    read_marker_epoch,
    session,
)
from agentaskit_dr.ports import MARKER_SCHEMA, MARKER_TABLE, LockUnavailable, StaleEpoch

__all__ = [
    "FenceResult",
    "PostgresPromoter",
    "PromotionRefused",
    "PromotionResult",
    "ServerUnreachable",
]

log = structlog.get_logger(__name__)

_REPLICATION_STATE = """
SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint AS replay_lsn,
       (pg_last_wal_receive_lsn() - '0/0')::bigint AS receive_lsn,
       pg_is_wal_replay_paused() AS replay_paused
"""
_CREATE_MARKER = f"""
CREATE SCHEMA IF NOT EXISTS {MARKER_SCHEMA};
CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (
    id int PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text NOT NULL,
    failover_id text NOT NULL,
    promoted_at timestamptz NOT NULL DEFAULT now()
)
"""
# The WHERE makes the write compare-and-set: a newer epoch's marker is never overwritten.
_RECORD_MARKER = f"""
INSERT INTO {MARKER_TABLE} AS marker (id, epoch, holder, failover_id) VALUES (1, $1, $2, $3)
ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, holder = EXCLUDED.holder,
    failover_id = EXCLUDED.failover_id, promoted_at = now()
WHERE marker.epoch <= EXCLUDED.epoch
RETURNING epoch
"""  # noqa: S608 -- constant identifiers, values are bound parameters
# On resume: a real write (so it proves the server takes writes and locks the marker
# against a concurrent newer epoch) that changes nothing, so promoted_at stays the original.
_TOUCH_MARKER = f"""
UPDATE {MARKER_TABLE} SET epoch = epoch WHERE id = 1 AND epoch = $1 RETURNING epoch
"""  # noqa: S608 -- constant identifiers, values are bound parameters


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion did, for the journal and the evidence file.

    ``already_promoted``: the target was promoted under this same epoch before (a resume
    after a crash); nothing was done twice. ``lag_bytes``: WAL not replayed at the gate
    (the RPO estimate), None when not measured. ``promote_seconds``: time in pg_promote.
    ``writable_at``: clock() when the write check succeeded. ``old_primary_fenced``:
    None when the old primary could not be reached, so could not be fenced.
    """

    already_promoted: bool
    lag_bytes: int | None
    promote_seconds: float
    writable_at: float
    old_primary_fenced: bool | None
    detail: str


class PostgresPromoter:
    """Promotes the standby at ``standby_dsn`` and fences the one at ``old_primary_dsn``.

    ``max_lag_bytes``: the lag gate. ``connect_timeout`` bounds each connect, each query
    and each leadership check; ``promote_timeout`` bounds pg_promote. ``clock`` gives the
    timestamps in the result (the runtime passes ``loop.time``).
    """

    def __init__(
        self,
        *,
        standby_dsn: str,
        old_primary_dsn: str,
        max_lag_bytes: int,
        connect_timeout: float,
        promote_timeout: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._standby_dsn = standby_dsn
        self._old_primary_dsn = old_primary_dsn
        self._max_lag_bytes = max_lag_bytes
        self._connect_timeout = connect_timeout
        self._promote_timeout = promote_timeout
        self._clock = clock or time.monotonic

    async def promote(
        self,
        *,
        epoch: int,
        holder: str,
        failover_id: str,
        primary_last_lsn: int | None,
        still_leader: Callable[[], Awaitable[bool]],
        force: bool = False,
        resuming: bool = False,
    ) -> PromotionResult:
        """Fence the old primary and promote the standby under ``epoch``; see the module doc.

        ``resuming``: the run's journal says this run already sent pg_promote (under an
        older epoch, before a crash). A target that is no longer a standby and carries no
        marker, or the marker of this same ``failover_id``, is then this run's own
        promotion: it is adopted under ``epoch`` instead of refused.

        ``primary_last_lsn``: the old primary's last known WAL position (bytes), for the
        lag gate; None when unknown. ``force`` passes the lag gate, with a warning.
        Raises PromotionRefused (lag gate, lock lost, target not a standby, unreachable,
        pg_promote too slow) or StaleEpoch (a newer epoch already acted on the target).
        """
        plog = log.bind(
            failover_id=failover_id, epoch=epoch, standby=describe_dsn(self._standby_dsn)
        )
        try:
            return await self._promote(
                plog=plog,
                epoch=epoch,
                holder=holder,
                failover_id=failover_id,
                primary_last_lsn=primary_last_lsn,
                still_leader=still_leader,
                force=force,
                resuming=resuming,
            )
        except PromotionRefused as exc:
            plog.error("promotion_refused", reason=exc.reason)
            raise
        except StaleEpoch as exc:
            plog.error("promotion_stale_epoch", reason=str(exc))
            raise

    async def fence(self, dsn: str, *, epoch: int | None) -> FenceResult:
        """Make the server at ``dsn`` read-only and end its client sessions.

        Refuses (PromotionRefused) a server whose marker epoch is >= ``epoch``: that is
        the one this epoch promoted. ``epoch`` None self-fences (no marker check). A
        standby needs no fence (fenced=True, "standby").
        Raises ServerUnreachable when it does not answer within ``connect_timeout``.
        """
        flog = log.bind(epoch=epoch)
        try:
            return await fence_server(dsn, epoch=epoch, io_timeout=self._connect_timeout, flog=flog)
        except PromotionRefused as exc:
            flog.error("fence_refused", target=describe_dsn(dsn), reason=exc.reason)
            raise

    async def _promote(
        self,
        *,
        plog: FilteringBoundLogger,
        epoch: int,
        holder: str,
        failover_id: str,
        primary_last_lsn: int | None,
        still_leader: Callable[[], Awaitable[bool]],
        force: bool,
        resuming: bool,
    ) -> PromotionResult:
        await self._require_leadership(plog, still_leader, "before any change")
        async with session(
            self._standby_dsn, role="standby", io_timeout=self._connect_timeout
        ) as conn:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                await self._refuse_newer_replicated_marker(conn, epoch)
                lag, replay_paused = await self._lag_gate(conn, plog, primary_last_lsn, force)
                # Invariant 1: the old primary is fenced before the new one takes writes,
                # so no moment has two writable primaries. Unreachable: nothing to fence.
                fenced, fence_detail = await self._fence_old_primary(plog, epoch)
                await self._require_leadership(plog, still_leader, "right before pg_promote")
                promote_seconds = await self._pg_promote(conn, plog, replay_paused)
                writable_at = await self._record_epoch(conn, plog, epoch, holder, failover_id)
                already_promoted = False
            elif resuming and await self._own_unfinished_promotion(conn, failover_id, epoch):
                plog.warning("promotion_adopted", detail="this run's pg_promote landed before "
                             "a crash; recording the marker under the resuming epoch")
                writable_at = await self._record_epoch(conn, plog, epoch, holder, failover_id)
                lag, promote_seconds, already_promoted = None, 0.0, True
                fenced, fence_detail = await self._fence_old_primary(plog, epoch)
            else:
                writable_at = await self._confirm_resume(conn, plog, epoch)
                lag, promote_seconds, already_promoted = None, 0.0, True
                fenced, fence_detail = await self._fence_old_primary(plog, epoch)
        what = "already promoted" if already_promoted else f"promoted in {promote_seconds:.3f}s"
        lag_text = "" if lag is None else f", lag {lag} bytes"
        detail = (
            f"{describe_dsn(self._standby_dsn)} {what} under epoch {epoch}{lag_text}; "
            f"old primary: {fence_detail}"
        )
        return PromotionResult(
            already_promoted=already_promoted,
            lag_bytes=lag,
            promote_seconds=promote_seconds,
            writable_at=writable_at,
            old_primary_fenced=fenced,
            detail=detail,
        )

    async def _require_leadership(
        self, plog: FilteringBoundLogger, still_leader: Callable[[], Awaitable[bool]], moment: str
    ) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                leader = await still_leader()
        except TimeoutError as exc:
            raise PromotionRefused(
                f"lock lost: leadership not confirmed within {self._connect_timeout:g}s ({moment})"
            ) from exc
        except LockUnavailable as exc:
            raise PromotionRefused(f"lock lost: lock store unavailable ({moment}): {exc}") from exc
        if not leader:
            raise PromotionRefused(f"lock lost: no longer the leader ({moment})")
        plog.info("promotion_leadership_confirmed", moment=moment)

    async def _refuse_newer_replicated_marker(self, conn: asyncpg.Connection, epoch: int) -> None:
        # The standby replicates the marker of the primary it follows: if that primary
        # was promoted under a newer epoch, this caller is stale. Checked before pg_promote,
        # when refusing still changes nothing.
        marker = await read_marker_epoch(conn)
        if marker is not None and marker > epoch:
            raise StaleEpoch(f"the standby follows a primary promoted under newer epoch {marker}")

    async def _lag_gate(
        self,
        conn: asyncpg.Connection,
        plog: FilteringBoundLogger,
        primary_last_lsn: int | None,
        force: bool,
    ) -> tuple[int | None, bool]:
        """The lag to promote with, and whether replay is paused; refuses above the gate."""
        state = await conn.fetchrow(_REPLICATION_STATE)
        replay, paused = state["replay_lsn"], state["replay_paused"]
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
        if lag is not None and lag <= self._max_lag_bytes:
            plog.info(
                "promotion_lag_gate_passed",
                lag_bytes=lag,
                max_lag_bytes=self._max_lag_bytes,
                replay_paused=paused,
            )
            return lag, paused
        lag_text = "unknown (no WAL received yet)" if lag is None else f"{lag} bytes"
        reason = f"replication lag {lag_text} exceeds max_lag_bytes {self._max_lag_bytes}"
        if paused:
            reason += "; WAL replay is paused on the standby (pg_wal_replay_resume() to catch up)"
        if not force:
            raise PromotionRefused(reason)
        plog.warning(
            "lag_gate_overridden",
            lag_bytes=lag,
            max_lag_bytes=self._max_lag_bytes,
            replay_paused=paused,
            reason=reason,
        )
        return lag, paused

    async def _pg_promote(
        self, conn: asyncpg.Connection, plog: FilteringBoundLogger, replay_paused: bool
    ) -> float:
        if replay_paused:
            # Promotion ends a pause anyway and replays what was received first, but a
            # paused startup process notices the request only at its next 1 s wake-up.
            await conn.execute("SELECT pg_wal_replay_resume()")
            plog.info("wal_replay_resumed", reason="replay was paused; promotion replays it")
        wait_seconds = max(1, math.ceil(self._promote_timeout))
        started = self._clock()
        try:
            done = await conn.fetchval(
                "SELECT pg_promote(wait => true, wait_seconds => $1)",
                wait_seconds,
                timeout=wait_seconds + self._connect_timeout,
            )
        except TimeoutError as exc:
            # The request may sit unread in a hung server's socket and run when it wakes.
            raise ServerUnreachable(
                f"standby {describe_dsn(self._standby_dsn)} unreachable: timeout during "
                "pg_promote; it may still complete the promotion when it answers again: "
                "check pg_is_in_recovery() before retrying"
            ) from exc
        promote_seconds = self._clock() - started
        if not done:
            raise PromotionRefused(
                f"pg_promote did not finish within {wait_seconds}s; the standby may still "
                "complete it: check pg_is_in_recovery() before retrying"
            )
        plog.info("pg_promote_done", promote_seconds=round(promote_seconds, 4))
        return promote_seconds

    async def _record_epoch(
        self,
        conn: asyncpg.Connection,
        plog: FilteringBoundLogger,
        epoch: int,
        holder: str,
        failover_id: str,
    ) -> float:
        try:
            async with conn.transaction():
                # Explicitly read-write: a server cloned from a fenced primary carries
                # default_transaction_read_only = on in postgresql.auto.conf.
                await conn.execute("SET TRANSACTION READ WRITE")
                await conn.execute(_CREATE_MARKER)
                recorded = await conn.fetchval(_RECORD_MARKER, epoch, holder, failover_id)
                read_only_default = await conn.fetchval(
                    "SELECT current_setting('default_transaction_read_only')"
                )
        except asyncpg.PostgresConnectionError:
            raise
        except asyncpg.PostgresError as exc:
            raise PromotionRefused(
                f"the standby was promoted but the write check failed: {exc}"
            ) from exc
        if recorded is None:
            raise StaleEpoch(f"a newer epoch recorded its marker on the new primary than {epoch}")
        writable_at = self._clock()
        plog.info("promotion_epoch_recorded", writable_at=writable_at, holder=holder)
        if read_only_default == "on":
            plog.warning(
                "new_primary_read_only_by_default",
                detail="default_transaction_read_only is on: applications cannot write "
                "until it is reset (ALTER SYSTEM RESET default_transaction_read_only)",
            )
        return writable_at

    async def _own_unfinished_promotion(
        self, conn: asyncpg.Connection, failover_id: str, epoch: int
    ) -> bool:
        """A promoted target with no marker yet, or an older marker of this same run."""
        if await conn.fetchval("SELECT to_regclass($1::text) IS NULL", MARKER_TABLE):
            return True
        row = await conn.fetchrow(
            f"SELECT epoch, failover_id FROM {MARKER_TABLE} WHERE id = 1"  # noqa: S608
        )
        if row is None:
            return True
        return bool(row["failover_id"] == failover_id and row["epoch"] < epoch)

    async def _confirm_resume(
        self, conn: asyncpg.Connection, plog: FilteringBoundLogger, epoch: int
    ) -> float:
        marker = await read_marker_epoch(conn)
        if marker is not None and marker > epoch:
            raise StaleEpoch(f"the target was promoted under newer epoch {marker}")
        if marker is None or marker < epoch:
            raise PromotionRefused(
                "target is not a standby: it is a primary not promoted by this epoch "
                f"(marker epoch {marker}; old primary? run failback first)"
            )
        async with conn.transaction():
            await conn.execute("SET TRANSACTION READ WRITE")
            touched = await conn.fetchval(_TOUCH_MARKER, epoch)
        if touched is None:
            raise StaleEpoch("a newer epoch recorded its marker while resuming")
        writable_at = self._clock()
        plog.info("promotion_already_done", writable_at=writable_at)
        return writable_at

    async def _fence_old_primary(
        self, plog: FilteringBoundLogger, epoch: int
    ) -> tuple[bool | None, str]:
        try:
            result = await fence_server(
                self._old_primary_dsn, epoch=epoch, io_timeout=self._connect_timeout, flog=plog
            )
        except ServerUnreachable as exc:
            plog.error("old_primary_not_fenced", fenced=None, reason=exc.reason)
            return None, f"not fenced, {exc.reason}"
        except PromotionRefused as exc:
            plog.error("old_primary_not_fenced", fenced=False, reason=exc.reason)
            return False, f"not fenced, {exc.reason}"
        return result.fenced, result.detail
