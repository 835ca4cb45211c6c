"""End-to-end failover: real watchdog processes against a real PostgreSQL pair and Redis.

Each test starts one ``agentaskit-dr run`` per region (thresholds scaled down to seconds,
see ``daemon_harness``), breaks something the way production breaks, and asserts on the
watchdogs' JSON log events and on the databases themselves. Failure messages name the
watchdog log files (kept under pytest's ``tmp_path``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import (
    INTERVAL,
    THRESHOLD,
    Event,
    Watchdog,
    WatchdogFleet,
    event_time,
    is_event,
    is_promotion,
    is_verdict,
    wait_until,
)
from tests.integration.pg_state import in_recovery

pytestmark = pytest.mark.integration

#: The drill config's lock TTL; a released lock is taken over well within it.
LOCK_TTL = 3.0
#: Bound on the work after a decision: lock check, lag gate, pg_promote, marker, fence.
PROMOTION_TIMEOUT = 10.0
#: The blip test's threshold and outage: long enough that a debounce cut by half would
#: fail over, short enough to stay clear of the threshold on a busy machine.
BLIP_THRESHOLD = 3.0
BLIP = 2.0
#: Scheduling slack on a busy 2-core machine, on top of the timing the design promises.
SLACK = 0.3


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    """Watchdogs over ``pg_pair`` and ``redis_server``, all stopped after the test."""
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        yield started


def marker(server: PostgresServer) -> tuple[int, str]:
    """The fencing marker a promotion recorded: (epoch, holder)."""
    row = server.sql("SELECT epoch, holder FROM agentaskit_dr.failover_epoch WHERE id = 1")
    epoch, _, holder = row.partition("|")
    return int(epoch), holder


def takes_writes(server: PostgresServer) -> bool:
    return server.sql(
        "CREATE TABLE IF NOT EXISTS after_failover (at timestamptz);"
        "INSERT INTO after_failover VALUES (now()) RETURNING 'written'"
    ) == "written"


def other_than(fleet: WatchdogFleet, dog: Watchdog) -> Watchdog:
    (other,) = [d for d in fleet.dogs.values() if d is not dog]
    return other


def lock_epoch(fleet: WatchdogFleet, dog: Watchdog) -> int:
    """The epoch of ``dog``'s latest lock acquisition."""
    acquired = fleet.events(is_event("lock_acquired"), dogs=[dog])
    assert acquired, f"{dog.region} never acquired the lock\n{fleet.describe()}"
    return int(acquired[-1]["epoch"])


def is_failover_action(event: Event) -> bool:
    return event.get("event") in {"failover_decided", "promotion_started", "promotion_done"}


def test_primary_killed_for_longer_than_threshold_promotes_replica_once(
    fleet: WatchdogFleet, pg_pair: PostgresPair
) -> None:
    fleet.start_pair()
    holder = fleet.wait_ready()
    epoch = lock_epoch(fleet, holder)

    pg_pair.primary.kill()
    killed_at = time.time()

    done = fleet.wait_for(is_event("promotion_done"), THRESHOLD + PROMOTION_TIMEOUT,
                          what="promotion_done after the primary was killed")
    bystander = other_than(fleet, holder)
    fleet.wait_for(is_verdict(phase="failed_over"), THRESHOLD + 5,
                   what=f"failed_over verdict of {bystander.region}", dogs=[bystander])

    (decided,) = fleet.events(is_event("failover_decided"))
    assert decided["watchdog"] == holder.region
    assert decided["epoch"] == epoch
    # Invariant 2: never before the threshold, from the kill or from the first failure seen.
    assert event_time(decided) - killed_at >= THRESHOLD
    assert decided["decided_at"] - decided["failing_since"] >= THRESHOLD
    assert decided["failing_since"] <= decided["decided_at"]
    # Invariant 3: no later than the threshold plus one probe interval (with jitter).
    assert 0 <= decided["overshoot"] <= INTERVAL * 1.1 + SLACK, decided
    assert event_time(decided) - killed_at <= THRESHOLD + 2 * INTERVAL * 1.1 + SLACK
    assert [p["watchdog"] for p in fleet.events(is_promotion)] == [holder.region], fleet.describe()
    assert done["epoch"] == epoch
    assert not in_recovery(pg_pair.replica)
    assert takes_writes(pg_pair.replica)
    assert marker(pg_pair.replica) == (epoch, holder.region)


def test_primary_down_shorter_than_threshold_then_back_does_not_fail_over(
    fleet: WatchdogFleet, pg_pair: PostgresPair
) -> None:
    west, east = fleet.start_pair({"thresholds": {"db_unreachable": f"{BLIP_THRESHOLD}s"}})
    fleet.wait_ready()

    pg_pair.primary.kill()
    killed_at = time.time()
    for dog in (west, east):
        fleet.wait_for(is_verdict("no action: waiting, db_unreachable", since=killed_at),
                       BLIP / 2, what=f"{dog.region} seeing the primary down", dogs=[dog])
    # Down for most of the threshold (the length of the outage is this test's input).
    time.sleep(max(0.0, killed_at + BLIP - time.time()))
    pg_pair.primary.start()
    back_at = time.time()
    assert back_at - killed_at < BLIP_THRESHOLD - INTERVAL, "the restart took too long"
    longest = max(
        float(e["verdict"].split("db_unreachable for ")[1].split("s of")[0])
        for e in fleet.events(is_verdict("no action: waiting, db_unreachable for"))
    )
    assert longest >= BLIP - 2 * INTERVAL, f"the watchdogs saw only {longest}s of the outage"

    # Since the kill, not since start() returned: a watchdog may see the server answer
    # (and log "recovering") while pg_ctl is still waiting for it. No "recovering" can
    # come before the kill: it follows a failing look.
    for dog in (west, east):
        fleet.wait_for(is_verdict("recovering (db_unreachable)", since=killed_at),
                       2 * INTERVAL + SLACK * 3, what=f"{dog.region} seeing the primary back",
                       dogs=[dog])
    fleet.assert_absent(
        is_failover_action,
        BLIP_THRESHOLD * 2, what="failover after a blip shorter than the threshold",
    )
    assert in_recovery(pg_pair.replica)
    assert fleet.events(is_event("failover_decided")) == []


def test_primary_frozen_by_sigstop_is_promoted_after_threshold_and_fenced_once_it_wakes(
    fleet: WatchdogFleet, pg_pair: PostgresPair
) -> None:
    fleet.start_pair()
    holder = fleet.wait_ready()
    epoch = lock_epoch(fleet, holder)

    pg_pair.primary.pause()
    paused_at = time.time()
    try:
        done = fleet.wait_for(is_event("promotion_done"), THRESHOLD + PROMOTION_TIMEOUT,
                              what="promotion_done after the primary froze")
        (decided,) = fleet.events(is_event("failover_decided"))
        # A frozen server still accepts TCP: only the probe timeout detects it.
        assert "timeout" in decided["reason"], decided
        assert event_time(decided) - paused_at >= THRESHOLD
        assert decided["decided_at"] - decided["failing_since"] >= THRESHOLD
        # Frozen at promotion time: it cannot be reached, so it cannot be fenced yet.
        assert done["old_primary_fenced"] is None, done
        assert takes_writes(pg_pair.replica)
        assert marker(pg_pair.replica) == (epoch, holder.region)
    finally:
        # Before resume(), not after: it wakes the backends first, and the west watchdog,
        # retrying all along, can fence the server before resume() returns. A frozen
        # server answers nobody, so no fence can predate this.
        resumed_at = time.time()
        pg_pair.primary.resume()

    # Invariant 1: once it answers again, the old primary is fenced: by its own region's
    # watchdog, which has been retrying since it learnt of the failover, or by the lock
    # holder, which finds it writable in the standby slot; whichever comes first.
    fenced = fleet.wait_for(
        lambda e: e.get("event") in {"old_primary_fenced", "old_primary_fenced_by_its_watchdog"}
        and event_time(e) >= resumed_at,
        4 * INTERVAL + 2.0, what="the old primary fenced after the resume")
    if fenced["event"] == "old_primary_fenced":
        assert fenced["watchdog"] == holder.region
        assert fenced["fenced"] is True, fenced
    else:
        assert fenced["watchdog"] == "drill-us-west-2"
    assert fenced["epoch"] == epoch
    assert pg_pair.primary.sql("SHOW default_transaction_read_only") == "on"
    with pytest.raises(RuntimeError, match="read-only transaction"):
        pg_pair.primary.sql("CREATE TABLE split_brain (id int)")
    assert [p["watchdog"] for p in fleet.events(is_promotion)] == [holder.region]


def test_two_watchdogs_racing_for_a_dead_primary_promote_exactly_once(
    fleet: WatchdogFleet, pg_pair: PostgresPair
) -> None:
    fleet.start_pair()
    holder = fleet.wait_ready()
    bystander = other_than(fleet, holder)
    epoch = lock_epoch(fleet, holder)

    pg_pair.primary.kill()
    killed_at = time.time()

    # Both see the primary die; only the lock holder may act on it...
    for dog in (holder, bystander):
        fleet.wait_for(is_verdict("db_unreachable for", since=killed_at),
                       2 * INTERVAL + SLACK * 3, what=f"{dog.region} seeing the primary down",
                       dogs=[dog])
    done = fleet.wait_for(is_event("promotion_done"), THRESHOLD + PROMOTION_TIMEOUT,
                          what="promotion_done", dogs=[holder])
    # ...and the other learns of the promotion from the standby's marker or the cluster
    # record, whichever it reads first.
    seen = fleet.wait_for(is_verdict(phase="failed_over"), THRESHOLD + 5,
                          what=f"failed_over verdict of {bystander.region}", dogs=[bystander])

    assert done["epoch"] == epoch
    assert seen["failover_epoch"] == epoch, seen
    assert f"epoch {epoch}" in seen["verdict"], seen
    assert [p["watchdog"] for p in fleet.events(is_promotion)] == [holder.region]
    assert fleet.events(is_event("failover_decided"), dogs=[bystander]) == []
    assert fleet.events(is_event("promotion_started"), dogs=[bystander]) == []
    assert marker(pg_pair.replica) == (epoch, holder.region)


def test_lock_store_down_blocks_promotion_until_redis_is_back(
    fleet: WatchdogFleet, pg_pair: PostgresPair, redis_server: RedisServer
) -> None:
    west, east = fleet.start_pair()
    holder = fleet.wait_ready()

    redis_server.kill()
    redis_down_at = time.time()
    fleet.wait_for(is_event("lock_lost", since=redis_down_at), LOCK_TTL + SLACK,
                   what=f"lock_lost of {holder.region} with Redis down", dogs=[holder])
    pg_pair.primary.kill()
    killed_at = time.time()

    # Invariant 4: with the condition ripe and no lock, nobody acts.
    for dog in (west, east):
        fleet.wait_for(
            is_verdict("but the lock is held by nobody reachable", since=killed_at),
            THRESHOLD + 2 * INTERVAL + SLACK * 3,
            what=f"{dog.region} holding back for want of the lock", dogs=[dog],
        )
    fleet.assert_absent(
        is_failover_action,
        max(0.0, killed_at + THRESHOLD * 2 + INTERVAL - time.time()),
        what="failover while the lock store is down",
    )
    assert in_recovery(pg_pair.replica)

    # Before start(), not after: it returns once the port listens, and a watchdog can take
    # the lock and promote before the test reads the clock.
    back_at = time.time()
    redis_server.start()
    done = fleet.wait_for(is_event("promotion_done", since=back_at),
                          LOCK_TTL + PROMOTION_TIMEOUT,
                          what="promotion_done once Redis is back")
    assert not in_recovery(pg_pair.replica)
    assert takes_writes(pg_pair.replica)
    assert marker(pg_pair.replica) == (done["epoch"], done["watchdog"])
    assert len(fleet.events(is_promotion)) == 1, fleet.describe()


def test_replica_lagging_past_the_gate_is_not_promoted_and_refusal_repeats_after_backoff(
    fleet: WatchdogFleet, pg_pair: PostgresPair
) -> None:
    max_lag, backoff = 64 * 1024, 1.0
    fleet.start_pair({"promotion": {"max_lag_bytes": max_lag},
                      "thresholds": {"retry_backoff": f"{backoff}s"}})
    holder = fleet.wait_ready()

    pg_pair.replica.sql("SELECT pg_wal_replay_pause()")
    # From the pause, not from the end of the write: the WAL streams while the table is
    # written, so the probe can see the lag cross the gate (the one verdict line logged for
    # it: lines come on change) before the statement returns.
    paused_at = time.time()
    pg_pair.primary.sql(
        "CREATE TABLE backlog AS SELECT g AS id, repeat('x', 200) AS pad "
        "FROM generate_series(1, 20000) g"
    )
    lagging = fleet.wait_for(
        lambda e: is_verdict(since=paused_at)(e) and (e.get("lag_bytes") or 0) > max_lag,
        4 * INTERVAL + SLACK, what="a verdict showing the lag above the gate", dogs=[holder],
    )
    pg_pair.primary.kill()

    first = fleet.wait_for(is_event("failover_refused"), THRESHOLD + PROMOTION_TIMEOUT,
                           what="failover_refused for the lag", dogs=[holder])
    assert "replication lag" in first["reason"], first
    assert f"exceeds max_lag_bytes {max_lag}" in first["reason"], first
    assert "replay is paused" in first["reason"], first
    wait_until(
        lambda: len(fleet.events(is_event("failover_refused"))) >= 3,
        3 * backoff + 2 * INTERVAL + SLACK * 3, what="a third refusal after the backoff",
        hint=fleet.describe(),
    )

    refusals = fleet.events(is_event("failover_refused"))
    gaps = [event_time(b) - event_time(a) for a, b in itertools.pairwise(refusals)]
    # Retried after the backoff, not in a tight loop.
    assert all(gap >= backoff * 0.95 for gap in gaps), gaps
    assert len(fleet.events(is_event("failover_decided"))) == len(refusals)
    assert fleet.events(is_promotion) == []
    assert lagging["lag_bytes"] > max_lag
    assert in_recovery(pg_pair.replica)
    assert pg_pair.replica.sql("SELECT pg_is_wal_replay_paused()") == "t"


def test_sigterm_on_lock_holder_hands_the_lock_over_well_within_the_ttl(
    fleet: WatchdogFleet,
) -> None:
    fleet.start_pair()
    holder = fleet.wait_ready()
    successor = other_than(fleet, holder)
    epoch = lock_epoch(fleet, holder)

    stopped_at = time.time()
    assert fleet.stop(holder) == 0, fleet.describe()

    released = fleet.events(is_event("lock_released", since=stopped_at), dogs=[holder])
    assert [e["epoch"] for e in released] == [epoch], fleet.describe()
    taken = fleet.wait_for(is_event("lock_acquired", since=stopped_at), LOCK_TTL,
                           what=f"lock_acquired by {successor.region}", dogs=[successor])
    assert taken["epoch"] > epoch
    # The campaign runs every TTL / 3 = 1 s; an unreleased lock would expire 2-3 s after
    # the stop, so a takeover this fast proves the release.
    assert event_time(taken) - stopped_at < LOCK_TTL / 3 + 2 * SLACK, taken
