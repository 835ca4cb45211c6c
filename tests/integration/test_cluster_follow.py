"""Each interval a watchdog reads the journal's active run and the cluster record in one
round trip, and the cluster controls follow that same read (issue 13)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio import Redis

from agentaskit_dr.core import Paused
from agentaskit_dr.leadership import RedisClusterStore
from agentaskit_dr.leadership.journal import RedisJournal
from agentaskit_dr.runtime.cluster_controls import ClusterControlsWatch
from agentaskit_dr.runtime.planned_runs import PlannedRuns
from agentaskit_dr.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration


async def command_calls(admin: Redis) -> dict[str, int]:
    stats = await admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()}


async def test_one_refresh_reads_the_run_and_the_record_once_and_feeds_the_controls(
    redis_server: RedisServer,
) -> None:
    store = RedisClusterStore(redis_server.url, socket_timeout=0.5)
    journal = RedisJournal(redis_server.url, socket_timeout=0.5)
    admin = Redis.from_url(redis_server.url)
    posted: list[Any] = []
    engine = SimpleNamespace(post=posted.append)
    controls = ClusterControlsWatch(store, post=posted.append, keeper=None, interval=1.0)
    planned = PlannedRuns(engine, SimpleNamespace(), journal, store)  # type: ignore[arg-type]
    planned.controls = controls
    try:
        await store.pause(reason="maintenance", by="test")
        await admin.config_resetstat()

        await planned.refresh()

        calls = await command_calls(admin)
        assert calls.get("get") == 1, calls  # the journal's active run
        assert calls.get("hgetall") == 1, calls  # the cluster record, read once for both
        assert controls.error is None
        assert controls.record is not None
        assert controls.record.controls.paused
        assert [type(event) for event in posted] == [Paused]
        assert planned.error is None
        assert planned.seen is None
    finally:
        await admin.aclose()
        await journal.close()
        await store.close()


async def test_a_store_that_cannot_be_read_leaves_both_on_what_they_knew(
    redis_server: RedisServer,
) -> None:
    store = RedisClusterStore(redis_server.url, socket_timeout=0.5)
    journal = RedisJournal(redis_server.url, socket_timeout=0.5)
    posted: list[Any] = []
    controls = ClusterControlsWatch(store, post=posted.append, keeper=None, interval=1.0)
    planned = PlannedRuns(SimpleNamespace(post=posted.append), SimpleNamespace(),  # type: ignore[arg-type]
                          journal, store)
    planned.controls = controls
    # The pause is set-up: written through a store with a roomy timeout, so a slow first
    # connect under load is not mistaken for the failure this test is about.
    setup = RedisClusterStore(redis_server.url, socket_timeout=5.0)
    try:
        await setup.pause(reason="maintenance", by="test")
        await setup.close()
        await planned.refresh()
        redis_server.kill()

        await planned.refresh()

        assert controls.error is not None
        assert planned.error is not None
        assert controls.record is not None
        assert controls.record.controls.paused, "the last known controls stay in force"
        assert [type(event) for event in posted] == [Paused]
    finally:
        await journal.close()
        await store.close()
