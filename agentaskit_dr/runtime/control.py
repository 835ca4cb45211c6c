"""The engine as the API sees it: status, observations, and the operator's controls.

Every control goes through the engine's queue, so the engine stays the only writer of
the watch state; the call returns once a cycle has applied it. Pause, resume and ack
belong to the cluster: they are written to the lock store (``ClusterControlsWatch``) and
every watchdog applies them; a store that cannot be written refuses the control.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

import structlog

from agentaskit_dr.api.server import ControlRefused
from agentaskit_dr.config import STALL_INTERVALS
from agentaskit_dr.core import (
    Acknowledged,
    FailoverRequested,
    Paused,
    Phase,
    Resumed,
    StartFailover,
    Tick,
)
from agentaskit_dr.ports import ClusterRecord, LockUnavailable
from agentaskit_dr.runtime.cluster_controls import ClusterControlsWatch
from agentaskit_dr.runtime.engine import Engine

log = structlog.get_logger(__name__)

class PlannedRunsStatus(Protocol):
    """The failback or switchover run active now (``runtime.planned_runs``)."""

    def status(self) -> dict[str, Any] | None: ...


class ExtraStatus(Protocol):
    """Status keys kept beside the engine (``runtime.dr_testing``: ``dr_testing``,
    ``objectives``)."""

    def status(self) -> dict[str, Any]: ...


#: The engine counts as stuck when no cycle ran for this many probe intervals (the
#: binding's timing check in config/_binding.py counts with the same number).
STUCK_AFTER_INTERVALS = STALL_INTERVALS


class EngineController:
    """Implements ``api.server.Controller`` on top of a running :class:`Engine`."""

    def __init__(self, engine: Engine, controls: ClusterControlsWatch | None = None,
                 planned: PlannedRunsStatus | None = None,
                 extra: ExtraStatus | None = None) -> None:
        self.engine = engine
        self.controls = controls
        self.planned = planned
        self.extra = extra

    async def fence_own_primary(self, *, epoch: int, failover_id: str) -> dict[str, Any]:
        return await self.engine.fence_own_primary(epoch=epoch, failover_id=failover_id)

    def status(self) -> dict[str, Any]:
        status = self.engine.status()
        if self.controls is not None:
            status["cluster"] = self.controls.status()
        if self.planned is not None:
            status["planned_run"] = self.planned.status()
        if self.extra is not None:
            status.update(self.extra.status())
        return status

    def observations(self) -> dict[str, Any]:
        return self.engine.observations()

    def alive(self) -> bool:
        engine = self.engine
        limit = STUCK_AFTER_INTERVALS * engine.config.probe.interval
        return engine.clock() - engine.last_cycle_at <= limit

    def ready(self) -> tuple[bool, str]:
        engine = self.engine
        if not engine.started:
            return False, "probes not started yet"
        if not engine.latest:
            return False, "no probe has reported yet"
        return True, f"config loaded, {len(engine.latest)} probes reporting"

    async def pause(self, reason: str | None, by: str | None = None) -> dict[str, Any]:
        controls = self.controls
        if controls is None:
            answer = await self.engine.control(Paused(reason or ""))
            return {"paused": True, "verdict": answer.verdict}
        verdict = await self._cluster(controls, controls.store.pause(
            reason=reason or "", by=self._by(by)))
        return {"paused": True, "verdict": verdict, "cluster": controls.status()}

    async def resume(self, by: str | None = None) -> dict[str, Any]:
        controls = self.controls
        if controls is None:
            answer = await self.engine.control(Resumed())
            return {"paused": False, "verdict": answer.verdict}
        verdict = await self._cluster(controls, controls.store.resume(by=self._by(by)))
        return {"paused": False, "verdict": verdict, "cluster": controls.status()}

    async def acknowledge(self, by: str | None = None) -> dict[str, Any]:
        controls = self.controls
        if controls is None:
            answer = await self.engine.control(Acknowledged())
            return {"phase": self.engine.state.phase.value, "verdict": answer.verdict}
        verdict = await self._cluster(controls, controls.store.acknowledge(by=self._by(by)))
        return {"phase": self.engine.state.phase.value, "verdict": verdict,
                "cluster": controls.status()}

    async def _cluster(self, controls: ClusterControlsWatch,
                       write: Awaitable[ClusterRecord]) -> str:
        """Store the control for the whole cluster, apply it here at once, and answer with
        the verdict after it (the other watchdogs apply it at their next read)."""
        try:
            record = await write
        except LockUnavailable as exc:
            raise ControlRefused(f"the lock store cannot be written, nothing changed: {exc}; "
                                 "retry, or run the command on a machine that reaches the "
                                 "lock store") from None
        controls.apply(record)
        # The queue is FIFO: once this Tick is applied, so are the events before it.
        return (await self.engine.control(Tick())).verdict

    def _by(self, by: str | None) -> str:
        return f"{by or 'an operator'} via {self.engine.config.holder}"

    async def failover(self, *, dry_run: bool, reason: str | None) -> dict[str, Any]:
        engine = self.engine
        if engine.config.role != "watchdog":
            raise ControlRefused("a witness never fails over; ask a watchdog")
        if dry_run:
            return self._dry_run(reason)
        answer = await engine.control(FailoverRequested(reason or ""))
        started = [c for c in answer.commands if isinstance(c, StartFailover)]
        if not started:
            raise ControlRefused(answer.verdict)
        return {"started": True, "verdict": answer.verdict, "epoch": started[0].epoch}

    def _dry_run(self, reason: str | None) -> dict[str, Any]:
        engine = self.engine
        state = engine.state
        blockers = []
        if state.phase is not Phase.WATCHING:
            blockers.append(f"phase is {state.phase.value}")
        if state.paused:
            blockers.append("paused")
        if state.standby_ready is False:
            blockers.append("no standby to promote")
        if state.target_unhealthy is not None:
            blockers.append(state.target_unhealthy)
        if state.epoch is None:
            blockers.append(f"lock held by {state.lock_holder or 'nobody reachable'}")
        plan = engine.runbook.describe(engine.config)
        return {
            "dry_run": True,
            "reason": reason,
            "from_region": engine.config.primary_region,
            "to_region": engine.config.secondary_region,
            "plan": plan,
            "would_run": not blockers,
            "blocked_by": blockers,
        }
