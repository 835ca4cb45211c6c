"""The daemon's view of the DR testing schedule and the recovery objectives.

A root task re-reads the evidence directory every ``interval`` (files only, off the
event loop), posts overdue or failed tests to the :class:`AlertRouter` (once, then a daily
reminder: :func:`~agentaskit_dr.drtesting.schedule.schedule_alerts`), keeps the
``/v1/status`` keys ``dr_testing`` and ``objectives``, and sets their metrics. Schedules
and targets come from ``backup_config`` when given (the supervisor gives the one the
backup jobs use, ``backup: {config: PATH}`` in the watchdog config), else the plan's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Gauge

from agentaskit_dr.drtesting.objectives import Objective, SwitchoverWindows
from agentaskit_dr.drtesting.records import (
    TEST_KEYS,
    crons_from,
    last_successes,
    load_state,
    schedule_rows,
)
from agentaskit_dr.drtesting.schedule import AlertState, ScheduleRow, schedule_alerts
from agentaskit_dr.runtime.alerts import AlertRouter

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig
    from agentaskit_dr.runtime.engine import Engine

log = structlog.get_logger(__name__)

DAY = 86400.0
PREFIX = "agentaskit_dr_"


class DrTestingMetrics:
    """``dr_test_last_success_timestamp{test}``, ``dr_test_overdue{test}``,
    ``objective_seconds{objective}`` and ``objective_target_seconds{objective}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._success = Gauge(PREFIX + "dr_test_last_success_timestamp",
                              "Unix time of the last passed run of each DR test (NaN: never)",
                              ["test"], registry=registry)
        self._overdue = Gauge(PREFIX + "dr_test_overdue",
                              "1 if the DR test is overdue or its last run failed, else 0",
                              ["test"], registry=registry)
        self._measured = Gauge(PREFIX + "objective_seconds",
                               "Measured RPO, RTO and MTTR in seconds (NaN: not measured)",
                               ["objective"], registry=registry)
        self._target = Gauge(PREFIX + "objective_target_seconds",
                             "The plan's RPO, RTO and MTTR targets in seconds",
                             ["objective"], registry=registry)

    def update(self, rows: list[ScheduleRow], successes: dict[str, float],
               objectives: list[Objective]) -> None:
        for row in rows:
            self._success.labels(row.key).set(successes.get(row.key, math.nan))
            self._overdue.labels(row.key).set(1 if row.status in ("overdue", "failed") else 0)
        for objective in objectives:
            value = objective.measured_seconds
            self._measured.labels(objective.name).set(math.nan if value is None else value)
            self._target.labels(objective.name).set(objective.target_seconds)


class DrTestingWatch:
    """Checks the schedule and objectives every ``interval``; see the module doc."""

    def __init__(self, evidence_dir: Callable[[], Path], alerts: Callable[[], AlertRouter], *,
                 metrics: DrTestingMetrics | None = None, interval: float = 3600.0,
                 backup_config: Callable[[], BackupConfig | None] = lambda: None,
                 archive_lag: Callable[[], float | None] = lambda: None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.evidence_dir = evidence_dir
        self.alerts = alerts
        self.metrics = metrics
        self.interval = interval
        # Schedules, grace, reminders and targets: the backup config's when the daemon has
        # one (wire it here), else the plan's.
        self.backup_config = backup_config
        self.archive_lag = archive_lag  # the primary's WAL archive lag, as probed now
        self.wall_clock = wall_clock
        self.alert_state = AlertState({})
        self._status: dict[str, Any] = {}

    @classmethod
    def for_engine(cls, engine: Engine) -> DrTestingWatch:
        """Following the engine's evidence directory (reloads) and alert router, with its
        metrics in the engine's registry."""
        metrics = None if engine.metrics is None else DrTestingMetrics(engine.metrics.registry)
        return cls(lambda: engine.config.evidence_dir, lambda: engine.alerts, metrics=metrics,
                   archive_lag=lambda: engine.archive[1])

    def status(self) -> dict[str, Any]:
        """``{"dr_testing": ..., "objectives": ...}`` once checked, else empty."""
        return dict(self._status)

    def read(self, now: float) -> tuple[list[ScheduleRow], list[Objective], SwitchoverWindows,
                                        dict[str, float]]:
        """The rows, objectives, switchover windows and last successes at ``now``
        (blocking file reads)."""
        from agentaskit_dr.drtesting.objectives_view import current_objectives, current_switchovers

        directory, config = self.evidence_dir(), self.backup_config()
        grace = DAY if config is None else config.drills.grace
        rows = schedule_rows(directory, crons_from(config), now=now, grace=grace)
        objectives = current_objectives(config, directory, now, self.archive_lag())
        return (rows, objectives, current_switchovers(config, directory),
                last_successes(directory, load_state(directory, now=now)))

    def apply(self, rows: list[ScheduleRow], objectives: list[Objective],
              switchovers: SwitchoverWindows, successes: dict[str, float], *,
              now: float) -> None:
        """Alerts, metrics and status from one reading (on the event loop: alerts are sent
        from there)."""
        from agentaskit_dr.drtesting.objectives_view import objectives_status

        config = self.backup_config()
        remind_every = DAY if config is None else config.drills.remind_every
        alerts, self.alert_state = schedule_alerts(rows, self.alert_state, now=now,
                                                   remind_every=remind_every)
        router = self.alerts()
        for alert in alerts:
            router.route(alert)
        if self.metrics is not None:
            self.metrics.update(rows, successes, objectives)
        self._status = {"dr_testing": {row.key: row.as_dict() for row in rows},
                        "objectives": objectives_status(objectives, switchovers)}

    async def check(self) -> None:
        """One check at the wall clock's now."""
        now = self.wall_clock()
        rows, objectives, switchovers, successes = await asyncio.to_thread(self.read, now)
        self.apply(rows, objectives, switchovers, successes, now=now)

    async def run(self) -> None:
        """Check now, then every ``interval``; a failed check is logged, never fatal."""
        while True:
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - a root task must not end
                log.error("dr_testing_check_failed",  # noqa: TRY400 - one line, no trace
                          error=f"{type(exc).__name__}: {exc}", tests=list(TEST_KEYS))
            await asyncio.sleep(self.interval)
