"""Pause, resume and ack belong to the cluster: two real watchdog processes, one real Redis.

A pause sent to one watchdog's API pauses both, both release the leader lock and stop
campaigning (so an operator's step-by-step commands can take it), a watchdog started
while the cluster is paused starts paused, a resume makes them campaign again, and an
acknowledgement reaches both. On today's code the pause stays on the watchdog that got
it, in its memory only, and the lock stays taken.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import (
    REGIONS,
    Watchdog,
    WatchdogFleet,
    is_event,
    wait_until,
)

pytestmark = pytest.mark.integration

TOKEN = "cluster-controls-test-token"
WEST, EAST = REGIONS[0], REGIONS[1]


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
        WatchdogFleet]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path) as started:
        yield started


def api_url(dog: Watchdog) -> str:
    listen = yaml.safe_load(dog.config.read_text())["api"]["listen"]
    return f"http://{listen}"


def status(dog: Watchdog) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api_url(dog)}/v1/status", timeout=5) as answer:
        body: dict[str, Any] = json.loads(answer.read())
    return body


def control(dog: Watchdog, action: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{api_url(dog)}/v1/{action}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def paused_everywhere(dogs: list[Watchdog]) -> bool:
    for dog in dogs:
        seen = status(dog)
        if not (seen["paused"] and seen["cluster"]["paused"]):
            return False
    return True


def lock_holder(server: RedisServer) -> str | None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        holder = client.hget("agentaskit-dr:leader:info", "holder")
        return None if client.get("agentaskit-dr:leader") is None else holder
    finally:
        client.close()


def test_pause_through_one_watchdog_pauses_both_survives_a_restart_and_resume_campaigns_again(
    fleet: WatchdogFleet, redis_server: RedisServer, tmp_path: Path,
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    overrides = {"api": {"token_file": str(token_file)}}
    west, east = fleet.start_pair(overrides)
    holder = fleet.wait_ready()
    other = east if holder is west else west

    # Paused through the watchdog that does NOT hold the lock.
    answer = control(other, "pause", {"reason": "DB upgrade", "by": "alice"})
    assert answer["paused"] is True
    wait_until(lambda: paused_everywhere([west, east]), 10, what="both watchdogs paused",
               hint=fleet.describe())
    # From here on, not from the lock's release below: a watchdog that took the lock in
    # between (and let it go again) campaigned while paused just the same.
    paused_at = time.time()
    for dog in (west, east):
        cluster = status(dog)["cluster"]
        assert cluster["pause_reason"] == "DB upgrade"
        assert cluster["paused_by"] == f"alice via {other.region}"
        assert cluster["paused_ago"] is not None
    wait_until(lambda: lock_holder(redis_server) is None, 10, what="the lock released",
               hint=fleet.describe())
    # Nobody campaigns while paused: the lock stays free for the operator.
    fleet.assert_absent(is_event("lock_acquired", since=paused_at), 3.0,
                        what="a lock acquisition while the cluster is paused")

    # A watchdog (re)started while the cluster is paused starts paused.
    fleet.stop(west)
    again = fleet.start(WEST, name="drill-us-west-2-again", overrides=overrides)
    fleet.wait_for(is_event("cluster_control_applied", control="Paused"), 20,
                   what="the restarted watchdog applying the pause", dogs=[again])
    wait_until(lambda: paused_everywhere([again, east]), 10,
               what="the restarted watchdog paused", hint=fleet.describe())
    assert lock_holder(redis_server) is None

    # Resumed through the restarted one: they campaign again.
    resumed_at = time.time()
    control(again, "resume", {"by": "bob"})
    fleet.wait_for(is_event("lock_acquired", since=resumed_at), 15,
                   what="a watchdog taking the lock after the resume", dogs=[again, east])
    wait_until(lambda: not any(status(d)["paused"] for d in (again, east)), 10,
               what="both resumed", hint=fleet.describe())

    # One acknowledgement reaches both, once.
    acked_at = time.time()
    control(east, "ack", {"by": "carol"})
    for dog in (again, east):
        fleet.wait_for(is_event("cluster_control_applied", since=acked_at,
                                control="Acknowledged"), 10,
                       what=f"{dog.region} applying the acknowledgement", dogs=[dog])
        assert status(dog)["cluster"]["ack_generation"] == 1
    time.sleep(1.0)  # several more reads of the record
    applied = fleet.events(is_event("cluster_control_applied", since=acked_at,
                                    control="Acknowledged"), dogs=[again, east])
    assert len(applied) == 2


def test_while_paused_an_operator_fails_over_by_hand_with_the_daemons_running(
    fleet: WatchdogFleet, redis_server: RedisServer, pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    overrides = {"api": {"token_file": str(token_file)}}
    west, east = fleet.start_pair(overrides)
    fleet.wait_ready()
    control(east, "pause", {"reason": "incident: failing over by hand", "by": "alice"})
    wait_until(lambda: lock_holder(redis_server) is None, 10, what="the lock released",
               hint=fleet.describe())

    pg_pair.primary.kill()
    done = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "failover", "--yes", "--config",
         str(west.config)], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert pg_pair.replica.sql("SELECT pg_is_in_recovery()") == "f"
    # The operator acted, not the paused daemons (which kept watching and reporting).
    assert fleet.events(is_event("failover_decided")) == []
    assert fleet.events(is_event("verdict", phase="watching"), dogs=[east])

    # The run recorded the new primary; a watchdog started now watches it.
    fleet.stop(west)
    again = fleet.start(WEST, name="drill-us-west-2-after", overrides=overrides)
    fleet.wait_for(is_event("primary_region_from_cluster", cluster=EAST), 20,
                   what="the new watchdog reading the recorded primary", dogs=[again])
    wait_until(lambda: status(again)["primary_region"] == EAST, 10,
               what="the new watchdog watching us-east-1", hint=fleet.describe())

    # Resumed: the watchdogs campaign again.
    resumed_at = time.time()
    control(again, "resume", {"by": "alice"})
    fleet.wait_for(is_event("lock_acquired", since=resumed_at), 15,
                   what="a watchdog taking the lock after the resume", dogs=[again, east])
