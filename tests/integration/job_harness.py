"""Job schedulers of two watchdogs on one real redis-server, on a clock the test turns:
the stand-in watchdog config they read, the clock, and one look of each scheduler.

Shared by the job-lease tests, the drill-job tests and the scheduled staging drill."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from agentaskit_dr.config import BackupJobsConfig, WatchdogConfig
from agentaskit_dr.runtime.jobs import JobScheduler

PREFIX = "jobs-test"
T0 = 1_800_000_000.0  # a multiple of 60: a slot of the 60 s configs job


@dataclass
class Lock:
    key_prefix: str = PREFIX


@dataclass
class Watchdog:
    """What the scheduler reads of a watchdog config."""

    holder: str
    backup: BackupJobsConfig
    evidence_dir: Path
    lock: Lock = field(default_factory=Lock)


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


def job_scheduler(name: str, jobs: BackupJobsConfig, client: Redis, clock: Clock,
                  tmp_path: Path, **options: Any) -> JobScheduler:
    """The job scheduler of watchdog ``name`` (its evidence under ``tmp_path / name``);
    ``options`` go to :class:`JobScheduler` (``runner``, ``registry``)."""
    config = Watchdog(name, jobs, tmp_path / name)
    return JobScheduler(lambda: cast(WatchdogConfig, config), client, clock=clock, **options)


async def look(*schedulers: JobScheduler) -> None:
    """Each scheduler reads its config, then all check for due jobs at once."""
    for jobs in schedulers:
        await jobs._refresh()
    await asyncio.gather(*(jobs.check() for jobs in schedulers))
