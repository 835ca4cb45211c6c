"""What this watchdog's own probes saw, turned into the core's events.

The engine's input side: the latest report of each probe, the positions read from the
databases (the old primary's last LSN, the standby's lag), this watchdog's own streak of
failed primary probes, and the assess step that joins them with the peers' and the
witness's views. It keeps no decision state: that is the core's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import Assessed, Assessment, Event, StandbyObserved, Vantage, assess
from agentaskit_dr.ports import PostgresObservation, RegionHealthObservation
from agentaskit_dr.probes.postgres import replication_lag_bytes
from agentaskit_dr.runtime.outlook import (
    IN_RECOVERY,
    IN_RECOVERY_DETAIL,
    PRIMARY_DB,
    STANDBY_DB,
    own_vantage,
    wire_report,
)
from agentaskit_dr.runtime.scheduler import ProbeReport

VantageSource = Callable[[], list[Vantage]]


class Intake:
    """The latest probe reports and what follows from them, for one topology.

    ``vantages`` and ``links`` give the peers' and the witness's latest views and whether
    each answers (the peer poller's, wired after construction).
    """

    def __init__(self, clock: Callable[[], float], vantages: VantageSource,
                 links: Callable[[], dict[str, bool]]) -> None:
        self._clock = clock
        self._vantages = vantages
        self._links = links
        self.latest: dict[str, ProbeReport] = {}
        self.primary_last_lsn: int | None = None
        # When ``primary_last_lsn`` was read (this clock): the age of the last view.
        self.primary_last_lsn_at: float | None = None
        self.lag_bytes: int | None = None
        self.assessment: Assessment | None = None
        # This watchdog's own unbroken streak of failed primary probes (raw, no quorum).
        self._own_db_failing_since: float | None = None

    @property
    def lag_seconds(self) -> float | None:
        """Seconds since the standby replayed its last transaction (idle primaries inflate
        it; ``lag_bytes`` is the sharper RPO estimate)."""
        standby = self.latest.get(STANDBY_DB)
        value = getattr(standby.observation, "replay_lag_seconds", None) if standby else None
        return value if isinstance(value, float) else None

    @property
    def archive(self) -> tuple[int | None, float | None]:
        """The primary's WAL archive: completed segments not archived yet and the lag in
        seconds (both None when it has no archive or was not read)."""
        primary = self.latest.get(PRIMARY_DB)
        observation = primary.observation if primary else None
        pending = getattr(observation, "archive_pending_segments", None)
        lag = getattr(observation, "archive_lag_seconds", None)
        return (pending if isinstance(pending, int) else None,
                lag if isinstance(lag, float) else None)

    def forget(self) -> None:
        """The topology changed (a failover): what was seen belongs to the old one."""
        self.latest.clear()
        self._own_db_failing_since = None
        self.primary_last_lsn = None
        self.primary_last_lsn_at = None
        self.lag_bytes = None

    def events(self, config: WatchdogConfig, report: ProbeReport) -> list[Event]:
        """The core's events for one probe report of the current topology."""
        self.latest[report.probe] = report
        observation = report.observation
        if isinstance(observation, RegionHealthObservation):
            # The secondary region's health moves no clock, but a failover must not go
            # into a region that is itself unhealthy: the core holds it.
            primary = observation.region == config.primary_region
            return [self.assessed(config, region_evidence=primary)]
        if report.probe == PRIMARY_DB:
            if observation.current_lsn is not None:
                self.primary_last_lsn = observation.current_lsn
                self.primary_last_lsn_at = report.at
            if not observation.reachable and self._own_db_failing_since is None:
                self._own_db_failing_since = report.at
            elif observation.reachable:
                self._own_db_failing_since = None
            return [self.assessed(config, db_evidence=True)]
        # Only a status actually read says anything about the standby's role: a standby
        # that refuses the watchdog (or does not answer) is neither ready nor promoted.
        if report.probe == STANDBY_DB and observation.status_read:
            self.lag_bytes = replication_lag_bytes(self.primary_last_lsn, observation)
            return [StandbyObserved(
                in_recovery=bool(observation.in_recovery),
                marker_epoch=observation.marker_epoch,
                writable=observation.writable,
                detail=observation.target,
            )]
        return []

    def assessed(self, config: WatchdogConfig, *, db_evidence: bool = False,
                 region_evidence: bool = False) -> Assessed:
        """Assess own + peer + witness views now that an own probe brought news."""
        others = self._vantages()
        own = own_vantage(config, self.latest, others, self._clock())
        assessment = assess(own, others, config.primary_region,
                            failing_since=self._own_db_failing_since,
                            secondary_region=config.secondary_region)
        if assessment.primary_refusal is not None:
            report = self.latest.get(PRIMARY_DB)
            seen = report.observation if report else None
            words = seen.error if isinstance(seen, PostgresObservation) and seen.error else (
                IN_RECOVERY_DETAIL if assessment.primary_refusal == IN_RECOVERY else "")
            assessment = dataclasses.replace(assessment, refusal_detail=words)
        # The own probe's words (the error, the URLs' tally) end the detail.
        own_detail = None
        if db_evidence and assessment.db_failing:
            report = self.latest.get(PRIMARY_DB)
            own_detail = getattr(report.observation, "error", None) if report else None
        elif region_evidence and assessment.region_failing:
            health = [r.observation for r in self.latest.values()
                      if isinstance(r.observation, RegionHealthObservation)
                      and r.observation.region == config.primary_region]
            own_detail = health[0].detail if health else None
        if own_detail:
            assessment = dataclasses.replace(assessment,
                                             detail=f"{assessment.detail}: {own_detail}")
        self.assessment = assessment
        return Assessed(
            assessment,
            primary_side=config.region == config.primary_region,
            db_evidence=db_evidence,
            region_evidence=region_evidence,
        )

    def observations(self, config: WatchdogConfig) -> dict[str, Any]:
        """The ``GET /v1/observations`` body: this daemon's latest view, for its peers."""
        now = self._clock()
        own = own_vantage(config, self.latest, self._vantages(), now)
        return wire_report(config, own, self.latest, self._links(), now)

    def old_primary_answering(self, config: WatchdogConfig) -> bool:
        """Some fresh vantage (this one included) sees the primary database answering, even
        with an error: the promotion must then wait for a confirmed fence."""
        others = self._vantages()
        own = own_vantage(config, self.latest, others, self._clock())
        return any(vantage.view_of(config.primary_region).db_reachable
                   for vantage in (own, *others) if vantage.fresh)
