"""Root tasks of the daemon, signals and graceful stop.

SIGTERM/SIGINT only resolve a future; SIGHUP only sets the engine's reload flag. When a
root task ends on its own, that is a failure: it is logged loudly and the rest stop.
Under systemd (``$NOTIFY_SOCKET``) the daemon tells it when it is ready, reloading and
stopping, and pets its watchdog while the engine makes progress (``systemd_notify``).

Exit codes of ``run``: 0 stopped on a signal, every task down in time; 1 a root task
ended on its own (or the API could not listen); 3 stopped on a signal but a task missed
the stop grace period (its cleanup, the lock release say, may not have happened).
(2, a config that cannot be used, comes from the CLI before the daemon starts.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr import logs
from agentaskit_dr.actuators.notify_hub import NotificationHub
from agentaskit_dr.api.credentials import DaemonCredentials
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import ApiServer
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.runtime.builders import (
    build_cluster_store,
    build_journal,
    build_lock,
    build_probes,
    build_promoter,
    epoch_floor_reader,
)
from agentaskit_dr.runtime.cluster_controls import ClusterControlsWatch
from agentaskit_dr.runtime.control import EngineController
from agentaskit_dr.runtime.dr_testing import DrTestingWatch
from agentaskit_dr.runtime.engine import Engine
from agentaskit_dr.runtime.epoch_floor import (
    watching_promoter,
    watching_stale_epochs,
)
from agentaskit_dr.runtime.evidence_layout import run_roots
from agentaskit_dr.runtime.executor import FailoverExecutor
from agentaskit_dr.runtime.host_steps import HostStepJobs
from agentaskit_dr.runtime.jobs import JobScheduler, StatusParts
from agentaskit_dr.runtime.leadership import LeadershipKeeper
from agentaskit_dr.runtime.outlook import stale_after
from agentaskit_dr.runtime.peer_failover import PeerFailoverRelay
from agentaskit_dr.runtime.peers import PeerPoller
from agentaskit_dr.runtime.planned_runs import PlannedRuns
from agentaskit_dr.runtime.runbook import Runbook
from agentaskit_dr.runtime.runbook_hooks import build_hooks, notifiers
from agentaskit_dr.runtime.systemd_notify import Notifier, ServiceNotifications, summary

log = structlog.get_logger(__name__)

GRACE_PERIOD = 5.0

EXIT_STOPPED = 0
EXIT_TASK_FAILED = 1
EXIT_STOP_TIMED_OUT = 3


async def run_daemon(
    config: WatchdogConfig, config_path: Path | None, credentials: DaemonCredentials
) -> int:
    """Run until SIGTERM/SIGINT; the exit code (module doc): 0 on a clean stop, 1 if a
    root task died, 3 if a task missed the stop grace period.

    ``credentials`` are the TLS contexts and peer token file, checked before the call.
    """
    loop = asyncio.get_running_loop()
    logs.route_asyncio_errors(loop)
    stop: asyncio.Future[signal.Signals] = loop.create_future()

    def request_stop(sig: signal.Signals) -> None:
        if not stop.done():
            stop.set_result(sig)

    parts = _assemble(config, config_path, loop, credentials)
    lock, engine, api = parts.lock, parts.engine, parts.api
    # The cluster's controls and primary before anything campaigns or probes: a watchdog
    # started while the cluster is paused starts paused, and after a failover it watches
    # the region the cluster serves from. Bounded by the store's timeout; a store that
    # cannot be read is logged and read again every interval.
    await parts.controls.refresh()
    record = parts.controls.record
    if record is not None and record.primary is not None:
        engine.follow_cluster_primary(record.primary, record.controls)
    engine.restore_self_fence()  # after the follow: a failover elsewhere drops the fence
    if config.api.listen is not None:
        try:
            await api.start(config.api.listen)
        except OSError as exc:
            log.error("api_listen_failed", listen=config.api.listen,  # noqa: TRY400
                      reason=exc.strerror or str(exc))
            await lock.close()
            return EXIT_TASK_FAILED

    systemd = _service_notifications(engine, loop)

    def request_reload() -> None:
        if systemd is not None:
            systemd.reloading()
        engine.request_reload()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, request_reload)
    log.info("daemon_started", region=config.region, primary_region=config.primary_region,
             holder=config.holder, role=config.role, config=config.redacted())
    for warning in config.warnings():
        field, _, message = warning.partition(": ")
        log.warning("config_warning", field=field, warning=message)
    tasks = _root_tasks(parts, config.role, systemd)
    exit_code, reason = EXIT_TASK_FAILED, "an error"
    try:
        exit_code, reason = await _until_stop_or_failure(stop, tasks)
    finally:
        if systemd is not None:
            systemd.stopping(reason)
        # Handlers stay until the tasks are down: a second SIGINT during the grace period
        # would otherwise raise KeyboardInterrupt mid-release and skip the clean stop.
        if await _stop_tasks(tasks) and exit_code == EXIT_STOPPED:
            exit_code = EXIT_STOP_TIMED_OUT
        await parts.alerts.close()
        if parts.host_steps is not None:
            await parts.host_steps.close()
        await api.stop()
        await lock.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if systemd is not None:
            systemd.close()
    log.info("daemon_stopped", exit_code=exit_code)
    return exit_code


def _root_tasks(parts: _Parts, role: str,
                systemd: ServiceNotifications | None) -> list[asyncio.Task[None]]:
    tasks = [
        asyncio.create_task(parts.engine.run(), name="engine"),
        asyncio.create_task(parts.peers.run(), name="peers"),
        asyncio.create_task(parts.planned.run(), name="planned-runs"),
        asyncio.create_task(parts.dr_testing.run(), name="dr-testing"),
    ]
    if role == "watchdog":
        # A witness never takes the lock: it observes and reports, nothing more.
        tasks.append(asyncio.create_task(parts.keeper.run(), name="leadership"))
        tasks.append(asyncio.create_task(parts.jobs.run(), name="backup-jobs"))
    if systemd is not None:
        tasks.append(asyncio.create_task(systemd.run(), name="systemd-notify"))
    return tasks


async def _until_stop_or_failure(stop: asyncio.Future[signal.Signals],
                                 tasks: list[asyncio.Task[None]]) -> tuple[int, str]:
    """Wait for a stop signal or a root task's end; the exit code so far and why."""
    watched: list[asyncio.Future[Any]] = [stop, *tasks]
    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    if stop.done():
        log.info("daemon_stopping", signal=stop.result().name)
        return EXIT_STOPPED, stop.result().name
    for task in tasks:
        if task.done():
            error = "cancelled" if task.cancelled() else repr(task.exception())
            log.error("root_task_ended", task=task.get_name(), error=error)
    return EXIT_TASK_FAILED, "a root task ended"


def _service_notifications(
    engine: Engine, loop: asyncio.AbstractEventLoop
) -> ServiceNotifications | None:
    """systemd's notifications when ``$NOTIFY_SOCKET`` is set (None otherwise); READY=1
    waits for the first report of every probe of the topology."""
    notifier, watchdog = Notifier.from_environment()
    if notifier is None:
        return None
    check_binding_timing(engine.config, watchdog)
    controller = EngineController(engine)

    def ready() -> bool:
        names = engine.probe_names
        return engine.started and bool(names) and names <= engine.latest.keys()

    def status() -> str:
        state = engine.state
        return summary(state.phase.value, engine.config.primary_region, state.epoch,
                       paused=state.paused, self_fenced=state.self_fenced)

    notifications = ServiceNotifications(notifier, ready=ready, alive=controller.alive,
                                         status=status, watchdog=watchdog, clock=loop.time)
    engine.after_reload = notifications.reloaded
    log.info("systemd_notify", socket=notifier.address, watchdog_sec=watchdog)
    return notifications


def check_binding_timing(config: WatchdogConfig, watchdog: float | None) -> str | None:
    """Under systemd's watchdog (``$WATCHDOG_USEC``), say at start when the PostgreSQL
    bound to this daemon could not be stopped before the other region may promote
    (docs/deploy.md); the event logged, if any. The daemon runs on: refusing to watch
    would be worse than watching with a slow binding."""
    if watchdog is None or config.role != "watchdog":
        return None
    budget = config.binding_budget(watchdog)
    declared = config.binding.liveness_timeout if config.binding is not None else None
    if declared is not None and declared < watchdog:
        log.warning("binding_liveness_differs", watchdog_sec=watchdog,
                    liveness_timeout=declared, reason="binding.liveness_timeout is shorter "
                    "than the unit's WatchdogSec; the check uses WatchdogSec")
    if (refused := budget.problem()) is not None:
        log.error("binding_too_slow", watchdog_sec=watchdog, reason=refused)
        return "binding_too_slow"
    if (tight := budget.warning()) is not None:
        log.warning("binding_tight", watchdog_sec=watchdog, reason=tight)
        return "binding_tight"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Parts:
    lock: RedisLeaderLock
    keeper: LeadershipKeeper
    engine: Engine
    peers: PeerPoller
    api: ApiServer
    controls: ClusterControlsWatch
    alerts: AlertHubs
    host_steps: HostStepJobs | None
    planned: PlannedRuns
    dr_testing: DrTestingWatch
    jobs: JobScheduler


def _assemble(
    config: WatchdogConfig, config_path: Path | None, loop: asyncio.AbstractEventLoop,
    credentials: DaemonCredentials,
) -> _Parts:
    """The daemon's parts, wired together; nothing started yet."""
    lock = build_lock(config)
    journal = build_journal(config, client=lock.client)
    cluster = build_cluster_store(config, client=lock.client)
    keeper = LeadershipKeeper(lock, ttl=config.lock.ttl, epoch_floor=epoch_floor_reader(
        lambda: engine.config, journal, cluster))
    executor = FailoverExecutor(
        keeper, holder=config.holder, force=config.promotion.force
    )
    # The runbook reads the engine's config (it follows failovers and reloads) and lag.
    # A target refusing our epoch as stale makes the keeper raise the epoch floor.
    hooks = watching_stale_epochs(build_hooks(), keeper.request_epoch_floor)
    # Before a promotion, the old primary's own watchdog is asked to fence its server.
    hooks.peer_fence = lambda current, region, epoch, run_id: peers.ask_fence(
        region, epoch=epoch, failover_id=run_id, timeout=current.promotion.timeout)
    runbook = Runbook(journal, executor, hooks, config=lambda: engine.config, clock=loop.time)
    runbook.cluster = cluster
    engine = Engine(
        config,
        config_path=config_path,
        probes=build_probes,
        # The fence after a failover too: a stale epoch there asks for the floor.
        promoters=lambda current: watching_promoter(build_promoter(current),
                                                    keeper.request_epoch_floor),
        executor=executor,
        runbook=runbook,
        on_config=lambda new: _reconfigured(alerts, new),
    )
    alerts = AlertHubs(engine)
    runbook.lag_bytes = lambda: engine.lag_bytes
    runbook.lag_seconds = lambda: engine.lag_seconds
    keeper.on_change = engine.leadership_changed
    peers = PeerPoller(
        config.vantage_urls,
        interval=config.probe.interval,
        timeout=config.probe.timeout,
        stale_after=stale_after(config),
        clock=loop.time,
        ssl_context=credentials.client_ssl,
        peer_token_file=credentials.peer_token_file,
    )
    engine.vantages = peers.vantages
    engine.links = peers.links
    engine.lifter.held = peers.held_servers
    engine.metrics = Metrics(clock=loop.time)
    controls = ClusterControlsWatch(
        cluster, post=engine.post,
        # A witness holds no lock: it follows the controls only for its status.
        keeper=keeper if config.role == "watchdog" else None,
        interval=config.probe.interval)
    # A watchdog runs host-bound failback steps on its region's server for the run's
    # leader (POST /v1/host-steps/...); a witness controls no server.
    host_steps = (HostStepJobs(lambda: engine.config, lock.current)
                  if config.role == "watchdog" else None)
    # Failback and switchover through the API; every watchdog holds while one runs.
    planned = PlannedRuns(engine, keeper, journal, cluster)
    planned.controls = controls  # one read of the lock store per interval feeds both
    # While the record cannot be read, a failover the peers report is followed (seed 1000).
    peers.on_report = PeerFailoverRelay(engine, peers.fresh_reports,
                                        lambda: planned.error is not None).heard
    dr_testing = DrTestingWatch.for_engine(engine)
    jobs = JobScheduler(lambda: engine.config, lock.client, registry=engine.metrics.registry)
    dr_testing.backup_config = jobs.backup_config
    api = ApiServer(EngineController(engine, controls, planned, StatusParts(dr_testing, jobs)),
                    metrics=engine.metrics,
                    token_file=config.api.token_file,
                    peer_token_file=credentials.peer_token_file,
                    ssl_context=credentials.server_ssl,
                    evidence_dir=lambda: run_roots(engine.config.evidence_dir,
                                                   engine.config.evidence_layout),
                    host_steps=host_steps, runs=planned)
    return _Parts(lock, keeper, engine, peers, api, controls, alerts, host_steps, planned,
                  dr_testing, jobs)


def _reconfigured(alerts: AlertHubs, config: WatchdogConfig) -> None:
    logs.configure(config.logging.level)
    alerts.rebuild(config)


class AlertHubs:
    """The notification hub the engine's alerts go out through; rebuilt on reload (the
    webhooks may have changed), the old one drained in the background."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._hub = self._build(engine.config)
        self._retired: set[asyncio.Task[None]] = set()

    def _build(self, config: WatchdogConfig) -> NotificationHub:
        hub = NotificationHub(notifiers(config, ("slack", "pagerduty", "generic")),
                              deadline=config.runbook.notify_timeout + 1)
        self._engine.alerts.send = hub.dispatch
        return hub

    def rebuild(self, config: WatchdogConfig) -> None:
        old, self._hub = self._hub, self._build(config)
        task = asyncio.create_task(self._retire(old), name="alerts:retire-hub")
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    @staticmethod
    async def _retire(hub: NotificationHub) -> None:
        await hub.drain(hub.deadline)
        await hub.close()

    async def close(self) -> None:
        """Give alerts already dispatched a moment to go out, then close."""
        await self._hub.drain(min(2.0, self._hub.deadline))
        await self._hub.close()
        await asyncio.gather(*self._retired, return_exceptions=True)


async def _stop_tasks(tasks: list[asyncio.Task[None]]) -> list[str]:
    """Cancel ``tasks`` and wait up to GRACE_PERIOD; the names of those still running."""
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=GRACE_PERIOD)
    for task in pending:
        log.error("task_did_not_stop", task=task.get_name(), grace_period=GRACE_PERIOD)
    return sorted(task.get_name() for task in pending)
