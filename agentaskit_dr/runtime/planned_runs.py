"""Failback and switchover runs on the daemon, and the hold they put on its automation.

``POST /v1/failback`` and ``POST /v1/switchover`` (``api/runs_routes.py``) start a run on
the watchdog that holds the leader lock, under a fresh epoch (above every epoch the
targets recorded, so the switchover's promotion is the only one of its epoch), with the
same code as the CLI (``FailbackRun``, ``SwitchoverRun``) and the same journal. The run
goes on beside the engine loop in a ``RunDriver``, like a failover run.

The automation does not fight the runbook: every watchdog reads the journal each probe
interval; while a run of kind ``failback`` or ``switchover`` is active (started here, by
another watchdog, or by the CLI) its engine holds (``core.PlannedRunActive``: no
failover, no fence of the standby slot, no fence of its own old primary). When the run
is over, the cluster record names the primary it left: every watchdog watches that
region, armed (``core.PlannedPrimary``), and the lock holder takes a fresh epoch for the
next failover. A run left active by a crash is resumed by the lock holder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from agentaskit_dr.api.runs_routes import RunAnswer, RunBadRequest, RunRefused
from agentaskit_dr.core import Event, PlannedPrimary, PlannedRunActive, RecordedPrimary
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.journal import JournalRefused, RedisJournal
from agentaskit_dr.ports import (
    ClusterRecord,
    Lease,
    LockUnavailable,
    RunJournal,
    StaleEpoch,
)
from agentaskit_dr.runtime.cluster_controls import ClusterControlsWatch
from agentaskit_dr.runtime.engine import Engine
from agentaskit_dr.runtime.failback import (
    FAILBACK_KIND,
    FailbackRefused,
    FailbackRun,
    RestoreStandbyRun,
)
from agentaskit_dr.runtime.failback_steps import describe_plan
from agentaskit_dr.runtime.leadership import LeadershipKeeper
from agentaskit_dr.runtime.run_driver import RunDriver, RunOutcome
from agentaskit_dr.runtime.switchover_run import (
    SWITCHOVER_KIND,
    SwitchoverRun,
    SwitchoverRunRefused,
    describe_switchover,
    switchover_problem,
)

log = structlog.get_logger(__name__)

#: Runs during which every watchdog holds (the CLI's restore-standby is step 5 alone).
PLANNED_KINDS = frozenset({FAILBACK_KIND, RestoreStandbyRun.kind, SWITCHOVER_KIND})
_INTERRUPTED = (FailbackRefused, SwitchoverRunRefused, JournalRefused, LockUnavailable,
                StaleEpoch)


class PlannedRuns:
    """The planned runs as one watchdog sees and drives them."""

    def __init__(self, engine: Engine, keeper: LeadershipKeeper, journal: RedisJournal,
                 cluster: RedisClusterStore, *, sync_timeout: float = 600.0,
                 integrity_wait: float = 60.0) -> None:
        self.engine = engine
        self.keeper = keeper
        self.journal = journal
        self.cluster = cluster
        self.sync_timeout = sync_timeout
        self.integrity_wait = integrity_wait
        self._driver = RunDriver(self._ended)
        self._starting = False
        self.seen: RunJournal | None = None  # the active planned run, as last read
        self._held: str | None = None  # what the engine was told it holds for
        self._adopted: tuple[str, int] | None = None  # (run id, epoch) followed
        self._offered: tuple[str, int] | None = None  # a missed failover offered to the engine
        self._kinds: dict[str, str] = {}  # run id -> kind, of recorded primaries
        self._resume_not_before = 0.0
        self.error: str | None = None
        # The cluster controls, fed from this follower's read (one round trip for both).
        self.controls: ClusterControlsWatch | None = None

    # ------------------------------------------------------------ the API

    async def failback(self, *, to: str | None, dry_run: bool) -> RunAnswer:
        engine = self.engine
        home = engine.file_primary_region
        config = engine.config.with_primary(home)
        away = config.secondary_region
        if to is not None and to != home:
            raise RunBadRequest(f"to: a failback goes to the home region {home} (the config "
                                f"file's primary_region), got {to!r}")
        if dry_run:
            blockers = await self._blockers()
            return 200, {"dry_run": True, "kind": FAILBACK_KIND, "from_region": away,
                         "to_region": home, "plan": describe_plan(config, home, away),
                         "would_run": not blockers, "blocked_by": blockers}
        lease = await self._may_start()
        try:
            run = FailbackRun(config, self.journal, self.cluster,
                              lease=self._lease, still_leader=self._still_leader,
                              sync_timeout=self.sync_timeout, integrity_wait=self.integrity_wait)
            return await self._start(run.open, run.run, lease)
        finally:
            self._starting = False

    async def switchover(self, *, to: str, dry_run: bool) -> RunAnswer:
        config = self.engine.config
        if to not in config.regions:
            raise RunBadRequest(f"to: must be one of the regions: "
                                f"{', '.join(sorted(config.regions))} (got {to!r})")
        source = config.primary_region
        problem = switchover_problem(config, source, to)
        if dry_run:
            blockers = await self._blockers() + ([problem] if problem else [])
            return 200, {"dry_run": True, "kind": SWITCHOVER_KIND, "from_region": source,
                         "to_region": to, "plan": describe_switchover(config, source, to),
                         "would_run": not blockers, "blocked_by": blockers}
        if problem is not None:
            raise RunRefused(problem)
        lease = await self._may_start()
        try:
            run = SwitchoverRun(config, self.journal, self.cluster, target=to,
                                lease=self._lease, still_leader=self._still_leader)
            return await self._start(run.open, run.run, lease)
        finally:
            self._starting = False

    def status(self) -> dict[str, Any] | None:
        """The active failback or switchover run and its current step, as last read."""
        run = self.seen
        if run is None:
            return None
        last = run.entries[-1] if run.entries else None
        return {"run_id": run.run_id, "kind": run.kind, "epoch": run.created_epoch,
                "step": last.step if last else None,
                "step_status": last.status.value if last else None,
                "step_detail": last.detail if last else None,
                "driven_here": self._driver.in_progress, "plan": list(run.plan)}

    async def _blockers(self) -> list[str]:
        blockers = []
        if self.keeper.lease is None:
            blockers.append(f"this watchdog does not hold the leader lock ({self._holder()})")
        try:
            active = await self.journal.active()
        except LockUnavailable as exc:
            blockers.append(f"the journal cannot be read: {exc}")
        else:
            if active is not None:
                blockers.append(f"run {active.run_id} ({active.kind}) is active")
        return blockers

    async def _may_start(self) -> Lease:
        """The fresh lease to run under; RunRefused naming why not."""
        if self.engine.config.role != "watchdog":
            raise RunRefused("a witness runs nothing; ask the watchdog that holds the lock")
        if self.keeper.paused:
            raise RunRefused("the cluster is paused: resume it, or run the CLI command")
        if self.keeper.lease is None:
            raise RunRefused(f"this watchdog ({self.engine.config.holder} in "
                             f"{self.engine.config.region}) does not hold the leader lock; "
                             f"{self._holder()}: send the request to its API")
        if self._starting or self._driver.in_progress:
            raise RunRefused(f"a run is being started or driven here: {self.status()}")
        self._starting = True
        try:
            active = await self.journal.active()
            lease = None if active is not None else await self._fresh_epoch()
        except LockUnavailable as exc:
            self._starting = False
            raise RunRefused(f"the lock store cannot be read, nothing changed: {exc}") from None
        except RunRefused:
            self._starting = False
            raise
        if active is not None or lease is None:
            self._starting = False
            raise RunRefused(f"run {active.run_id} ({active.kind}) is active: let it finish "
                             "(GET /v1/status shows its step)" if active else "no lease")
        return lease

    async def _fresh_epoch(self) -> Lease:
        """A new epoch for the run, above every epoch the targets recorded."""
        old = self.keeper.lease
        assert old is not None
        self.keeper.request_epoch_floor()
        within = self.engine.config.lock.ttl
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            lease = self.keeper.lease
            if lease is not None and lease.token == old.token and lease.epoch > old.epoch:
                return lease
            await asyncio.sleep(0.05)
        raise RunRefused(f"no fresh epoch within {within:g}s (the lock moved?); nothing "
                         "changed, retry")

    async def _start(self, open_run: Callable[[str], Awaitable[RunJournal]],
                     drive: Callable[[str], Coroutine[Any, Any, Any]],
                     lease: Lease) -> RunAnswer:
        reason = f"requested through the API of {self.engine.config.holder}"
        try:
            opened = await open_run(reason)
        except _INTERRUPTED as exc:
            raise RunRefused(str(exc)) from None
        self._hold(f"{opened.kind} run {opened.run_id}")
        self.seen = opened
        self._driver.start(self._drive(drive(reason), opened.run_id), None)
        log.warning("planned_run_started", run_id=opened.run_id, kind=opened.kind,
                    epoch=lease.epoch)
        return 202, {"started": True, "run_id": opened.run_id, "kind": opened.kind,
                     "epoch": lease.epoch, "plan": list(opened.plan),
                     "status": "GET /v1/status shows its current step (planned_run)"}

    # ------------------------------------------------------------ driving

    async def _drive(self, run: Coroutine[Any, Any, Any], run_id: str) -> Event | None:
        try:
            outcome = await run
        except _INTERRUPTED as exc:
            log.error("planned_run_interrupted", run_id=run_id,  # noqa: TRY400
                      reason=f"{type(exc).__name__}: {exc}",
                      detail="the run stays active; the lock holder resumes it")
            return None
        log.warning("planned_run_ended", run_id=run_id, outcome=outcome.outcome,
                    detail=outcome.detail)
        return None

    def _ended(self, _outcome: RunOutcome) -> None:
        self._driver.finished()
        self._resume_not_before = self.engine.clock() + self.engine.state.thresholds.retry_backoff

    def _lease(self) -> Lease:
        lease = self.keeper.lease
        if lease is None:
            raise LockUnavailable("this watchdog no longer holds the leader lock")
        return lease

    async def _still_leader(self) -> bool:
        return await self.keeper.verified_lease() is not None

    def _holder(self) -> str:
        holder = self.engine.state.lock_holder
        if holder is None:
            return "nobody holds it now (or the lock store cannot say)"
        name = holder.split(" (", 1)[0]
        regions = {v.region for v in self.engine.vantages() if v.name.split(" (", 1)[0] == name}
        where = f" in {', '.join(sorted(regions))}" if regions else " (region unknown: not a peer)"
        return f"it is held by {holder}{where}"

    # ------------------------------------------------------------ following

    async def run(self) -> None:
        """Read the journal's active run and the cluster record every interval."""
        task = asyncio.current_task()
        try:
            while True:
                await self.refresh()
                if task is not None and task.cancelling():
                    # A cancel that a store call's own timeout turned into LockUnavailable
                    # (asyncio.timeout on Python 3.11): stop all the same.
                    raise asyncio.CancelledError
                await asyncio.sleep(self.engine.config.probe.interval)
        finally:
            await self._driver.stop()  # the journal keeps the run for the next holder

    async def refresh(self) -> None:
        """One round trip for the journal's active run and the cluster record (handed to
        ``controls`` too); the run's entries are read only while one is active."""
        try:
            active_id, record = await self.cluster.read_with(self.journal.active_key)
        except LockUnavailable as exc:
            if self.controls is not None:
                self.controls.unreadable(exc)
            self._unreadable(exc)
            return
        if self.controls is not None:
            self.controls.read(record)
        try:
            active = await self.journal.active_named(active_id)
            planned = active if active is not None and active.kind in PLANNED_KINDS else None
            if planned is None and not self._local():
                await self._follow_recorded_primary(record)
        except LockUnavailable as exc:
            self._unreadable(exc)
            return
        self.error = None
        self.seen = planned
        if planned is not None:
            self._hold(f"{planned.kind} run {planned.run_id}")
            self._resume(planned)
        elif not self._local():
            self._hold(None)

    def _unreadable(self, exc: LockUnavailable) -> None:
        if self.error is None:
            log.warning("planned_runs_unreadable", error=str(exc), keeping=self._held)
        self.error = str(exc)

    def _local(self) -> bool:
        return self._starting or self._driver.in_progress

    def _hold(self, run: str | None) -> None:
        if run == self._held:
            return
        self._held = run
        log.warning("automation_held" if run else "automation_released", run=run,
                    detail="no failover and no fence while a failback or switchover runs"
                    if run else "the planned run is over")
        self.engine.post(PlannedRunActive(run))

    async def _follow_recorded_primary(self, record: ClusterRecord) -> None:
        """Watch the primary a planned run recorded, once, armed; then take a fresh epoch."""
        primary = record.primary
        if primary is None:
            return
        if await self._missed_failover(primary.region, primary.epoch, primary.run_id):
            acked = record.controls.acked_at
            if self._offered != (primary.run_id, primary.epoch):
                self._offered = (primary.run_id, primary.epoch)
                log.warning("recorded_primary_followed", region=primary.region,
                            epoch=primary.epoch, run_id=primary.run_id,
                            watching=self.engine.config.primary_region)
            # Through the engine's queue: adopted in a cycle of its own, where the
            # topology swap of a failover seen happening is made too (engine._apply).
            self.engine.post(RecordedPrimary(primary.region, primary.epoch, primary.run_id,
                                             acknowledged=acked is not None
                                             and acked >= primary.at))
            return
        if self._adopted == (primary.run_id, primary.epoch):
            return
        if primary.region not in self.engine.config.regions:
            log.error("planned_primary_unknown_region", region=primary.region,
                      run_id=primary.run_id, known=sorted(self.engine.config.regions))
            self._adopted = (primary.run_id, primary.epoch)
            return
        known = self.engine.state.failover.epoch if self.engine.state.failover else None
        if known is not None and primary.epoch <= known and (
                primary.region == self.engine.config.primary_region):
            self._adopted = (primary.run_id, primary.epoch)
            return
        kind = self._kinds.get(primary.run_id)
        if kind is None:
            run = await self.journal.get(primary.run_id)
            kind = self._kinds[primary.run_id] = run.kind if run is not None else ""
        self._adopted = (primary.run_id, primary.epoch)
        if kind not in PLANNED_KINDS:
            return  # a failover's primary: the core learns it from the standby's marker
        log.warning("planned_primary_followed", region=primary.region, epoch=primary.epoch,
                    run_id=primary.run_id)
        self.engine.post(PlannedPrimary(primary.region, primary.epoch, primary.run_id))
        lease = self.keeper.lease
        if lease is not None and lease.epoch <= primary.epoch:
            self.keeper.request_epoch_floor()  # one promotion per epoch: the next is newer

    async def _missed_failover(self, region: str, epoch: int, run_id: str) -> bool:
        """The record names a failover's primary this watchdog does not watch, under an
        epoch newer than the failover it knows of (a planned run's is followed below).

        Offered to the engine at every read until it watches that region: the core
        declines while a run of its own is under way, and takes it at a later read."""
        if region == self.engine.config.primary_region or region not in self.engine.config.regions:
            return False
        known = self.engine.state.failover.epoch if self.engine.state.failover else None
        if known is not None and epoch <= known:
            return False
        kind = self._kinds.get(run_id)
        if kind is None:
            run = await self.journal.get(run_id)
            kind = self._kinds[run_id] = run.kind if run is not None else ""
        return kind not in PLANNED_KINDS

    def _resume(self, run: RunJournal) -> None:
        """Resume a run left active (a crash), as the lock holder, after a backoff."""
        engine, keeper = self.engine, self.keeper
        if (self._local() or engine.config.role != "watchdog" or keeper.paused
                or keeper.lease is None or engine.clock() < self._resume_not_before):
            return
        reason = f"resumed by {engine.config.holder}"
        drive: Coroutine[Any, Any, Any]
        if run.kind in {FAILBACK_KIND, RestoreStandbyRun.kind}:
            home = engine.file_primary_region
            run_class = FailbackRun if run.kind == FAILBACK_KIND else RestoreStandbyRun
            drive = run_class(engine.config.with_primary(home), self.journal,
                                self.cluster, lease=self._lease,
                                still_leader=self._still_leader, sync_timeout=self.sync_timeout,
                                integrity_wait=self.integrity_wait).run(reason)
        else:
            source = str(run.meta.get("from_region"))
            drive = SwitchoverRun(engine.config.with_primary(source), self.journal,
                                  self.cluster, target=str(run.meta.get("to_region")),
                                  lease=self._lease, still_leader=self._still_leader).run(reason)
        log.warning("planned_run_resuming", run_id=run.run_id, kind=run.kind,
                    epoch=keeper.lease.epoch)
        self._driver.start(self._drive(drive, run.run_id), None)
