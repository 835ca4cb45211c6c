"""Fence the old primary, then promote the PostgreSQL standby under a fencing epoch.

Runbook step 2, "promote the secondary database", done over SQL with ``pg_promote()``.
Each step is one log event carrying the failover id and epoch:

1. leadership is confirmed before any change and again right before ``pg_promote``;
2. the target must be a standby; a primary already promoted under this epoch is a
   resume after a crash (nothing is done twice), one promoted by this run or by an
   earlier attempt of the same incident without its marker is adopted, one promoted
   under a newer epoch means we are stale, any other primary is refused;
3. the fence gate (``promote_gate``): an old primary that answers at all is fenced and
   the fence confirmed before anything else, or nothing is promoted (safety invariant 1);
   only one that nobody reaches is promoted past (its own side has self-fenced);
4. the catch-up gate: the fenced old primary's final WAL position is read after the
   fence and the standby must replay it within ``catch_up_timeout`` (zero loss); an
   unreachable old primary is gated instead on its last known position and
   ``max_lag_bytes``;
5. ``pg_promote(wait => true)``;
6. one read-write transaction proves the new primary takes writes and records the epoch
   in the marker row, refusing to overwrite a newer epoch.

A failure once ``pg_promote`` was sent is ``PromotionInDoubt``: the run must stay open so
that its next attempt adopts the promotion instead of refusing a standby that is none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
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
from agentaskit_dr.actuators.pg_control import ServerControl
from agentaskit_dr.actuators.promote_gate import Gates, fence_before_promotion, pass_gates
from agentaskit_dr.actuators.promote_marker import (
    PromotionInDoubt,
    adoptable,
    record_marker,
    touch_marker,
)
from agentaskit_dr.actuators.promote_standby import give_login_back, pg_promote
from agentaskit_dr.ports import LockUnavailable, StaleEpoch, refuse_newer_epoch

__all__ = [
    "FenceResult",
    "PostgresPromoter",
    "PromotionInDoubt",
    "PromotionRefused",
    "PromotionResult",
    "ServerUnreachable",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion did, for the journal and the evidence file.

    ``already_promoted``: the target was promoted before (a resume after a crash, or an
    adopted promotion); nothing was done twice. ``lag_bytes``: WAL not replayed at
    pg_promote (the measured RPO: 0 when the standby replayed the fenced old primary's
    final position), None when not measured. ``promote_seconds``: time in pg_promote.
    ``writable_at``: clock() when the write check succeeded. ``old_primary_fenced``:
    None when the old primary could not be reached, so could not be fenced.
    ``final_lsn``: the fenced old primary's WAL position read after the fence;
    ``replay_lsn``: the standby's replay position at pg_promote; ``catch_up_seconds``:
    the wait for the standby to replay ``final_lsn`` (None when there was none).
    """

    already_promoted: bool
    lag_bytes: int | None
    promote_seconds: float
    writable_at: float
    old_primary_fenced: bool | None
    detail: str
    final_lsn: int | None = None
    replay_lsn: int | None = None
    catch_up_seconds: float | None = None


class PostgresPromoter:
    """Promotes the standby at ``standby_dsn`` and fences the one at ``old_primary_dsn``.

    ``max_lag_bytes``: the lag gate. ``connect_timeout`` bounds each connect, each query
    and each leadership check; ``promote_timeout`` bounds pg_promote;
    ``catch_up_timeout`` bounds the wait for the standby to replay a fenced old primary's
    final position. ``clock`` gives the timestamps in the result (the runtime passes
    ``loop.time``).
    """

    def __init__(
        self,
        *,
        standby_dsn: str,
        old_primary_dsn: str,
        max_lag_bytes: int,
        connect_timeout: float,
        promote_timeout: float,
        catch_up_timeout: float = 30.0,
        clock: Callable[[], float] | None = None,
        old_primary_control: ServerControl | None = None,
        old_primary_conninfo: str | None = None,
    ) -> None:
        self._standby_dsn = standby_dsn
        self._old_primary_dsn = old_primary_dsn
        # Control mode for the old primary (this watchdog runs on its host) and where a
        # restart of it in recovery should stream from: the fence uses both when given.
        self._old_primary_control = old_primary_control
        self._old_primary_conninfo = old_primary_conninfo
        self._max_lag_bytes = max_lag_bytes
        self._connect_timeout = connect_timeout
        self._promote_timeout = promote_timeout
        self._catch_up_timeout = catch_up_timeout
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
        old_primary_answering: bool = False,
        adopt_from: Collection[str] = (),
    ) -> PromotionResult:
        """Fence the old primary and promote the standby under ``epoch``; see the module doc.

        ``resuming``: the run's journal says this run already sent pg_promote (under an
        older epoch, before a crash). A target that is no longer a standby and carries no
        marker, or the marker of this same ``failover_id``, is then this run's own
        promotion: it is adopted under ``epoch`` instead of refused. ``adopt_from``: the
        ids of earlier runs of the same incident that may have sent pg_promote; a target
        without a marker or with one of their markers is adopted the same way.

        ``old_primary_answering``: some vantage sees the old primary answering; then it
        must be fenced (confirmed) even if the promoter cannot reach it.
        ``primary_last_lsn``: the old primary's last known WAL position (bytes), for the
        lag gate when it cannot be reached; None when unknown. ``force`` passes the lag
        and catch-up gates, with a warning (never the fence gate).
        Raises PromotionRefused (fence not confirmed, lag or catch-up gate, lock lost,
        target not a standby, unreachable), PromotionInDoubt (pg_promote sent, then a
        timeout or the marker write failed) or StaleEpoch (a newer epoch acted on the
        target).
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
                old_primary_answering=old_primary_answering,
                adopt_from=frozenset(adopt_from),
            )
        except PromotionInDoubt as exc:
            plog.error("promotion_in_doubt", reason=exc.reason, promoted=exc.promoted)
            raise
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
        own = dsn == self._old_primary_dsn
        try:
            return await fence_server(
                dsn, epoch=epoch, io_timeout=self._connect_timeout, flog=flog,
                control=self._old_primary_control if own else None,
                primary_conninfo=self._old_primary_conninfo if own else None)
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
        old_primary_answering: bool,
        adopt_from: frozenset[str],
    ) -> PromotionResult:
        await self._require_leadership(plog, still_leader, "before any change")
        gate: Gates | None = None
        async with session(
            self._standby_dsn, role="standby", io_timeout=self._connect_timeout
        ) as conn:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                await self._refuse_newer_replicated_marker(conn, epoch)
                # Invariant 1: an old primary that answers is fenced, and the fence
                # confirmed, before the new one can take writes.
                old = await fence_before_promotion(
                    self._old_primary_dsn, epoch=epoch, io_timeout=self._connect_timeout,
                    answering_elsewhere=old_primary_answering, plog=plog,
                    control=self._old_primary_control,
                    primary_conninfo=self._old_primary_conninfo,
                )
                gate = await pass_gates(
                    conn, plog, old, primary_last_lsn=primary_last_lsn,
                    max_lag_bytes=self._max_lag_bytes, catch_up_within=self._catch_up_timeout,
                    clock=self._clock, force=force,
                )
                await self._require_leadership(plog, still_leader, "right before pg_promote")
                promote_seconds = await pg_promote(
                    conn, plog, replay_paused=gate.replay_paused,
                    promote_timeout=self._promote_timeout, connect_timeout=self._connect_timeout,
                    standby=describe_dsn(self._standby_dsn), clock=self._clock)
                writable_at = await self._record_epoch(conn, plog, epoch, holder, failover_id)
                await give_login_back(conn, plog)
                already_promoted = False
                fenced, fence_detail = old.fenced, old.detail
            elif await adoptable(
                conn, failover_id, epoch, resuming=resuming, adopt_from=adopt_from
            ):
                plog.warning("promotion_adopted", detail="pg_promote of this run or of an "
                             "earlier attempt of this incident landed without its marker; "
                             "recording the marker under this epoch")
                writable_at = await self._record_epoch(conn, plog, epoch, holder, failover_id)
                await give_login_back(conn, plog)
                promote_seconds, already_promoted = 0.0, True
                fenced, fence_detail = await self._fence_old_primary(plog, epoch)
            else:
                writable_at = await self._confirm_resume(conn, plog, epoch)
                await give_login_back(conn, plog)
                promote_seconds, already_promoted = 0.0, True
                fenced, fence_detail = await self._fence_old_primary(plog, epoch)
        lag = gate.lag_bytes if gate else None
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
            final_lsn=gate.old_primary.final_lsn if gate else None,
            replay_lsn=gate.replay_lsn if gate else None,
            catch_up_seconds=gate.catch_up_seconds if gate else None,
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
        refuse_newer_epoch(marker, epoch,
                           f"the standby follows a primary promoted under newer epoch {marker}")

    async def _record_epoch(
        self,
        conn: asyncpg.Connection,
        plog: FilteringBoundLogger,
        epoch: int,
        holder: str,
        failover_id: str,
    ) -> float:
        read_only_default = await record_marker(
            conn, epoch=epoch, holder=holder, failover_id=failover_id
        )
        writable_at = self._clock()
        plog.info("promotion_epoch_recorded", writable_at=writable_at, holder=holder)
        if read_only_default:
            plog.warning(
                "new_primary_read_only_by_default",
                detail="default_transaction_read_only is on: applications cannot write "
                "until it is reset (ALTER SYSTEM RESET default_transaction_read_only)",
            )
        return writable_at

    async def _confirm_resume(
        self, conn: asyncpg.Connection, plog: FilteringBoundLogger, epoch: int
    ) -> float:
        marker = await read_marker_epoch(conn)
        refuse_newer_epoch(marker, epoch, f"the target was promoted under newer epoch {marker}")
        if marker is None or marker < epoch:
            raise PromotionRefused(
                "target is not a standby: it is a primary not promoted by this epoch "
                f"(marker epoch {marker}; old primary? run failback first)"
            )
        await touch_marker(conn, epoch)
        writable_at = self._clock()
        plog.info("promotion_already_done", writable_at=writable_at)
        return writable_at

    async def _fence_old_primary(
        self, plog: FilteringBoundLogger, epoch: int
    ) -> tuple[bool | None, str]:
        try:
            result = await fence_server(
                self._old_primary_dsn, epoch=epoch, io_timeout=self._connect_timeout, flog=plog,
                control=self._old_primary_control, primary_conninfo=self._old_primary_conninfo,
            )
        except ServerUnreachable as exc:
            plog.error("old_primary_not_fenced", fenced=None, reason=exc.reason)
            return None, f"not fenced, {exc.reason}"
        except PromotionRefused as exc:
            plog.error("old_primary_not_fenced", fenced=False, reason=exc.reason)
            return False, f"not fenced, {exc.reason}"
        return result.fenced, result.detail
