"""The engine's log events and metrics, one function each, from the state they describe.

A cycle logs its ``verdict`` when it differs from the last one logged (any of phase,
verdict, epoch, lock holder, primary region, failover epoch, assessment, pause, or the
replication lag becoming known or unknown or crossing ``promotion.max_lag_bytes``), when
an operator's control or a reload asked for one, and otherwise once every
``VERDICT_HEARTBEAT`` seconds (``heartbeat: true``): an idle watchdog cycles several
times a second and its log used to be nothing else.
A decision is one ``failover_decided``; a run's outcome one ``failover_outcome`` (or
``run_resume_outcome``). The metrics follow the same state.
"""

from __future__ import annotations

import structlog

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import Phase, StartFailover, WatchState

log = structlog.get_logger("agentaskit_dr.runtime.engine")

#: Seconds between two ``verdict`` lines while nothing changes.
VERDICT_HEARTBEAT = 60.0


class VerdictLog:
    """Logs a cycle's verdict when it changed, when asked, or as a heartbeat."""

    def __init__(self, heartbeat: float = VERDICT_HEARTBEAT) -> None:
        self.heartbeat = heartbeat
        self._last: tuple[object, ...] | None = None
        self._last_at = 0.0

    def cycle(self, state: WatchState, config: WatchdogConfig, *, cycle: int,
              lag_bytes: int | None, now: float, force: bool = False) -> bool:
        """Log this cycle's verdict if it is due; True if it was logged."""
        failover = state.failover
        # The lag itself moves with every write: only its crossing of the promotion gate
        # (or becoming known or unknown) is a change worth a line.
        lag = None if lag_bytes is None else lag_bytes > config.promotion.max_lag_bytes
        key = (state.phase, state.verdict, state.epoch, state.lock_holder,
               config.primary_region, failover.epoch if failover else None, state.assessed,
               state.paused, lag)
        changed = key != self._last
        if not (changed or force or now - self._last_at >= self.heartbeat):
            return False
        self._last, self._last_at = key, now
        log.info(
            "verdict",
            cycle=cycle,
            phase=state.phase.value,
            verdict=state.verdict,
            epoch=state.epoch,
            lock_holder=state.lock_holder,
            primary_region=config.primary_region,
            failover_epoch=failover.epoch if failover else None,
            lag_bytes=lag_bytes,
            assessment=state.assessed.value if state.assessed else None,
            paused=state.paused or None,
            **({} if changed or force else {"heartbeat": True}),
        )
        return True


def log_decision(command: StartFailover, state: WatchState, metrics: Metrics | None) -> None:
    if command.condition is None:
        log.warning("failover_decided", condition="manual", epoch=command.epoch,
                    reason=command.reason, decided_at=round(command.decided_at, 4))
        return
    threshold = state.thresholds.for_condition(command.condition)
    overshoot = command.decided_at - command.failing_since - threshold
    if metrics is not None:
        metrics.overshoot(overshoot)
    log.warning(
        "failover_decided",
        condition=command.condition.value,
        epoch=command.epoch,
        reason=command.reason,
        failing_since=round(command.failing_since, 4),
        decided_at=round(command.decided_at, 4),
        threshold=threshold,
        overshoot=round(overshoot, 4),
    )


def log_outcome(command: StartFailover | None, state: WatchState,
                metrics: Metrics | None) -> None:
    """A run's outcome, once the core applied it (``command`` None: a resume)."""
    if command is None:
        log.warning("run_resume_outcome", phase=state.phase.value, verdict=state.verdict)
        return
    log.warning("failover_outcome", phase=state.phase.value, verdict=state.verdict,
                epoch=command.epoch)
    if metrics is not None:
        metrics.failover("succeeded" if state.phase is Phase.FAILED_OVER else "refused")


def update_metrics(metrics: Metrics | None, state: WatchState, *, phase_since: float,
                   lag_bytes: int | None, lag_seconds: float | None,
                   archive: tuple[int | None, float | None] = (None, None)) -> None:
    if metrics is None:
        return
    metrics.phase(state.phase.value, phase_since)
    metrics.lock(state.epoch is not None, state.epoch)
    metrics.replication_lag(lag_bytes, lag_seconds)
    metrics.wal_archive(*archive)
    if state.assessed is not None:
        metrics.verdict(state.assessed.value)
    metrics.paused(state.paused)
