"""The Redis leader lock and its keeper against a real redis-server.

The sandbox Redis runs without persistence, so a restart resets the fencing counter to 1.
That is why the Redis holding the lock in production needs AOF persistence
(``appendonly yes``): the epoch must never go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from agentaskit_dr.leadership import RedisLeaderLock
from agentaskit_dr.ports import Lease, LockUnavailable
from agentaskit_dr.runtime.leadership import LeadershipKeeper
from agentaskit_dr.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration

# A dead or stopped Redis must fail a call within the socket timeout, never redis-py's
# default 20 s of retries; 3 s leaves room for a busy 2-core machine.
FAIL_FAST_BOUND = 3.0


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, killed after the test."""
    with RedisServer() as server:
        yield server


@contextlib.asynccontextmanager
async def redis_lock(
    url: str,
    holder: str,
    *,
    ttl: float = 5.0,
    margin: float | None = None,
    socket_timeout: float = 1.0,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[RedisLeaderLock]:
    lock = RedisLeaderLock(
        url, holder=holder, ttl=ttl, margin=margin, socket_timeout=socket_timeout, clock=clock
    )
    try:
        yield lock
    finally:
        await lock.close()


@contextlib.asynccontextmanager
async def running(keeper: LeadershipKeeper) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(keeper.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(check: Callable[[], bool]) -> None:
    """Poll ``check`` every 10 ms until it holds; fail after about 3 s."""
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("still not true after 3 s")


class Changes:
    """Records on_change calls with the loop time they happened at."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Lease | None, str | None]] = []

    def __call__(self, lease: Lease | None, holder: str | None) -> None:
        self.calls.append((asyncio.get_running_loop().time(), lease, holder))


async def test_first_acquire_gets_epoch_1_and_others_wait_for_release(
    redis_srv: RedisServer,
) -> None:
    async with (
        redis_lock(redis_srv.url, "watchdog-a") as a,
        redis_lock(redis_srv.url, "watchdog-b") as b,
    ):
        first = await a.acquire()
        assert first is not None
        assert (first.epoch, first.holder) == (1, "watchdog-a")
        assert await b.acquire() is None
        assert await b.current() == ("watchdog-a", 1)

        assert await a.release(first) is True
        assert await a.current() is None
        second = await b.acquire()
        assert second is not None
        assert (second.epoch, second.holder) == (2, "watchdog-b")
        await b.release(second)
        third = await a.acquire()
        assert third is not None
        assert third.epoch == 3


async def test_renew_extends_the_lease_past_the_original_ttl(redis_srv: RedisServer) -> None:
    async with redis_lock(redis_srv.url, "watchdog-a", ttl=0.5, margin=0.1) as lock:
        lease = await lock.acquire()
        assert lease is not None
        await asyncio.sleep(0.3)
        renewed = await lock.renew(lease)
        assert renewed is not None
        assert (renewed.epoch, renewed.token) == (lease.epoch, lease.token)
        assert renewed.safe_until >= lease.safe_until + 0.3
        await asyncio.sleep(0.3)  # 0.6 s after acquiring: only the renewal keeps it
        assert await lock.verify(renewed)
        assert await lock.current() == ("watchdog-a", 1)


async def test_renew_verify_and_release_with_a_wrong_token_change_nothing(
    redis_srv: RedisServer,
) -> None:
    async with redis_lock(redis_srv.url, "watchdog-a") as lock:
        lease = await lock.acquire()
        assert lease is not None
        forged = Lease(epoch=lease.epoch, token="not-the-token", holder="watchdog-a", safe_until=0)
        assert await lock.renew(forged) is None
        assert not await lock.verify(forged)
        assert await lock.release(forged) is False
        assert await lock.verify(lease)
        assert await lock.current() == ("watchdog-a", 1)


async def test_expired_lock_goes_to_the_next_holder_with_a_higher_epoch(
    redis_srv: RedisServer,
) -> None:
    async with (
        redis_lock(redis_srv.url, "watchdog-a", ttl=0.5) as a,
        redis_lock(redis_srv.url, "watchdog-b", ttl=0.5) as b,
    ):
        old = await a.acquire()
        assert old is not None
        await asyncio.sleep(0.6)
        new = await b.acquire()
        assert new is not None
        assert new.epoch > old.epoch
        assert await a.renew(old) is None
        assert not await a.verify(old)
        assert await a.release(old) is False  # compare-and-delete: must not free b's lock
        assert await b.verify(new)
        assert await a.current() == ("watchdog-b", new.epoch)


async def test_safe_until_counts_from_before_the_request_minus_the_margin(
    redis_srv: RedisServer,
) -> None:
    readings = iter([100.0, 200.0])
    async with redis_lock(
        redis_srv.url, "watchdog-a", ttl=6.0, clock=lambda: next(readings)
    ) as lock:
        assert lock.margin == pytest.approx(1.2)  # max(20 % of the TTL, 1 s)
        lease = await lock.acquire()
        assert lease is not None
        assert lease.safe_until == pytest.approx(100.0 + 6.0 - 1.2)
        renewed = await lock.renew(lease)
        assert renewed is not None
        assert renewed.safe_until == pytest.approx(200.0 + 6.0 - 1.2)


async def test_redis_killed_acquire_raises_lock_unavailable_at_once(
    redis_srv: RedisServer,
) -> None:
    async with redis_lock(redis_srv.url, "watchdog-a", socket_timeout=1.0) as lock:
        lease = await lock.acquire()
        assert lease is not None
        redis_srv.kill()
        started = time.monotonic()
        with pytest.raises(LockUnavailable, match="failed on acquire: ConnectionError"):
            await lock.acquire()
        with pytest.raises(LockUnavailable):
            await lock.renew(lease)
        assert time.monotonic() - started < FAIL_FAST_BOUND
        assert await lock.release(lease) is False  # best effort: must not raise


async def test_redis_paused_calls_fail_within_the_socket_timeout(redis_srv: RedisServer) -> None:
    async with (
        redis_lock(redis_srv.url, "watchdog-a", socket_timeout=1.0) as connected,
        redis_lock(redis_srv.url, "watchdog-b", socket_timeout=1.0) as fresh,
    ):
        lease = await connected.acquire()
        assert lease is not None
        redis_srv.pause()
        for call in (lambda: connected.renew(lease), fresh.acquire, fresh.current):
            started = time.monotonic()
            with pytest.raises(LockUnavailable, match=r"within 1\.0s|Timeout"):
                await call()
            assert time.monotonic() - started < 1.0 + 0.5
        redis_srv.resume()


async def test_lock_unavailable_message_never_shows_the_password(redis_srv: RedisServer) -> None:
    admin = Redis.from_url(redis_srv.url)
    await admin.config_set("requirepass", "the-right-one")
    await admin.aclose()
    url = f"redis://:hunter2-secret@127.0.0.1:{redis_srv.port}/0"
    async with redis_lock(url, "watchdog-a") as lock:
        with pytest.raises(LockUnavailable) as raised:
            await lock.acquire()  # wrong password: AUTH fails
    assert f"127.0.0.1:{redis_srv.port}" in str(raised.value)
    assert "hunter2" not in str(raised.value)


async def test_two_keepers_on_one_redis_never_hold_at_the_same_time(
    redis_srv: RedisServer,
) -> None:
    async with (
        redis_lock(redis_srv.url, "watchdog-a", ttl=0.6, socket_timeout=0.2) as lock_a,
        redis_lock(redis_srv.url, "watchdog-b", ttl=0.6, socket_timeout=0.2) as lock_b,
    ):
        keepers = [
            LeadershipKeeper(lock_a, ttl=0.6, on_change=Changes()),
            LeadershipKeeper(lock_b, ttl=0.6, on_change=Changes()),
        ]
        holders_seen: list[int] = []
        async with running(keepers[0]) as task_a, running(keepers[1]):
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if time.monotonic() > deadline - 1.0 and not task_a.done():
                    task_a.cancel()  # the first holder stops: leadership must move
                holders_seen.append(sum(1 for k in keepers if k.lease is not None))
                await asyncio.sleep(0.01)
        assert max(holders_seen) == 1
        assert holders_seen.count(1) > len(holders_seen) * 0.8
        assert await lock_a.current() is None  # both released on cancellation


async def test_keeper_stops_acting_at_safe_until_when_redis_dies(redis_srv: RedisServer) -> None:
    changes = Changes()
    async with redis_lock(redis_srv.url, "watchdog-a", ttl=0.6, socket_timeout=0.2) as lock:
        keeper = LeadershipKeeper(lock, ttl=0.6, on_change=changes)
        async with running(keeper):
            await eventually(lambda: keeper.lease is not None)
            redis_srv.kill()
            last = keeper.lease
            assert last is not None
            await eventually(lambda: changes.calls[-1][1] is None)
            lost_at = changes.calls[-1][0]
            assert last.safe_until <= lost_at < last.safe_until + 0.2
            assert keeper.lease is None
            assert await keeper.verified_lease() is None


async def test_keeper_reacquires_after_redis_restarts_with_epoch_reset_to_1(
    redis_srv: RedisServer,
) -> None:
    changes = Changes()
    async with redis_lock(redis_srv.url, "watchdog-a", ttl=0.6, socket_timeout=0.2) as lock:
        keeper = LeadershipKeeper(lock, ttl=0.6, on_change=changes)
        with capture_logs() as logs:
            async with running(keeper):
                await eventually(lambda: keeper.lease is not None)
                redis_srv.kill()
                await eventually(lambda: keeper.lease is None)
                redis_srv.start()
                await eventually(lambda: keeper.lease is not None)
                lease = await keeper.verified_lease()
        assert lease is not None
        assert lease.epoch == 1  # no persistence: the counter started over
        assert [held.epoch if held else None for _, held, _ in changes.calls] == [1, None, 1, None]
    events = [entry["event"] for entry in logs]
    assert "lock_store_unreachable" in events
    assert "lock_epoch_went_backwards" in events
    assert events[-1] == "lock_released"


async def test_keeper_renews_at_once_a_lease_its_first_floor_read_mostly_spent(
    redis_srv: RedisServer,
) -> None:
    # TTL 2 s (the resume tests'): a lease is safe for 4/3 s after the acquire is sent.
    # A restarted watchdog's first epoch-floor read imports the targets' clients and
    # blocks the loop (1.1 s here, more on a loaded host), so that a lease held as it
    # was granted lapsed ~0.2 s later, before the round renewing it: lock_lost, an
    # actuation refused, lock_regained under the same epoch.
    async def floor_read_blocking_the_loop() -> int:
        time.sleep(1.1)  # noqa: ASYNC251 -- the imports of a first read do exactly this
        return 0

    changes = Changes()
    async with redis_lock(redis_srv.url, "watchdog-a", ttl=2.0, socket_timeout=0.5) as lock:
        keeper = LeadershipKeeper(lock, ttl=2.0, on_change=changes,
                                  epoch_floor=floor_read_blocking_the_loop)
        with capture_logs() as logs:
            async with running(keeper):
                await eventually(lambda: keeper.lease is not None)
                held_at = asyncio.get_running_loop().time()
                lease = keeper.lease
                assert lease is not None
                assert lease.safe_until - held_at > 1.0, "renewed before it was held"
                await asyncio.sleep(2.0)
                assert keeper.lease is not None
    assert [c[1] is not None for c in changes.calls] == [True, False]  # held, then released
    assert not [e for e in logs if e["event"] == "lock_lost"], logs
