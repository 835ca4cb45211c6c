"""The backup jobs as a root task of the daemon (``backup: {config: PATH}``).

Every few seconds the scheduler reads, in one round trip, each job's last-run record and
lease from the lock store, and decides per job (``job_schedule.decide``, pure). A due job
is claimed (its lease, ``SET NX PX``, and the record read again under it), recorded as
``running``, run as ``agentaskit-dr`` commands (``job_process``) while the lease is
renewed, then recorded with its outcome and the lease released. So exactly one watchdog
runs each due job, and a slot already run is not run again by the other.

Reload (SIGHUP): the backup YAML is read again when the engine's config changes; a bad
one is logged and the running one stays. New schedules count from the next due time; a
running job is never cancelled by a reload. Stop (SIGTERM): running jobs are cancelled,
their processes stopped, ``cancelled`` recorded and their leases released.

Per job: ``job_started`` and ``job_finished`` (outcome, seconds, bytes) log events,
the metrics ``job_last_success_timestamp``, ``job_duration_seconds`` and ``job_bytes``,
the command's own evidence file, and, for ``verify-backup`` and ``test-restore``, the DR
testing schedule's "Last test" (also when the other watchdog ran it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Gauge

from agentaskit_dr.ports import LockUnavailable
from agentaskit_dr.runtime.job_lease import JobLeases
from agentaskit_dr.runtime.job_process import JobOutcome, run_commands
from agentaskit_dr.runtime.job_schedule import (
    JobSpec,
    LastRun,
    decide,
    describe,
    describe_drill,
    finished,
    job_specs,
    started,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from agentaskit_dr.config import BackupConfig, WatchdogConfig

log = structlog.get_logger(__name__)

PREFIX = "agentaskit_dr_"
#: The longest the scheduler sleeps between two looks at the schedules.
MAX_TICK = 5.0
Runner = Callable[[Sequence[Sequence[str]], float], Coroutine[Any, Any, JobOutcome]]


class JobMetrics:
    """``job_last_success_timestamp{job}``, ``job_duration_seconds{job}``,
    ``job_bytes{job}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.success = Gauge(PREFIX + "job_last_success_timestamp",
                             "Unix time the backup job last succeeded", ["job"],
                             registry=registry)
        self.duration = Gauge(PREFIX + "job_duration_seconds",
                              "Seconds the backup job's last run took", ["job"],
                              registry=registry)
        self.bytes = Gauge(PREFIX + "job_bytes", "Bytes the backup job's last run moved "
                           "(stored, checked or downloaded)", ["job"], registry=registry)

    def update(self, name: str, record: LastRun) -> None:
        if record.last_success is not None:
            self.success.labels(name).set(record.last_success)
        if record.finished_at is not None and record.started_at is not None:
            self.duration.labels(name).set(record.finished_at - record.started_at)
        if record.bytes is not None:
            self.bytes.labels(name).set(record.bytes)


async def _default_runner(steps: Sequence[Sequence[str]], grace: float) -> JobOutcome:
    return await run_commands(steps, grace=grace)


class JobScheduler:
    """Runs the backup jobs of ``config().backup``; see the module doc."""

    def __init__(self, config: Callable[[], WatchdogConfig], client: Redis, *,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time, runner: Runner = _default_runner,
                 ) -> None:
        self.config = config
        self.client = client
        self.clock = clock
        self.runner = runner
        self.metrics = None if registry is None else JobMetrics(registry)
        self.backup: BackupConfig | None = None
        self.specs: list[JobSpec] = []
        self.leases: JobLeases | None = None
        self.running: dict[str, asyncio.Task[None]] = {}
        self._seen: WatchdogConfig | None = None
        self._last: dict[str, LastRun | None] = {}
        self._recorded: dict[str, float] = {}

    def backup_config(self) -> BackupConfig | None:
        """The backup config in use (None: no ``backup`` section, or none loaded yet)."""
        return self.backup

    def status(self) -> dict[str, Any]:
        """``{"backups": {job: row}, "drills": {job: row}}`` once a backup config is in
        use, else empty: backup jobs (and their verification) apart from DR drills."""
        if not self.specs:
            return {}
        now = self.clock()
        backups: dict[str, Any] = {}
        drills: dict[str, Any] = {}
        for spec in self.specs:
            last, here = self._last.get(spec.name), spec.name in self.running
            if spec.drill:
                drills[spec.name] = describe_drill(spec, last, now=now, running_here=here)
            else:
                backups[spec.name] = describe(spec, last, now=now, running_here=here)
        return {"backups": backups, "drills": drills}

    async def run(self) -> None:
        """Look at the schedules every tick until cancelled; then stop the running jobs."""
        try:
            while True:
                try:
                    await self._refresh()
                    await self.check()
                except LockUnavailable as exc:
                    log.warning("jobs_check_failed", reason=str(exc))
                except Exception as exc:  # noqa: BLE001 - a root task must not end
                    log.error("jobs_check_failed",  # noqa: TRY400 - one line, no trace
                              error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._tick())
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Cancel the running jobs and wait for their cleanup (processes, records)."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _tick(self) -> float:
        everies = [spec.schedule.every for spec in self.specs if spec.schedule.every]
        return min([MAX_TICK, *(every / 4 for every in everies)])

    async def _refresh(self) -> None:
        """Read the backup config again when the watchdog config changed (a reload)."""
        current = self.config()
        if current is self._seen:
            return
        self._seen = current
        settings = current.backup
        if settings is None:
            self.backup, self.specs = None, []
            return
        from agentaskit_dr.config import ConfigError, load_backup_config

        try:
            backup = await asyncio.to_thread(load_backup_config, settings.config)
        except ConfigError as exc:
            log.error("backup_config_invalid", path=str(settings.config),  # noqa: TRY400
                      problems=exc.problems,
                      kept="the previous backup config" if self.backup else "no jobs")
            return
        self.backup = backup
        self.specs = job_specs(backup, settings.config, settings,
                               evidence_dir=current.evidence_dir)
        self.leases = JobLeases(self.client, key_prefix=current.lock.key_prefix,
                                ttl=settings.lease_ttl)
        log.info("jobs_scheduled", config=str(settings.config),
                 jobs={spec.name: str(spec.schedule) for spec in self.specs})

    async def check(self) -> None:
        """One look: start each due job that no watchdog runs or ran for its slot."""
        leases = self.leases
        if leases is None or not self.specs:
            return
        states = await leases.read([spec.name for spec in self.specs])
        now = self.clock()
        for spec in self.specs:
            last, free = states[spec.name]
            self._last[spec.name] = last
            if last is not None and self.metrics is not None:
                self.metrics.update(spec.name, last)
            await self._note_dr_test(spec, last)
            if spec.name in self.running:
                continue
            decision = decide(spec.schedule, now, last, lease_free=free)
            if decision.action == "baseline":
                await leases.baseline(spec.name, LastRun(due=decision.due, outcome="baseline"))
            elif decision.action == "run" and free:
                await self._start(leases, spec, now)

    async def _start(self, leases: JobLeases, spec: JobSpec, now: float) -> None:
        claimed = await leases.claim(spec.name)
        if claimed is None:
            return
        token, last = claimed
        # Decide again on the record read under the lease: the other watchdog may have
        # finished this slot between our read and our claim.
        decision = decide(spec.schedule, now, last, lease_free=True)
        if decision.action != "run":
            await leases.release(spec.name, token)
            return
        record = started(decision, last, holder=self.config().holder, now=self.clock())
        if not await leases.record(spec.name, token, record):
            return
        self._last[spec.name] = record
        task = asyncio.create_task(self._job(leases, spec, token, record, decision.reason),
                                   name=f"job:{spec.name}")
        self.running[spec.name] = task
        task.add_done_callback(lambda _: self.running.pop(spec.name, None))

    async def _job(self, leases: JobLeases, spec: JobSpec, token: str, record: LastRun,
                   reason: str) -> None:
        assert record.started_at is not None
        log.info("job_started", job=spec.name, due=_iso(record.due), reason=reason,
                 attempt=record.attempt, schedule=str(spec.schedule))
        settings = self.config().backup
        grace = settings.stop_grace if settings is not None else 3.0
        work = asyncio.create_task(self._bounded(spec, grace), name=f"job:{spec.name}:run")
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(leases, spec.name, token, work, lost),
                                     name=f"job:{spec.name}:lease")
        outcome = JobOutcome("cancelled", None, "stopped: the daemon is stopping")
        try:
            outcome = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            current = asyncio.current_task()
            if not lost.is_set() or (current is not None and current.cancelling()):
                raise
            outcome = JobOutcome("cancelled", None, "stopped: its lease was lost")
        except Exception as exc:  # noqa: BLE001 - the job fails, the scheduler goes on
            outcome = JobOutcome("failed", None, f"{type(exc).__name__}: {exc}")
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await self._finish(leases, spec, token, record, outcome)

    async def _bounded(self, spec: JobSpec, grace: float) -> JobOutcome:
        """The job's commands, stopped (processes and all) past its time limit."""
        if spec.time_limit is None:
            return await self.runner(spec.steps, grace)
        try:
            return await asyncio.wait_for(self.runner(spec.steps, grace), spec.time_limit)
        except TimeoutError:
            return JobOutcome("failed", None,
                              f"stopped: over its time limit of {spec.time_limit:g}s")

    async def _keep_lease(self, leases: JobLeases, name: str, token: str,
                          work: asyncio.Task[JobOutcome], lost: asyncio.Event) -> None:
        """Renew every third of the TTL; stop the job once the lease is surely lost."""
        safe_until = time.monotonic() + leases.ttl
        while True:
            await asyncio.sleep(leases.ttl / 3)
            sent = time.monotonic()
            try:
                if not await leases.renew(name, token):
                    break
                safe_until = sent + leases.ttl
            except LockUnavailable as exc:
                log.warning("job_lease_renew_failed", job=name, reason=str(exc))
                if time.monotonic() >= safe_until:
                    break
        log.error("job_lease_lost", job=name)
        lost.set()
        work.cancel()

    async def _finish(self, leases: JobLeases, spec: JobSpec, token: str, record: LastRun,
                      outcome: JobOutcome) -> None:
        now = self.clock()
        done = finished(record, outcome.outcome, now=now, nbytes=outcome.nbytes,
                        detail=outcome.detail, evidence=outcome.evidence)
        self._last[spec.name] = done
        assert record.started_at is not None
        log.info("job_finished", job=spec.name, outcome=outcome.outcome,
                 seconds=round(now - record.started_at, 3), bytes=outcome.nbytes,
                 detail=outcome.detail, due=_iso(record.due), evidence=outcome.evidence)
        if self.metrics is not None:
            self.metrics.update(spec.name, done)
        try:
            await asyncio.shield(leases.record(spec.name, token, done, release=True))
        except (LockUnavailable, asyncio.CancelledError) as exc:
            log.warning("job_record_failed", job=spec.name, reason=str(exc) or "stopping")
        if spec.dr_test is not None and outcome.recorded:
            # The command recorded its own run (with its evidence): not a second time.
            self._recorded[spec.name] = now
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._note_dr_test(spec, done)

    async def _note_dr_test(self, spec: JobSpec, last: LastRun | None) -> None:
        """Record a finished verify, restore test or drill as the DR testing schedule's
        last test (once per run, whichever watchdog ran it; not over a run recorded since
        this one started: the drill command records itself where it runs)."""
        if (spec.dr_test is None or last is None or last.finished_at is None
                or last.outcome in ("baseline", "running")
                or self._recorded.get(spec.name, 0.0) >= last.finished_at):
            return
        from agentaskit_dr.drtesting.records import ScheduleStateError, record_run
        from agentaskit_dr.drtesting.schedule import RecordedRun

        passed = last.outcome == "ok"
        detail = "" if last.detail in ("", "ok", last.outcome) else f": {last.detail}"
        result = ("passed" if passed else last.outcome) + detail
        run = RecordedRun(last.finished_at, passed, f"{result} (on {last.holder})")
        self._recorded[spec.name] = last.finished_at
        evidence_dir: Path = self.config().evidence_dir
        try:
            await asyncio.to_thread(record_run, evidence_dir, spec.dr_test, run,
                                    now=self.clock(), unless_since=last.started_at)
        except ScheduleStateError as exc:
            log.warning("dr_test_not_recorded", job=spec.name, reason=str(exc))


def _iso(at: float) -> str | None:
    from agentaskit_dr.runtime.job_schedule import iso

    return iso(at)


class StatusParts:
    """Several ``/v1/status`` extras as one (the controller takes one)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def status(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for part in self.parts:
            merged.update(part.status())
        return merged
