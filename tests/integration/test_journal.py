"""The run journal against a real redis-server, fenced by real leases from the leader lock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agentaskit_dr.leadership import RedisLeaderLock
from agentaskit_dr.leadership.journal import (
    ActiveRunExists,
    JournalCorrupt,
    JournalRefused,
    RedisJournal,
)
from agentaskit_dr.ports import JournalEntry, Lease, LockUnavailable, StaleEpoch, StepStatus
from agentaskit_dr.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration

PLAN = ("check-primary", "promote", "update-dns", "scale-secondary", "verify-failover")
PREFIX = "agentaskit-dr"


class WallClock:
    """A settable wall clock, so ``created_at`` (and the order of ``recent``) is known."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def leader(url: str, holder: str, *, ttl: float = 5.0) -> AsyncIterator[RedisLeaderLock]:
    lock = RedisLeaderLock(url, holder=holder, ttl=ttl)
    try:
        yield lock
    finally:
        await lock.close()


@contextlib.asynccontextmanager
async def journal_on(
    url: str, wall_clock: Callable[[], float] = time.time
) -> AsyncIterator[RedisJournal]:
    journal = RedisJournal(url, key_prefix=PREFIX, socket_timeout=1.0, wall_clock=wall_clock)
    try:
        yield journal
    finally:
        await journal.close()


@contextlib.asynccontextmanager
async def admin(url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def lease_of(lock: RedisLeaderLock) -> Lease:
    lease = await lock.acquire()
    assert lease is not None
    return lease


async def take_over_after_expiry(lock: RedisLeaderLock) -> Lease:
    """Poll until the previous holder's short lease expires and ``lock`` takes it."""
    for _ in range(300):
        lease = await lock.acquire()
        if lease is not None:
            return lease
        await asyncio.sleep(0.01)
    raise AssertionError("the lock did not expire within 3 s")


def entry(step: str, status: StepStatus, lease: Lease, at: float, detail: str = "") -> JournalEntry:
    return JournalEntry(step=step, status=status, epoch=lease.epoch, at=at, detail=detail)


async def test_open_record_finish_round_trip_and_recent_newest_first(
    redis_server: RedisServer,
) -> None:
    clock = WallClock()
    async with leader(redis_server.url, "watchdog-a") as lock, journal_on(
        redis_server.url, clock
    ) as journal:
        lease = await lease_of(lock)
        opened = await journal.open(
            "fo-1", lease=lease, kind="failover", plan=PLAN, reason="primary down 121 s",
            meta={"target": "secondary"},
        )
        assert (opened.run_id, opened.kind, opened.plan) == ("fo-1", "failover", PLAN)
        assert (opened.created_at, opened.created_epoch) == (clock.now, lease.epoch)
        assert (opened.reason, opened.meta, opened.entries) == ("primary down 121 s",
                                                                {"target": "secondary"}, ())
        assert opened.finished is None

        await journal.record("fo-1", entry("promote", StepStatus.STARTED, lease, 10.0), lease=lease)
        done = JournalEntry(
            step="promote", status=StepStatus.DONE, epoch=lease.epoch, at=10.25,
            detail="pg_promote() returned true", data={"lsn": 123456, "changed": True},
        )
        await journal.record("fo-1", done, lease=lease)

        active = await journal.active()
        assert active is not None
        assert active.run_id == "fo-1"
        assert [(e.step, e.status) for e in active.entries] == [
            ("promote", StepStatus.STARTED), ("promote", StepStatus.DONE),
        ]
        assert active.entries[1] == done
        assert active.last_status("promote") is StepStatus.DONE

        await journal.finish("fo-1", "done", lease=lease)
        assert await journal.active() is None
        finished = await journal.get("fo-1")
        assert finished is not None
        assert finished.finished == "done"
        assert finished.entries == active.entries

        clock.now += 60
        await journal.open("fb-2", lease=lease, kind="failback", plan=["sync-primary"],
                           reason="primary recovered")
        assert [run.run_id for run in await journal.recent()] == ["fb-2", "fo-1"]
        assert [run.run_id for run in await journal.recent(limit=1)] == ["fb-2"]
        assert await journal.get("no-such-run") is None


async def test_open_is_idempotent_and_keeps_the_entries(redis_server: RedisServer) -> None:
    clock = WallClock()
    async with leader(redis_server.url, "watchdog-a") as lock, journal_on(
        redis_server.url, clock
    ) as journal:
        lease = await lease_of(lock)
        first = await journal.open("fo-1", lease=lease, kind="failover", plan=PLAN, reason="r1")
        await journal.record("fo-1", entry("check-primary", StepStatus.DONE, lease, 1.0),
                             lease=lease)
        clock.now += 30
        again = await journal.open(
            "fo-1", lease=lease, kind="failback", plan=["other"], reason="r2"
        )
        assert (again.kind, again.plan, again.reason) == ("failover", PLAN, "r1")
        assert again.created_at == first.created_at
        assert [e.step for e in again.entries] == ["check-primary"]


async def test_a_second_run_is_refused_while_one_is_active(redis_server: RedisServer) -> None:
    async with leader(redis_server.url, "watchdog-a") as lock, journal_on(
        redis_server.url
    ) as journal:
        lease = await lease_of(lock)
        await journal.open("fo-1", lease=lease, kind="failover", plan=PLAN, reason="r")
        with pytest.raises(ActiveRunExists, match="run fo-1 is active and unfinished") as raised:
            await journal.open("fo-2", lease=lease, kind="failover", plan=PLAN, reason="r")
        assert raised.value.active_run_id == "fo-1"
        assert await journal.get("fo-2") is None

        await journal.finish("fo-1", "failed", lease=lease)
        second = await journal.open("fo-2", lease=lease, kind="failover", plan=PLAN, reason="r")
        assert second.finished is None

        # Finishing fo-1 again (same outcome: a resumed run) must not clear fo-2's mark.
        await journal.finish("fo-1", "failed", lease=lease)
        active = await journal.active()
        assert active is not None
        assert active.run_id == "fo-2"
        with pytest.raises(JournalRefused, match="already finished as failed"):
            await journal.finish("fo-1", "done", lease=lease)
        with pytest.raises(JournalRefused, match="already finished as failed"):
            await journal.record("fo-1", entry("promote", StepStatus.STARTED, lease, 1.0),
                                 lease=lease)
        with pytest.raises(JournalRefused, match="no such run"):
            await journal.record("fo-9", entry("promote", StepStatus.STARTED, lease, 1.0),
                                 lease=lease)


async def test_stale_lease_writes_nothing_and_the_successor_resumes_the_run(
    redis_server: RedisServer,
) -> None:
    async with (
        leader(redis_server.url, "watchdog-a", ttl=0.3) as lock_a,
        leader(redis_server.url, "watchdog-b", ttl=5.0) as lock_b,
        journal_on(redis_server.url) as journal,
        admin(redis_server.url) as store,
    ):
        old = await lease_of(lock_a)
        await journal.open("fo-1", lease=old, kind="failover", plan=PLAN, reason="r")
        await journal.record("fo-1", entry("promote", StepStatus.STARTED, old, 1.0), lease=old)
        new = await take_over_after_expiry(lock_b)
        assert new.epoch == old.epoch + 1
        before = await store.lrange(f"{PREFIX}:run:fo-1:entries", 0, -1)

        stale = f"lease epoch {old.epoch} of watchdog-a is stale; " \
                f"the lock is held by watchdog-b under epoch {new.epoch}"
        with pytest.raises(StaleEpoch, match=stale):
            await journal.record("fo-1", entry("promote", StepStatus.DONE, old, 2.0), lease=old)
        with pytest.raises(StaleEpoch, match=stale):
            await journal.finish("fo-1", "done", lease=old)
        with pytest.raises(StaleEpoch, match=stale):
            await journal.open("fo-2", lease=old, kind="failover", plan=PLAN, reason="r")
        assert await store.lrange(f"{PREFIX}:run:fo-1:entries", 0, -1) == before
        assert not await store.exists(f"{PREFIX}:run:fo-2")
        resumed = await journal.active()
        assert resumed is not None
        assert (resumed.run_id, resumed.finished) == ("fo-1", None)

        # The successor appends to the run created under the older epoch, then closes it.
        await journal.record("fo-1", entry("promote", StepStatus.STARTED, new, 3.0), lease=new)
        await journal.record("fo-1", entry("promote", StepStatus.DONE, new, 3.5), lease=new)
        await journal.finish("fo-1", "done", lease=new)
        run = await journal.get("fo-1")
        assert run is not None
        assert [(e.status, e.epoch) for e in run.entries] == [
            (StepStatus.STARTED, old.epoch), (StepStatus.STARTED, new.epoch),
            (StepStatus.DONE, new.epoch),
        ]
        assert (run.created_epoch, run.finished) == (old.epoch, "done")


async def test_a_forged_epoch_or_a_free_lock_is_refused(redis_server: RedisServer) -> None:
    async with leader(redis_server.url, "watchdog-a") as lock, journal_on(
        redis_server.url
    ) as journal:
        lease = await lease_of(lock)
        forged = Lease(epoch=lease.epoch + 1, token=lease.token, holder="watchdog-a",
                       safe_until=lease.safe_until)
        with pytest.raises(StaleEpoch, match=f"under epoch {lease.epoch}"):
            await journal.open("fo-1", lease=forged, kind="failover", plan=PLAN, reason="r")
        await lock.release(lease)
        with pytest.raises(StaleEpoch, match="the lock is free"):
            await journal.open("fo-1", lease=lease, kind="failover", plan=PLAN, reason="r")
        assert await journal.recent() == []


async def test_entry_epoch_must_match_the_lease_and_run_ids_are_checked(
    redis_server: RedisServer,
) -> None:
    async with leader(redis_server.url, "watchdog-a") as lock, journal_on(
        redis_server.url
    ) as journal:
        lease = await lease_of(lock)
        await journal.open("fo-1", lease=lease, kind="failover", plan=PLAN, reason="r")
        other = JournalEntry(step="promote", status=StepStatus.DONE, epoch=lease.epoch + 7, at=1)
        with pytest.raises(ValueError, match="carries epoch 8, but is written under lease epoch"):
            await journal.record("fo-1", other, lease=lease)
        with pytest.raises(ValueError, match="run id 'fo:1:entries'"):
            await journal.get("fo:1:entries")
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            await journal.record(
                "fo-1",
                JournalEntry(step="promote", status=StepStatus.DONE, epoch=lease.epoch, at=1,
                             data={"when": object()}),
                lease=lease,
            )


async def test_corrupt_entries_and_headers_raise_errors_naming_the_key(
    redis_server: RedisServer,
) -> None:
    async with (
        leader(redis_server.url, "watchdog-a") as lock,
        journal_on(redis_server.url) as journal,
        admin(redis_server.url) as store,
    ):
        lease = await lease_of(lock)
        await journal.open("fo-1", lease=lease, kind="failover", plan=PLAN, reason="r")
        await journal.record("fo-1", entry("promote", StepStatus.STARTED, lease, 1.0), lease=lease)
        entries_key = f"{PREFIX}:run:fo-1:entries"
        stored = await store.lindex(entries_key, 0)
        assert isinstance(stored, str)
        good = json.loads(stored)

        await store.rpush(entries_key, "{not json")
        with pytest.raises(JournalCorrupt, match=f"entry 1 of {entries_key} .* is invalid"):
            await journal.get("fo-1")
        await store.lset(entries_key, 1, json.dumps(good | {"status": "exploded"}))
        with pytest.raises(JournalCorrupt, match=r"entry 1 of .* status: Input should be"):
            await journal.active()
        await store.lset(entries_key, 1, json.dumps({k: v for k, v in good.items()
                                                     if k != "epoch"}))
        with pytest.raises(JournalCorrupt, match="epoch: Field required"):
            await journal.recent()

        await store.ltrim(entries_key, 0, 0)
        await store.hset(f"{PREFIX}:run:fo-1", "header", json.dumps({"kind": "failover"}))
        with pytest.raises(JournalCorrupt, match=f"run {PREFIX}:run:fo-1 .* plan: Field required"):
            await journal.get("fo-1")
        await store.delete(f"{PREFIX}:run:fo-1")
        with pytest.raises(JournalCorrupt, match=f"{PREFIX}:active .* names run 'fo-1'"):
            await journal.active()


async def test_a_shared_client_without_decoding_works_and_stays_open(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url, socket_timeout=1.0, retry=Retry(NoBackoff(), 0))
    try:
        async with leader(redis_server.url, "watchdog-a") as lock:
            lease = await lease_of(lock)
            journal = RedisJournal(redis_server.url, key_prefix=PREFIX, client=client)
            await journal.open("fo-1", lease=lease, kind="failover", plan=PLAN, reason="r")
            await journal.record("fo-1", entry("promote", StepStatus.DONE, lease, 1.0),
                                 lease=lease)
            run = await journal.active()
            assert run is not None
            assert (run.run_id, run.plan, run.entries[0].step) == ("fo-1", PLAN, "promote")
            await journal.close()
            assert await client.ping()
    finally:
        await client.aclose()


async def test_redis_killed_raises_lock_unavailable_at_once(redis_server: RedisServer) -> None:
    async with leader(redis_server.url, "watchdog-a") as lock, journal_on(
        redis_server.url
    ) as journal:
        lease = await lease_of(lock)
        await journal.open("fo-1", lease=lease, kind="failover", plan=PLAN, reason="r")
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(LockUnavailable, match="failed on journal record: ConnectionError"):
            await journal.record("fo-1", entry("promote", StepStatus.STARTED, lease, 1.0),
                                 lease=lease)
        with pytest.raises(LockUnavailable, match="failed on journal active"):
            await journal.active()
        with pytest.raises(LockUnavailable):
            await journal.recent()
        assert time.monotonic() - started < 3.0


async def test_redis_paused_reads_fail_within_the_socket_timeout(
    redis_server: RedisServer,
) -> None:
    async with journal_on(redis_server.url) as journal:
        assert await journal.active() is None
        redis_server.pause()
        started = time.monotonic()
        with pytest.raises(LockUnavailable, match=r"did not answer journal active within 1\.0s"):
            await journal.active()
        assert time.monotonic() - started < 1.5
        redis_server.resume()
