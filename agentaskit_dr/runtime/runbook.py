"""The failover runbook as one crash-safe run: journaled, idempotent steps under the epoch.

The plan's manual failover (verify the primary is down, promote, repoint DNS, scale up
50%, verify) plus its checklists (notify, incident ticket, status page, evidence,
incident review, failback planned). Each step is recorded ``started`` then ``done`` /
``skipped`` / ``failed`` in the journal next to the lock, written only under the current
epoch. A watchdog that restarts, or its successor, resumes the active run from the first
step not done; steps that reach the world are idempotent, so one that ran before the
crash but was not yet journaled changes nothing the second time.

Failures before the promotion refuse the failover (the core retries later); after it,
a failed step leaves the run active and is retried on the next resume. The plan and its
step functions are in ``runbook_plan``; this module drives them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import Any

import structlog

from agentaskit_dr.actuators.fence import PromotionRefused
from agentaskit_dr.actuators.promote import PromotionInDoubt
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import (
    Alert,
    Event,
    FailoverRefused,
    FailoverSucceeded,
    Severity,
    StartFailover,
)
from agentaskit_dr.ports import (
    ActuationFailed,
    ClusterStore,
    Journal,
    JournalEntry,
    Lease,
    LockUnavailable,
    Notification,
    RunJournal,
    StaleEpoch,
    StepStatus,
)
from agentaskit_dr.runtime.executor import FailoverExecutor, new_failover_id
from agentaskit_dr.runtime.incidents import IncidentBook
from agentaskit_dr.runtime.run_evidence import FAILOVER_KIND, write_run_evidence
from agentaskit_dr.runtime.runbook_parts import (
    Hooks,
    PlannedStep,
    RunContext,
    jsonable,
)
from agentaskit_dr.runtime.runbook_plan import (
    ANNOUNCEMENTS,
    BEFORE_PROMOTION,
    FAILOVER_PLAN,
    PROMOTE,
    SCALE_UP,
    UPDATE_DNS,
    RunbookPlan,
)
from agentaskit_dr.runtime.runbook_promote import (
    ADOPTS_PROMOTION_OF,
    OLD_PRIMARY_ANSWERING,
    promotions_in_doubt,
)

log = structlog.get_logger(__name__)

__all__ = [
    "FAILOVER_KIND", "FAILOVER_PLAN", "PROMOTE", "SCALE_UP", "UPDATE_DNS", "Hooks",
    "PlannedStep", "RunContext", "Runbook",
]


class Runbook(RunbookPlan):
    """Runs and resumes failovers; the only writer of their journals."""

    def __init__(
        self,
        journal: Journal,
        executor: FailoverExecutor,
        hooks: Hooks,
        *,
        config: Callable[[], WatchdogConfig],
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.executor = executor
        self.hooks = hooks
        self.config = config
        self.clock = clock
        self.wall_clock = wall_clock
        # Set from the engine: the lag measured at decision time (RPO estimate).
        self.lag_bytes: Callable[[], int | None] = lambda: None
        self.lag_seconds: Callable[[], float | None] = lambda: None
        # True while a run promoted but has steps left to retry (the engine resumes it).
        self.incomplete = False
        self._promoted = False  # the run being driven has its promote step done
        self._promoted_epoch: int | None = None
        # (run id, step) being carried out now, for the status; None between runs.
        self.current: tuple[str, str] | None = None
        # Called with a step's name right after it is journaled done. A seam for the
        # crash-resume tests (tests/integration/crashing_watchdog.py); nothing in the
        # package sets it.
        self.after_step: Callable[[str], None] = lambda _step: None
        # The incident open for stakeholders: (the core's incident_since, its key), and the
        # opening notifications already sent for it (retries do not send them again).
        self.incidents = IncidentBook()
        # The run left open after its promotion (run id, journal header), to complete it
        # from the targets should the journal lose it; and where alerts go (the engine's).
        self._open_run: tuple[str, RunJournal] | None = None
        self.on_alert: Callable[[Alert], None] = lambda _alert: None
        # Set by the supervisor: where the cluster's current primary region is recorded.
        self.cluster: ClusterStore | None = None

    # ------------------------------------------------------------ running

    async def failover(self, command: StartFailover, primary_last_lsn: int | None = None, *,
                       old_primary_answering: bool = False,
                       primary_last_seen_at: float | None = None) -> Event:
        """Run a decided failover, or resume the active one; the outcome for the core.

        ``primary_last_lsn``: the old primary's last WAL position seen, for the lag gate,
        read at ``primary_last_seen_at`` (this runbook's clock): the RPO's last view.
        ``old_primary_answering``: some vantage sees the old primary answering (even with
        an error), so the promotion waits until its fence is confirmed.
        """
        self._promoted = False
        lease = await self.executor.leases.verified_lease()
        if lease is None or lease.epoch != command.epoch:
            log.error("failover_refused", reason="lock lost before the run started",
                      epoch=command.epoch)
            return FailoverRefused("lock lost before the run started")
        try:
            active = await self.journal.active()
            if active is not None and active.kind != FAILOVER_KIND:
                return FailoverRefused(f"run {active.run_id} ({active.kind}) is active: "
                                       "finish it with its command first")
            if active is not None:
                log.warning("run_resumed_instead", run_id=active.run_id,
                            reason="a run is already active; finishing it first")
                self._adopt_incident(active)
                return await self._drive(active, lease, answering=old_primary_answering)
            config = self.config()
            now, wall = self.clock(), self.wall_clock()
            run_id = new_failover_id(command.epoch)
            meta = {
                "incident": self.incidents.key_for(command.incident_since, run_id),
                "from_region": config.primary_region,
                "to_region": config.secondary_region,
                "condition": command.condition.value if command.condition else "manual",
                "detected_at": wall - (now - command.failing_since),
                "decided_at": wall - (now - command.decided_at),
                "primary_last_lsn": primary_last_lsn,
                "primary_last_seen_at": None if primary_last_seen_at is None else
                wall - (now - primary_last_seen_at),
                "lag_bytes": self.lag_bytes(),
                "lag_seconds": self.lag_seconds(),
                "holder": lease.holder,
                OLD_PRIMARY_ANSWERING: old_primary_answering,
                ADOPTS_PROMOTION_OF: await promotions_in_doubt(
                    self.journal, kind=FAILOVER_KIND, to_region=config.secondary_region),
            }
            run = await self.journal.open(run_id, lease=lease, kind=FAILOVER_KIND,
                                          plan=FAILOVER_PLAN, reason=command.reason, meta=meta)
            if run.finished is not None:
                # An id already used by a finished run (clock or id collision): a new one.
                run_id = f"{run_id}-{secrets.token_hex(3)}"
                run = await self.journal.open(run_id, lease=lease, kind=FAILOVER_KIND,
                                              plan=FAILOVER_PLAN, reason=command.reason,
                                              meta=meta)
            log.warning("run_opened", run_id=run_id, epoch=lease.epoch, plan=list(FAILOVER_PLAN))
            return await self._drive(run, lease)
        except (LockUnavailable, StaleEpoch) as exc:
            if self._promoted:
                return self._promoted_but_interrupted(exc)
            log.error("failover_refused", reason=f"journal: {exc}",  # noqa: TRY400
                      epoch=command.epoch)
            # The journal refuses a lease the lock has moved past (lost, released by a
            # pause, taken again under a newer epoch): the run stays active and is resumed
            # by whoever holds the lock next. Not a stale target: it may be retried.
            return FailoverRefused(f"journal: {exc}", retry=True)

    def close_incident(self, reason: str, epoch: int) -> Notification | None:
        """The resolve of the open incident, ended without a failover (``IncidentBook``)."""
        return self.incidents.close(reason, epoch)

    async def resume(self) -> Event | None:
        """Resume the active run if there is one and we hold the lock; None otherwise."""
        self._promoted = False
        lease = await self.executor.leases.verified_lease()
        if lease is None:
            return None
        try:
            active = await self.journal.active() or await self._lost_run(lease)
            if active is None or active.kind != FAILOVER_KIND:
                return None  # a failback run is resumed by its command (runtime/failback.py)
            log.warning("run_resuming", run_id=active.run_id, epoch=lease.epoch,
                        opened_under=active.created_epoch)
            self._adopt_incident(active)
            return await self._drive(active, lease)
        except (LockUnavailable, StaleEpoch) as exc:
            if self._promoted:
                return self._promoted_but_interrupted(exc)
            log.error("run_resume_failed", reason=str(exc))  # noqa: TRY400
            return None

    async def _lost_run(self, lease: Lease) -> RunJournal | None:
        """The run this watchdog left open after its promotion, when the journal no longer
        marks it active: reopened if the store still has it, else (the lock store lost its
        data) a new run that records the steps up to the promotion as done by the lost run
        and carries on with DNS, scaling and verification, whose targets record their own
        epochs. None when nothing is owed."""
        if self._open_run is None or not self.incomplete:
            return None
        run_id, lost = self._open_run
        stored = await self.journal.get(run_id)
        if stored is not None and stored.finished is not None:
            self._open_run, self.incomplete = None, False
            return None
        if stored is not None:  # only the active mark is gone: reopen the same run
            return await self.journal.open(run_id, lease=lease, kind=lost.kind, plan=lost.plan,
                                           reason=lost.reason, meta=lost.meta)
        recovered_id = f"{run_id}-r{lease.epoch}"
        message = (f"journal lost after the promotion of run {run_id}: completing it from what "
                   f"the targets record, as run {recovered_id}")
        log.critical("journal_lost", run_id=run_id, recovered_run_id=recovered_id)
        self.on_alert(Alert(Severity.CRITICAL, message, key="journal"))
        run = await self.journal.open(
            recovered_id, lease=lease, kind=lost.kind, plan=lost.plan, reason=lost.reason,
            meta={**lost.meta, "recovered_from": run_id})
        done_before = FAILOVER_PLAN[:FAILOVER_PLAN.index(PROMOTE) + 1]
        for step in done_before:
            entry = JournalEntry(step=step, status=StepStatus.SKIPPED, epoch=lease.epoch,
                                 at=self.wall_clock(),
                                 detail=f"done by run {run_id} before the journal was lost")
            await self.journal.record(recovered_id, entry, lease=lease)
        return await self.journal.get(recovered_id) or run

    def _adopt_incident(self, run: RunJournal) -> None:
        """A run resumed from the journal: its incident is this watchdog's now, so that a
        retry after a refusal keeps its key and does not announce it again."""
        self.incidents.adopt(str(run.meta.get("incident") or run.run_id), [
            event for step, event in ANNOUNCEMENTS.items()
            if run.last_status(step) is StepStatus.DONE])

    def _promoted_but_interrupted(self, exc: Exception) -> Event:
        """The journal failed after the promotion: the database serves from the new region
        (the core must know), and the rest of the run is left for a resume."""
        self.incomplete = True
        log.error("run_interrupted", reason=f"journal: {exc}",
                  detail="promoted; the remaining steps are resumed later")
        return FailoverSucceeded(epoch=self._promoted_epoch or 0, detail=(
            f"promoted; journal unavailable ({exc}); the run stays open and is retried"))

    async def _drive(self, run: RunJournal, lease: Lease, *, answering: bool = False) -> Event:
        config = self.config()
        meta = dict(run.meta)
        if answering:  # seen now, by the caller resuming an older run
            meta[OLD_PRIMARY_ANSWERING] = True
        steps = self.plan(config, str(meta["from_region"]), str(meta["to_region"]))
        rlog = log.bind(run_id=run.run_id, epoch=lease.epoch)
        self._promoted, self._promoted_epoch = False, lease.epoch
        self._open_run = (run.run_id, run)
        for step in steps:
            run = await self.journal.get(run.run_id) or run
            status = run.last_status(step.name)
            if status in (StepStatus.DONE, StepStatus.SKIPPED):
                self._promoted = self._promoted or step.name == PROMOTE
                continue
            ctx = RunContext(run.run_id, lease.epoch, lease, meta, run)
            outcome = await self._step(step, ctx, resumed=status is not None, rlog=rlog)
            if outcome is not None:
                return outcome
        # Evidence last, from the complete journal; rewriting it on a resume is harmless.
        run = await self.journal.get(run.run_id) or run
        evidence = self._write_evidence(dataclasses.replace(run, finished="done"), meta, "done")
        await self._record_primary(run.run_id, meta, lease, required=True)
        await self.journal.finish(run.run_id, "done", lease=lease)
        self.incomplete = False
        self._open_run = None
        if run.meta.get("recovered_from"):
            self.on_alert(Alert(Severity.INFO, f"run {run.run_id} completed the run the "
                                "journal lost", key="journal", resolve=True))
        rlog.warning("run_done", from_region=meta["from_region"], to_region=meta["to_region"],
                     evidence=evidence)
        return FailoverSucceeded(epoch=lease.epoch, detail=f"run {run.run_id} done")

    async def _step(
        self, step: PlannedStep, ctx: RunContext, *, resumed: bool,
        rlog: structlog.typing.FilteringBoundLogger,
    ) -> Event | None:
        """Run one step; an Event ends the run here (refused, or promoted but incomplete)."""
        journal, lease = self.journal, ctx.lease
        if step.run is None:
            await journal.record(ctx.run_id, self._entry(step.name, StepStatus.SKIPPED, ctx,
                                                         step.skip_reason), lease=lease)
            rlog.info("step_skipped", step=step.name, reason=step.skip_reason)
            return None
        await journal.record(ctx.run_id, self._entry(step.name, StepStatus.STARTED, ctx,
                                                     step.target), lease=lease)
        rlog.info("step_started", step=step.name, target=step.target, resumed=resumed)
        self.current = (ctx.run_id, step.name)
        started = self.clock()
        try:
            outcome = await step.run(ctx)
        except (ActuationFailed, PromotionRefused, StaleEpoch, LockUnavailable) as exc:
            reason = str(exc)
            with contextlib.suppress(LockUnavailable, StaleEpoch):
                await journal.record(ctx.run_id, self._entry(step.name, StepStatus.FAILED, ctx,
                                                             reason), lease=lease)
            rlog.error("step_failed", step=step.name, reason=reason)
            if isinstance(exc, PromotionInDoubt):
                return self._promotion_in_doubt(exc, ctx, rlog)
            if step.name in BEFORE_PROMOTION:
                self.incomplete = False
                with contextlib.suppress(LockUnavailable, StaleEpoch):
                    run = await journal.get(ctx.run_id) or ctx.journal
                    self._write_evidence(dataclasses.replace(run, finished="failed"), ctx.meta,
                                         f"refused at {step.name}")
                    await journal.finish(ctx.run_id, "failed", lease=lease)
                rlog.error("failover_refused", step=step.name, reason=reason)
                return FailoverRefused(f"{step.name}: {reason}",
                                       retry=not isinstance(exc, StaleEpoch))
            self.incomplete = True
            return FailoverSucceeded(epoch=lease.epoch, detail=(
                f"promoted; step {step.name} failed ({reason}); the run stays open and is "
                "retried"))
        seconds = round(self.clock() - started, 4)
        data = {**outcome.data, "seconds": seconds, "changed": outcome.changed}
        await journal.record(ctx.run_id, self._entry(step.name, StepStatus.DONE, ctx,
                                                     outcome.detail, data), lease=lease)
        self._promoted = self._promoted or step.name == PROMOTE
        rlog.info("step_done", step=step.name, changed=outcome.changed, seconds=seconds,
                  detail=outcome.detail)
        if step.name == PROMOTE:
            await self._record_primary(ctx.run_id, ctx.meta, lease, required=False)
        self.after_step(step.name)
        return None

    def _promotion_in_doubt(self, exc: PromotionInDoubt, ctx: RunContext,
                            rlog: structlog.typing.FilteringBoundLogger) -> Event:
        """pg_promote was sent: the run stays open, so that its next attempt (the engine
        resumes it every ``retry_backoff``) adopts a standby seen promoted."""
        self.incomplete = True
        if exc.promoted:
            self._promoted = True
            rlog.error("promotion_in_doubt", step=PROMOTE, reason=exc.reason, promoted=True,
                       detail="promoted without its epoch marker; the run stays open")
            return FailoverSucceeded(epoch=ctx.epoch, detail=(
                f"promoted; {PROMOTE} failed ({exc.reason}); the run stays open and is retried"))
        rlog.error("failover_refused", step=PROMOTE, reason=exc.reason, promoted=None,
                   detail="pg_promote may still land; the run stays open and its next "
                   "attempt adopts the promotion")
        return FailoverRefused(f"{PROMOTE}: {exc.reason}", retry=True)

    async def _record_primary(self, run_id: str, meta: dict[str, Any], lease: Lease, *,
                              required: bool) -> None:
        """Record the promoted region as the cluster's primary (on-call commands and later
        daemons read it). Right after the promotion a failure is only logged, so DNS and
        scaling go on; before the run is closed it is ``required`` (the run stays open)."""
        if self.cluster is None:
            return
        try:
            await self.cluster.record_primary(str(meta["to_region"]), epoch=lease.epoch,
                                              run_id=run_id, lease=lease)
        except (LockUnavailable, StaleEpoch) as exc:
            if required:
                raise
            log.error("cluster_primary_not_recorded", run_id=run_id,  # noqa: TRY400
                      epoch=lease.epoch, reason=str(exc), retry="before the run is closed")

    def _entry(self, step: str, status: StepStatus, ctx: RunContext, detail: str,
               data: dict[str, Any] | None = None) -> JournalEntry:
        return JournalEntry(step=step, status=status, epoch=ctx.epoch, at=self.wall_clock(),
                            detail=detail[:2000], data=jsonable(data or {}))


    def _write_evidence(self, run: RunJournal, meta: dict[str, Any], outcome: str) -> str:
        """Write the evidence file and the incident review draft; their paths, or why not."""
        from agentaskit_dr.runtime.evidence_layout import run_root

        config = self.config()
        return write_run_evidence(run_root(config.evidence_dir, config.evidence_layout), run,
                                  meta, outcome)
