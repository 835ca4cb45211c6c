"""The engine: feeds observations to the pure core, logs its verdicts, acts.

A cycle starts when a probe reports (or at least every probe interval) and drains
everything that arrived meanwhile; SIGHUP reloads happen at the top of a cycle.
What reaches the engine is queued by ``engine_inputs``; what the core's commands do
is in ``engine_effects``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.config import ConfigError, WatchdogConfig
from agentaskit_dr.core import (
    Alert as AlertCommand,
)
from agentaskit_dr.core import (
    Command,
    Event,
    LeadershipChanged,
    Phase,
    PlannedPrimary,
    RecordedPrimary,
    Severity,
    StartFailover,
    ThresholdsChanged,
    Tick,
    WatchState,
    transition,
)
from agentaskit_dr.runtime.alerts import AlertRouter
from agentaskit_dr.runtime.engine_effects import EngineEffects, PromoterFactory
from agentaskit_dr.runtime.engine_inputs import (
    Control,
    ControlAnswer,
    EngineInputs,
    QueueItem,
    Wake,
)
from agentaskit_dr.runtime.engine_log import VerdictLog, log_outcome, update_metrics
from agentaskit_dr.runtime.executor import FailoverExecutor
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
from agentaskit_dr.runtime.self_fence_lift import SelfFenceLifter
from agentaskit_dr.runtime.self_fence_record import persist, restore
from agentaskit_dr.runtime.status import engine_status

log = structlog.get_logger(__name__)

__all__ = ["PRIMARY_DB", "STANDBY_DB", "ControlAnswer", "Engine"]


class Engine(EngineInputs, EngineEffects):
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
        # A verdict is logged when it changes (and as a heartbeat); a reload or an
        # operator's control asks for the next one at once.
        self.verdict_log = VerdictLog()
        self._verdict_asked = False
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
        self.lifter = SelfFenceLifter(self._clock, self.post)
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

    def restore_self_fence(self) -> None:
        """At start, once the cluster record was followed: a self-fence in force when this
        watchdog last stopped is in force again (``runtime/self_fence_record.py``), unless
        its region is no longer the primary's (a failover elsewhere meanwhile)."""
        self.state = restore(self.config, self.state, self._clock())

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
            await self.lifter.stop()
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
            if isinstance(item, Control) and not item.answer.done():
                item.answer.set_result(ControlAnswer(self.state.verdict, tuple(issued)))
        asked = self._verdict_asked or any(isinstance(item, Control) for item in items)
        self._verdict_asked = False
        self.verdict_log.cycle(self.state, self.config, cycle=self.cycles,
                               lag_bytes=self.lag_bytes, now=self.last_cycle_at, force=asked)
        update_metrics(self.metrics, self.state, phase_since=self._phase_since,
                       lag_bytes=self.lag_bytes, lag_seconds=self.lag_seconds,
                       archive=self.archive)
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
        if self.state.self_fenced and not self.state.lift_pending:
            self.lifter.read_due(self.config, self._file_primary)
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
        self.runs.start(self.runbook.failover(
            command, self.primary_last_lsn, old_primary_answering=answering,
            primary_last_seen_at=self.intake.primary_last_lsn_at), command)

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
        previous = self.state
        before, lift_status = self.state.phase, self.state.lift_status
        self.state, commands = transition(self.state, event, self._clock())
        persist(self.config, previous, self.state, commands)
        if self.state.lift_status != lift_status and self.state.lift_status:
            log.info("self_fence_lift_status", status=self.state.lift_status,
                     epoch=self.state.epoch)
        if self.state.phase is not before:
            self._phase_since = self._clock()
        if before is not Phase.FAILED_OVER and self.state.phase is Phase.FAILED_OVER:
            old_primary = self.config.primary_region
            if self.config.role == "watchdog" and self.config.region == old_primary:
                record = self.state.failover
                self.old_primary.failed_over_away(old_primary, record.epoch if record else None)
            self._swap_topology(event.region if isinstance(event, RecordedPrimary) else None)
        if (isinstance(event, PlannedPrimary | RecordedPrimary)
                and event.region != self.config.primary_region
                and self.state.failover is not None
                and self.state.failover.epoch == event.epoch):
            self._swap_topology(event.region)
        if isinstance(event, PlannedPrimary) and self.old_primary.pending == event.region:
            self.old_primary.cancel()  # the server it was to fence is the primary again
        return commands

    def _events_of(self, item: ProbeReport | LeadershipChanged | Wake | Control) -> list[Event]:
        if isinstance(item, LeadershipChanged):
            return [item]
        if isinstance(item, Control):
            return [item.event]
        if isinstance(item, Wake) or item.generation != self.generation:
            return []
        return self.intake.events(self.config, item)

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
        self._verdict_asked = True  # what the engine judges after it, applied or not
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
        pending, lag = self.archive
        status["wal_archive_pending_segments"] = pending
        status["wal_archive_lag_seconds"] = None if lag is None else round(lag, 3)
        return status


def _thresholds(config: WatchdogConfig) -> dict[str, float]:
    t = config.core_thresholds()
    return {"region_unhealthy": t.region_unhealthy, "db_unreachable": t.db_unreachable}

