"""A watchdog that missed a failover converges on the cluster record's primary at runtime
(issue 13, seed 1011: the witness was paused through the failover and kept naming the old
region). The record is read from a real Redis by the planned-runs follower, as in the
daemon; the engine is the real one on fake probes (tests/unit/test_control.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentaskit_dr.core import Phase, PlannedPrimary
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.journal import RedisJournal
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.runtime.planned_runs import PlannedRuns
from agentaskit_dr.sandbox.redis import RedisServer
from tests.unit.test_control import EAST, WEST, Rig, running

pytestmark = pytest.mark.integration


class NoKeeper:
    """The follower's keeper: this watchdog holds no lock here."""

    lease = None
    paused = False

    def request_epoch_floor(self) -> None:
        raise AssertionError("a missed failover asks for no epoch floor")


async def record_failover(url: str, region: str, *, failovers: int) -> int:
    """The promoter's record after its failover: ``region`` under the lock's epoch after
    ``failovers`` acquisitions; that epoch."""
    lock = RedisLeaderLock(url, holder="watchdog-promoter", ttl=5.0)
    store = RedisClusterStore(url)
    try:
        for _ in range(failovers):
            lease = await lock.acquire()
            assert lease is not None
            await lock.release(lease)
        lease = await lock.acquire()
        assert lease is not None
        await store.record_primary(region, epoch=lease.epoch, run_id=f"fo-{lease.epoch}",
                                   lease=lease)
        await lock.release(lease)
        return lease.epoch
    finally:
        await store.close()
        await lock.close()


@pytest.fixture
async def follower(redis_server: RedisServer) -> AsyncIterator[tuple[Rig, PlannedRuns]]:
    journal = RedisJournal(redis_server.url)
    cluster = RedisClusterStore(redis_server.url)
    try:
        async with running() as rig:
            await rig.reported()
            keeper: Any = NoKeeper()
            yield rig, PlannedRuns(rig.engine, keeper, journal, cluster)
    finally:
        await cluster.close()
        await journal.close()


async def test_a_watchdog_that_missed_a_failover_adopts_the_recorded_primary_and_epoch(
    redis_server: RedisServer, follower: tuple[Rig, PlannedRuns],
) -> None:
    rig, planned = follower
    assert rig.engine.config.primary_region == WEST  # its view: nothing happened
    epoch = await record_failover(redis_server.url, EAST, failovers=2)
    cycles = rig.engine.cycles

    await planned.refresh()  # one read of the record, as every probe interval
    await rig.settle()

    assert rig.engine.config.primary_region == EAST
    assert rig.engine.state.failover is not None
    assert rig.engine.state.failover.epoch == epoch == 3
    assert rig.engine.state.phase is Phase.FAILED_OVER  # nobody acknowledged it yet
    assert rig.engine.cycles - cycles <= 3
    assert rig.engine.status()["primary_region"] == EAST

    await planned.refresh()  # read again: nothing more to adopt
    await rig.settle()
    assert rig.engine.state.failover.epoch == 3


async def test_a_record_older_than_the_failover_the_watchdog_knows_is_ignored(
    redis_server: RedisServer, follower: tuple[Rig, PlannedRuns],
) -> None:
    rig, planned = follower
    # This watchdog followed a later run to the west under epoch 9.
    await rig.engine.post(PlannedPrimary(WEST, 9, "failback-9"))
    await record_failover(redis_server.url, EAST, failovers=0)  # epoch 1

    await planned.refresh()
    await rig.settle()

    assert rig.engine.config.primary_region == WEST
    assert rig.engine.state.failover is not None
    assert rig.engine.state.failover.epoch == 9
