"""The leadership keeper on virtual time, against a fake lock store.

TTL 9 s and margin 3 s throughout: the keeper acts every 3 s, and a lease taken at
``t`` is safe until ``t + 6``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.ports import Lease, LockUnavailable
from agentaskit_dr.runtime.leadership import LeadershipKeeper

TTL = 9.0
MARGIN = 3.0


class FakeLock:
    """A ``LeaderLock`` in memory; each call's misbehaviour is set by the test."""

    def __init__(self) -> None:
        self.holder = "watchdog-a"
        self.epoch = 0
        self.token: str | None = None
        self.other: tuple[str, int] | None = None
        self.acquires: list[float] = []
        self.renews: list[float] = []
        self.released: list[Lease] = []
        self.unreachable_acquires = 0
        self.renew_mode = "ok"  # ok | hang | raise | refuse
        self.verify_answer: bool | None = True  # None: the store cannot be reached
        self.release_hangs = False
        self.acquire_seconds = 0.0  # how long the store takes to answer an acquire

    async def acquire(self) -> Lease | None:
        now = asyncio.get_running_loop().time()
        self.acquires.append(now)
        await asyncio.sleep(self.acquire_seconds)
        if self.unreachable_acquires:
            self.unreachable_acquires -= 1
            raise LockUnavailable("lock store 127.0.0.1:1 refused the connection")
        if self.other is not None:
            return None
        self.epoch += 1
        self.token = f"token-{self.epoch}"
        return Lease(self.epoch, self.token, self.holder, safe_until=now + TTL - MARGIN)

    async def renew(self, lease: Lease) -> Lease | None:
        now = asyncio.get_running_loop().time()
        self.renews.append(now)
        if self.renew_mode == "hang":
            await asyncio.Event().wait()
        if self.renew_mode == "raise":
            raise LockUnavailable("lock store 127.0.0.1:1 did not answer renew within 1.0s")
        if self.renew_mode == "refuse" or lease.token != self.token:
            return None
        return replace(lease, safe_until=now + TTL - MARGIN)

    async def release(self, lease: Lease) -> bool:
        if self.release_hangs:
            await asyncio.Event().wait()
        self.released.append(lease)
        ours = lease.token == self.token
        self.token = None
        return ours

    async def current(self) -> tuple[str, int] | None:
        return self.other

    async def verify(self, lease: Lease) -> bool:
        if self.verify_answer is None:
            raise LockUnavailable("lock store 127.0.0.1:1 refused the connection")
        return self.verify_answer and lease.token == self.token

    async def close(self) -> None:
        pass


class Changes:
    """Records ``on_change`` calls as (loop time, epoch or None, holder text)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int | None, str | None]] = []

    def __call__(self, lease: Lease | None, holder: str | None) -> None:
        now = asyncio.get_running_loop().time()
        self.calls.append((now, lease.epoch if lease else None, holder))


@pytest.fixture
def lock() -> FakeLock:
    return FakeLock()


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def keeper(lock: FakeLock, changes: Changes) -> LeadershipKeeper:
    return LeadershipKeeper(lock, ttl=TTL, on_change=changes)


@contextlib.asynccontextmanager
async def running(keeper: LeadershipKeeper) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(keeper.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.looptime
async def test_keeper_acquires_at_once_then_renews_every_third_of_the_ttl(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes
) -> None:
    async with running(keeper):
        await asyncio.sleep(10)
        assert lock.acquires == [0]
        assert lock.renews == [3, 6, 9]
        lease = keeper.lease
        assert lease is not None
        assert (lease.epoch, lease.safe_until) == (1, 15)
    assert changes.calls == [(0, 1, None), (10, None, None)]


@pytest.mark.looptime
@pytest.mark.parametrize("renew_mode", ["hang", "raise"])
async def test_renew_that_cannot_complete_drops_the_lease_exactly_at_safe_until(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes, renew_mode: str
) -> None:
    lock.renew_mode = renew_mode
    async with running(keeper):
        await asyncio.sleep(5.999)
        assert keeper.lease is not None
        await asyncio.sleep(0.001)
        assert asyncio.get_running_loop().time() == 6
        assert keeper.lease is None
        assert changes.calls == [(0, 1, None), (6, None, None)]
        assert await keeper.verified_lease() is None


@pytest.mark.looptime
async def test_a_lease_mostly_spent_on_acquiring_and_the_epoch_floor_is_renewed_at_once(
    lock: FakeLock, changes: Changes
) -> None:
    # Granted at 0 (safe until 6), answered at 1, the floor read until 3.5: held as it
    # was, the lease would lapse at 6, before the round at 6.5 renews it.
    async def slow_floor() -> int:
        await asyncio.sleep(2.5)
        return 0

    lock.acquire_seconds = 1.0
    keeper = LeadershipKeeper(lock, ttl=TTL, on_change=changes, epoch_floor=slow_floor)
    with capture_logs() as logs:
        async with running(keeper):
            await asyncio.sleep(10)
            lease = keeper.lease
            assert lease is not None
            assert (lease.epoch, lease.safe_until) == (1, 9.5 + 6)
    assert lock.renews == [3.5, 6.5, 9.5]
    assert changes.calls == [(3.5, 1, None), (10, None, None)]
    assert not [e for e in logs if e["event"] == "lock_lost"]


@pytest.mark.looptime
async def test_a_floor_round_that_would_outlast_the_lease_renews_it_too(
    lock: FakeLock, changes: Changes
) -> None:
    # A stale epoch asks for the floor: that round reads it instead of renewing. No answer
    # from 1 to 4 (the read's bound); held as renewed at 0 (safe until 6), the lease would
    # lapse before the round at 7.
    reads: list[float] = []

    async def floor() -> int:
        reads.append(asyncio.get_running_loop().time())
        if len(reads) > 1:
            await asyncio.Event().wait()
        return 0

    keeper = LeadershipKeeper(lock, ttl=TTL, on_change=changes, epoch_floor=floor)
    async with running(keeper):
        await asyncio.sleep(1)
        keeper.request_epoch_floor()  # wakes the keeper at once: the floor round is at 1
        await asyncio.sleep(9)
        assert keeper.lease is not None
    assert reads == [0, 1]
    assert lock.renews == [4, 7, 10]
    assert changes.calls == [(0, 1, None), (10, None, None)]


@pytest.mark.looptime
async def test_unreachable_store_is_retried_with_capped_backoff_and_logged(
    keeper: LeadershipKeeper, lock: FakeLock
) -> None:
    lock.renew_mode = "raise"
    with capture_logs() as logs:
        async with running(keeper):
            await asyncio.sleep(12)
    # Backoff from 3/8 s doubling, capped at the 3 s cadence.
    assert lock.renews == [3, 3.375, 4.125, 5.625, 8.625, 11.625]
    warnings = [e for e in logs if e["event"] == "lock_store_unreachable"]
    assert len(warnings) == len(lock.renews)
    assert "did not answer renew" in warnings[0]["error"]
    assert [e["holding"] for e in warnings] == [True, True, True, True, False, False]
    lost = [e for e in logs if e["event"] == "lock_lost"]
    assert [e["reason"] for e in lost] == ["not renewed before safe_until"]


@pytest.mark.looptime
async def test_renewal_after_a_lapse_takes_the_lease_back_under_the_same_epoch(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes
) -> None:
    lock.renew_mode = "raise"
    async with running(keeper):
        await asyncio.sleep(7)
        assert keeper.lease is None
        lock.renew_mode = "ok"  # the store is back and still holds our token
        await asyncio.sleep(2)
        lease = keeper.lease
        assert lease is not None
        assert (lease.epoch, lease.safe_until) == (1, 8.625 + 6)
    assert changes.calls == [(0, 1, None), (6, None, None), (8.625, 1, None), (9, None, None)]


@pytest.mark.looptime
async def test_store_refusing_the_renewal_loses_the_lease_and_names_the_new_holder(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes
) -> None:
    async with running(keeper):
        await asyncio.sleep(1)
        lock.renew_mode = "refuse"
        lock.other = ("watchdog-b", 2)
        await asyncio.sleep(6)
        assert keeper.lease is None
    assert lock.acquires == [0, 6]
    assert changes.calls == [(0, 1, None), (3, None, None), (6, None, "watchdog-b (epoch 2)")]


@pytest.mark.looptime
async def test_keeper_campaigns_through_an_unreachable_store_and_then_acquires(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes
) -> None:
    lock.unreachable_acquires = 2
    async with running(keeper):
        await asyncio.sleep(2)
    assert lock.acquires == [0, 0.375, 1.125]
    assert changes.calls == [(0, None, None), (1.125, 1, None), (2, None, None)]


@pytest.mark.looptime
async def test_unreachable_store_stops_naming_the_last_known_holder(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes
) -> None:
    lock.other = ("watchdog-b", 2)
    async with running(keeper):
        await asyncio.sleep(1)
        lock.unreachable_acquires = 100  # the store goes down; watchdog-b's lease with it
        await asyncio.sleep(3)
    assert changes.calls == [(0, None, "watchdog-b (epoch 2)"), (3, None, None)]


@pytest.mark.looptime
async def test_verified_lease_asks_the_store_before_each_actuation(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes
) -> None:
    async with running(keeper):
        await asyncio.sleep(1)
        held = await keeper.verified_lease()
        assert held is not None
        assert held.epoch == 1

        lock.verify_answer = None
        assert await keeper.verified_lease() is None
        assert keeper.lease is not None  # cannot tell is not lost: renewal decides

        lock.verify_answer = False
        assert await keeper.verified_lease() is None
        assert keeper.lease is None
        assert changes.calls == [(0, 1, None), (1, None, None)]


@pytest.mark.looptime
async def test_cancellation_releases_the_held_lock(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes
) -> None:
    with capture_logs() as logs:
        async with running(keeper):
            await asyncio.sleep(1)
            lease = keeper.lease
    assert lock.released == [lease]
    assert keeper.lease is None
    assert changes.calls[-1] == (1, None, None)
    assert logs[-1]["event"] == "lock_released"


@pytest.mark.looptime
async def test_cancellation_with_a_hanging_release_stops_within_the_release_bound(
    keeper: LeadershipKeeper, lock: FakeLock, changes: Changes
) -> None:
    lock.release_hangs = True
    async with running(keeper):
        await asyncio.sleep(1)
    assert asyncio.get_running_loop().time() == 1 + 2
    assert keeper.lease is None
    assert changes.calls[-1] == (3, None, None)
