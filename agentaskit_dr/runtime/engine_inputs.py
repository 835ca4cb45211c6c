"""The engine's inputs: probe reports, lock changes, operator events and reload requests.

Each input only queues an item; the engine's loop (``engine.py``) applies them in a cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import structlog

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import (
    Command,
    Event,
    FailoverRecord,
    LeadershipChanged,
    Phase,
    Vantage,
    WatchState,
)
from agentaskit_dr.ports import (
    ClusterControls,
    ClusterPrimary,
    Lease,
    RegionHealthObservation,
)
from agentaskit_dr.runtime.intake import Intake, VantageSource
from agentaskit_dr.runtime.run_driver import RunOutcome
from agentaskit_dr.runtime.scheduler import ProbeReport

log = structlog.get_logger("agentaskit_dr.runtime.engine")


@dataclasses.dataclass(frozen=True, slots=True)
class Wake:
    """Wakes the engine for a reload or a stop without an observation."""


@dataclasses.dataclass(frozen=True, slots=True)
class Control:
    """An operator's request from the API; answered once the cycle applied it."""

    event: Event
    answer: asyncio.Future[ControlAnswer]


@dataclasses.dataclass(frozen=True, slots=True)
class ControlAnswer:
    """What an operator's event did: the verdict right after it, and the commands it
    issued (a manual failover started iff they hold a StartFailover)."""

    verdict: str
    commands: tuple[Command, ...]


QueueItem = ProbeReport | LeadershipChanged | Wake | Control | RunOutcome


class EngineInputs:
    """The input side of the engine: what reaches it is queued for the next cycle."""

    config: WatchdogConfig
    state: WatchState
    queue: asyncio.Queue[QueueItem]
    metrics: Metrics | None
    intake: Intake
    vantages: VantageSource
    links: Callable[[], dict[str, bool]]
    _clock: Callable[[], float]
    _reload_requested: bool

    def _peer_vantages(self) -> list[Vantage]:
        return self.vantages()

    def _peer_links(self) -> dict[str, bool]:
        return self.links()

    @property
    def latest(self) -> dict[str, ProbeReport]:
        """The latest report of each probe of the current topology."""
        return self.intake.latest

    @property
    def lag_bytes(self) -> int | None:
        return self.intake.lag_bytes

    @property
    def lag_seconds(self) -> float | None:
        return self.intake.lag_seconds

    @property
    def archive(self) -> tuple[int | None, float | None]:
        return self.intake.archive

    @property
    def primary_last_lsn(self) -> int | None:
        return self.intake.primary_last_lsn

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def report(self, report: ProbeReport) -> None:
        if self.metrics is not None:
            observation = report.observation
            if isinstance(observation, RegionHealthObservation):
                self.metrics.probe(report.probe, observation.region, observation.healthy,
                                   max((c.latency for c in observation.checks), default=0.0))
            else:
                self.metrics.probe(report.probe, observation.target, observation.reachable,
                                   observation.latency)
                self.metrics.refused(report.probe, observation.target, observation.refusal)
        self.queue.put_nowait(report)

    def leadership_changed(self, lease: Lease | None, holder: str | None) -> None:
        event = LeadershipChanged(
            epoch=lease.epoch if lease else None, holder=lease.holder if lease else holder
        )
        self.queue.put_nowait(event)

    def follow_cluster_primary(self, primary: ClusterPrimary, controls: ClusterControls) -> None:
        """Before the engine runs: watch the region the cluster record names as primary (a
        failover happened while this watchdog was not running).

        The core also learns of that failover (its epoch), so the old primary, now in the
        standby slot and not in recovery, is taken for what it is (fenced if writable),
        never for a standby promoted since, which would swap the topology back. Until an
        operator acknowledged the failover, the watchdog is in ``failed_over`` like the
        ones that saw it happen.
        """
        region = primary.region
        if region == self.config.primary_region or region not in self.config.regions:
            return
        acknowledged = controls.acked_at is not None and controls.acked_at >= primary.at
        log.warning("primary_region_from_cluster", file=self.config.primary_region,
                    cluster=region, epoch=primary.epoch, run_id=primary.run_id,
                    acknowledged=acknowledged)
        self.config = self.config.with_primary(region)
        now = self._clock()
        record = FailoverRecord(condition=None, epoch=primary.epoch, decided_at=now,
                                reason=f"recorded by run {primary.run_id} in the cluster "
                                "record", completed_at=now)
        phase = Phase.WATCHING if acknowledged else Phase.FAILED_OVER
        self.state = dataclasses.replace(self.state, failover=record, phase=phase)

    def request_reload(self) -> None:
        """Called from the SIGHUP handler: only sets a flag; the loop does the work."""
        self._reload_requested = True
        self.queue.put_nowait(Wake())

    async def control(self, event: Event) -> ControlAnswer:
        """Apply an operator's event (pause, resume, ack, failover) at the next cycle;
        returns the verdict after it."""
        return await self.post(event)

    def post(self, event: Event) -> asyncio.Future[ControlAnswer]:
        """Queue an operator's event without waiting (the cluster controls, read from the
        lock store before the engine runs); the future holds the verdict after it."""
        answer: asyncio.Future[ControlAnswer] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Control(event, answer))
        return answer

    def observations(self) -> dict[str, Any]:
        """The ``GET /v1/observations`` body: this daemon's latest view, for its peers,
        with the failover it knows of (a primary-side watchdog cut off from the lock store
        learns of a failover away from its peers: ``peer_failover``)."""
        body = self.intake.observations(self.config)
        failover = self.state.failover
        body["failover_epoch"] = failover.epoch if failover is not None else None
        body["failover_in_progress"] = self.state.phase is Phase.FAILING_OVER
        return body
