"""The engine's effects: what the core's commands do (alerts, runs, fencing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agentaskit_dr.actuators.fence import PromotionRefused, ServerUnreachable
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import (
    Alert as AlertCommand,
)
from agentaskit_dr.core import (
    CloseIncident,
    Command,
    Event,
    FenceOldPrimary,
    FenceOwnPrimary,
    HoldOwnPrimary,
    LiftSelfFence,
    OwnPrimaryHoldFailed,
    SelfFenceFailed,
    Severity,
    StartFailover,
    WatchState,
)
from agentaskit_dr.runtime.alerts import AlertRouter
from agentaskit_dr.runtime.engine_log import log_decision
from agentaskit_dr.runtime.executor import FailoverExecutor, Promoter
from agentaskit_dr.runtime.own_hold import hold_own_primary
from agentaskit_dr.runtime.run_driver import RunDriver
from agentaskit_dr.runtime.runbook import Runbook
from agentaskit_dr.runtime.self_fence_lift import SelfFenceLifter

log = structlog.get_logger("agentaskit_dr.runtime.engine")

PromoterFactory = Callable[[WatchdogConfig], Promoter]


class EngineEffects:
    """The effect side of the engine: runs each command the core issued."""

    config: WatchdogConfig
    state: WatchState
    metrics: Metrics | None
    executor: FailoverExecutor
    runbook: Runbook
    runs: RunDriver
    alerts: AlertRouter
    lifter: SelfFenceLifter
    _file_primary: str
    _clock: Callable[[], float]
    _promoter_factory: PromoterFactory
    _apply: Callable[[Event], list[Command]]
    _start_failover: Callable[[StartFailover], None]

    async def _execute(self, command: Command) -> None:
        if isinstance(command, AlertCommand):
            self.alerts.route(command, epoch=self.state.epoch)
        elif isinstance(command, StartFailover):
            log_decision(command, self.state, self.metrics)
            if self.runs.in_progress:
                # A resume is driving the active run: this failover starts once it ends
                # (the runbook finishes an active run before opening a new one).
                log.warning("failover_waits_for_active_run", epoch=command.epoch)
                self.runs.deferred = command
                return
            self._start_failover(command)
        elif isinstance(command, CloseIncident):
            notification = self.runbook.close_incident(command.reason, self.state.epoch or 0)
            if notification is not None:
                self.alerts.send(notification)
        elif isinstance(command, FenceOwnPrimary):
            await self._fence_own_primary(command)
        elif isinstance(command, HoldOwnPrimary):
            held = await hold_own_primary(self.config, command, monotonic_now=self._clock())
            for extra in [] if held.held else self._apply(OwnPrimaryHoldFailed(held.detail)):
                await self._execute(extra)
        elif isinstance(command, LiftSelfFence):
            self.lifter.start_lift(self.config, self._file_primary, command,
                                   self.executor.leases)
        elif isinstance(command, FenceOldPrimary):
            promoter = self._promoter_factory(self.config)
            standby = self.config.regions[self.config.secondary_region].database.connect_dsn()
            refused = await self.executor.fence(command, promoter, standby)
            if refused is not None:
                await self._execute(AlertCommand(Severity.CRITICAL, f"fence refused: {refused}",
                                                 key="fence"))
            elif "fence" in self.alerts.open_alerts:
                await self._execute(AlertCommand(Severity.INFO, "old primary fenced",
                                                 key="fence", resolve=True))

    async def fence_own_primary(self, *, epoch: int, failover_id: str) -> dict[str, Any]:
        """A peer about to promote asks: fence this region's server under ``epoch``.

        Only the watchdog of the region that holds the primary fences (in control mode the
        server is stopped for good, a frozen one killed); the marker check refuses the
        server that ``epoch`` promoted. Needs no lock: fencing is the safe direction.
        """
        region = self.config.region
        if self.config.role != "watchdog" or region != self.config.primary_region:
            return {"fenced": False, "server_answers": None,
                    "detail": f"{self.config.holder} in {region} does not watch the primary's "
                              f"region {self.config.primary_region}"}
        dsn = self.config.regions[region].database.connect_dsn()
        try:
            result = await self._promoter_factory(self.config).fence(dsn, epoch=epoch)
        except ServerUnreachable as exc:
            answer: dict[str, Any] = {"fenced": False, "server_answers": False,
                                      "detail": exc.reason}
        except PromotionRefused as exc:
            answer = {"fenced": False, "server_answers": True, "detail": exc.reason}
        else:
            answer = {"fenced": result.fenced, "server_answers": True, "detail": result.detail}
        log.critical("fenced_for_peer" if answer["fenced"] else "fence_for_peer_failed",
                     epoch=epoch, failover_id=failover_id, **answer)
        return answer

    async def _fence_own_primary(self, command: FenceOwnPrimary) -> None:
        """Self-fencing needs no lock: read-only is the safe direction, and the lock store
        may well be on the other side of the partition. A fence that is not confirmed goes
        back to the core, which alerts and tries again after ``retry_backoff``."""
        promoter = self._promoter_factory(self.config)
        dsn = self.config.regions[self.config.primary_region].database.connect_dsn()
        try:
            # No epoch: its own primary is fenced whatever epoch promoted it.
            result = await promoter.fence(dsn, epoch=None)
        except Exception as exc:  # noqa: BLE001 (any failure is a fence not confirmed)
            failure = f"{type(exc).__name__}: {exc}"
        else:
            if result.fenced:
                log.critical("self_fenced", reason=command.reason, fenced=True,
                             sessions_terminated=result.sessions_terminated,
                             detail=result.detail)
                return
            failure = result.detail
        log.error("self_fence_failed", reason=command.reason, error=failure)
        for extra in self._apply(SelfFenceFailed(failure)):
            await self._execute(extra)
