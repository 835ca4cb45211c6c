"""Which backup jobs exist and when each is due. Pure: time comes in as a number.

A job is due at the latest *slot* at or before now: a cron time (UTC, croniter) or a
multiple of a fixed interval. Each job keeps one record of its last run in the lock
store (:class:`LastRun`), naming the slot it ran for. So:

- a slot already run (whatever the outcome) is not run again, by any watchdog;
- slots missed while every daemon was down collapse into the latest one: one run at the
  next start (catch-up, not a storm);
- a job never seen before starts its record at the current slot without running (a
  new install takes its first backup at the next slot, not at start);
- a run whose watchdog died (record ``running``, no lease) is run again, at most
  :data:`MAX_ATTEMPTS` times per slot.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from croniter import croniter  # type: ignore[import-untyped,unused-ignore]

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig, BackupJobsConfig

MAX_ATTEMPTS = 3
Outcome = Literal["baseline", "running", "ok", "unchanged", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron expression (UTC) or a fixed interval in seconds."""

    cron: str | None = None
    every: float | None = None

    def __str__(self) -> str:
        return self.cron if self.cron is not None else f"every {self.every:g}s"


def latest_slot(schedule: Schedule, now: float) -> float:
    """The newest due time at or before ``now``."""
    if schedule.every is not None:
        return math.floor(now / schedule.every) * schedule.every
    assert schedule.cron is not None
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    if croniter.match(schedule.cron, moment.replace(second=0, microsecond=0)):
        return moment.replace(second=0, microsecond=0).timestamp()
    previous: dt.datetime = croniter(schedule.cron, moment).get_prev(dt.datetime)
    return previous.timestamp()


def next_slot(schedule: Schedule, now: float) -> float:
    """The first due time after ``now``."""
    if schedule.every is not None:
        return latest_slot(schedule, now) + schedule.every
    assert schedule.cron is not None
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    following: dt.datetime = croniter(schedule.cron, moment).get_next(dt.datetime)
    return following.timestamp()


@dataclass(frozen=True, slots=True)
class LastRun:
    """The record ``<prefix>:job:<name>:last``: the slot last run and how it went."""

    due: float
    outcome: Outcome
    started_at: float | None = None
    finished_at: float | None = None
    holder: str | None = None
    attempt: int = 0
    bytes: int | None = None
    detail: str = ""
    last_success: float | None = None
    #: The evidence file the run's commands named (a drill's), on the host that ran it.
    evidence: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> LastRun | None:
        """The record, or None when absent or unreadable (treated as never run)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one job now: ``run`` it for slot ``due``, write a ``baseline``
    record, or ``wait``; ``reason`` says why in one line."""

    action: Literal["run", "baseline", "wait"]
    due: float
    reason: str
    attempt: int = 1


def decide(schedule: Schedule, now: float, last: LastRun | None, *,
           lease_free: bool) -> Decision:
    """Whether the job is due now (see the module doc)."""
    slot = latest_slot(schedule, now)
    if last is None:
        return Decision("baseline", slot, "first seen: runs from the next due time")
    if last.due < slot:
        missed = "" if last.due >= latest_slot(schedule, slot - 1e-3) else ", catching up"
        return Decision("run", slot, f"due at {iso(slot)}{missed}")
    if last.outcome == "running" and lease_free and last.due == slot:
        if last.attempt < MAX_ATTEMPTS:
            return Decision("run", slot, f"the run of {last.holder} stopped without an "
                            "outcome (its lease expired): again", attempt=last.attempt + 1)
        return Decision("wait", slot, f"given up after {last.attempt} attempts")
    return Decision("wait", slot, f"{last.outcome} for {iso(last.due)}")


def started(decision: Decision, previous: LastRun | None, *, holder: str,
            now: float) -> LastRun:
    """The record written when a run starts."""
    return LastRun(due=decision.due, outcome="running", started_at=now, holder=holder,
                   attempt=decision.attempt,
                   last_success=previous.last_success if previous else None)


def finished(running: LastRun, outcome: Outcome, *, now: float, nbytes: int | None,
             detail: str, evidence: str | None = None) -> LastRun:
    """The record written when a run ends."""
    success = now if outcome in ("ok", "unchanged") else running.last_success
    return replace(running, outcome=outcome, finished_at=now, bytes=nbytes,
                   detail=detail[:300], last_success=success, evidence=evidence)


def iso(at: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC, to the second."""
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the jobs


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One scheduled job: CLI commands (after ``agentaskit-dr``) run one after the other.

    ``dr_test`` names the DR testing schedule's row the job is a run of, if any;
    ``time_limit`` (seconds, None: none) stops a run that takes longer, as failed;
    ``drill``: a DR drill, not a backup (the status lists it under ``drills``)."""

    name: str
    schedule: Schedule
    steps: tuple[tuple[str, ...], ...]
    dr_test: str | None = None
    time_limit: float | None = None
    drill: bool = False


#: Besides its two switchovers: finding the holder, dry runs, status polls, evidence.
DRILL_MARGIN = 120.0


def drill_time_limit(backup: BackupConfig) -> float:
    """The failover drill job's time limit: two switchovers (there and back), each
    bounded by ``drills.failover.timeout``, and a margin."""
    return 2 * backup.drills.failover.timeout + DRILL_MARGIN


def job_specs(backup: BackupConfig, path: Path, settings: BackupJobsConfig,
              evidence_dir: Path | None = None) -> list[JobSpec]:
    """The jobs a backup config asks for; each only if what it backs up is configured.
    The failover drill records into ``evidence_dir`` (the watchdog's: where its DR
    testing schedule is read), else the backup config's."""
    conf = ("--config", str(path), "--json")
    state = backup.application_state
    components = [name for name, on in (
        ("redis", state.redis.url is not None and state.redis.schedule != "on-change"),
        ("vault", state.secrets.vault_addr is not None
         and state.secrets.schedule != "on-change"),
        ("configs", True)) if on]
    jobs: list[JobSpec] = []
    postgres = backup.postgresql.dsn is not None
    if postgres:
        for kind in ("full", "incremental"):
            cron = getattr(backup.postgresql, kind).schedule
            jobs.append(JobSpec(f"backup-{kind}", Schedule(cron=cron),
                                (("backup", "run", "--kind", kind, *conf),)))
    prune: list[tuple[str, ...]] = [("backup", "prune", *conf)] if postgres else []
    prune += [("appstate", "prune", name, *conf) for name in components]
    jobs.append(JobSpec("retention", Schedule(cron=settings.retention_schedule),
                        tuple(prune)))
    verify: list[tuple[str, ...]] = [("verify-backup", *conf)] if postgres else []
    verify += [("appstate", "verify", name, *conf) for name in components]
    jobs.append(JobSpec("verify-backup", Schedule(cron=backup.verification.verify_backup.schedule),
                        tuple(verify), dr_test="backup_verification"))
    if postgres:
        target = backup.verification.test_restore.target
        if target in backup.restore_targets:
            jobs.append(JobSpec("test-restore",
                                Schedule(cron=backup.verification.test_restore.schedule),
                                (("test-restore", "--target", target, *conf),),
                                dr_test="restore_test"))
    for name, item in (("redis", state.redis), ("vault", state.secrets),
                       ("configs", state.configs)):
        if name not in components:
            continue
        schedule = (Schedule(every=settings.configs_every) if item.schedule == "on-change"
                    else Schedule(cron=item.schedule))
        jobs.append(JobSpec(f"appstate-{name}", schedule,
                            (("appstate", "backup", name, *conf),)))
    where = () if evidence_dir is None else ("--evidence-dir", str(evidence_dir))
    jobs.append(JobSpec("failover-drill", Schedule(cron=backup.drills.failover.schedule),
                        (("drill-failover", *conf, *where),), dr_test="failover_drill",
                        time_limit=drill_time_limit(backup), drill=True))
    return jobs


def describe_drill(spec: JobSpec, last: LastRun | None, *, now: float,
                   running_here: bool) -> dict[str, Any]:
    """One row of ``/v1/status``'s ``drills`` (flat: the status page shows it as is)."""
    result: str | None = None
    if last is not None and last.outcome != "baseline":
        result = "passed" if last.outcome == "ok" else last.outcome
        if last.detail and last.detail not in ("ok", last.outcome):
            result += f": {last.detail}"
    return {
        "schedule": str(spec.schedule),
        "last_run": iso(last.started_at) if last else None,
        "result": result,
        "next_run": iso(next_slot(spec.schedule, now)),
        "evidence": last.evidence if last else None,
        "running_here": running_here,
    }


def describe(spec: JobSpec, last: LastRun | None, *, now: float,
             running_here: bool) -> dict[str, Any]:
    """One row of ``/v1/status``'s ``backups`` (flat: the status page shows it as is)."""
    return {
        "schedule": str(spec.schedule),
        "last_success": iso(last.last_success) if last else None,
        "last_outcome": last.outcome if last else None,
        "last_run": iso(last.started_at) if last else None,
        "last_bytes": last.bytes if last else None,
        "next_due": iso(next_slot(spec.schedule, now)),
        "running_here": running_here,
    }
