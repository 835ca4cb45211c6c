"""A production drill's preflight (which ``/v1/status`` answers refuse it, and why), and a
leg's end as the drill reads it from the holder's status."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from agentaskit_dr.drtesting.staging_drill import (
    StagingDrill,
    production_blockers,
    run_staging_drill,
)


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


class ScriptedWatchdog:
    """A drill environment's lock holder on a real loopback HTTP server: it accepts each
    switchover; its ``/v1/status`` shows the run, then the run ended while the cluster
    record still names the old primary for ``late_polls`` polls, then the new one."""

    def __init__(self, late_polls: int) -> None:
        self.late_polls = late_polls  # polls the cluster record still shows the old primary
        self.primary = "us-west-2"
        self.legs = 0
        self.polls = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/status", self.status)
        app.router.add_post("/v1/switchover", self.switchover)
        return app

    async def switchover(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("dry_run"):
            return web.json_response({"would_run": True, "blocked_by": []})
        self.legs += 1
        self.polls = 0
        self.target = body["to"]
        return web.json_response({"run_id": f"switchover-{self.legs}"})

    async def status(self, request: web.Request) -> web.Response:
        if self.legs == 0:
            return web.json_response(healthy())
        self.polls += 1
        running = {"run_id": f"switchover-{self.legs}", "kind": "switchover"}
        if self.polls == 1:
            return web.json_response(healthy(planned_run=running))
        if self.polls - 1 > self.late_polls:
            self.primary = self.target
        return web.json_response(healthy(planned_run=None,
                                         cluster={"primary_region": self.primary}))


async def drill_against(watchdog: ScriptedWatchdog) -> StagingDrill:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds  # virtual time: a poll every 1 s
        await asyncio.sleep(0)

    async with TestServer(watchdog.app()) as server:
        return await run_staging_drill(
            [str(server.make_url("")).rstrip("/")], "token", ["us-west-2", "us-east-1"],
            leg_timeout=600, poll=1.0, clock=lambda: now[0], sleep=sleep)


async def test_a_cluster_record_a_few_polls_late_does_not_fail_the_leg() -> None:
    drill = await drill_against(ScriptedWatchdog(late_polls=5))
    assert drill.error is None
    assert [(leg.to, leg.run_id) for leg in drill.legs] == [
        ("us-east-1", "switchover-1"), ("us-west-2", "switchover-2")]


async def test_a_run_that_ended_with_the_old_primary_fails_the_leg_after_the_settle_time(
) -> None:
    drill = await drill_against(ScriptedWatchdog(late_polls=10_000))
    assert drill.error is not None
    assert drill.error.startswith("switchover to us-east-1 (run switchover-1) ended with the "
                                  "primary in us-west-2")
    assert len(drill.legs) == 1
    assert drill.legs[0].seconds is None
