"""A production drill's preflight: which ``/v1/status`` answers refuse it, and why."""

from __future__ import annotations

from typing import Any

from agentaskit_dr.drtesting.staging_drill import production_blockers


def healthy(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "node": "prod-west", "primary_region": "us-west-2", "phase": "watching",
        "assessment": {"verdict": "healthy"}, "paused": False, "pause_reason": None,
        "self_fenced": False, "planned_run": None,
        "conditions": {"db_unreachable": {"failing": False},
                       "region_unhealthy": {"failing": False}},
    }
    status.update(changes)
    return status


def test_a_healthy_watching_cluster_may_be_drilled() -> None:
    assert production_blockers(healthy()) == []


def test_a_cluster_failing_over_or_failed_over_is_not_drilled() -> None:
    assert production_blockers(healthy(phase="failing_over")) == [
        "prod-west: phase 'failing_over' (a failover is under way or not yet acknowledged)"]
    assert production_blockers(healthy(phase="failed_over"))[0].startswith(
        "prod-west: phase 'failed_over'")


def test_a_degraded_paused_or_busy_cluster_is_not_drilled() -> None:
    blockers = production_blockers(healthy(
        assessment={"verdict": "degraded"}, paused=True, pause_reason="maintenance",
        self_fenced=True, planned_run={"run_id": "failback-1", "kind": "failback"},
        conditions={"db_unreachable": {"failing": True}, "region_unhealthy": {"failing": False}}))
    assert blockers == [
        "prod-west: the primary is assessed 'degraded'",
        "prod-west: failing: db_unreachable",
        "prod-west: the cluster is paused (maintenance)",
        "prod-west: it fenced its own primary",
        "prod-west: planned run failback-1 (failback) is active",
    ]
