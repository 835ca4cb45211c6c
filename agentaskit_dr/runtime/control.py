"""The engine as the API sees it: status, observations, and the operator's controls.

Every control goes through the engine's queue, so the engine stays the only writer of
the watch state; the call returns once a cycle has applied it.
"""

from __future__ import annotations

from typing import Any

import structlog

from agentaskit_dr.api.server import ControlRefused
from agentaskit_dr.core import (
    Acknowledged,
    FailoverRequested,
    Paused,
    Phase,
    Resumed,
    StartFailover,
)
from agentaskit_dr.runtime.engine import Engine

log = structlog.get_logger(__name__)

#: The engine counts as stuck when no cycle ran for this many probe intervals.
STUCK_AFTER_INTERVALS = 5


class EngineController:
    """Implements ``api.server.Controller`` on top of a running :class:`Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def status(self) -> dict[str, Any]:
        return self.engine.status()

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

    async def pause(self, reason: str | None) -> dict[str, Any]:
        answer = await self.engine.control(Paused(reason or ""))
        return {"paused": True, "verdict": answer.verdict}

    async def resume(self) -> dict[str, Any]:
        answer = await self.engine.control(Resumed())
        return {"paused": False, "verdict": answer.verdict}

    async def acknowledge(self) -> dict[str, Any]:
        answer = await self.engine.control(Acknowledged())
        return {"phase": self.engine.state.phase.value, "verdict": answer.verdict}

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
