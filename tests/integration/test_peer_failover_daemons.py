"""The old primary's watchdog, cut off from the lock store, learns of a failover from the
witness and fences its own server (chaos seed 1000), with real daemons, a real pair and a
real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml

from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import WatchdogFleet, is_event
from tests.integration.test_start_gate import EAST, WEST

pytestmark = pytest.mark.integration

#: Nothing listens there: the west watchdog's lock store refuses at once.
NO_LOCK_STORE = {"url": "redis://127.0.0.1:9/0", "ttl": "3s", "socket_timeout": "0.5s"}
#: A watchdog with a witness needs a threshold above the peers' staleness.
WITH_PEERS = {"thresholds": {"db_unreachable": "6s"}}


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        yield started


async def promote_east(pair: PostgresPair, redis: RedisServer) -> int:
    """East is promoted under a fresh epoch and the failover recorded; west's server keeps
    running as a primary (its host is cut off: nobody fenced it). The epoch."""
    lock = RedisLeaderLock(redis.url, holder="east", ttl=3.0)
    lease = await lock.acquire()
    assert lease is not None
    pair.replica.sql("SELECT pg_promote(wait => true)")
    pair.replica.sql(
        "CREATE SCHEMA agentaskit_dr; CREATE TABLE agentaskit_dr.failover_epoch "
        "(id int PRIMARY KEY, epoch bigint NOT NULL, holder text NOT NULL, "
        "failover_id text NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now()); "
        f"INSERT INTO agentaskit_dr.failover_epoch VALUES (1, {lease.epoch}, 'east', 'fo-e')")
    store = RedisClusterStore(redis.url)
    await store.record_primary(EAST, epoch=lease.epoch, run_id="fo-e", lease=lease)
    await store.close()
    await lock.close()
    return lease.epoch


async def commits(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS w (i int); INSERT INTO w VALUES (1)")
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()
    return True


async def test_a_watchdog_without_the_record_fences_its_server_on_the_witness_report(
    fleet: WatchdogFleet, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    epoch = await promote_east(pg_pair, redis_server)
    assert await commits(pg_pair.primary.dsn)  # two primaries: what the fence must end
    witness = fleet.start(EAST, name="witness", overrides={"role": "witness"})
    listen = yaml.safe_load(witness.config.read_text())["api"]["listen"]
    fleet.wait_for(is_event("daemon_started"), 30, what="the witness started")

    # West is cut off from the lock store and from east's server (it cannot see east's
    # marker either): only the witness can tell it.
    fleet.start(WEST, name="west", overrides={
        **WITH_PEERS, "lock": NO_LOCK_STORE, "witness": f"http://{listen}",
        "regions": {EAST: {"database": {"dsn": "postgresql://postgres@127.0.0.1:9/postgres"}}},
    })

    followed = fleet.wait_for(is_event("peer_failover_followed"), 30,
                              what="west follows the witness's report")
    assert followed["region"] == EAST
    assert followed["epoch"] == epoch
    assert followed["peer"] == "witness"
    fenced = fleet.wait_for(is_event("old_primary_fenced_by_its_watchdog"), 30,
                            what="west fences its own server")
    assert fenced["region"] == WEST
    assert fenced["epoch"] == epoch
    assert not await commits(pg_pair.primary.dsn)
    assert await commits(pg_pair.replica.dsn)  # the new primary is left alone


async def test_with_the_record_readable_the_peers_are_not_needed_and_not_followed(
    fleet: WatchdogFleet, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    epoch = await promote_east(pg_pair, redis_server)
    witness = fleet.start(EAST, name="witness", overrides={"role": "witness"})
    listen = yaml.safe_load(witness.config.read_text())["api"]["listen"]
    fleet.wait_for(is_event("daemon_started"), 30, what="the witness started")

    fleet.start(WEST, name="west", overrides={**WITH_PEERS, "witness": f"http://{listen}"})

    # From the record at start: it watches east, takes the lock and fences the writable
    # server in the standby slot (or its own watchdog's fence does, whichever is first).
    fleet.wait_for(
        lambda e: e.get("event") in {"old_primary_fenced", "old_primary_fenced_by_its_watchdog"},
        30, what="west's server fenced from the record")
    assert not await commits(pg_pair.primary.dsn)
    assert fleet.events(is_event("primary_region_from_cluster", epoch=epoch))
    assert fleet.events(is_event("peer_failover_followed")) == []
