"""The Prometheus series a dashboard and an alert read, parsed back from the exposition."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentaskit_dr.api.metrics import Metrics


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by name and sorted labels."""
    body, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[("agentaskit_dr_" + name, tuple(sorted(labels.items())))]


def test_render_is_prometheus_text_with_its_content_type() -> None:
    body, content_type = Metrics().render()

    assert content_type.startswith("text/plain")
    assert b"# TYPE agentaskit_dr_probe_up gauge" in body


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.paused(True)

    assert value(first, "paused") == 1
    assert value(second, "paused") == 0


def test_a_database_that_answers_with_an_error_is_up_and_refused() -> None:
    metrics = Metrics()
    metrics.probe("db:primary", "west-db", ok=True, latency=0.003)
    metrics.refused("db:primary", "west-db", "too_many_connections")
    metrics.refused("db:standby", "east-db", None)

    assert value(metrics, "probe_up", probe="db:primary", target="west-db") == 1
    assert value(metrics, "probe_refused", probe="db:primary", target="west-db") == 1
    assert value(metrics, "probe_refused", probe="db:standby", target="east-db") == 0


def test_probe_results_set_up_and_latency_per_probe_and_target() -> None:
    metrics = Metrics()
    metrics.probe("postgres", "west-db", ok=True, latency=0.003)
    metrics.probe("postgres", "west-db", ok=False, latency=2.0)
    metrics.probe("region_health", "us-west-2", ok=True, latency=0.2)

    assert value(metrics, "probe_up", probe="postgres", target="west-db") == 0
    assert value(metrics, "probe_up", probe="region_health", target="us-west-2") == 1
    assert value(metrics, "probe_latency_seconds_count", probe="postgres", target="west-db") == 2
    assert value(metrics, "probe_latency_seconds_sum", probe="postgres",
                 target="west-db") == pytest.approx(2.003)
    assert value(metrics, "probe_latency_seconds_bucket", probe="postgres", target="west-db",
                 le="0.005") == 1


def test_phase_is_one_hot_and_time_in_state_is_computed_at_scrape() -> None:
    clock = FakeClock(1000.0)
    metrics = Metrics(clock=clock)
    assert math.isnan(value(metrics, "time_in_state_seconds"))
    assert value(metrics, "state", phase="failing_over") == 0

    metrics.phase("watching", since=990.0)
    assert value(metrics, "time_in_state_seconds") == 10.0
    clock.now = 1100.0
    assert value(metrics, "time_in_state_seconds") == 110.0

    metrics.phase("failing_over", since=1100.0)
    clock.now = 1103.5
    assert value(metrics, "time_in_state_seconds") == 3.5
    assert value(metrics, "state", phase="failing_over") == 1
    assert value(metrics, "state", phase="watching") == 0
    assert value(metrics, "state", phase="failed_over") == 0


def test_verdict_is_one_hot_including_kinds_the_core_does_not_name() -> None:
    metrics = Metrics()
    metrics.verdict("primary_down")
    metrics.verdict("something_new")

    assert value(metrics, "assessment", kind="something_new") == 1
    assert value(metrics, "assessment", kind="primary_down") == 0
    assert value(metrics, "assessment", kind="healthy") == 0


def test_a_one_hot_gauge_follows_every_change_and_repeats_change_nothing() -> None:
    metrics = Metrics()
    for kind in ("healthy", "healthy", "primary_down", "primary_down", "healthy"):
        metrics.verdict(kind)
        assert value(metrics, "assessment", kind=kind) == 1
        others = {"healthy", "primary_down"} - {kind}
        assert all(value(metrics, "assessment", kind=other) == 0 for other in others)


def test_failovers_count_by_outcome() -> None:
    metrics = Metrics()
    metrics.failover("succeeded")
    metrics.failover("refused")
    metrics.failover("refused")

    assert value(metrics, "failovers_total", outcome="succeeded") == 1
    assert value(metrics, "failovers_total", outcome="refused") == 2


def test_unknown_values_are_nan_not_stale() -> None:
    metrics = Metrics()
    metrics.lock(held=True, epoch=42)
    metrics.replication_lag(lag_bytes=16384, lag_seconds=0.25)
    assert (value(metrics, "lock_held"), value(metrics, "lock_epoch")) == (1, 42)
    assert value(metrics, "replication_lag_bytes") == 16384
    assert value(metrics, "replication_lag_seconds") == 0.25

    metrics.lock(held=False, epoch=None)
    metrics.replication_lag(lag_bytes=None, lag_seconds=None)

    assert value(metrics, "lock_held") == 0
    assert math.isnan(value(metrics, "lock_epoch"))
    assert math.isnan(value(metrics, "replication_lag_bytes"))
    assert math.isnan(value(metrics, "replication_lag_seconds"))


def test_overshoot_and_paused() -> None:
    metrics = Metrics()
    assert math.isnan(value(metrics, "decision_overshoot_seconds"))

    metrics.overshoot(0.42)
    metrics.paused(True)

    assert value(metrics, "decision_overshoot_seconds") == 0.42
    assert value(metrics, "paused") == 1


def test_the_primary_s_wal_archive_backlog_reaches_the_status_and_metrics() -> None:
    from agentaskit_dr.ports import PostgresObservation
    from agentaskit_dr.runtime.engine import PRIMARY_DB
    from agentaskit_dr.runtime.intake import Intake
    from agentaskit_dr.runtime.scheduler import ProbeReport

    intake = Intake(lambda: 0.0, dict, dict)
    assert intake.archive == (None, None)
    seen = PostgresObservation(target="db:5432", reachable=True, latency=0.01, in_recovery=False,
                               read_only=False, current_lsn=1, archive_pending_segments=4,
                               archive_lag_seconds=12.5)
    intake.latest[PRIMARY_DB] = ProbeReport(PRIMARY_DB, 1, seen, 0.0)
    assert intake.archive == (4, 12.5)

    metrics = Metrics(clock=lambda: 0.0)
    metrics.wal_archive(*intake.archive)
    text = generate_latest(metrics.registry).decode()
    assert "agentaskit_dr_wal_archive_pending_segments 4.0" in text
    assert "agentaskit_dr_wal_archive_lag_seconds 12.5" in text
