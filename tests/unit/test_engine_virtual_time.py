"""The engine on virtual time: real scheduler, core and executor; fake world behind the ports.

Production timing throughout: db_unreachable 120 s, region_unhealthy 300 s, probe
interval 5 s, timeout 2 s, retry backoff 10 s. Most tests set the probe jitter to 0 so
every probe fires at a multiple of 5 s and decisions land at exact loop times; one test
keeps the production jitter (0.1) and checks the bounds instead.

The debounce rests on evidence (``core/machine.py``): a condition fails over at the first
probe whose observation comes *more than* the threshold after the first failing one. A
primary that dies at t=10 is first seen failing by the probe at 10, and 130 - 10 is not
more than 120, so the replica is promoted by the probe at 135.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.actuators.promote import (
    FenceResult,
    PromotionRefused,
    PromotionResult,
    ServerUnreachable,
)
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import Phase
from agentaskit_dr.ports import (
    ClusterControls,
    ClusterPrimary,
    Lease,
    Observation,
    PostgresObservation,
    Probe,
    RegionHealthObservation,
    StaleEpoch,
    UrlCheck,
)
from agentaskit_dr.runtime.control import EngineController
from agentaskit_dr.runtime.engine import PRIMARY_DB, STANDBY_DB, Engine
from agentaskit_dr.runtime.engine_log import VERDICT_HEARTBEAT
from agentaskit_dr.runtime.executor import FailoverExecutor
from tests.unit.fake_journal import engine_runbook

WEST, EAST = "us-west-2", "us-east-1"
INTERVAL = 5.0
TIMEOUT = 2.0
BACKSTOP = TIMEOUT + 1.0  # the scheduler's cut-off for a probe that overruns its timeout
DB_UNREACHABLE = 120.0
REGION_UNHEALTHY = 300.0
RETRY_BACKOFF = 10.0
EPOCH = 7

#: Whether a target is down (or hanging) at a loop time.
Script = Callable[[float], bool]


def never(_now: float) -> bool:
    return False


def from_(start: float, until: float = float("inf")) -> Script:
    """Down (or hanging) from loop time ``start`` until, not including, ``until``."""
    return lambda now: start <= now < until


def database_dsn(region: str) -> str:
    return f"postgresql://postgres@127.0.0.1:9/{region}"


def watchdog_config(*, jitter: float, region: str = EAST) -> WatchdogConfig:
    regions = {
        name: {
            "health_urls": [f"http://127.0.0.1:9/{name}/healthz"],
            "database": {"dsn": database_dsn(name)},
        }
        for name in (WEST, EAST)
    }
    return WatchdogConfig.model_validate({
        "region": region,
        "primary_region": WEST,
        "node_name": "watchdog-east" if region == EAST else "watchdog-west",
        "regions": regions,
        "thresholds": {
            "region_unhealthy": REGION_UNHEALTHY,
            "db_unreachable": DB_UNREACHABLE,
            "recovery": 30,
            "retry_backoff": RETRY_BACKOFF,
        },
        "probe": {"interval": INTERVAL, "timeout": TIMEOUT, "jitter": jitter},
    })


def now() -> float:
    return asyncio.get_running_loop().time()


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(moment - now())


# ---------------------------------------------------------------- the fake world


class World:
    """Two regions as the fake probes see them, scripted by loop time.

    The primary starts in ``WEST``, the streaming replica in ``EAST``. The fake promoter
    promotes the replica in the world, so probes made after a failover see it writable,
    and fences (makes read-only) the old primary when it answers, as the real one does.
    """

    def __init__(self) -> None:
        self.db_down: dict[str, Script] = {WEST: never, EAST: never}
        self.db_hangs: dict[str, Script] = {WEST: never, EAST: never}
        # Answers every session with this error (e.g. a pg_hba reject of the watchdog).
        self.db_refuses: dict[str, Script] = {WEST: never, EAST: never}
        self.demoted: set[str] = set()  # regions whose server runs as a standby
        self.region_down: dict[str, Script] = {WEST: never, EAST: never}
        self.promoted: dict[str, int] = {}  # region -> epoch in its marker row
        self.refusals = 0  # how many promotions to refuse before one succeeds
        self.newer_epoch: int | None = None  # a newer epoch's marker: every promotion is stale
        self.promote_calls: list[float] = []
        self.fenced: set[str] = set()  # regions whose server is read-only
        self.fence_calls: list[float] = []
        self.probes_made: list[FakeDbProbe | FakeRegionProbe] = []
        self.promote_takes = 0.0  # seconds each promotion spends before it is done
        self.answering_at_promotion: list[bool] = []  # what the engine told each promotion

    def probes(self, config: WatchdogConfig) -> list[Probe[Observation]]:
        """The engine's probe factory: both databases and both regions, as the topology says."""
        made: list[FakeDbProbe | FakeRegionProbe] = [
            FakeDbProbe(PRIMARY_DB, config.primary_region, self),
            FakeDbProbe(STANDBY_DB, config.secondary_region, self),
            FakeRegionProbe(WEST, self),
            FakeRegionProbe(EAST, self),
        ]
        self.probes_made.extend(made)
        return list(made)

    def promoter(self, config: WatchdogConfig) -> FakePromoter:
        """The engine's promoter factory: promotes the config's secondary region."""
        return FakePromoter(config.secondary_region, config.primary_region, self)


class FakeDbProbe:
    """Behaves like ``PostgresProbe``: failures come back as data, hangs need the backstop."""

    def __init__(self, name: str, region: str, world: World) -> None:
        self.name = name
        self.region = region
        self.world = world
        self.closed = False

    async def observe(self) -> PostgresObservation:
        moment = now()
        if self.world.db_hangs[self.region](moment):
            await asyncio.Event().wait()  # like a SIGSTOPped server: connects, never answers
        if self.world.db_down[self.region](moment):
            return self.failure("connection refused", 0.001)
        if self.world.db_refuses[self.region](moment):
            return PostgresObservation(
                self.target, reachable=True, latency=0.001, refusal="auth_rejected",
                sqlstate="28000", error="28000: pg_hba.conf rejects connection")
        epoch = self.world.promoted.get(self.region)
        standby = (self.region == EAST and epoch is None) or self.region in self.world.demoted
        return PostgresObservation(
            target=self.target,
            reachable=True,
            latency=0.002,
            in_recovery=standby,
            read_only=self.region in self.world.fenced,
            current_lsn=None if standby else 50_000,
            receive_lsn=50_000 if standby else None,
            replay_lsn=50_000 if standby else None,
            receiver_status="streaming" if standby else None,
            marker_epoch=epoch,
        )

    def failure(self, error: str, latency: float) -> PostgresObservation:
        return PostgresObservation(self.target, reachable=False, latency=latency, error=error)

    async def close(self) -> None:
        self.closed = True

    @property
    def target(self) -> str:
        return f"{self.region}-db:5432/app"


class FakeRegionProbe:
    """Behaves like ``RegionHealthProbe`` with one health URL."""

    def __init__(self, region: str, world: World) -> None:
        self.name = region
        self.region = region
        self.world = world
        self.closed = False
        self.url = f"https://{region}.example.test/healthz"

    async def observe(self) -> RegionHealthObservation:
        if self.world.region_down[self.region](now()):
            return self.failure("503 Service Unavailable", 0.01)
        check = UrlCheck(self.url, ok=True, status=200, latency=0.01)
        return RegionHealthObservation(self.region, healthy=True, checks=(check,))

    def failure(self, error: str, latency: float) -> RegionHealthObservation:
        check = UrlCheck(self.url, ok=False, status=None, latency=latency, error=error)
        return RegionHealthObservation(self.region, healthy=False, checks=(check,))

    async def close(self) -> None:
        self.closed = True


class FakePromoter:
    """The ``Promoter`` the executor calls; records every attempt's loop time in the world."""

    def __init__(self, region: str, old_primary: str, world: World) -> None:
        self.region = region
        self.old_primary = old_primary
        self.world = world

    async def promote(
        self,
        *,
        epoch: int,
        holder: str,
        failover_id: str,
        primary_last_lsn: int | None,
        still_leader: Callable[[], Awaitable[bool]],
        force: bool = False,
        resuming: bool = False, old_primary_answering: bool = False,
        adopt_from: Collection[str] = (),
    ) -> PromotionResult:
        self.world.answering_at_promotion.append(old_primary_answering)
        self.world.promote_calls.append(now())
        await asyncio.sleep(self.world.promote_takes)
        if not await still_leader():
            raise PromotionRefused("lock lost before pg_promote")
        if self.world.newer_epoch is not None:
            raise StaleEpoch(f"the standby follows a primary promoted under newer epoch "
                             f"{self.world.newer_epoch}")
        if self.world.refusals:
            self.world.refusals -= 1
            raise PromotionRefused("standby lag 20 MiB exceeds promotion.max_lag_bytes 16 MiB")
        # Like PostgresPromoter: fence the old primary first if it answers.
        old_primary_answers = not self.world.db_down[self.old_primary](now())
        if old_primary_answers:
            self.world.fenced.add(self.old_primary)
        self.world.promoted[self.region] = epoch
        return PromotionResult(
            already_promoted=False,
            lag_bytes=0,
            promote_seconds=0.0,
            writable_at=now(),
            old_primary_fenced=old_primary_answers or None,
            detail=f"{self.region}-db:5432/app promoted",
        )

    async def fence(self, dsn: str, *, epoch: int | None) -> FenceResult:
        self.world.fence_calls.append(now())
        [region] = [name for name in (WEST, EAST) if dsn == database_dsn(name)]
        if self.world.db_hangs[region](now()):
            await asyncio.sleep(TIMEOUT)
            raise ServerUnreachable(f"fence target {region} unreachable: timeout")
        if self.world.db_down[region](now()):
            raise ServerUnreachable(f"fence target {region} unreachable: connection refused")
        self.world.fenced.add(region)
        return FenceResult(fenced=True, sessions_terminated=1, detail=f"{dsn} read-only")


class FakeLeases:
    """The executor's ``LeaseSource``: the store confirms whatever lease the test grants."""

    def __init__(self) -> None:
        self.lease: Lease | None = None

    async def verified_lease(self) -> Lease | None:
        return self.lease


class Rig:
    """The real Engine and FailoverExecutor wired to a fake world, run as a task.

    Build it inside the test so the engine takes the test's (virtual) loop clock.
    """

    def __init__(self, world: World, *, jitter: float = 0.0, leader: bool = True,
                 region: str = EAST) -> None:
        self.world = world
        self.leases = FakeLeases()
        config = watchdog_config(jitter=jitter, region=region)
        executor = FailoverExecutor(self.leases, holder=config.holder)
        self._evidence = tempfile.TemporaryDirectory(prefix="engine-evidence-")
        runbook = engine_runbook(executor, world.promoter, lambda: self.engine.config,
                                 Path(self._evidence.name), now)
        self.engine = Engine(
            config,
            config_path=None,
            probes=world.probes,
            promoters=world.promoter,
            executor=executor,
            runbook=runbook,
        )
        self._task: asyncio.Task[None] | None = None
        if leader:
            self.grant()

    def grant(self) -> None:
        """The keeper took the lock: the store confirms it and the engine hears of it."""
        self.leases.lease = Lease(EPOCH, "token-7", "watchdog-east", safe_until=float("inf"))
        self.engine.leadership_changed(self.leases.lease, None)

    async def __aenter__(self) -> Rig:
        self._task = asyncio.create_task(self.engine.run(), name="engine")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task  # re-raises anything the engine died of
        self._evidence.cleanup()
        if exc is None:
            assert all(probe.closed for probe in self.world.probes_made)

    async def run_until(self, moment: float) -> None:
        async with self:
            await sleep_until(moment)


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# ---------------------------------------------------------------- db_unreachable


@pytest.mark.looptime
@pytest.mark.parametrize("jitter", [0.0, 0.1])
async def test_db_unreachable_for_119s_does_not_fail_over(jitter: float) -> None:
    world = World()
    world.db_down[WEST] = from_(10, 10 + 119)
    rig = Rig(world, jitter=jitter)
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    assert world.promote_calls == []
    assert rig.engine.state.phase is Phase.WATCHING
    waited = [e["verdict"] for e in events(logs, "verdict") if "db_unreachable for" in e["verdict"]]
    assert waited, "the debounce clock never ran"
    assert all(v.startswith("no action: waiting") for v in waited)
    assert events(logs, "failover_decided") == []


@pytest.mark.looptime
async def test_db_unreachable_for_121s_promotes_replica_once() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    rig = Rig(world)
    with capture_logs() as logs:
        async with rig:
            await sleep_until(131)
            assert world.promote_calls == []  # the probe at 130 makes exactly 120 s of evidence
            await sleep_until(20 * 60)
    assert world.promote_calls == [10 + DB_UNREACHABLE + INTERVAL]
    [decided] = events(logs, "failover_decided")
    assert decided["condition"] == "db_unreachable"
    assert (decided["failing_since"], decided["decided_at"]) == (10, 135)
    assert decided["overshoot"] == INTERVAL
    assert rig.engine.state.phase is Phase.FAILED_OVER
    assert rig.engine.config.primary_region == EAST
    assert world.promoted == {EAST: EPOCH}


@pytest.mark.looptime
async def test_decision_with_production_jitter_comes_within_one_jittered_interval() -> None:
    """Safety invariant 3: decided no later than threshold + one (jittered) probe interval."""
    world = World()
    world.db_down[WEST] = from_(10)
    rig = Rig(world, jitter=0.1)
    longest_gap = INTERVAL * 1.1
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    [decided] = events(logs, "failover_decided")
    [called] = world.promote_calls
    assert called == pytest.approx(decided["decided_at"], abs=1e-4)
    assert 10 <= decided["failing_since"] < 10 + longest_gap
    assert DB_UNREACHABLE < called - decided["failing_since"] <= DB_UNREACHABLE + longest_gap
    assert 10 + DB_UNREACHABLE < called <= 10 + DB_UNREACHABLE + 2 * longest_gap


@pytest.mark.looptime
async def test_db_probe_that_hangs_is_cut_off_by_the_backstop_and_counts_as_unreachable() -> None:
    world = World()
    world.db_hangs[WEST] = from_(10)
    rig = Rig(world)
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    # Probes start at 10, 15, ...; each is cut off 3 s later, so the evidence starts at 13.
    overran = events(logs, "probe_overran_timeout")
    assert overran[0]["probe"] == PRIMARY_DB
    assert overran[0]["backstop"] == BACKSTOP
    assert world.promote_calls == [13 + DB_UNREACHABLE + INTERVAL]
    [decided] = events(logs, "failover_decided")
    assert decided["failing_since"] == 13
    assert "probe did not finish within 3s" in decided["reason"]


@pytest.mark.looptime
async def test_old_primary_returning_writable_after_failover_is_fenced_at_once() -> None:
    world = World()
    world.db_down[WEST] = from_(10, 200)  # dead at promotion, so not fenced then
    rig = Rig(world)
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    assert world.promote_calls == [135]
    # After the failover WEST sits in the standby slot; its first probe back is at 200.
    assert world.fence_calls == [200]
    [fenced] = events(logs, "old_primary_fenced")
    assert fenced["reason"] == "old primary in the standby slot accepts writes"


# ---------------------------------------------------------------- region_unhealthy


@pytest.mark.looptime
async def test_primary_region_unhealthy_for_5m_promotes_replica_once() -> None:
    world = World()
    world.region_down[WEST] = from_(10)
    rig = Rig(world)
    with capture_logs() as logs:
        async with rig:
            await sleep_until(10 + REGION_UNHEALTHY + 1)
            assert world.promote_calls == []  # exactly 300 s of evidence at 310
            await sleep_until(30 * 60)
    assert world.promote_calls == [10 + REGION_UNHEALTHY + INTERVAL]
    [decided] = events(logs, "failover_decided")
    assert decided["condition"] == "region_unhealthy"
    assert "0/1 health URLs of us-west-2 answered 2xx" in decided["reason"]
    assert world.fenced == {WEST}  # its database still answered: fenced before promotion
    assert world.fence_calls == []


@pytest.mark.looptime
async def test_secondary_region_unhealthy_never_fails_over() -> None:
    world = World()
    world.region_down[EAST] = from_(10)
    await Rig(world).run_until(20 * 60)
    assert world.promote_calls == []


# ---------------------------------------------------------------- flapping


@pytest.mark.looptime
async def test_flapping_primary_never_fails_over_in_20_minutes() -> None:
    """Down 100 s, up for exactly one probe, down 100 s, ... (a 105 s cycle)."""
    world = World()
    world.db_down[WEST] = lambda moment: moment % 105 < 100
    rig = Rig(world)
    with capture_logs() as logs:
        await rig.run_until(20 * 60)
    assert world.promote_calls == []
    healthy_blips = [
        e for e in events(logs, "verdict") if "recovering (db_unreachable)" in e["verdict"]
    ]
    assert len(healthy_blips) >= 11  # one restart of the debounce clock per 105 s cycle
    assert rig.engine.state.phase is Phase.WATCHING


# ---------------------------------------------------------------- leadership


@pytest.mark.looptime
async def test_lock_held_elsewhere_never_promotes() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    rig = Rig(world, leader=False)
    rig.engine.leadership_changed(None, "watchdog-west (epoch 3)")
    await rig.run_until(20 * 60)
    assert world.promote_calls == []
    assert rig.engine.state.verdict.endswith("but the lock is held by watchdog-west (epoch 3)")


@pytest.mark.looptime
async def test_lock_arriving_after_the_threshold_promotes_at_once() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    rig = Rig(world, leader=False)
    async with rig:
        await sleep_until(202.5)  # the condition has been ripe since 135
        assert world.promote_calls == []
        rig.grant()
        await sleep_until(10 * 60)
    assert world.promote_calls == [202.5]  # not at the next probe, at 205


# ---------------------------------------------------------------- refusals


@pytest.mark.looptime
async def test_refused_promotion_is_retried_after_the_backoff_until_it_succeeds() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    world.refusals = 2
    rig = Rig(world)
    with capture_logs() as logs:
        await rig.run_until(20 * 60)
    first = 10 + DB_UNREACHABLE + INTERVAL
    assert world.promote_calls == [first, first + RETRY_BACKOFF, first + 2 * RETRY_BACKOFF]
    refused = events(logs, "failover_refused")
    assert [e["reason"] for e in refused] == [
        "standby lag 20 MiB exceeds promotion.max_lag_bytes 16 MiB"
    ] * 2
    assert rig.engine.state.phase is Phase.FAILED_OVER


@pytest.mark.looptime
async def test_a_stale_epoch_refusal_is_retried_after_the_backoff_never_in_a_hot_loop() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    world.newer_epoch = EPOCH + 2
    rig = Rig(world)
    first = 10 + DB_UNREACHABLE + INTERVAL
    with capture_logs() as logs:
        await rig.run_until(first + 65)  # the attempt at +60 has its outcome by then
    # One attempt per backoff, as for any refusal: 7 in 60 s, not one per cycle.
    assert world.promote_calls == [first + k * RETRY_BACKOFF for k in range(7)]
    verdicts = [e["verdict"] for e in events(logs, "failover_outcome")]
    assert all("stale epoch" in verdict for verdict in verdicts)
    assert rig.engine.state.phase is Phase.WATCHING


@pytest.mark.looptime
async def test_started_after_a_failover_it_watches_the_recorded_primary_and_fences_the_old_one(
) -> None:
    # Failed over to EAST under epoch 5 while this watchdog was down; WEST came back writable.
    world = World()
    world.promoted[EAST] = 5
    rig = Rig(world)
    failed_over_at = 1_000.0
    rig.engine.follow_cluster_primary(
        ClusterPrimary(EAST, epoch=5, run_id="fo-e5", at=failed_over_at),
        ClusterControls(acked_at=failed_over_at + 60))
    with capture_logs() as logs:
        await rig.run_until(60)
    assert rig.engine.config.primary_region == EAST  # never swapped back to the old primary
    assert world.fence_calls  # the writable old primary in the standby slot is fenced
    assert WEST in world.fenced
    assert rig.engine.state.phase is Phase.WATCHING  # the failover was acknowledged
    assert not events(logs, "primary_region_changed")


@pytest.mark.looptime
async def test_started_after_an_unacknowledged_failover_it_waits_for_the_ack() -> None:
    world = World()
    world.promoted[EAST] = 5
    rig = Rig(world)
    rig.engine.follow_cluster_primary(ClusterPrimary(EAST, epoch=5, run_id="fo-e5", at=10.0),
                                      ClusterControls())
    await rig.run_until(30)
    assert rig.engine.config.primary_region == EAST
    assert rig.engine.state.phase is Phase.FAILED_OVER
    assert rig.engine.state.failover is not None
    assert rig.engine.state.failover.epoch == 5


# ---------------------------------------------------------------- verdict log


class VerdictSpy:
    """What every cycle judged, read where the engine hands it to its verdict log."""

    def __init__(self, engine: Engine) -> None:
        self.judged: list[tuple[int, float, tuple[object, ...], bool]] = []
        verdicts = engine.verdict_log
        logged_by = verdicts.cycle

        def spy(state: Any, config: Any, *, cycle: int, lag_bytes: int | None, now: float,
                force: bool = False) -> bool:
            logged = logged_by(state, config, cycle=cycle, lag_bytes=lag_bytes, now=now,
                               force=force)
            what = (state.phase, state.verdict, state.epoch, config.primary_region)
            self.judged.append((cycle, now, what, logged))
            return logged

        verdicts.cycle = spy  # type: ignore[method-assign]

    def cycle_at(self, moment: float) -> int:
        """The last cycle judged at or before ``moment``."""
        return max(cycle for cycle, at, _, _ in self.judged if at <= moment)


def assert_verdicts_logged_on_change(logs: Sequence[Mapping[str, Any]], spy: VerdictSpy,
                                     cycles: int) -> None:
    """Every cycle judged once; each change logged; an unchanged verdict once a minute."""
    verdicts = events(logs, "verdict")
    for entry in verdicts:
        assert {"cycle", "phase", "verdict", "epoch"} <= entry.keys()
    assert cycles > 100
    assert [cycle for cycle, *_ in spy.judged] == list(range(1, cycles + 1))
    logged = [entry["cycle"] for entry in verdicts]
    assert logged == [cycle for cycle, _, _, was_logged in spy.judged if was_logged]
    before: tuple[object, ...] | None = None
    last_logged_at = 0.0
    for cycle, moment, what, was_logged in spy.judged:
        if what != before:
            assert was_logged, f"cycle {cycle} changed the verdict to {what} unlogged"
        if was_logged:
            last_logged_at = moment
        assert moment - last_logged_at <= VERDICT_HEARTBEAT, f"cycle {cycle}: no heartbeat"
        before = what


@pytest.mark.looptime
async def test_every_verdict_change_is_logged_and_an_unchanged_one_once_a_minute() -> None:
    world = World()
    world.db_down[WEST] = from_(10, 100)
    rig = Rig(world, jitter=0.1)
    spy = VerdictSpy(rig.engine)
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    assert_verdicts_logged_on_change(logs, spy, rig.engine.cycles)
    assert {e["epoch"] for e in events(logs, "verdict")} == {EPOCH}
    # Healthy again from about 130 s (100 s + 30 s recovery): heartbeats only, ~1 a minute.
    quiet = [e for e in events(logs, "verdict") if e["cycle"] > spy.cycle_at(140)]
    assert 6 <= len(quiet) <= 9
    assert all(e.get("heartbeat") is True for e in quiet)


@pytest.mark.looptime
async def test_a_healthy_watch_logs_a_verdict_once_a_minute() -> None:
    rig = Rig(World())
    spy = VerdictSpy(rig.engine)
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    verdicts = events(logs, "verdict")
    assert rig.engine.cycles > 100
    assert 10 <= len(verdicts) <= 12, [e["verdict"] for e in verdicts]
    assert verdicts[-1]["verdict"] == "no action: primary healthy"
    assert_verdicts_logged_on_change(logs, spy, rig.engine.cycles)


@pytest.mark.looptime
async def test_the_failover_is_logged_in_its_verdicts() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    rig = Rig(world)
    spy = VerdictSpy(rig.engine)
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    assert world.promote_calls == [135]
    assert_verdicts_logged_on_change(logs, spy, rig.engine.cycles)
    logged = [e["verdict"] for e in events(logs, "verdict")]
    assert f"no action: failover in progress under epoch {EPOCH}" in logged
    assert logged[-1] == f"no action: failed over (epoch {EPOCH}); waiting for acknowledgement"


# ---------------------------------------------------------------- the runbook beside the loop


@pytest.mark.looptime
async def test_a_ten_minute_promotion_leaves_the_engine_cycling_alive_and_answering_pause() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    world.promote_takes = 600.0
    rig = Rig(world)
    controller = EngineController(rig.engine)
    async with rig:
        await sleep_until(135 + 300)  # halfway through the promotion
        assert world.promote_calls == [135]
        assert rig.engine.state.phase is Phase.FAILING_OVER
        assert rig.engine.run_in_progress
        cycles = rig.engine.cycles
        await sleep_until(135 + 300 + 10 * INTERVAL)
        assert rig.engine.cycles >= cycles + 10  # verdicts go on every interval
        assert controller.alive()  # a liveness probe would not kill it mid-failover
        status = controller.status()
        assert status["phase"] == "failing_over"
        assert status["run"] is not None
        assert status["run"]["step"] == "promote"
        answer = await asyncio.wait_for(controller.pause("maintenance window"), INTERVAL * 2)
        assert answer["paused"] is True
        await sleep_until(135 + 600 + 2 * INTERVAL)
    assert rig.engine.state.phase is Phase.FAILED_OVER
    assert world.promote_calls == [135]


# ---------------------------------------------------------------- the frozen primary wakes up


@pytest.mark.looptime
async def test_frozen_primary_is_fenced_by_its_own_watchdog_the_moment_it_answers_again() -> (
    None
):
    world = World()
    world.db_hangs[WEST] = from_(10, 300)  # frozen through the failover, wakes at 300

    async def peer_promotes() -> None:
        await sleep_until(140)
        world.promoted[EAST] = 9  # the east watchdog's promotion, marker epoch 9

    rig = Rig(world, region=WEST, leader=False)  # the old primary's own watchdog
    with capture_logs() as logs:
        async with rig:
            promotion = asyncio.create_task(peer_promotes())
            await sleep_until(400)
            await promotion
    assert world.promote_calls == [], "the west watchdog never held the lock"
    assert rig.engine.state.phase is Phase.FAILED_OVER
    assert WEST in world.fenced
    attempts = world.fence_calls
    assert 140 <= attempts[0] <= 140 + INTERVAL + TIMEOUT
    assert attempts[-1] - 300 <= RETRY_BACKOFF + INTERVAL + TIMEOUT, attempts
    assert all(later - earlier >= RETRY_BACKOFF for earlier, later in itertools.pairwise(attempts))
    alerts = [e for e in events(logs, "alert") if e.get("key") == "old_primary"]
    assert alerts[-1]["resolve"] is True
    assert rig.engine.old_primary.pending is None


# ---------------------------------------------------------------- the fence gate's input


@pytest.mark.looptime
async def test_a_dead_primary_is_promoted_past_on_the_primary_sides_self_fence() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    async with Rig(world):
        await sleep_until(200)
    assert world.answering_at_promotion == [False]


@pytest.mark.looptime
async def test_a_primary_that_answers_must_be_fenced_before_the_promotion() -> None:
    world = World()  # a healthy primary, failed over by an operator
    rig = Rig(world)
    async with rig:
        await sleep_until(30)
        await EngineController(rig.engine).failover(dry_run=False, reason="drill")
        await sleep_until(60)
    assert world.answering_at_promotion == [True]


@pytest.mark.looptime
async def test_while_the_cluster_is_paused_the_old_primary_is_left_to_the_operator() -> None:
    world = World()
    world.db_hangs[WEST] = from_(10, 200)

    async def peer_promotes() -> None:
        await sleep_until(140)
        world.promoted[EAST] = 9

    rig = Rig(world, region=WEST, leader=False)
    controller = EngineController(rig.engine)
    async with rig:
        promotion = asyncio.create_task(peer_promotes())
        await sleep_until(100)
        await controller.pause("manual failback in progress")
        await sleep_until(400)
        assert world.fence_calls == []
        assert WEST not in world.fenced
        await controller.resume()
        await sleep_until(420)
        await promotion
    assert WEST in world.fenced
