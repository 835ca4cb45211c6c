"""The planned switchover as a journaled run (kind ``switchover``), for the daemon's API.

One step, ``switch_database``: ``actuators/switchover.py`` (the same code as
``agentaskit-dr switchover``) under the run's lease, the new primary region recorded in
the cluster record right after the promotion, then an acknowledgement (a planned switch
owes none; it arms the watchdogs that restart with the record). Journaled like the
failback run: a watchdog that crashes in the middle leaves the run active, and the next
lock holder resumes it (``PostgresSwitchover.switch`` picks up at the stage it finds).
DNS and scaling stay separate commands, as with the CLI. A run that ends done or failed
writes its evidence file (``switchover_evidence``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from agentaskit_dr.actuators.fence import PromotionRefused
from agentaskit_dr.actuators.pg_control import ServerControlFailed, postmaster_pid
from agentaskit_dr.actuators.promote import PromotionInDoubt
from agentaskit_dr.actuators.switchover import PostgresSwitchover
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.fencing import primary_conninfo_for, server_control
from agentaskit_dr.ports import ClusterStore, Journal, JournalEntry, Lease, RunJournal, StepStatus
from agentaskit_dr.runtime.evidence_layout import run_root
from agentaskit_dr.runtime.switchover_evidence import write_switchover_evidence

log = structlog.get_logger(__name__)

SWITCHOVER_KIND = "switchover"
SWITCH_DATABASE = "switch_database"
SWITCHOVER_PLAN = (SWITCH_DATABASE,)


class SwitchoverRunRefused(Exception):
    """The run cannot start; nothing changed. The message is for the operator."""


@dataclass(frozen=True)
class SwitchoverOutcome:
    run_id: str
    outcome: str  # "done", "failed" or "open" (left active for a resume)
    detail: str
    data: dict[str, Any] = field(default_factory=dict)  # the switchover's result
    evidence: str | None = None  # the evidence file's path, or why not written


def switchover_problem(config: WatchdogConfig, source: str, target: str) -> str | None:
    """Why this watchdog cannot switch ``source``'s primary to ``target``, or None."""
    if target == source:
        return f"{target} is already the primary region; nothing to do"
    if config.regions[source].database.control is None:
        return (f"regions.{source}.database.control is not set on this watchdog: the "
                f"switchover stops {source}'s server")
    return None


def describe_switchover(config: WatchdogConfig, source: str, target: str) -> list[str]:
    """The steps, for a dry run."""
    return [
        f"take a fresh epoch; check {source} is the primary and {target} streams from it",
        f"CHECKPOINT; standby.signal in {source}'s data directory; fast stop (writes "
        "refused from here)",
        f"wait until {target} replayed the shutdown checkpoint (promotion.catch_up_timeout "
        f"{config.promotion.catch_up_timeout:g}s; else roll back)",
        f"promote {target} under the run's epoch; record {target} as the cluster's primary",
        f"start {source} as a standby of {target}; wait until it streams at lag 0",
        "acknowledge (the watchdogs watch the new primary, armed)",
    ]


class SwitchoverRun:
    """One switchover to ``target`` under the lease ``lease()`` (the current one)."""

    def __init__(self, config: WatchdogConfig, journal: Journal, cluster: ClusterStore, *,
                 target: str, lease: Callable[[], Lease],
                 still_leader: Callable[[], Awaitable[bool]],
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.journal = journal
        self.cluster = cluster
        self.target = target
        self.lease = lease
        self.still_leader = still_leader
        self.wall_clock = wall_clock

    async def open(self, reason: str) -> RunJournal:
        """The active switchover run, or a new one; SwitchoverRunRefused if it cannot be."""
        active = await self.journal.active()
        if active is not None:
            if active.kind != SWITCHOVER_KIND:
                raise SwitchoverRunRefused(f"run {active.run_id} ({active.kind}) is active")
            return active
        source = self.config.primary_region
        problem = switchover_problem(self.config, source, self.target)
        if problem is not None:
            raise SwitchoverRunRefused(problem)
        lease = self.lease()
        run_id = f"switchover-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-e{lease.epoch}"
        return await self.journal.open(
            run_id, lease=lease, kind=SWITCHOVER_KIND, plan=SWITCHOVER_PLAN, reason=reason,
            meta={"from_region": source, "to_region": self.target, "holder": lease.holder})

    async def run(self, reason: str) -> SwitchoverOutcome:
        """Open (or resume) the run and carry it out."""
        run = await self.open(reason)
        if run.last_status(SWITCH_DATABASE) is StepStatus.DONE:
            done = next(e for e in reversed(run.entries) if e.status is StepStatus.DONE)
            return await self._finish(run.run_id, "done", "switched before a crash", done.data)
        source, target = str(run.meta["from_region"]), str(run.meta["to_region"])
        if run.entries:
            log.warning("switchover_run_resumed", run_id=run.run_id, epoch=self.lease().epoch)
        await self._record(run.run_id, StepStatus.STARTED, f"{source} -> {target}", {})
        try:
            data = await self._switch(run.run_id, source, target)
        except PromotionInDoubt as exc:
            log.error("switchover_run_in_doubt", run_id=run.run_id,  # noqa: TRY400
                      reason=exc.reason)
            return SwitchoverOutcome(run.run_id, "open", f"in doubt: {exc.reason}; the run "
                                     "stays active and its resume adopts the promotion")
        except (PromotionRefused, ServerControlFailed) as exc:
            reason_text = exc.reason if isinstance(exc, PromotionRefused) else str(exc)
            await self._record(run.run_id, StepStatus.FAILED, reason_text, {})
            if not getattr(exc, "rolled_back", False) and self._stopped(source):
                # Refused with the old primary stopped (a resume that met a standby slow
                # to answer, a roll-back that could not restart it): the run stays active,
                # the automation keeps holding, and the lock holder retries it.
                log.error("switchover_run_retried_later", run_id=run.run_id,  # noqa: TRY400
                          reason=reason_text, old_primary=source)
                return SwitchoverOutcome(run.run_id, "open", f"{reason_text}; {source}'s "
                                         "server is stopped: the run stays active, retried")
            return await self._finish(run.run_id, "failed", reason_text)
        if not data["rejoined"]:
            detail = (f"{target} is the primary, but {source} did not rejoin as its standby: "
                      f"{data['rejoin_detail']}")
            await self._record(run.run_id, StepStatus.FAILED, detail, data)
            return await self._finish(run.run_id, "failed", detail, data)
        detail = f"{target} is the primary; {source} streams from it"
        await self._record(run.run_id, StepStatus.DONE, detail, data)
        await self.cluster.acknowledge(by=self.lease().holder)
        return await self._finish(run.run_id, "done", detail, data)

    def _stopped(self, source: str) -> bool:
        control = server_control(self.config, source)
        return control is not None and postmaster_pid(control) is None

    async def _switch(self, run_id: str, source: str, target: str) -> dict[str, Any]:
        config = self.config
        control = server_control(config, source)
        if control is None:
            raise ServerControlFailed(f"regions.{source}.database.control is not set")
        lease = self.lease()

        async def promoted() -> None:
            await self.cluster.record_primary(target, epoch=lease.epoch, run_id=run_id,
                                              lease=self.lease())

        result = await PostgresSwitchover(
            primary_dsn=config.regions[source].database.connect_dsn(),
            primary_control=control,
            standby_dsn=config.regions[target].database.connect_dsn(),
            primary_conninfo=primary_conninfo_for(config, target),
            io_timeout=config.probe.timeout,
            catch_up_timeout=config.promotion.catch_up_timeout,
            promote_timeout=config.promotion.timeout,
        ).switch(epoch=lease.epoch, holder=lease.holder, switchover_id=run_id,
                 still_leader=self.still_leader, on_promoted=promoted)
        return result.as_dict()

    async def _record(self, run_id: str, status: StepStatus, detail: str,
                      data: dict[str, Any]) -> None:
        lease = self.lease()
        await self.journal.record(run_id, JournalEntry(
            step=SWITCH_DATABASE, status=status, epoch=lease.epoch, at=self.wall_clock(),
            detail=detail[:2000], data=data), lease=lease)

    async def _finish(self, run_id: str, outcome: str, detail: str,
                      data: dict[str, Any] | None = None) -> SwitchoverOutcome:
        evidence = None
        run = await self.journal.get(run_id)
        if run is not None:
            # Before the journal closes: a crash in between resumes and writes it again.
            evidence = write_switchover_evidence(
                run_root(self.config.evidence_dir, self.config.evidence_layout),
                replace(run, finished=outcome), outcome, data or {})
        await self.journal.finish(run_id, outcome, lease=self.lease())
        log.warning("switchover_run_" + outcome, run_id=run_id, detail=detail,
                    evidence=evidence)
        return SwitchoverOutcome(run_id, outcome, detail, data or {}, evidence)
