"""The operator's controls on a running engine: pause, resume, acknowledge, manual failover.

A real Engine and FailoverExecutor run as a task with fake probes and a fake promoter
behind the ports; every control goes through the engine's queue as in the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from agentaskit_dr.actuators.promote import FenceResult, PromotionResult
from agentaskit_dr.api.server import ControlRefused
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import Phase, Tick, Verdict
from agentaskit_dr.ports import (
    Lease,
    Observation,
    PostgresObservation,
    Probe,
    RegionHealthObservation,
    UrlCheck,
)
from agentaskit_dr.runtime.control import STUCK_AFTER_INTERVALS, EngineController
from agentaskit_dr.runtime.engine import PRIMARY_DB, STANDBY_DB, Engine
from agentaskit_dr.runtime.executor import FailoverExecutor
from agentaskit_dr.runtime.peers import parse_report
from tests.unit.fake_journal import engine_runbook

WEST, EAST = "us-west-2", "us-east-1"
EPOCH = 7
PROBES = 4  # both databases, both regions


def watchdog_config(**changes: Any) -> WatchdogConfig:
    data: dict[str, Any] = {
        "region": EAST,
        "primary_region": WEST,
        "node_name": "watchdog-east",
        "regions": {
            name: {
                "health_urls": [f"http://127.0.0.1:9/{name}/healthz"],
                "database": {"dsn": f"postgresql://postgres@127.0.0.1:9/{name}"},
            }
            for name in (WEST, EAST)
        },
        # No jitter: the first probe round fires as the engine starts.
        "probe": {"interval": "5s", "timeout": "2s", "jitter": 0},
    }
    data.update(changes)
    return WatchdogConfig.model_validate(data)


# ---------------------------------------------------------------- the fake world


class World:
    """Healthy primary in the west, streaming standby in the east; probes wait for ``open``."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.promotions: list[int] = []
        self.unhealthy: set[str] = set()  # regions whose load balancer answers 503

    def probes(self, config: WatchdogConfig) -> list[Probe[Observation]]:
        return [
            FakeDbProbe(PRIMARY_DB, config.primary_region, self, standby=False),
            FakeDbProbe(STANDBY_DB, config.secondary_region, self, standby=True),
            FakeRegionProbe(WEST, self),
            FakeRegionProbe(EAST, self),
        ]

    def promoter(self, _config: WatchdogConfig) -> FakePromoter:
        return FakePromoter(self)


class FakeDbProbe:
    def __init__(self, name: str, region: str, world: World, *, standby: bool) -> None:
        self.name = name
        self.target = f"{region}-db:5432/app"
        self.world = world
        self.standby = standby

    async def observe(self) -> PostgresObservation:
        await self.world.open.wait()
        return PostgresObservation(
            target=self.target, reachable=True, latency=0.002, in_recovery=self.standby,
            read_only=False, current_lsn=None if self.standby else 50_000,
            receive_lsn=50_000 if self.standby else None,
            replay_lsn=50_000 if self.standby else None,
            receiver_status="streaming" if self.standby else None,
        )

    def failure(self, error: str, latency: float) -> PostgresObservation:
        return PostgresObservation(self.target, reachable=False, latency=latency, error=error)

    async def close(self) -> None:
        return None


class FakeRegionProbe:
    def __init__(self, region: str, world: World) -> None:
        self.name = region
        self.region = region
        self.world = world
        self.url = f"https://{region}.example.test/healthz"

    async def observe(self) -> RegionHealthObservation:
        await self.world.open.wait()
        if self.region in self.world.unhealthy:
            bad = UrlCheck(self.url, ok=False, status=503, latency=0.01, error="HTTP 503")
            return RegionHealthObservation(self.region, healthy=False, checks=(bad,))
        check = UrlCheck(self.url, ok=True, status=200, latency=0.01)
        return RegionHealthObservation(self.region, healthy=True, checks=(check,))

    def failure(self, error: str, latency: float) -> RegionHealthObservation:
        check = UrlCheck(self.url, ok=False, status=None, latency=latency, error=error)
        return RegionHealthObservation(self.region, healthy=False, checks=(check,))

    async def close(self) -> None:
        return None


class FakePromoter:
    def __init__(self, world: World) -> None:
        self.world = world

    async def promote(
        self, *, epoch: int, holder: str, failover_id: str, primary_last_lsn: int | None,
        still_leader: Callable[[], Awaitable[bool]], force: bool = False,
        resuming: bool = False, old_primary_answering: bool = False,
        adopt_from: Collection[str] = (),
    ) -> PromotionResult:
        assert await still_leader()
        self.world.promotions.append(epoch)
        return PromotionResult(already_promoted=False, lag_bytes=0, promote_seconds=0.0,
                               writable_at=asyncio.get_running_loop().time(),
                               old_primary_fenced=True, detail="us-east-1-db promoted")

    async def fence(self, dsn: str, *, epoch: int | None) -> FenceResult:
        raise AssertionError(f"nothing may be fenced here ({dsn}, epoch {epoch})")


class FakeLeases:
    def __init__(self) -> None:
        self.lease: Lease | None = None

    async def verified_lease(self) -> Lease | None:
        return self.lease


class Rig:
    """The engine under test, its controller, and what stands behind its ports."""

    def __init__(self, config: WatchdogConfig, world: World, evidence_dir: Path) -> None:
        self.world = world
        self.leases = FakeLeases()
        loop = asyncio.get_running_loop()
        executor = FailoverExecutor(self.leases, holder=config.holder)
        runbook = engine_runbook(executor, world.promoter, lambda: self.engine.config,
                                 evidence_dir, loop.time)
        self.engine = Engine(
            config, config_path=None, probes=world.probes, promoters=world.promoter,
            executor=executor, runbook=runbook,
        )
        self.controller = EngineController(self.engine)

    def lead(self) -> None:
        self.leases.lease = Lease(EPOCH, "token-7", "watchdog-east", safe_until=float("inf"))
        self.engine.leadership_changed(self.leases.lease, None)

    def follow(self, holder: str) -> None:
        self.leases.lease = None
        self.engine.leadership_changed(None, holder)

    async def settle(self) -> None:
        """Returns once a cycle has applied everything queued before this call."""
        await self.engine.control(Tick())

    async def reported(self) -> None:
        """Waits until every probe of the first round has reported and been applied."""
        async with asyncio.timeout(5):
            while len(self.engine.latest) < PROBES:
                await self.settle()


@contextlib.asynccontextmanager
async def running(config: WatchdogConfig | None = None,
                  world: World | None = None) -> AsyncIterator[Rig]:
    """The engine running as a task; cancelled and awaited on the way out."""
    with tempfile.TemporaryDirectory(prefix="control-evidence-") as evidence:
        rig = Rig(config or watchdog_config(), world or World(), Path(evidence))
        task = asyncio.create_task(rig.engine.run(), name="engine")
        try:
            yield rig
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # re-raises anything the engine died of


@contextlib.asynccontextmanager
async def leading(world: World | None = None) -> AsyncIterator[Rig]:
    """A running engine holding the lock under EPOCH, every probe reported (healthy unless
    ``world`` says otherwise)."""
    async with running(world=world) as rig:
        rig.lead()
        await rig.reported()
        yield rig


# ---------------------------------------------------------------- pause, resume, acknowledge


async def test_pause_shows_in_status_and_resume_clears_it() -> None:
    async with leading() as rig:
        paused = await rig.controller.pause("patching the replica")

        assert paused == {"paused": True, "verdict": rig.engine.state.verdict}
        status = rig.controller.status()
        assert (status["paused"], status["pause_reason"]) == (True, "patching the replica")

        resumed = await rig.controller.resume()

        assert resumed == {"paused": False, "verdict": rig.engine.state.verdict}
        status = rig.controller.status()
        assert (status["paused"], status["pause_reason"]) == (False, None)


async def test_pause_without_a_reason_still_pauses() -> None:
    async with leading() as rig:
        await rig.controller.pause(None)

        assert rig.engine.state.paused
        assert rig.controller.status()["pause_reason"] is None


async def test_acknowledge_with_nothing_to_clear_says_so() -> None:
    async with leading() as rig:
        answer = await rig.controller.acknowledge()

    assert answer == {"phase": "watching",
                      "verdict": "acknowledged; nothing to clear in phase watching"}


# ---------------------------------------------------------------- manual failover


async def test_failover_dry_run_shows_the_plan_and_changes_nothing() -> None:
    async with leading() as rig:
        before = rig.engine.state
        answer = await rig.controller.failover(dry_run=True, reason="quarterly drill")
        assert rig.engine.state is before
        assert rig.engine.queue.empty(), "a dry run must not reach the engine"

    assert answer == {
        "dry_run": True, "reason": "quarterly drill", "from_region": WEST, "to_region": EAST,
        "plan": rig.engine.runbook.describe(rig.engine.config), "would_run": True,
        "blocked_by": [],
    }
    assert "promote: pg_promote the standby in us-east-1, fence us-west-2" in answer["plan"]
    assert rig.world.promotions == []


async def test_failover_dry_run_uses_the_runbooks_plan_and_names_every_blocker() -> None:
    async with running() as rig:
        rig.follow("watchdog-west (epoch 4)")
        await rig.reported()
        await rig.controller.pause("maintenance")

        answer = await rig.controller.failover(dry_run=True, reason=None)

    steps = [line.split(":")[0] for line in answer["plan"]]
    assert steps[:5] == ["check_primary", "notify_stakeholders", "open_incident",
                         "verify_standby", "promote"]
    assert "update_dns: DNS (skipped: dns.route53 or dns_target not set)" in answer["plan"]
    assert answer["would_run"] is False
    assert answer["blocked_by"] == ["paused", "lock held by watchdog-west (epoch 4)"]
    assert rig.world.promotions == []


async def test_failover_into_an_unhealthy_secondary_region_is_refused_with_the_reason() -> None:
    world = World()
    world.unhealthy.add(EAST)
    async with leading(world=world) as rig:
        dry = await rig.controller.failover(dry_run=True, reason="drill")
        with pytest.raises(ControlRefused, match=r"secondary region us-east-1 unhealthy as "
                                                 r"seen from watchdog-east \(self\)"):
            await rig.controller.failover(dry_run=False, reason="drill")
        assert rig.engine.state.phase is Phase.WATCHING
        probe = rig.engine.status()["probes"][EAST]
        assert probe["answers"] == {"ok": 0, "answered_badly": 1, "no_answer": 0}

    assert dry["blocked_by"] == ["secondary region us-east-1 unhealthy as seen from "
                                 "watchdog-east (self)"]
    assert rig.world.promotions == []


async def test_failover_without_the_lock_is_refused_naming_the_holder() -> None:
    async with running() as rig:
        rig.follow("watchdog-west (epoch 4)")
        await rig.reported()

        with pytest.raises(ControlRefused, match=r"lock is held by watchdog-west \(epoch 4\)"):
            await rig.controller.failover(dry_run=False, reason="drill")
        assert rig.engine.state.phase is Phase.WATCHING

    assert rig.world.promotions == []


async def test_failover_while_paused_is_refused() -> None:
    async with leading() as rig:
        await rig.controller.pause("maintenance")

        with pytest.raises(ControlRefused, match="paused; resume first"):
            await rig.controller.failover(dry_run=False, reason="drill")

    assert rig.world.promotions == []


async def test_failover_holding_the_lock_promotes_and_acknowledge_rearms() -> None:
    async with leading() as rig:
        answer = await rig.controller.failover(dry_run=False, reason="quarterly drill")
        await rig.settle()  # the cycle that decided has also run the failover by now

        assert answer == {
            "started": True, "epoch": EPOCH,
            "verdict": "failover: requested by an operator: quarterly drill; promoting the "
                       f"standby under epoch {EPOCH}",
        }
        assert rig.world.promotions == [EPOCH]
        assert rig.engine.state.phase is Phase.FAILED_OVER
        assert rig.engine.config.primary_region == EAST

        acknowledged = await rig.controller.acknowledge()

    # Only the phase: the verdict in the answer may already be a later probe's (see
    # test_a_refused_failover_is_refused_even_when_a_probe_reports_in_the_same_cycle).
    assert acknowledged["phase"] == "watching"
    assert rig.controller.status()["phase"] == "watching"
    assert rig.world.promotions == [EPOCH]


async def test_a_refused_failover_is_refused_even_when_a_probe_reports_in_the_same_cycle() -> (
    None
):
    """The engine answers a control with the verdict after the whole batch; a probe report
    queued behind the request must not turn "refused" into "started"."""
    async with leading() as rig:
        await rig.controller.pause("maintenance")
        request = asyncio.create_task(rig.controller.failover(dry_run=False, reason="drill"))
        await asyncio.sleep(0)  # the request is queued; the engine has not run yet
        report = rig.engine.latest[PRIMARY_DB]
        rig.engine.report(dataclasses.replace(report, at=rig.engine.clock()))

        outcome = await asyncio.gather(request, return_exceptions=True)

    assert rig.world.promotions == []
    assert rig.engine.state.phase is Phase.WATCHING
    assert isinstance(outcome[0], ControlRefused), (
        f"the API answered {outcome[0]!r} to a failover the core refused "
        "(verdict 'manual failover refused: paused; resume first')"
    )


async def test_a_witness_never_fails_over_not_even_as_a_dry_run(tmp_path: Path) -> None:
    config = watchdog_config(role="witness", region="witness-site", node_name="witness-1")
    rig = Rig(config, World(), tmp_path)

    for dry_run in (True, False):
        with pytest.raises(ControlRefused, match="a witness never fails over"):
            await rig.controller.failover(dry_run=dry_run, reason="drill")
    assert rig.engine.queue.empty(), "a refused witness request must not reach the engine"


# ---------------------------------------------------------------- health


async def test_ready_only_once_the_probes_have_reported(tmp_path: Path) -> None:
    world = World()
    world.open.clear()
    rig = Rig(watchdog_config(), world, tmp_path)
    assert rig.controller.ready() == (False, "probes not started yet")

    async with running(world=world) as rig:
        await rig.settle()
        assert rig.controller.ready() == (False, "no probe has reported yet")

        world.open.set()
        await rig.reported()

        assert rig.controller.ready() == (True, f"config loaded, {PROBES} probes reporting")


async def test_alive_while_cycling_and_not_once_cycles_stop() -> None:
    async with leading() as rig:
        assert rig.controller.alive()

        limit = STUCK_AFTER_INTERVALS * rig.engine.config.probe.interval
        rig.engine.last_cycle_at = rig.engine.clock() - limit + 1.0
        assert rig.controller.alive()
        rig.engine.last_cycle_at = rig.engine.clock() - limit - 1.0
        assert not rig.controller.alive()

        await rig.settle()  # a cycle runs: alive again
        assert rig.controller.alive()


# ---------------------------------------------------------------- status and observations


async def test_status_shows_the_assessment_the_conditions_and_the_peers() -> None:
    async with leading() as rig:
        rig.engine.links = lambda: {"peer1": True, "witness": False}
        status = rig.controller.status()

    assert status["assessment"]["verdict"] == Verdict.HEALTHY.value
    assert status["assessment"]["detail"].startswith("primary healthy from watchdog-east")
    assert set(status["conditions"]) == {"db_unreachable", "region_unhealthy"}
    assert status["conditions"]["db_unreachable"]["threshold"] == 120.0
    assert status["conditions"]["db_unreachable"]["failing"] is False
    assert status["peers"] == {"peer1": True, "witness": False}
    assert (status["role"], status["epoch"], status["self_fenced"]) == ("watchdog", EPOCH, False)
    json.dumps(status)  # the API serves it as JSON


async def test_observations_are_a_report_peers_accept() -> None:
    async with leading() as rig:
        rig.engine.links = lambda: {"peer1": True}
        body = json.dumps(rig.controller.observations()).encode()

    parsed = parse_report(body)
    assert (parsed.node, parsed.role, parsed.region, parsed.primary_region) == (
        "watchdog-east", "watchdog", EAST, WEST
    )
    assert parsed.regions[WEST].db_reachable is True
    assert parsed.regions[WEST].health_ok is True
    assert parsed.wal_streaming is True
    assert parsed.peers == {"peer1": True}


async def test_a_witness_that_has_seen_nothing_yet_publishes_a_valid_report(
    tmp_path: Path,
) -> None:
    config = watchdog_config(role="witness", region="witness-site", node_name="witness-1")
    controller = EngineController(Rig(config, World(), tmp_path).engine)

    parsed = parse_report(json.dumps(controller.observations()).encode())

    assert (parsed.node, parsed.role, parsed.region) == ("witness-1", "witness", "witness-site")
    assert parsed.vantage("witness").view_of(WEST).db_reachable is None
