"""Carries out the core's commands under the leader lock and reports the outcome as events."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from agentaskit_dr.actuators.promote import FenceResult, PromotionRefused, PromotionResult
from agentaskit_dr.core import (
    Event,
    FailoverRefused,
    FailoverSucceeded,
    FenceOldPrimary,
    StartFailover,
)
from agentaskit_dr.ports import Lease, StaleEpoch

log = structlog.get_logger(__name__)


class Promoter(Protocol):
    """What the executor needs of the promotion actuator (``actuators.promote``)."""

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
    ) -> PromotionResult: ...

    async def fence(self, dsn: str, *, epoch: int | None) -> FenceResult: ...


class LeaseSource(Protocol):
    """The leadership keeper, as the executor sees it."""

    async def verified_lease(self) -> Lease | None: ...


def new_failover_id(epoch: int) -> str:
    """``fo-<UTC time>-e<epoch>-<random>``: unique even for two runs in one second."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"fo-{stamp}-e{epoch}-{secrets.token_hex(2)}"


class FailoverExecutor:
    """Runs a decided failover once, fenced by the command's epoch."""

    def __init__(
        self,
        leases: LeaseSource,
        *,
        holder: str,
        clock: Callable[[], float],
        force: bool = False,
    ) -> None:
        self.leases = leases
        self.holder = holder
        self.clock = clock
        self.force = force

    async def _leader_under(self, epoch: int) -> bool:
        lease = await self.leases.verified_lease()
        return lease is not None and lease.epoch == epoch

    async def failover(
        self, command: StartFailover, promoter: Promoter, primary_last_lsn: int | None
    ) -> Event:
        failover_id = new_failover_id(command.epoch)
        bound = log.bind(failover_id=failover_id, epoch=command.epoch)
        if not await self._leader_under(command.epoch):
            bound.error("failover_refused", reason="lock lost before promotion")
            return FailoverRefused("lock lost before promotion")
        bound.info("promotion_started", reason=command.reason)

        async def still_leader() -> bool:
            return await self._leader_under(command.epoch)

        try:
            result = await promoter.promote(
                epoch=command.epoch,
                holder=self.holder,
                failover_id=failover_id,
                primary_last_lsn=primary_last_lsn,
                still_leader=still_leader,
                force=self.force,
            )
        except StaleEpoch as exc:
            bound.error("failover_refused", reason=f"stale epoch: {exc}")
            return FailoverRefused(f"stale epoch: {exc}", retry=False)
        except PromotionRefused as exc:
            bound.error("failover_refused", reason=exc.reason)
            return FailoverRefused(exc.reason)
        bound.info(
            "promotion_done",
            already_promoted=result.already_promoted,
            lag_bytes=result.lag_bytes,
            promote_seconds=round(result.promote_seconds, 4),
            decision_to_writable=round(result.writable_at - command.decided_at, 4),
            old_primary_fenced=result.old_primary_fenced,
            detail=result.detail,
        )
        return FailoverSucceeded(epoch=command.epoch, detail=result.detail)

    async def promote_for_run(
        self, promoter: Promoter, *, epoch: int, run_id: str, primary_last_lsn: int | None,
        resuming: bool,
    ) -> PromotionResult:
        """The runbook's promote step; raises PromotionRefused or StaleEpoch."""

        async def still_leader() -> bool:
            return await self._leader_under(epoch)

        return await promoter.promote(
            epoch=epoch, holder=self.holder, failover_id=run_id,
            primary_last_lsn=primary_last_lsn, still_leader=still_leader, force=self.force,
            resuming=resuming,
        )

    async def fence(self, command: FenceOldPrimary, promoter: Promoter, dsn: str) -> None:
        if not await self._leader_under(command.epoch):
            log.warning("fence_skipped", reason="not the lock holder", epoch=command.epoch)
            return
        try:
            result = await promoter.fence(dsn, epoch=command.epoch)
        except (PromotionRefused, StaleEpoch) as exc:
            log.exception("fence_refused", epoch=command.epoch, reason=str(exc))
            return
        log.warning(
            "old_primary_fenced",
            epoch=command.epoch,
            fenced=result.fenced,
            sessions_terminated=result.sessions_terminated,
            detail=result.detail,
            reason=command.reason,
        )
