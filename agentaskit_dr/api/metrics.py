"""Prometheus metrics of one watchdog, in a registry of its own (never the global one).

The runtime calls the recording methods as things happen; each is a cheap, synchronous
update. ``render`` produces the text exposition for ``GET /metrics``.

Unknown values (``None``: no lock epoch, no measured lag) are exported as NaN, not
removed: the series stays visible, so a dashboard shows "unknown" instead of a stale
number and an alert on ``absent()`` does not fire just because a replica is unreachable.

One-hot gauges (``state{phase}``, ``assessment{kind}``) start with every phase and verdict
the core knows at 0, so each series exists from the first scrape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agentaskit_dr.core.assess import Verdict
from agentaskit_dr.core.model import Phase

PREFIX = "agentaskit_dr_"

# Probe latencies range from a loopback query (ms) to a timeout (seconds).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


class _OneHot:
    """A gauge with one label where exactly the current value is 1, all others seen 0."""

    def __init__(self, gauge: Gauge, known: Iterable[str]) -> None:
        self._gauge = gauge
        self._seen: set[str] = set()
        self._current: str | None = None
        for value in known:
            self._gauge.labels(value).set(0)
            self._seen.add(value)

    def set(self, current: str) -> None:
        # Called every engine cycle with what is mostly the same value: only a change
        # touches the gauge's children (idle CPU, issue 13).
        if current == self._current:
            return
        self._current = current
        self._seen.add(current)
        for value in self._seen:
            self._gauge.labels(value).set(1 if value == current else 0)


class Metrics:
    """The watchdog's metrics; ``clock`` is the clock the runtime's ``since`` values use.

    ``registry`` is the ``CollectorRegistry`` they live in, for a caller that adds its own.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._phase_since: float | None = None
        reg = self.registry

        self._probe_up = Gauge(
            PREFIX + "probe_up", "1 if the target answered the probe's last check (a database "
            "that answers with an error is up: see probe_refused), else 0",
            ["probe", "target"], registry=reg,
        )
        self._probe_refused = Gauge(
            PREFIX + "probe_refused", "1 if the target answered the probe's last check with "
            "an error (up, but refusing the watchdog), else 0",
            ["probe", "target"], registry=reg,
        )
        self._probe_latency = Histogram(
            PREFIX + "probe_latency_seconds", "How long each probe check took, failed or not",
            ["probe", "target"], buckets=_LATENCY_BUCKETS, registry=reg,
        )
        self._state = _OneHot(Gauge(
            PREFIX + "state", "1 for the failover phase the watchdog is in, 0 for the others",
            ["phase"], registry=reg,
        ), (phase.value for phase in Phase))
        time_in_state = Gauge(
            PREFIX + "time_in_state_seconds",
            "Seconds since the watchdog entered its current phase (NaN before the first)",
            registry=reg,
        )
        time_in_state.set_function(self._time_in_state)
        self._failovers = Counter(
            PREFIX + "failovers", "Failovers by outcome", ["outcome"], registry=reg,
        )
        self._lock_held = Gauge(
            PREFIX + "lock_held", "1 if this watchdog holds the leader lock, else 0",
            registry=reg,
        )
        self._lock_epoch = Gauge(
            PREFIX + "lock_epoch", "Fencing epoch of the lock this watchdog holds (NaN if none)",
            registry=reg,
        )
        self._lag_bytes = Gauge(
            PREFIX + "replication_lag_bytes", "Replica lag behind the primary in WAL bytes "
            "(NaN when unknown)", registry=reg,
        )
        self._lag_seconds = Gauge(
            PREFIX + "replication_lag_seconds", "Replica replay lag in seconds (NaN when unknown)",
            registry=reg,
        )
        self._archive_pending = Gauge(
            PREFIX + "wal_archive_pending_segments", "Completed WAL segments the primary has "
            "not archived yet (NaN without archive_mode)", registry=reg,
        )
        self._archive_lag = Gauge(
            PREFIX + "wal_archive_lag_seconds", "Since the primary last archived a segment, "
            "while some are pending; 0 when none is (NaN without archive_mode)", registry=reg,
        )
        self._overshoot = Gauge(
            PREFIX + "decision_overshoot_seconds",
            "How long the last failover decision came after its threshold was reached",
            registry=reg,
        )
        self._assessment = _OneHot(Gauge(
            PREFIX + "assessment", "1 for the vantage points' current verdict, 0 for the others",
            ["kind"], registry=reg,
        ), (verdict.value for verdict in Verdict))
        self._paused = Gauge(
            PREFIX + "paused", "1 while an operator has paused automatic failover, else 0",
            registry=reg,
        )
        self.lock(held=False, epoch=None)
        self.replication_lag(None, None)
        self.wal_archive(None, None)
        self._overshoot.set(math.nan)

    def probe(self, probe: str, target: str, ok: bool, latency: float) -> None:
        """One probe check of ``target``: up or down, and how long it took (seconds)."""
        self._probe_up.labels(probe, target).set(1 if ok else 0)
        self._probe_latency.labels(probe, target).observe(latency)

    def refused(self, probe: str, target: str, refusal: str | None) -> None:
        """Whether ``target`` answered with an error (``refusal`` names it) or not."""
        self._probe_refused.labels(probe, target).set(0 if refusal is None else 1)

    def phase(self, phase: str, since: float) -> None:
        """The watchdog is in ``phase`` since ``since`` (a reading of the ``clock``)."""
        self._state.set(phase)
        self._phase_since = since

    def failover(self, outcome: str) -> None:
        """A failover ended with ``outcome`` (e.g. "succeeded", "refused")."""
        self._failovers.labels(outcome).inc()

    def lock(self, held: bool, epoch: int | None) -> None:
        """Whether this watchdog holds the leader lock, and its fencing epoch."""
        self._lock_held.set(1 if held else 0)
        self._lock_epoch.set(_or_nan(epoch))

    def replication_lag(self, lag_bytes: int | None, lag_seconds: float | None) -> None:
        """The replica's lag, None where it could not be measured."""
        self._lag_bytes.set(_or_nan(lag_bytes))
        self._lag_seconds.set(_or_nan(lag_seconds))

    def wal_archive(self, pending: int | None, lag_seconds: float | None) -> None:
        """The primary's WAL archive backlog, None where it is not measured."""
        self._archive_pending.set(_or_nan(pending))
        self._archive_lag.set(_or_nan(lag_seconds))

    def overshoot(self, seconds: float) -> None:
        """How late the last failover decision came after its threshold (seconds)."""
        self._overshoot.set(seconds)

    def verdict(self, kind: str) -> None:
        """The vantage points' current assessment of the primary."""
        self._assessment.set(kind)

    def paused(self, flag: bool) -> None:
        """Whether automatic failover is paused by an operator."""
        self._paused.set(1 if flag else 0)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _time_in_state(self) -> float:
        if self._phase_since is None:
            return math.nan
        return max(0.0, self._clock() - self._phase_since)
