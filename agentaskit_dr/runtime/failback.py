"""The failback run: the plan's five steps, journaled, resumed from the first step not done.

A run of kind ``failback`` in the same journal as the failover's runs. Each step is
journaled ``started`` then ``done`` / ``skipped`` / ``failed`` with its data. A run that
crashed stays active in the journal: the next ``failback`` resumes it. A step that failed
closes the run as failed (so no watchdog mistakes it for its own run): the next
``failback`` opens a continuation run that carries the steps already done (as skipped,
with their data) and starts at the failed one. Evidence: ``failback/<id>.json`` under
``evidence_layout.failover_tests`` (``<evidence_dir>/TEST/dr/failover/``) and its incident
review draft, written when the run ends either way.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.atomic_file import write_atomically
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.journal import RedisJournal
from agentaskit_dr.ports import JournalEntry, Lease, RunJournal, StepStatus
from agentaskit_dr.runtime.evidence import (
    failover_evidence,
    write_evidence,
)
from agentaskit_dr.runtime.evidence_layout import run_root, run_roots
from agentaskit_dr.runtime.evidence_links import link_failback, record_measured_loss
from agentaskit_dr.runtime.failback_steps import (
    FAILBACK_PLAN,
    RESTORE_STANDBY,
    STEPS,
    SYNC_PRIMARY,
    VERIFY_DATA_INTEGRITY,
    Done,
    StepContext,
    StepFailed,
)
from agentaskit_dr.runtime.incident_review import draft_incident_review, write_incident_review
from agentaskit_dr.runtime.rpo import SWITCHOVER

log = structlog.get_logger(__name__)

FAILBACK_KIND = "failback"
_LOOKBACK = 20


class FailbackRefused(Exception):
    """The run cannot start (another kind of run is active); nothing changed."""


@dataclass(frozen=True)
class FailbackOutcome:
    run_id: str
    outcome: str  # "done" or "failed"
    detail: str
    evidence: str
    resumed_at: str | None


class FailbackRun:
    """One failback under a held lease (``lease()`` is the current one)."""

    #: The journal's run kind and the steps, in order (``RestoreStandbyRun``: step 5).
    kind = FAILBACK_KIND
    plan: tuple[str, ...] = FAILBACK_PLAN

    def __init__(self, config: WatchdogConfig, journal: RedisJournal,
                 cluster: RedisClusterStore, *, lease: Callable[[], Lease],
                 still_leader: Callable[[], Awaitable[bool]], sync_timeout: float = 600.0,
                 integrity_wait: float = 60.0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.journal = journal
        self.cluster = cluster
        self.lease = lease
        self.still_leader = still_leader
        self.sync_timeout = sync_timeout
        self.integrity_wait = integrity_wait
        self.wall_clock = wall_clock
        # Home: the file's primary region, failed over from (not the cluster record's).
        self.home = config.primary_region
        self.away = config.secondary_region

    async def open(self, reason: str) -> RunJournal:
        """Open the run (or find the active failback run) without running a step: the
        daemon's API answers with its id; ``run`` then goes on with it."""
        return await self._open(reason)

    async def run(self, reason: str) -> FailbackOutcome:
        run = await self._open(reason)
        resumed_at = next((s for s in self.plan if run.last_status(s) not in
                           (StepStatus.DONE, StepStatus.SKIPPED)), None)
        if run.entries and resumed_at is not None:
            log.warning("failback_resumed", run_id=run.run_id, step=resumed_at)
        for step in self.plan:
            run = await self.journal.get(run.run_id) or run
            if run.last_status(step) in (StepStatus.DONE, StepStatus.SKIPPED):
                continue
            failed = await self._step(step, run)
            if failed is not None:
                return await self._finish(run.run_id, "failed", failed, resumed_at)
        return await self._finish(run.run_id, "done",
                                  f"{self.home} is the primary again", resumed_at)

    async def _step(self, step: str, run: RunJournal) -> str | None:
        """Run one step; the failure's reason, or None when it is done or skipped."""
        await self._record(run.run_id, step, StepStatus.STARTED, "", {})

        async def mark(detail: str, data: dict[str, Any]) -> None:
            await self._record(run.run_id, step, StepStatus.STARTED, detail, data)

        ctx = StepContext(
            config=self.config, home=self.home, away=self.away,
            run=await self.journal.get(run.run_id) or run, lease=self.lease,
            still_leader=self.still_leader, record_primary=self._record_primary,
            acknowledge=self._acknowledge, mark=mark, sync_timeout=self.sync_timeout,
            integrity_wait=self.integrity_wait)
        try:
            result = await STEPS[step](ctx)
        except StepFailed as exc:
            await self._record(run.run_id, step, StepStatus.FAILED, str(exc), {})
            log.error("failback_step_failed", run_id=run.run_id, step=step,  # noqa: TRY400
                      reason=str(exc))
            return f"{step}: {exc}"
        status = StepStatus.DONE if isinstance(result, Done) else StepStatus.SKIPPED
        detail = result.detail if isinstance(result, Done) else result.reason
        await self._record(run.run_id, step, status, detail, result.data)
        log.warning("failback_step_" + status.value, run_id=run.run_id, step=step,
                    detail=detail)
        return None

    async def _open(self, reason: str) -> RunJournal:
        active = await self.journal.active()
        if active is not None:
            if active.kind != self.kind:
                raise FailbackRefused(
                    f"run {active.run_id} ({active.kind}) is active in the journal: let a "
                    "watchdog finish it (resume the cluster) or run its command again to "
                    f"resume it, before running {self.kind}")
            return active
        lease = self.lease()
        run_id = f"{self.kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-e{lease.epoch}"
        previous = await self._failed_run_to_continue()
        recorded = (await self.cluster.read()).primary
        if previous is None and recorded is not None and recorded.region == self.home:
            raise FailbackRefused(
                f"{self.home} is already the cluster's primary region (since epoch "
                f"{recorded.epoch}, run {recorded.run_id}): nothing to fail back")
        meta: dict[str, Any] = {"home_region": self.home, "away_region": self.away,
                                "holder": lease.holder}
        # The failover this run undoes: the run that made the away region the primary.
        if recorded is not None and recorded.region == self.away:
            meta["undoes"] = recorded.run_id
        if previous is not None:
            meta["continues"] = previous.run_id
            meta["undoes"] = previous.meta.get("undoes", meta.get("undoes"))
        run = await self.journal.open(run_id, lease=lease, kind=self.kind,
                                      plan=self.plan, reason=reason, meta=meta)
        if previous is not None and not run.entries:
            for step in self.plan:
                entry = _last_ended(previous, step)
                if entry is None:
                    break
                await self._record(run_id, step, StepStatus.SKIPPED,
                                   f"done by run {previous.run_id}: {entry.detail}",
                                   {**entry.data, "carried_from": previous.run_id})
        return await self.journal.get(run_id) or run

    async def _failed_run_to_continue(self) -> RunJournal | None:
        """The newest failback run, if it failed and no run finished since."""
        for run in await self.journal.recent(_LOOKBACK):
            if run.finished == "done":
                return None
            if run.kind == self.kind and run.finished == "failed":
                return run
        return None

    async def _record(self, run_id: str, step: str, status: StepStatus, detail: str,
                      data: dict[str, Any]) -> None:
        lease = self.lease()
        await self.journal.record(run_id, JournalEntry(
            step=step, status=status, epoch=lease.epoch, at=self.wall_clock(),
            detail=detail, data=data), lease=lease)

    async def _record_primary(self, region: str) -> None:
        lease = self.lease()
        run = await self.journal.active()
        await self.cluster.record_primary(region, epoch=lease.epoch,
                                          run_id=run.run_id if run else "failback",
                                          lease=lease)

    async def _acknowledge(self) -> int:
        record = await self.cluster.acknowledge(by=self.lease().holder)
        return record.controls.ack_generation

    async def _finish(self, run_id: str, outcome: str, detail: str,
                      resumed_at: str | None) -> FailbackOutcome:
        run = await self.journal.get(run_id)
        assert run is not None  # opened by this run
        evidence_dir, layout = self.config.evidence_dir, self.config.evidence_layout
        evidence = write_failback_evidence(run_root(evidence_dir, layout),
                                           replace(run, finished=outcome), outcome)
        undoes = run.meta.get("undoes")
        loss = (_last_ended(run, SYNC_PRIMARY) or _empty()).data.get("fork_loss")
        if isinstance(undoes, str) and undoes and isinstance(loss, dict):
            record_measured_loss(run_root(evidence_dir, layout), failover_id=undoes, loss=loss,
                                 kind=FAILBACK_KIND, run_id=run_id,
                                 roots=run_roots(evidence_dir, layout))
        if outcome == "done" and isinstance(undoes, str) and undoes:
            link_failback(run_root(evidence_dir, layout), failover_id=undoes,
                          kind=FAILBACK_KIND, run_id=run_id, finished_at=_iso(self.wall_clock()),
                          roots=run_roots(evidence_dir, layout))
        await self.journal.finish(run_id, outcome, lease=self.lease())
        log.warning(f"{self.kind.replace('-', '_')}_{outcome}", run_id=run_id, detail=detail,
                    evidence=evidence)
        return FailbackOutcome(run_id, outcome, detail, evidence, resumed_at)


class RestoreStandbyRun(FailbackRun):
    """The plan's step 5 alone (``agentaskit-dr restore-standby``): the switchover back
    home, the away region scaled back, automatic failover re-armed. Journaled as its own
    run kind, resumed like a failback."""

    kind = "restore-standby"
    plan = (RESTORE_STANDBY,)


def _last_ended(run: RunJournal, step: str) -> JournalEntry | None:
    """The entry that ended ``step`` done or skipped, if its last status is that."""
    if run.last_status(step) not in (StepStatus.DONE, StepStatus.SKIPPED):
        return None
    return next(e for e in reversed(run.entries) if e.step == step)


def write_failback_evidence(directory: Path, run: RunJournal, outcome: str) -> str:
    """The evidence file and incident review draft; the file's path, or why not written."""
    sync = (_last_ended(run, SYNC_PRIMARY) or _empty()).data
    integrity = (_last_ended(run, VERIFY_DATA_INTEGRITY) or _empty()).data
    restore = (_last_ended(run, RESTORE_STANDBY) or _empty()).data
    switch = restore.get("switchover") or {}
    last = max((e.at for e in run.entries), default=run.created_at)
    figures = {
        "home_region": run.meta.get("home_region"), "away_region": run.meta.get("away_region"),
        "continues": run.meta.get("continues"), "undoes": run.meta.get("undoes"),
        "sync": {"method": sync.get("method"), "reclone_reason": sync.get("reclone_reason"),
                 "rewind_note": sync.get("rewind_note"), "phases": sync.get("phases"),
                 "timeline": sync.get("timeline"), "kept_aside": sync.get("kept_aside")},
        "integrity": {k: integrity.get(k) for k in (
            "same", "tables_compared", "relations_checked", "compared_at_lsn",
            "differing_tables", "problems", "compare_seconds", "amcheck_seconds")},
        "switchover": {k: switch.get(k) for k in (
            "write_unavailable_seconds", "final_lsn", "old_timeline", "new_timeline",
            "phases", "total_seconds", "resumed_at", "rejoined")},
        # The failover's real loss, read from the old primary's WAL before its resync.
        "failover_loss": sync.get("fork_loss"),
        "scale": restore.get("scale"),
        "final_epoch": restore.get("final_epoch"),
        "total_seconds": round(last - run.created_at, 3),
    }
    # The switchover promotes only once the shutdown checkpoint is replayed: RPO 0 bytes.
    lag = 0 if switch.get("rejoined") else None
    document = failover_evidence(run, detected_at=run.created_at, decided_at=run.created_at,
                                 lag_bytes=lag, lag_seconds=0.0 if lag == 0 else None,
                                 outcome=outcome, extra=figures,
                                 rpo_detail={"basis": SWITCHOVER, "lower_bound": lag is None})
    try:
        path = write_evidence(directory, FAILBACK_KIND, run.run_id, document)
        review = write_incident_review(directory, FAILBACK_KIND, run.run_id, document)
        write_atomically(review, draft_incident_review(document) + _review_section(figures))
    except OSError as exc:
        log.error("evidence_not_written", run_id=run.run_id,  # noqa: TRY400
                  reason=exc.strerror or str(exc))
        return f"not written: {exc.strerror or exc}"
    return str(path)


def _empty() -> JournalEntry:
    return JournalEntry(step="", status=StepStatus.SKIPPED, epoch=1, at=0.0)


def _review_section(figures: dict[str, Any]) -> str:
    sync, integrity, switch = figures["sync"], figures["integrity"], figures["switchover"]
    how = sync.get("method") or "—"
    if sync.get("reclone_reason"):
        how += f" (pg_rewind could not: {sync['reclone_reason']})"
    lines = [
        "", "## Failback figures", "",
        f"- From {figures['away_region']} back to {figures['home_region']}",
        f"- Closes failover {_failover_link(figures.get('undoes'))}",
        f"- Resync of the old primary: {how}",
        f"- Integrity: same={integrity.get('same')}, {integrity.get('tables_compared')} "
        f"tables compared at {integrity.get('compared_at_lsn')}, problems: "
        f"{integrity.get('problems') or 'none'}",
        f"- Switchover write-unavailability window: "
        f"{switch.get('write_unavailable_seconds')} s; timelines "
        f"{switch.get('old_timeline')} -> {switch.get('new_timeline')}",
        f"- Final epoch: {figures['final_epoch']}; RPO 0 bytes expected (the switchover "
        "waits for the shutdown checkpoint's replay)",
        f"- Total duration: {figures['total_seconds']} s", "",
    ]
    return "\n".join(lines)


def _failover_link(failover_id: object) -> str:
    if not isinstance(failover_id, str) or not failover_id:
        return "— (the cluster record named none)"
    return f"[{failover_id}](../failover/{failover_id}.md)"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")

