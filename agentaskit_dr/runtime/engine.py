"""The engine: feeds observations to the pure core, logs one verdict per cycle, acts.

A cycle starts when a probe reports (or at least every probe interval) and drains
everything that arrived meanwhile; SIGHUP reloads happen at the top of a cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.actuators.fence import PromotionRefused, ServerUnreachable
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.config import ConfigError, WatchdogConfig
from agentaskit_dr.core import (
    Alert as AlertCommand,
)
from agentaskit_dr.core import (
    CloseIncident,
    Command,
    Event,
    FailoverRecord,
    FenceOldPrimary,
    FenceOwnPrimary,
    LeadershipChanged,
    Phase,
    PlannedPrimary,
    SelfFenceFailed,
    Severity,
    StartFailover,
    ThresholdsChanged,
    Tick,
    Vantage,
    WatchState,
    transition,
)
from agentaskit_dr.ports import (
    ClusterControls,
    ClusterPrimary,
    Lease,
    RegionHealthObservation,
)
from agentaskit_dr.runtime.alerts import AlertRouter
from agentaskit_dr.runtime.engine_log import log_decision, log_outcome, log_verdict, update_metrics
from agentaskit_dr.runtime.executor import FailoverExecutor, Promoter
from agentaskit_dr.runtime.intake import Intake, VantageSource
from agentaskit_dr.runtime.old_primary import OldPrimaryStopper
from agentaskit_dr.runtime.outlook import (
    PRIMARY_DB,
    STANDBY_DB,
    probe_summaries,
)
from agentaskit_dr.runtime.reload import ProbeFactory, reloadable
from agentaskit_dr.runtime.run_driver import RunDriver, RunOutcome, run_alerts
from agentaskit_dr.runtime.runbook import Runbook
from agentaskit_dr.runtime.scheduler import ProbeReport, ProbeScheduler, ProbeTiming
from agentaskit_dr.runtime.status import engine_status

log = structlog.get_logger(__name__)

__all__ = ["PRIMARY_DB", "STANDBY_DB", "ControlAnswer", "Engine"]

PromoterFactory = Callable[[WatchdogConfig], Promoter]


@dataclasses.dataclass(frozen=True, slots=True)
class _Wake:
    """Wakes the engine for a reload or a stop without an observation."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Control:
    """An operator's request from the API; answered once the cycle applied it."""

    event: Event
    answer: asyncio.Future[ControlAnswer]


@dataclasses.dataclass(frozen=True, slots=True)
class ControlAnswer:
    """What an operator's event did: the verdict right after it, and the commands it
    issued (a manual failover started iff they hold a StartFailover)."""

    verdict: str
    commands: tuple[Command, ...]


QueueItem = ProbeReport | LeadershipChanged | _Wake | _Control | RunOutcome


class Engine:
    """Owns the watch state and the probe set; the only writer of both."""

    def __init__(
        self,
        config: WatchdogConfig,
        *,
        config_path: Path | None,
        probes: ProbeFactory,
        promoters: PromoterFactory,
        executor: FailoverExecutor,
        runbook: Runbook,
        on_config: Callable[[WatchdogConfig], None] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._file_primary = config.primary_region
        self._probe_factory = probes
        self._promoter_factory = promoters
        self.executor = executor
        self._on_config = on_config
        self.state = WatchState(thresholds=config.core_thresholds())
        self.queue: asyncio.Queue[QueueItem] = asyncio.Queue()
        self.generation = 0
        self.cycles = 0
        self._scheduler: ProbeScheduler | None = None
        self._reload_requested = False
        self._probes_stale = False
        self._clock = asyncio.get_running_loop().time
        self.vantages: VantageSource = list
        self.links: Callable[[], dict[str, bool]] = dict
        # What the probes saw; it reads the peers through the two callables above, which
        # the supervisor wires after construction.
        self.intake = Intake(self._clock, self._peer_vantages, self._peer_links)
        self.last_cycle_at = self._clock()
        self.started = False
        self.metrics: Metrics | None = None
        # Every decided failover runs as a journaled run of the runbook.
        self.runbook = runbook
        self._phase_since = self._clock()
        # The runbook runs beside the loop, never inside a cycle: a 10-minute run must not
        # stall probes, verdicts, /healthz or pause. One run (or resume) at a time.
        self.runs = RunDriver(self.queue.put_nowait)
        # Alerts go to the log and, deduplicated, to the notifiers (the supervisor wires
        # ``alerts.send`` to its notification hub; by default they are only logged).
        self.alerts = AlertRouter(lambda _notification: None, node=config.holder,
                                  clock=self._clock)
        self.old_primary = OldPrimaryStopper(self._clock)
        runbook.on_alert = self._route_alert
        # Called once a SIGHUP reload is over, applied or refused (systemd's READY=1).
        self.after_reload: Callable[[], None] = lambda: None

    @property
    def probe_names(self) -> frozenset[str]:
        """The probes of the current topology (their reports land in ``latest``)."""
        return frozenset(p.name for p in self._scheduler.probes) if self._scheduler else frozenset()

    @property
    def file_primary_region(self) -> str:
        """The config file's primary region (the home a failback returns to)."""
        return self._file_primary

    @property
    def run_in_progress(self) -> bool:
        """A failover run (or a resume of one) is being driven right now."""
        return self.runs.in_progress

    # ------------------------------------------------------------ inputs

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
        self.queue.put_nowait(_Wake())

    # ------------------------------------------------------------ loop

    async def control(self, event: Event) -> ControlAnswer:
        """Apply an operator's event (pause, resume, ack, failover) at the next cycle;
        returns the verdict after it."""
        return await self.post(event)

    def post(self, event: Event) -> asyncio.Future[ControlAnswer]:
        """Queue an operator's event without waiting (the cluster controls, read from the
        lock store before the engine runs); the future holds the verdict after it."""
        answer: asyncio.Future[ControlAnswer] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Control(event, answer))
        return answer

    async def run(self) -> None:
        self._start_probes()
        self.started = True
        try:
            while True:
                if self._reload_requested:
                    await self._reload()
                    self.after_reload()
                items = await self._next_batch()
                await self._cycle(items)
        finally:
            await self.runs.stop()
            if self._scheduler is not None:
                await self._scheduler.stop()

    async def _next_batch(self) -> list[QueueItem]:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns an item that
        # arrives together with a cancellation and drops the cancellation (SIGTERM unheard).
        try:
            async with asyncio.timeout(self.config.probe.interval):
                first = await self.queue.get()
        except TimeoutError:
            return []
        items = [first]
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    async def _cycle(self, items: list[QueueItem]) -> None:
        self.cycles += 1
        self.last_cycle_at = self._clock()
        commands: list[Command] = self._apply(Tick())
        outcomes: list[RunOutcome] = []
        for item in items:
            if isinstance(item, RunOutcome):
                outcomes.append(item)
                continue
            issued: list[Command] = []
            for event in self._events_of(item):
                had_lock = self.state.epoch is not None
                issued.extend(self._apply(event))
                if isinstance(event, LeadershipChanged):
                    issued.extend(self._lock_alerts(had_lock, event))
                if isinstance(event, LeadershipChanged) and event.epoch is not None:
                    self.runs.resume_due = self._clock()  # a run a predecessor left open?
            commands.extend(issued)
            # Answered with what its own event did, before later items change the state.
            if isinstance(item, _Control) and not item.answer.done():
                item.answer.set_result(ControlAnswer(self.state.verdict, tuple(issued)))
        log_verdict(self.state, self.config, cycle=self.cycles, lag_bytes=self.lag_bytes)
        update_metrics(self.metrics, self.state, phase_since=self._phase_since,
                       lag_bytes=self.lag_bytes, lag_seconds=self.lag_seconds)
        for command in commands:
            await self._execute(command)
        for outcome in outcomes:
            await self._run_finished(outcome)
        # A paused cluster is the operator's (a manual failback rejoins that very server):
        # the old primary's fence waits for resume, like a self-fence; so does it while a
        # failback or switchover run resyncs or switches that server.
        if not self.state.paused and self.state.planned_run is None:
            for alert in await self.old_primary.step(self.config, self._promoter_factory):
                await self._execute(alert)
        self._resume_if_due()
        if self._probes_stale:
            await self._restart_probes()

    def _route_alert(self, alert: AlertCommand) -> None:
        self.alerts.route(alert, epoch=self.state.epoch)

    def _lock_alerts(self, had_lock: bool, event: LeadershipChanged) -> list[Command]:
        if had_lock and event.epoch is None and not self.state.paused:
            holder = event.holder or "nobody reachable"
            return [AlertCommand(Severity.CRITICAL, f"lock lost: this watchdog no longer "
                                 f"holds the leader lock (now: {holder})", key="lock")]
        if event.epoch is not None and "lock" in self.alerts.open_alerts:
            return [AlertCommand(Severity.INFO, f"lock held again under epoch {event.epoch}",
                                 key="lock", resolve=True)]
        return []

    def _resume_if_due(self) -> None:
        """Resume the active run (after taking the lock, or to retry a failed step)."""
        due = self.runs.resume_due
        if due is None or self._clock() < due or self.runs.in_progress:
            return  # if in progress: asked again when that run's outcome arrives
        self.runs.resume_due = None
        if self.state.epoch is None or self.state.phase is Phase.FAILING_OVER:
            return
        self.runs.start(self.runbook.resume(), None)

    def _start_failover(self, command: StartFailover) -> None:
        answering = self.intake.old_primary_answering(self.config)
        self.runs.start(self.runbook.failover(command, self.primary_last_lsn,
                                              old_primary_answering=answering), command)

    async def _run_finished(self, outcome: RunOutcome) -> None:
        """A run's outcome reaches the core in a cycle of its own, like any other event."""
        deferred = self.runs.finished()
        if self.runbook.incomplete:
            self.runs.resume_due = self._clock() + self.state.thresholds.retry_backoff
        if outcome.event is not None:
            alerts = run_alerts(outcome.event, incomplete=self.runbook.incomplete,
                                verdict=self.state.verdict,
                                retry_backoff=self.state.thresholds.retry_backoff,
                                run_alert_open="run" in self.alerts.open_alerts)
            for extra in self._apply(outcome.event) + alerts:
                await self._execute(extra)
            log_outcome(outcome.command, self.state, self.metrics)
        if deferred is not None and self.state.phase is Phase.FAILING_OVER:
            self._start_failover(deferred)

    def _apply(self, event: Event) -> list[Command]:
        before = self.state.phase
        self.state, commands = transition(self.state, event, self._clock())
        if self.state.phase is not before:
            self._phase_since = self._clock()
        if before is not Phase.FAILED_OVER and self.state.phase is Phase.FAILED_OVER:
            old_primary = self.config.primary_region
            if self.config.role == "watchdog" and self.config.region == old_primary:
                record = self.state.failover
                self.old_primary.failed_over_away(old_primary, record.epoch if record else None)
            self._swap_topology()
        if isinstance(event, PlannedPrimary) and event.region != self.config.primary_region:
            self._swap_topology(event.region)
        if isinstance(event, PlannedPrimary) and self.old_primary.pending == event.region:
            self.old_primary.cancel()  # the server it was to fence is the primary again
        return commands

    def _events_of(self, item: ProbeReport | LeadershipChanged | _Wake | _Control) -> list[Event]:
        if isinstance(item, LeadershipChanged):
            return [item]
        if isinstance(item, _Control):
            return [item.event]
        if isinstance(item, _Wake) or item.generation != self.generation:
            return []
        return self.intake.events(self.config, item)

    def observations(self) -> dict[str, Any]:
        """The ``GET /v1/observations`` body: this daemon's latest view, for its peers."""
        return self.intake.observations(self.config)

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

    # ------------------------------------------------------------ probes and topology

    def _start_probes(self) -> None:
        self.generation += 1
        probe = self.config.probe
        self._scheduler = ProbeScheduler(
            self._probe_factory(self.config),
            ProbeTiming(interval=probe.interval, timeout=probe.timeout, jitter=probe.jitter),
            self.report,
            generation=self.generation,
        )
        self._scheduler.start()

    async def _restart_probes(self) -> None:
        self._probes_stale = False
        if self._scheduler is not None:
            await self._scheduler.stop()
        self._start_probes()

    def _swap_topology(self, to: str | None = None) -> None:
        """After a failover the standby's region serves (or ``to``, made the primary by a
        failback or switchover run); probes follow at the cycle's end."""
        new_primary = to or self.config.secondary_region
        log.warning("primary_region_changed", old=self.config.primary_region, new=new_primary)
        self.config = self.config.with_primary(new_primary)
        self.intake.forget()
        self._probes_stale = True

    async def _reload(self) -> None:
        """Apply the config file again (after SIGHUP); a file that cannot be used changes nothing.

        Nothing raised while reading or checking the file stops the engine: the running
        config stays and one ``config_reload_failed`` event says why.
        """
        self._reload_requested = False
        if self.config_path is None:
            return
        path = str(self.config_path)
        try:
            new, file_primary, lock_ignored = await reloadable(
                self.config, self.config_path, self._file_primary, self._probe_factory)
        except ConfigError as exc:
            # The problem lines say everything; a traceback would only bury them.
            log.error("config_reload_failed", path=path, problems=exc.problems,  # noqa: TRY400
                      keeping="the running config")
            return
        except Exception as exc:  # a bad reload must never stop the engine
            log.exception("config_reload_failed", path=path,
                          problems=[f"cannot apply the file: {type(exc).__name__}"],
                          keeping="the running config")
            return
        if lock_ignored:
            log.warning("config_reload_partial", path=path, ignored="lock",
                        keeping="the running lock settings", reason="lock settings apply "
                        "on restart")
        self._file_primary = file_primary
        self.config = new
        if self._on_config is not None:
            self._on_config(new)
        commands = self._apply(ThresholdsChanged(new.core_thresholds()))
        await self._restart_probes()
        log.info("config_reloaded", path=path, thresholds=_thresholds(new),
                 config=new.redacted())
        for command in commands:
            await self._execute(command)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for the status command and API (times are seconds ago)."""
        now = self._clock()
        status = engine_status(self.state, self.config, now=now, lag_bytes=self.lag_bytes,
                               peers=self.links(), probes=probe_summaries(self.latest, now))
        current = self.runbook.current if self.run_in_progress else None
        status["run"] = None if current is None else {"run_id": current[0], "step": current[1]}
        status["alerts"] = self.alerts.open_alerts
        return status

def _thresholds(config: WatchdogConfig) -> dict[str, float]:
    t = config.core_thresholds()
    return {"region_unhealthy": t.region_unhealthy, "db_unreachable": t.db_unreachable}
