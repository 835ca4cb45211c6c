"""Promotes and fences under the leader lock: the effects the runbook and engine need
checked against the current lease right before they happen."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

import structlog

from agentaskit_dr.actuators.promote import FenceResult, PromotionRefused, PromotionResult
from agentaskit_dr.core import FenceOldPrimary
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
        old_primary_answering: bool = False,
        adopt_from: Collection[str] = (),
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
    """Promotes (for the runbook's promote step) and fences, each under a verified lease."""

    def __init__(
        self,
        leases: LeaseSource,
        *,
        holder: str,
        force: bool = False,
    ) -> None:
        self.leases = leases
        self.holder = holder
        self.force = force

    async def _leader_under(self, epoch: int) -> bool:
        lease = await self.leases.verified_lease()
        return lease is not None and lease.epoch == epoch

    async def promote_for_run(
        self, promoter: Promoter, *, epoch: int, run_id: str, primary_last_lsn: int | None,
        resuming: bool, old_primary_answering: bool = False, adopt_from: Collection[str] = (),
    ) -> PromotionResult:
        """The runbook's promote step; raises PromotionRefused (PromotionInDoubt once
        pg_promote was sent) or StaleEpoch.

        ``old_primary_answering``: some vantage sees the old primary answering, so the
        promotion waits for its fence to be confirmed. ``adopt_from``: earlier runs of
        the same incident whose pg_promote may have landed.
        """

        async def still_leader() -> bool:
            return await self._leader_under(epoch)

        return await promoter.promote(
            epoch=epoch, holder=self.holder, failover_id=run_id,
            primary_last_lsn=primary_last_lsn, still_leader=still_leader, force=self.force,
            resuming=resuming, old_primary_answering=old_primary_answering,
            adopt_from=adopt_from,
        )

    async def fence(self, command: FenceOldPrimary, promoter: Promoter, dsn: str) -> str | None:
        """Fence under the lease; None when fenced (or not ours to do), else why not."""
        if not await self._leader_under(command.epoch):
            log.warning("fence_skipped", reason="not the lock holder", epoch=command.epoch)
            return None
        try:
            result = await promoter.fence(dsn, epoch=command.epoch)
        except (PromotionRefused, StaleEpoch) as exc:
            log.error("fence_refused", epoch=command.epoch, reason=str(exc))  # noqa: TRY400
            return str(exc)
        log.warning(
            "old_primary_fenced",
            epoch=command.epoch,
            fenced=result.fenced,
            sessions_terminated=result.sessions_terminated,
            detail=result.detail,
            reason=command.reason,
        )
        return None if result.fenced else result.detail
