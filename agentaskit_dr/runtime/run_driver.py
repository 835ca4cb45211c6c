"""The runbook beside the engine's loop: one run (or resume) at a time, as a task.

A failover run takes minutes (a slow ``pg_promote``, a Kubernetes rollout, webhooks that
take their time); inside an engine cycle it would stall probes, verdicts, ``/healthz``
and pause. The driver runs it as a task and hands its outcome back through the engine's
queue, so the core hears it in a cycle of its own, like any other event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from agentaskit_dr.core import Alert, Command, Event, FailoverRefused, Severity, StartFailover

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """A run finished: what the core must hear (None: nothing to resume), and the decision
    that started it (None for a resume)."""

    event: Event | None
    command: StartFailover | None


class RunDriver:
    """Drives at most one run at a time; ``deliver`` queues its outcome for the engine."""

    def __init__(self, deliver: Callable[[RunOutcome], None]) -> None:
        self._deliver = deliver
        self._task: asyncio.Task[None] | None = None
        # A failover decided while a resume was being driven: started once it ends.
        self.deferred: StartFailover | None = None
        # When to resume the active run (after taking the lock, or to retry a step).
        self.resume_due: float | None = None

    @property
    def in_progress(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, run: Coroutine[Any, Any, Event | None],
              command: StartFailover | None) -> None:
        async def drive() -> None:
            try:
                event = await run
            except Exception as exc:  # a bug in a step must not leave the core waiting
                log.exception("run_crashed", error=f"{type(exc).__name__}: {exc}")
                event = (FailoverRefused(f"run crashed: {type(exc).__name__}: {exc}")
                         if command is not None else None)
            self._deliver(RunOutcome(event, command))

        self._task = asyncio.create_task(drive(), name="runbook")

    def finished(self) -> StartFailover | None:
        """The outcome was delivered; the deferred failover to start now, if any."""
        self._task = None
        deferred, self.deferred = self.deferred, None
        return deferred

    async def stop(self) -> None:
        """Cancel a run still in progress at shutdown; its journal lets a successor resume."""
        task = self._task
        if task is None or task.done():
            return
        log.warning("run_interrupted_by_stop", detail="the journal keeps the run; it is "
                    "resumed by this watchdog's next start or by the next lock holder")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_alerts(event: Event, *, incomplete: bool, verdict: str, retry_backoff: float,
               run_alert_open: bool) -> list[Command]:
    """A stale epoch and a run left open are alerts; a run that completes clears them."""
    if isinstance(event, FailoverRefused) and not event.retry:
        return [Alert(Severity.CRITICAL, f"stale epoch: {event.reason}", key="stale_epoch")]
    if incomplete:
        return [Alert(Severity.CRITICAL, f"run stuck: {verdict}; retried every "
                      f"{retry_backoff:g}s", key="run")]
    if run_alert_open:
        return [Alert(Severity.INFO, "run completed", key="run", resolve=True)]
    return []
