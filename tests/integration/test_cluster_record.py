"""The cluster record, the epoch floor on the lock, and the keeper's pause, on real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.leadership import RedisClusterStore, RedisLeaderLock
from agentaskit_dr.ports import ClusterRecord, Lease, LockUnavailable, StaleEpoch
from agentaskit_dr.runtime.cluster_controls import ClusterControlsWatch
from agentaskit_dr.runtime.leadership import PAUSED_HOLDER, LeadershipKeeper
from agentaskit_dr.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def lock_and_store(server: RedisServer, holder: str, *,
                         ttl: float = 3.0) -> AsyncIterator[tuple[RedisLeaderLock,
                                                                  RedisClusterStore]]:
    lock = RedisLeaderLock(server.url, holder=holder, ttl=ttl, socket_timeout=0.5)
    store = RedisClusterStore(server.url, socket_timeout=0.5, client=lock.client)
    try:
        yield lock, store
    finally:
        await store.close()
        await lock.close()


@contextlib.asynccontextmanager
async def running(keeper: LeadershipKeeper) -> AsyncIterator[None]:
    task = asyncio.create_task(keeper.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(check: Callable[[], bool], *, within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still not true after {within:g} s")


async def acquired(lock: RedisLeaderLock) -> Lease:
    lease = await lock.acquire()
    assert lease is not None
    return lease


# ---------------------------------------------------------------- the record


async def test_pause_resume_and_ack_are_stored_with_who_when_and_why(
    redis_server: RedisServer,
) -> None:
    clock = iter([100.0, 150.0, 200.0, 300.0])
    async with lock_and_store(redis_server, "w") as (lock, _):
        store = RedisClusterStore(redis_server.url, client=lock.client,
                                  wall_clock=lambda: next(clock))
        assert await store.read() == ClusterRecord()

        await store.pause(reason="DB upgrade", by="alice")
        again = await store.pause(reason="still upgrading", by="bob")
        assert again.controls.paused
        assert (again.controls.pause_reason, again.controls.paused_by) == (
            "still upgrading", "bob")
        assert again.controls.paused_at == 100.0  # paused since the first pause

        resumed = await store.resume(by="carol")
        assert not resumed.controls.paused
        assert resumed.controls.paused_at is None

        first = await store.acknowledge(by="dave")
        assert (first.controls.ack_generation, first.controls.acked_by) == (1, "dave")
        assert (await store.read()).controls == first.controls


async def test_primary_is_recorded_only_under_the_lease_that_holds_the_lock(
    redis_server: RedisServer,
) -> None:
    async with lock_and_store(redis_server, "west", ttl=0.5) as (lock, store):
        old = await acquired(lock)
        await store.record_primary("us-east-1", epoch=old.epoch, run_id="fo-1", lease=old)
        await asyncio.sleep(0.7)  # the lease expires; someone else takes the lock
        async with lock_and_store(redis_server, "east") as (other_lock, other_store):
            new = await acquired(other_lock)
            with pytest.raises(StaleEpoch, match="no longer held"):
                await store.record_primary("us-west-2", epoch=old.epoch, run_id="fo-0",
                                           lease=old)
            await other_store.record_primary("us-west-2", epoch=new.epoch, run_id="fo-2",
                                             lease=new)
            record = await other_store.read()
    assert record.primary is not None
    assert (record.primary.region, record.primary.epoch, record.primary.run_id) == (
        "us-west-2", new.epoch, "fo-2")


async def test_a_primary_of_a_newer_epoch_is_never_replaced_by_an_older_one(
    redis_server: RedisServer,
) -> None:
    async with lock_and_store(redis_server, "west") as (lock, store):
        lease = await acquired(lock)
        await store.record_primary("us-east-1", epoch=lease.epoch, run_id="fo-1", lease=lease)
        raised = await lock.raise_epoch_floor(lease, 0)
        assert raised is not None
        await store.record_primary("us-west-2", epoch=raised.epoch, run_id="fo-2", lease=raised)
        # The counter lost (restart): a lower epoch holds the lock again.
        await lock.release(raised)
        await lock.client.delete("agentaskit-dr:epoch")
        low = await acquired(lock)
        assert low.epoch < raised.epoch
        with pytest.raises(StaleEpoch, match=f"recorded under epoch {raised.epoch}"):
            await store.record_primary("us-east-1", epoch=low.epoch, run_id="fo-3", lease=low)


async def test_a_dead_store_is_lock_unavailable_and_the_watch_keeps_the_last_controls(
    redis_server: RedisServer,
) -> None:
    posted: list[object] = []
    async with lock_and_store(redis_server, "w") as (_, store):
        watch = ClusterControlsWatch(store, post=posted.append, keeper=None, interval=1.0)
        await store.pause(reason="maintenance", by="alice")
        await watch.refresh()
        redis_server.kill()
        with capture_logs() as logs:
            await watch.refresh()
        with pytest.raises(LockUnavailable):
            await store.read()
    status = watch.status()
    assert status["paused"] is True
    assert status["paused_by"] == "alice"
    assert status["read_error"] is not None
    assert "last known" in status["note"]
    assert [type(event).__name__ for event in posted] == ["Paused"]
    assert [entry["event"] for entry in logs] == ["cluster_record_unreadable"]


# ---------------------------------------------------------------- the epoch floor


async def test_raise_epoch_floor_lifts_the_counter_above_the_floor_only_for_the_holder(
    redis_server: RedisServer,
) -> None:
    async with lock_and_store(redis_server, "west") as (lock, _):
        lease = await acquired(lock)
        assert lease.epoch == 1
        raised = await lock.raise_epoch_floor(lease, 7)
        assert raised is not None
        assert raised.epoch == 8
        assert raised.token == lease.token
        assert await lock.current() == ("west", 8)
        # Below the counter it still moves on by one (a stale epoch seen elsewhere).
        again = await lock.raise_epoch_floor(raised, 3)
        assert again is not None
        assert again.epoch == 9
        stranger = Lease(epoch=9, token="not-ours", holder="east", safe_until=0.0)
        assert await lock.raise_epoch_floor(stranger, 50) is None
        assert await lock.current() == ("west", 9)
        await lock.release(again)
        assert (await acquired(lock)).epoch == 10


async def test_keeper_raises_the_epoch_above_the_floor_before_it_publishes_the_lease(
    redis_server: RedisServer,
) -> None:
    published: list[int | None] = []

    async def floor() -> int:
        return 41

    async with lock_and_store(redis_server, "west") as (lock, _):
        keeper = LeadershipKeeper(lock, ttl=3.0, epoch_floor=floor,
                                  on_change=lambda lease, _h: published.append(
                                      lease.epoch if lease else None))
        async with running(keeper):
            await eventually(lambda: keeper.lease is not None)
            lease = await keeper.verified_lease()
    assert lease is not None
    assert lease.epoch == 42
    assert published[0] == 42  # never published under the lower epoch


async def test_a_stale_epoch_report_raises_the_held_lease_once(
    redis_server: RedisServer,
) -> None:
    floors = [0, 20]

    async def floor() -> int:
        return floors.pop(0) if floors else 20

    async with lock_and_store(redis_server, "west") as (lock, _):
        keeper = LeadershipKeeper(lock, ttl=3.0, epoch_floor=floor)
        async with running(keeper):
            await eventually(lambda: keeper.lease is not None)
            first = keeper.lease
            assert first is not None
            assert first.epoch == 1
            keeper.request_epoch_floor()
            await eventually(lambda: keeper.lease is not None and keeper.lease.epoch > 1)
            raised = keeper.lease
    assert raised is not None
    assert raised.epoch == 21
    assert raised.token == first.token


# ---------------------------------------------------------------- pause releases the lock


async def test_a_paused_keeper_releases_the_lock_stops_campaigning_and_campaigns_on_resume(
    redis_server: RedisServer,
) -> None:
    holders: list[str | None] = []
    async with (
        lock_and_store(redis_server, "west") as (lock, _),
        lock_and_store(redis_server, "operator/cli") as (operator_lock, _),
    ):
        keeper = LeadershipKeeper(lock, ttl=1.5,
                                  on_change=lambda lease, holder: holders.append(
                                      lease.holder if lease else holder))
        async with running(keeper):
            await eventually(lambda: keeper.lease is not None)
            keeper.set_paused(True)
            await eventually(lambda: keeper.lease is None)
            assert await lock.current() is None
            # The operator's command can take the lock, and the keeper does not fight it.
            operators = await acquired(operator_lock)
            await asyncio.sleep(1.2)  # more than two keeper ticks
            assert await lock.current() == ("operator/cli", operators.epoch)
            await operator_lock.release(operators)
            await asyncio.sleep(0.6)
            assert await lock.current() is None  # still paused: nobody campaigns
            keeper.set_paused(False)
            await eventually(lambda: keeper.lease is not None)
    assert holders == ["west", PAUSED_HOLDER, "west", None]  # None: released at the stop
