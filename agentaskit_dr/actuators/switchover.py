"""A planned, zero-loss switch of the PostgreSQL primary to its streaming standby.

Patroni's graceful demote, done by the watchdog that runs beside the current primary
(control mode: ``regions.<r>.database.control``):

1. **preflight** (``switchover_state.assess``): the primary is a primary not promoted
   under a newer epoch, the standby is in recovery and streaming from it;
2. **demote**: ``CHECKPOINT`` (so the shutdown checkpoint has little left to write), then
   ``standby.signal`` + ``primary_conninfo`` (pointing at the standby) into the primary's
   data directory *before* it stops, so no restart by anyone can come up writable; then a
   fast stop. A fast shutdown ends client sessions (writes are refused from here on),
   writes a shutdown checkpoint and keeps its walsenders until the standby has flushed
   all WAL up to it. ``pg_controldata`` must then say "shut down": its latest checkpoint
   is the last record the old primary wrote;
3. **catch up**: the standby must replay past that checkpoint record within
   ``catch_up_timeout`` (then it holds every commit the old primary acknowledged);
4. **promote** the standby under the new epoch with the marker row (``PostgresPromoter``,
   whose fence finds the old primary already stopped and fenced, and whose lag gate at
   0 bytes re-checks step 3), which also gives LOGIN back to roles a fence locked out;
5. **rejoin**: the old primary starts with ``standby.signal`` and follows the new
   timeline without ``pg_rewind``: its WAL ends exactly at the point where the new
   timeline forked (the shutdown checkpoint the standby replayed). Done when it streams
   and has replayed the new primary's position read after it started (lag 0).

A failure before ``pg_promote`` was sent (the stop was not clean, the standby did not
catch up) rolls back: ``standby.signal`` is removed and the old primary starts again as
the primary, so a refused switchover costs a short write pause, not an outage. Only while
the standby is still in recovery and this watchdog still holds the lock: without it, the
stopped and signalled old primary stays as it is. Once ``pg_promote`` was sent nothing is
rolled back (PromotionInDoubt).

Resumable: the servers record how far a run got (the stopped primary's ``standby.signal``
and clean control file, the standby's promotion and marker), so calling ``switch`` again
with the same epoch and id after a crash continues at the step that was not done (see
``switchover_state``), and on a finished switchover only confirms it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from structlog.typing import FilteringBoundLogger

from agentaskit_dr.actuators.fence import PromotionRefused, describe_dsn, session
from agentaskit_dr.actuators.pg_control import (
    ServerControl,
    ServerControlFailed,
    postmaster_pid,
    remove_standby_signal,
    stop_server,
    write_recovery_config,
)
from agentaskit_dr.actuators.pg_start import (
    ControlData,
    format_lsn,
    read_control_data,
    start_server,
)
from agentaskit_dr.actuators.promote import PostgresPromoter, PromotionInDoubt, PromotionResult
from agentaskit_dr.actuators.promote_gate import wait_for_replay
from agentaskit_dr.actuators.switchover_rejoin import replayed_short_of, wait_streaming
from agentaskit_dr.actuators.switchover_result import (
    SwitchoverPhases,
    SwitchoverResult,
    phases_from_marks,
)
from agentaskit_dr.actuators.switchover_state import Stage, SwitchoverRefused, assess
from agentaskit_dr.ports import LockUnavailable, StaleEpoch

__all__ = ["PostgresSwitchover", "SwitchoverPhases", "SwitchoverRefused", "SwitchoverResult"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Attempt:
    """One call of ``switch``: its logger and its leadership check."""

    log: FilteringBoundLogger
    still_leader: Callable[[], Awaitable[bool]]


class PostgresSwitchover:
    """Switches the primary at ``primary_dsn`` (controlled here through ``primary_control``)
    to the standby at ``standby_dsn``; the old primary then follows ``primary_conninfo``
    (a conninfo for the standby, no password).

    ``io_timeout`` bounds each connect and query; ``catch_up_timeout`` the wait for the
    standby to replay the shutdown checkpoint; ``promote_timeout`` pg_promote;
    ``rejoin_timeout`` the old primary's start and its catch-up as a standby.
    """

    def __init__(
        self,
        *,
        primary_dsn: str,
        primary_control: ServerControl,
        standby_dsn: str,
        primary_conninfo: str,
        io_timeout: float = 5.0,
        catch_up_timeout: float = 30.0,
        promote_timeout: float = 30.0,
        rejoin_timeout: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._primary_dsn = primary_dsn
        self._control = primary_control
        self._standby_dsn = standby_dsn
        self._conninfo = primary_conninfo
        self._io_timeout = io_timeout
        self._catch_up_timeout = catch_up_timeout
        self._promote_timeout = promote_timeout
        self._rejoin_timeout = rejoin_timeout
        self._clock = clock or time.monotonic

    async def switch(
        self,
        *,
        epoch: int,
        holder: str,
        switchover_id: str,
        still_leader: Callable[[], Awaitable[bool]],
        on_promoted: Callable[[], Awaitable[None]] | None = None,
    ) -> SwitchoverResult:
        """Run the switchover under ``epoch``; see the module doc.

        ``on_promoted`` runs once the standby is the primary under ``epoch`` (also on a
        resumed run that finds it so), before the rejoin: where the caller records the new
        primary region. What it raises propagates; calling ``switch`` again resumes.
        Raises SwitchoverRefused (nothing switched; rolled back when the old primary had
        been stopped), PromotionInDoubt (pg_promote sent, outcome unknown: nothing is
        rolled back) or StaleEpoch (a newer epoch acted).
        """
        slog = log.bind(switchover_id=switchover_id, epoch=epoch,
                        old_primary=describe_dsn(self._primary_dsn),
                        new_primary=describe_dsn(self._standby_dsn))
        try:
            return await self._switch(_Attempt(slog, still_leader), epoch=epoch, holder=holder,
                                      switchover_id=switchover_id, on_promoted=on_promoted)
        except SwitchoverRefused as exc:
            slog.error("switchover_refused", reason=exc.reason, rolled_back=exc.rolled_back)
            raise
        except PromotionInDoubt as exc:
            slog.error("switchover_in_doubt", reason=exc.reason)
            raise
        except StaleEpoch as exc:
            slog.error("switchover_stale_epoch", reason=str(exc))
            raise

    async def _switch(
        self,
        run: _Attempt,
        *,
        epoch: int,
        holder: str,
        switchover_id: str,
        on_promoted: Callable[[], Awaitable[None]] | None,
    ) -> SwitchoverResult:
        clock = self._clock
        marks = {"started": clock()}
        situation = await assess(
            primary_dsn=self._primary_dsn, control=self._control,
            standby_dsn=self._standby_dsn, epoch=epoch, switchover_id=switchover_id,
            io_timeout=self._io_timeout)
        stage = situation.stage
        if stage in (Stage.DEMOTE, Stage.CATCH_UP) and not await self._still_leading(run):
            raise SwitchoverRefused("lock lost: no longer the leader (before any change)",
                                    rolled_back=False)
        marks["preflight"] = clock()
        run.log.info("switchover_started", stage=stage.value,
                     old_timeline=situation.old_timeline)
        stopped, writable_at = "stopped before this attempt", None
        final: ControlData | None = None
        if stage is Stage.DEMOTE:
            await self._checkpoint()
            marks["checkpoint"] = clock()
            stopped, final = await self._demote(run)
            marks["stop"] = clock()
        elif stage is Stage.CATCH_UP:
            final = await self._final_checkpoint(run)
        elif stage is Stage.PROMOTE:
            # Promoted before this attempt: whether it replayed the stopped primary's last
            # record decides below whether that server can follow it at all.
            with contextlib.suppress(ServerControlFailed):
                final = await read_control_data(self._control)
        if final is not None and stage is not Stage.PROMOTE:
            await self._catch_up(run, final)
            marks["catch_up"] = clock()
        promoted: PromotionResult | None = None
        if stage is not Stage.REJOIN:
            promoted = await self._promote(
                run, epoch=epoch, holder=holder, switchover_id=switchover_id,
                final=final, resuming=stage is Stage.PROMOTE)
            writable_at = promoted.writable_at
            marks["promote"] = clock()
        if on_promoted is not None:
            await on_promoted()
        rejoined, rejoin_detail, new_timeline = await self._rejoin(
            run.log, final if stage is Stage.PROMOTE else None)
        marks["rejoin"] = clock()
        unavailable = None
        if stage is Stage.DEMOTE and writable_at is not None:
            unavailable = round(writable_at - marks["checkpoint"], 4)
        result = SwitchoverResult(
            switchover_id=switchover_id, epoch=epoch,
            old_primary=describe_dsn(self._primary_dsn),
            new_primary=describe_dsn(self._standby_dsn),
            resumed_at=None if stage is Stage.DEMOTE else stage.value,
            final_lsn=None if final is None else format_lsn(final.checkpoint_lsn),
            old_timeline=situation.old_timeline or (final.timeline if final else 0),
            new_timeline=new_timeline, stopped=stopped, phases=phases_from_marks(marks),
            write_unavailable_seconds=unavailable,
            total_seconds=round(marks["rejoin"] - marks["started"], 4),
            rejoined=rejoined, rejoin_detail=rejoin_detail,
            promoted_replay_lsn=(None if promoted is None or promoted.replay_lsn is None
                                 else format_lsn(promoted.replay_lsn)),
            lag_bytes_at_promotion=None if promoted is None else promoted.lag_bytes,
        )
        run.log.info("switchover_done", **result.as_dict())
        return result

    async def _checkpoint(self) -> None:
        try:
            async with session(self._primary_dsn, role="primary",
                               io_timeout=self._io_timeout) as conn:
                await conn.execute("CHECKPOINT")
        except PromotionRefused as exc:
            raise SwitchoverRefused(f"CHECKPOINT on the primary failed: {exc.reason}",
                                    rolled_back=False) from exc

    async def _promote(
        self, run: _Attempt, *, epoch: int, holder: str, switchover_id: str,
        final: ControlData | None, resuming: bool,
    ) -> PromotionResult:
        """Promote the standby (or adopt its promotion when ``resuming``)."""
        try:
            promotion = await PostgresPromoter(
                standby_dsn=self._standby_dsn, old_primary_dsn=self._primary_dsn,
                max_lag_bytes=0, connect_timeout=self._io_timeout,
                promote_timeout=self._promote_timeout, catch_up_timeout=self._catch_up_timeout,
                clock=self._clock, old_primary_control=self._control,
                old_primary_conninfo=self._conninfo,
            ).promote(
                epoch=epoch, holder=holder, failover_id=switchover_id,
                primary_last_lsn=None if final is None else final.checkpoint_lsn + 1,
                still_leader=run.still_leader, resuming=resuming,
            )
        except (PromotionInDoubt, StaleEpoch):
            raise
        except PromotionRefused as exc:
            raise await self._roll_back(run, f"promotion refused: {exc.reason}") from exc
        run.log.info("switchover_promoted", detail=promotion.detail)
        return promotion

    async def _demote(self, run: _Attempt) -> tuple[str, ControlData]:
        """Signal file first, then a fast stop; the shutdown checkpoint it wrote."""
        try:
            write_recovery_config(self._control, self._conninfo)
        except ServerControlFailed as exc:
            raise SwitchoverRefused(f"could not write standby.signal: {exc}",
                                    rolled_back=False) from exc
        try:
            stopped = await stop_server(self._control)
        except ServerControlFailed as exc:
            raise await self._roll_back(run, f"the primary did not stop: {exc}") from exc
        if not stopped.endswith("-m fast)"):
            raise await self._roll_back(
                run, f"the primary did not shut down cleanly ({stopped}): its last WAL may "
                "not have reached the standby")
        return stopped, await self._final_checkpoint(run)

    async def _final_checkpoint(self, run: _Attempt) -> ControlData:
        """The stopped primary's shutdown checkpoint; rolls back unless it shut down cleanly."""
        try:
            final = await read_control_data(self._control)
        except ServerControlFailed as exc:
            raise await self._roll_back(run, f"cannot read the stopped primary's control "
                                        f"file: {exc}") from exc
        if not final.cleanly_shut_down:
            raise await self._roll_back(
                run, f"the primary did not shut down cleanly (cluster state {final.state!r}): "
                "its last WAL may not have reached the standby")
        run.log.info("switchover_old_primary_stopped",
                     final_lsn=format_lsn(final.checkpoint_lsn), timeline=final.timeline)
        return final

    async def _catch_up(self, run: _Attempt, final: ControlData) -> None:
        """Wait until the standby replayed the shutdown checkpoint record."""
        try:
            async with session(self._standby_dsn, role="standby",
                               io_timeout=self._io_timeout) as conn:
                # Replay positions are record ends: past the checkpoint's start means the
                # checkpoint record itself, the old primary's last, was replayed.
                caught = await wait_for_replay(conn, final.checkpoint_lsn + 1,
                                               within=self._catch_up_timeout, clock=self._clock)
        except PromotionRefused as exc:
            raise await self._roll_back(run, f"catch-up: {exc.reason}") from exc
        if not caught.caught_up:
            raise await self._roll_back(
                run, f"the standby did not replay the shutdown checkpoint "
                f"{format_lsn(final.checkpoint_lsn)} within {self._catch_up_timeout:g}s "
                f"(lag {caught.lag_bytes} bytes)")
        run.log.info("switchover_caught_up", waited_seconds=round(caught.waited_seconds, 4))

    async def _rejoin(
        self, slog: FilteringBoundLogger, adopted_after: ControlData | None
    ) -> tuple[bool, str, int]:
        """Start the old primary as a standby of the new one; (streaming at lag 0, why not,
        the new primary's timeline). ``adopted_after``: the stopped primary's last
        checkpoint, when this attempt adopted a promotion it did not gate itself."""
        if adopted_after is not None and postmaster_pid(self._control) is None:
            short = await replayed_short_of(self._standby_dsn, adopted_after.checkpoint_lsn,
                                            io_timeout=self._io_timeout)
            if short:
                where = format_lsn(adopted_after.checkpoint_lsn)
                detail = (f"the new primary was promoted {short} bytes before the old "
                          f"primary's shutdown checkpoint {where}: "
                          "that WAL is not on the new timeline; the old primary stays stopped "
                          "(standby.signal) until sync-primary rewinds or re-clones it")
                slog.error("switchover_rejoin_refused", reason=detail, lost_bytes=short)
                return False, detail, 0
        try:
            if postmaster_pid(self._control) is None:
                await start_server(self._control, within=self._rejoin_timeout)
        except ServerControlFailed as exc:
            slog.error("switchover_rejoin_failed", reason=str(exc))
            return False, f"old primary did not start as a standby: {exc}", 0
        rejoin = await wait_streaming(
            standby_dsn=self._primary_dsn, primary_dsn=self._standby_dsn,
            io_timeout=self._io_timeout, within=self._rejoin_timeout)
        if rejoin.streaming:
            slog.info("switchover_rejoined", detail=rejoin.detail)
        else:
            slog.error("switchover_rejoin_failed", reason=rejoin.detail)
        return rejoin.streaming, rejoin.detail, rejoin.timeline

    async def _still_leading(self, run: _Attempt) -> bool:
        try:
            async with asyncio.timeout(self._io_timeout):
                return await run.still_leader()
        except (TimeoutError, LockUnavailable):
            return False

    async def _roll_back(self, run: _Attempt, reason: str) -> SwitchoverRefused:
        """Make the old primary a primary again, if the standby is surely not promoted."""
        try:
            async with session(self._standby_dsn, role="standby",
                               io_timeout=self._io_timeout) as conn:
                standby_in_recovery = bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
        except PromotionRefused as exc:
            return SwitchoverRefused(
                f"{reason}; not rolled back: the standby's state is unknown ({exc.reason}); "
                "the old primary stays stopped with standby.signal", rolled_back=False)
        if not standby_in_recovery:
            return SwitchoverRefused(f"{reason}; not rolled back: the standby is no longer "
                                     "in recovery", rolled_back=False)
        # Without the lock another watchdog may be failing over to the standby: a primary
        # restarted here could make two. The stopped, signalled old primary is safe.
        if not await self._still_leading(run):
            return SwitchoverRefused(f"{reason}; not rolled back: this watchdog no longer "
                                     "holds the lock; the old primary stays stopped with "
                                     "standby.signal", rolled_back=False)
        try:
            await stop_server(self._control)
            remove_standby_signal(self._control)
            await start_server(self._control, within=self._rejoin_timeout, as_primary=True)
        except ServerControlFailed as exc:
            return SwitchoverRefused(f"{reason}; roll-back failed: {exc}", rolled_back=False)
        run.log.warning("switchover_rolled_back", reason=reason)
        return SwitchoverRefused(f"{reason}; rolled back: the old primary is the primary again",
                                 rolled_back=True)
