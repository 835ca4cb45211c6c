"""Failback through the daemon's API with the watchdogs running, not paused (issue 9).

Real watchdog processes (``daemon_harness``), a real PostgreSQL pair and Redis: a
failover by killing the primary; then ``POST /v1/failback`` to the lock holder, which
runs the five steps while both watchdogs keep watching. The automation must not fight
the runbook (no failover, no fence while it resyncs and switches), then both watchdogs
follow the restored primary, armed: a kill -9 of it fails over again, to the secondary,
under a newer epoch. Writers run across the failback and lose no acknowledged write.

Both servers live on this host, so both watchdogs get ``database.control`` of both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agentaskit_dr.actuators.pg_control import postmaster_pid
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration import api_fleet
from tests.integration.api_fleet import (
    PEER_THRESHOLD,
    background_writers,
    call,
    start_fleet,
    token_file,
    wait_written_on,
)
from tests.integration.daemon_harness import (
    REGIONS,
    Event,
    WatchdogFleet,
    event_time,
    is_event,
    is_promotion,
    is_verdict,
    wait_until,
)
from tests.integration.pg_state import in_recovery, marker_epoch
from tests.integration.test_failback_run import prepare
from tests.integration.test_switchover import control, missing_on, writer_runs

pytestmark = pytest.mark.integration

fleet = api_fleet.fleet

WEST, EAST = REGIONS
PROMOTION_TIMEOUT = 10.0
FAILBACK_TIMEOUT = 120.0
#: Events of an automation fighting a planned run.
FIGHTS = frozenset({"failover_decided", "primary_region_changed", "old_primary_fenced",
                    "old_primary_fenced_by_its_watchdog", "fenced_for_peer", "self_fenced"})


def kill_postmaster(server: PostgresServer) -> None:
    """kill -9 of a server started by the runs (pg_ctl), not by the pair."""
    pid = postmaster_pid(control(server))
    assert pid is not None, f"{server.name} is not running"
    os.kill(pid, signal.SIGKILL)


def promotion_epochs(fleet: WatchdogFleet) -> list[int]:
    """The epoch of every promotion, failovers' and switchovers', in time order."""
    return [int(e["epoch"]) for e in fleet.events(
        lambda e: is_promotion(e) or e.get("event") == "switchover_promoted")]


def between(fleet: WatchdogFleet, start: float, end: float, names: frozenset[str]) -> list[Event]:
    return fleet.events(lambda e: e.get("event") in names and start <= event_time(e) <= end)


def test_failback_through_the_api_is_not_fought_and_the_restored_primary_is_protected(
    fleet: WatchdogFleet, pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    west, east = pg_pair.primary, pg_pair.replica
    prepare(pg_pair)
    urls = start_fleet(fleet, pg_pair, token_file(tmp_path))
    holder = fleet.wait_ready()
    (other,) = [dog for dog in fleet.dogs.values() if dog is not holder]

    # 1. The failover: the primary is killed, the holder promotes east.
    west.kill()
    first = fleet.wait_for(is_event("promotion_done"), PEER_THRESHOLD + PROMOTION_TIMEOUT,
                           what="the failover's promotion")
    fleet.wait_for(is_verdict(phase="failed_over"), 10, what="failed_over of the other",
                   dogs=[other])
    # The on-call acknowledges (automatic failover re-armed in east): from here on only the
    # hold keeps the watchdogs from taking the failback's moves for failures.
    acked_at = time.time()
    assert call(f"{urls[holder.region]}/v1/ack", {})[0] == 200
    for dog in (holder, other):
        fleet.wait_for(is_verdict(phase="watching", since=acked_at), 10,
                       what=f"the ack applied by {dog.region}", dogs=[dog])

    # The CLI takes the lock itself: with the watchdogs running it refuses, in one line.
    cli = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "failback", "--yes", "--config",
         str(holder.config)], capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 1, cli.stderr
    (refusal,) = cli.stderr.splitlines()
    assert "leader lock is held by" in refusal
    assert "POST /v1/failback" in refusal

    with background_writers(pg_pair) as log:
        wait_written_on(log, east)  # the writers found east
        # 2. The failback, asked of the wrong watchdog, of the right one as a dry run, then
        # for real; a second request while it runs is refused naming it.
        code, refused = call(f"{urls[other.region]}/v1/failback", {})
        assert code == 409, refused
        assert "does not hold the leader lock" in refused["error"]
        holder_region = yaml.safe_load(holder.config.read_text())["region"]
        assert f"in {holder_region}" in refused["error"]
        code, plan = call(f"{urls[holder.region]}/v1/failback", {"dry_run": True})
        assert code == 200, plan
        assert (plan["from_region"], plan["to_region"], len(plan["plan"])) == (EAST, WEST, 5)
        assert plan["would_run"] is True, plan

        started_at = time.time()
        code, started = call(f"{urls[holder.region]}/v1/failback", {})
        assert code == 202, started
        run_id = started["run_id"]
        code, busy = call(f"{urls[holder.region]}/v1/switchover", {"to": WEST})
        assert code == 409
        assert run_id in busy["error"]
        steps_seen = set()
        deadline = time.monotonic() + FAILBACK_TIMEOUT
        while time.monotonic() < deadline and not fleet.events(
                is_event("planned_run_ended", run_id=run_id)):
            for url in urls.values():
                seen = call(f"{url}/v1/status", token=None)[1].get("planned_run")
                if seen is not None:
                    assert seen["run_id"] == run_id
                    steps_seen.add(seen["step"])
            time.sleep(0.2)
        ended = fleet.wait_for(is_event("planned_run_ended", run_id=run_id), 1,
                               what="the end of the failback run", dogs=[holder])
        assert ended["outcome"] == "done", ended
        for dog in (holder, other):
            fleet.wait_for(is_event("planned_primary_followed", region=WEST), 10,
                           what=f"{dog.region} following {WEST}", dogs=[dog])
        wait_written_on(log, west)  # writes land on west again
    assert asyncio.run(missing_on(west, log)) == set()
    assert writer_runs(west)[-2:] == [east.port, west.port]
    assert steps_seen & {"sync_primary", "verify_data_integrity", "restore_standby"}

    # The automation did not fight the run; both watchdogs held while it ran.
    fights = [e for e in between(fleet, started_at, event_time(ended), FIGHTS)
              if (e["event"], e.get("new")) != ("primary_region_changed", WEST)]
    assert fights == []  # the only topology change: following the run's end, to west
    for dog in (holder, other):
        assert fleet.events(is_event("automation_held", since=started_at), dogs=[dog])
    # Both agree on the primary region and the epoch the run left; armed.
    switched = int(fleet.events(is_event("switchover_promoted"))[-1]["epoch"])
    assert switched > int(first["epoch"])
    # planned_primary_followed is logged as the engine is told; its status follows within
    # a cycle: wait on that state (this used to ride on a fixed half-second pause).
    wait_until(lambda: all(call(f"{urls[dog.region]}/v1/status", token=None)[1]["primary_region"]
                           == WEST for dog in (holder, other)), 10,
               what="both watchdogs watching us-west-2", hint=fleet.describe())
    for dog in (holder, other):
        status = call(f"{urls[dog.region]}/v1/status", token=None)[1]
        assert status["primary_region"] == WEST, status
        assert status["phase"] == "watching", status
        assert status["last_failover"]["epoch"] == switched
        assert status["cluster"]["primary_region"] == WEST
        assert status["planned_run"] is None
    assert not in_recovery(west)
    assert in_recovery(east)

    # 3. The restored primary dies: a new failover, to the secondary, under a newer epoch.
    killed_at = time.time()
    kill_postmaster(west)
    second = fleet.wait_for(is_event("promotion_done", since=killed_at),
                            PEER_THRESHOLD + PROMOTION_TIMEOUT + 5, what="the second failover")
    assert int(second["epoch"]) > switched
    assert not in_recovery(east)
    assert marker_epoch(east) == int(second["epoch"])
    epochs = promotion_epochs(fleet)
    assert epochs == sorted(set(epochs)), epochs  # one promotion per epoch
    assert len(epochs) == 3

