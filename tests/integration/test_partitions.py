"""Partitions, end to end: three daemons, a real PostgreSQL pair and Redis, links cut by nftables.

A primary-side watchdog (us-west-2), a secondary-side watchdog (us-east-1) and a witness
run as real processes (see ``partition_harness``); every connection any of them makes
goes through a link of its own, and a cut link hangs instead of refusing. Each test
breaks one thing the way networks break and asserts on the daemons' JSON log events and
on the databases (safety invariants 1, 2 and 5 and the partition verdicts of
docs/architecture.md). Failure messages name the daemon logs (kept under pytest's
``tmp_path``) and the links that were cut.
"""

from __future__ import annotations

import re
import time

import pytest

from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration import netcut, partition_lab
from tests.integration.daemon_harness import (
    Predicate,
    event_time,
    is_event,
    is_promotion,
    is_verdict,
    wait_until,
)
from tests.integration.partition_harness import (
    EAST,
    EAST_DB,
    WATCHDOGS,
    WEST,
    WEST_DB,
    WEST_HEALTH,
    WITNESS,
    PartitionLab,
    Writer,
    is_alert,
    is_assessment,
)
from tests.integration.partition_lab import T, takes_writes
from tests.integration.pg_state import in_recovery

pytestmark = pytest.mark.integration

network = netcut.network
lab = partition_lab.lab

THRESHOLD = T.db_unreachable
#: How long the "nothing happens" scenarios watch after the break.
WATCH = 3 * THRESHOLD
#: Bound on the work after a decision: lock check, lag gate, pg_promote, marker, fence.
PROMOTION_TIMEOUT = 10.0
#: Scheduling slack on a busy 2-core machine; only ever widens upper bounds.
SLACK = 2.0

FAILOVER_EVENTS = {"failover_decided", "promotion_started", "promotion_done"}
FENCE_EVENTS = {"self_fenced", "old_primary_fenced"}


def is_any(names: set[str]) -> Predicate:
    """An event named one of ``names``."""
    return lambda e: e.get("event") in names


def test_primary_database_killed_is_promoted_once_after_threshold_and_witness_never_acts(
    lab: PartitionLab, pg_pair: PostgresPair
) -> None:
    killed_at = time.time()  # before kill(): it also reaps
    pg_pair.primary.kill()

    done = lab.wait_for(is_event("promotion_done", since=killed_at),
                        THRESHOLD + PROMOTION_TIMEOUT + SLACK,
                        what="promotion_done after the primary database was killed",
                        nodes=WATCHDOGS)
    (bystander,) = [node for node in WATCHDOGS if node != done["watchdog"]]
    lab.wait_for(is_verdict(phase="failed_over", since=killed_at), THRESHOLD + SLACK * 2,
                 what=f"failed_over verdict of {bystander}", nodes=[bystander])

    decided = lab.events(is_event("failover_decided"))
    assert [e["watchdog"] for e in decided] == [done["watchdog"]], lab.describe()
    # Invariant 2: never before the threshold.
    assert event_time(decided[0]) - killed_at >= THRESHOLD, decided[0]
    assert event_time(done) - killed_at >= THRESHOLD, done
    assert [e["watchdog"] for e in lab.events(is_promotion)] == [done["watchdog"]], lab.describe()
    witness_acts = lab.events(is_any({"lock_acquired", *FAILOVER_EVENTS, *FENCE_EVENTS}),
                              nodes=[WITNESS])
    assert witness_acts == [], witness_acts
    assert not in_recovery(pg_pair.replica)
    assert takes_writes(pg_pair.replica)


def test_primary_region_cut_off_fences_itself_before_the_other_side_promotes(
    lab: PartitionLab, pg_pair: PostgresPair
) -> None:
    with Writer(WEST, pg_pair.primary.port) as west_app, \
            Writer(EAST, pg_pair.replica.port) as east_app:
        wait_until(lambda: bool(west_app.successes), 5, what="a first write on west-db",
                   hint=west_app.describe())
        cut_at = time.time()
        cut = lab.isolate_site(WEST)
        assert (EAST, WEST_DB) in cut, cut
        assert (EAST_DB, WEST_DB) in cut, "replication must be cut too"

        fenced = lab.wait_for(is_event("self_fenced", since=cut_at),
                              T.stale_after + T.fence_after + SLACK * 2,
                              what="self_fenced of the cut-off west watchdog", nodes=[WEST])
        done = lab.wait_for(is_event("promotion_done", since=cut_at),
                            T.stale_after + THRESHOLD + T.lock_ttl + PROMOTION_TIMEOUT,
                            what="promotion_done by east", nodes=[EAST])
        wait_until(lambda: bool(east_app.successes), 5, what="a first write on east-db",
                   hint=east_app.describe())

    assert fenced["fenced"] is True, fenced
    # Invariant 5: the cut-off primary is fenced before the other side promotes...
    assert event_time(fenced) < event_time(done), (fenced, done)
    (decided,) = lab.events(is_event("failover_decided"))
    assert decided["watchdog"] == EAST, decided
    assert event_time(decided) - cut_at >= THRESHOLD, decided
    assert "isolated" in decided["reason"], decided
    # ...so at no moment were both sides writable (invariant 1).
    assert west_app.successes[-1] < east_app.successes[0], (
        f"west wrote at {west_app.successes[-1]:.3f} after east's first write at "
        f"{east_app.successes[0]:.3f}\n{west_app.describe()}\n{east_app.describe()}")
    assert pg_pair.primary.sql("SHOW default_transaction_read_only") == "on"
    assert [e["watchdog"] for e in lab.events(is_promotion)] == [EAST]


def test_east_watchdog_cut_off_alone_does_nothing_and_says_it_is_isolated(
    lab: PartitionLab, pg_pair: PostgresPair
) -> None:
    cut_at, until = time.time(), time.monotonic() + WATCH
    lab.isolate(EAST)

    alert = lab.wait_for(is_alert("self isolated", since=cut_at), T.stale_after + SLACK,
                         what="east's self-isolated alert", nodes=[EAST])
    assert alert["severity"] == "critical", alert
    lab.wait_for(is_assessment("degraded", since=cut_at), T.stale_after + SLACK,
                 what="west's degraded assessment", nodes=[WEST])
    lab.wait_for(is_alert("degraded:", since=cut_at), SLACK,
                 what="west's degraded alert", nodes=[WEST])
    # Invariant 5: an isolated observer does nothing, and nobody else acts for it.
    lab.assert_absent(is_any(FAILOVER_EVENTS | FENCE_EVENTS), until,
                      what="failover or fence with only the east watchdog cut off")
    assert lab.events(is_assessment("self_isolated", since=cut_at), nodes=[WEST]) == []
    assert in_recovery(pg_pair.replica)
    assert takes_writes(pg_pair.primary)


def test_east_cut_from_primary_region_while_witness_sees_it_is_a_partial_partition(
    lab: PartitionLab, pg_pair: PostgresPair
) -> None:
    cut_at, until = time.time(), time.monotonic() + WATCH
    lab.cut([(EAST, WEST_DB), (EAST, WEST_HEALTH), (EAST, WEST), (WEST, EAST)])

    alert = lab.wait_for(is_alert("partial partition", since=cut_at), T.timeout + SLACK,
                         what="east's partial-partition alert", nodes=[EAST])
    assert "witness" in alert["message"], alert
    lab.wait_for(is_assessment("degraded", since=cut_at), T.stale_after + SLACK,
                 what="west's degraded assessment", nodes=[WEST])
    lab.assert_absent(is_any(FAILOVER_EVENTS | FENCE_EVENTS), until,
                      what="failover or fence while the witness still sees the primary")
    # East's own failing probe may start its clock provisionally (the witness's last report
    # predates the cut) until the witness's next report dissents: never more than a round.
    held = [float(match.group(1)) for event in lab.events(
        is_verdict("db_unreachable for", since=cut_at), nodes=[EAST])
        if (match := re.search(r"db_unreachable for ([0-9.]+)s", str(event["verdict"])))]
    assert max(held, default=0.0) <= T.stale_after, held
    assert in_recovery(pg_pair.replica)
    assert takes_writes(pg_pair.primary)


def test_witness_down_changes_nothing_but_a_degraded_alert(
    lab: PartitionLab, pg_pair: PostgresPair
) -> None:
    killed_at, until = time.time(), time.monotonic() + WATCH
    lab.kill(WITNESS)

    for node in WATCHDOGS:
        alert = lab.wait_for(is_alert("degraded:", since=killed_at), T.stale_after + SLACK,
                             what=f"{node}'s degraded alert", nodes=[node])
        assert "no answer from witness" in alert["message"], alert
    lab.assert_absent(is_any(FAILOVER_EVENTS | FENCE_EVENTS), until,
                      what="failover or fence with the witness down")
    assert in_recovery(pg_pair.replica)
    assert takes_writes(pg_pair.primary)


def test_lock_store_down_with_a_healthy_primary_changes_nothing(
    lab: PartitionLab, pg_pair: PostgresPair, redis_server: RedisServer
) -> None:
    killed_at, until = time.time(), time.monotonic() + WATCH
    redis_server.kill()

    lab.wait_for(is_event("lock_lost", since=killed_at), T.lock_ttl + SLACK,
                 what="lock_lost with the lock store down", nodes=WATCHDOGS)
    # Invariant 5: no demotion storm when only the lock store is gone.
    lab.assert_absent(is_any(FAILOVER_EVENTS | FENCE_EVENTS), until,
                      what="failover or fence with the lock store down")
    assert pg_pair.primary.sql("SHOW default_transaction_read_only") == "off"
    assert takes_writes(pg_pair.primary)
    assert in_recovery(pg_pair.replica)


def test_flapping_primary_frozen_in_bursts_shorter_than_threshold_never_fails_over(
    lab: PartitionLab, pg_pair: PostgresPair
) -> None:
    # The watchdogs count a burst only once all vantages agree, about a second in: a
    # 3 s freeze shows up as 2 s or so of the 5.5 s threshold.
    burst = 3.0
    started = time.monotonic()
    while time.monotonic() - started < WATCH:
        pg_pair.primary.pause()
        try:
            time.sleep(burst)  # the burst's length is this test's input
        finally:
            # Before resume(), not after: it wakes the backends first, and a watchdog can
            # see the primary back (and log "recovering", one line: lines come on change)
            # before resume() returns. Nothing answers while frozen, so no "recovering"
            # of this burst can predate this.
            resumed_at = time.time()
            pg_pair.primary.resume()
        # Each burst ends in a healthy observation by both watchdogs: their clocks restart.
        for node in WATCHDOGS:
            lab.wait_for(is_verdict("recovering (db_unreachable)", since=resumed_at),
                         T.interval * 2 + SLACK, what=f"{node} seeing the primary back",
                         nodes=[node])
        time.sleep(max(0.0, resumed_at + 1.0 - time.time()))

    # Watch one more threshold for a late decision.
    lab.assert_absent(is_any(FAILOVER_EVENTS | FENCE_EVENTS),
                      time.monotonic() + THRESHOLD + T.interval,
                      what="failover with the primary flapping")
    spans = [float(str(e["verdict"]).split("db_unreachable for ")[1].split("s of")[0])
             for e in lab.events(is_verdict("waiting, db_unreachable for"), nodes=WATCHDOGS)]
    # The bursts were seen for a good part of the threshold, without ever reaching it.
    assert spans, "no watchdog saw the primary down"
    assert burst - 1.5 <= max(spans) < THRESHOLD, spans
    assert in_recovery(pg_pair.replica)
