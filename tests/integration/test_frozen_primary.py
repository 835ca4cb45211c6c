"""A primary frozen through the whole threshold never wakes up writable (issue 8).

Two real watchdogs on a real pair; the west watchdog runs on the primary's host and
controls it (``database.control``). The primary is SIGSTOPped: both see it silent, the
east watchdog decides the failover and, before ``pg_promote``, asks the west watchdog to
fence its server. West kills the frozen postmaster (a stop cannot complete on it) and
writes ``standby.signal``; only then is the standby promoted. Woken or restarted, the old
primary takes no write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import WatchdogFleet, event_time, is_event

pytestmark = pytest.mark.integration

WEST, EAST = "us-west-2", "us-east-1"
PEER_TOKEN = "frozen-primary-peer-token"
#: Long enough for the self-fence budget with peers at a 0.4 s interval.
THRESHOLD = 4.0


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs",
                       threshold=THRESHOLD) as started:
        yield started


def test_a_frozen_primary_is_killed_by_its_own_watchdog_before_the_standby_is_promoted(
    fleet: WatchdogFleet, pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    token = tmp_path / "peer-token"
    token.write_text(PEER_TOKEN + "\n")
    ports = {WEST: free_port(), EAST: free_port()}

    def overrides(region: str) -> dict[str, object]:
        other = EAST if region == WEST else WEST
        return {
            "api": {"listen": f"127.0.0.1:{ports[region]}", "peer_token_file": str(token)},
            "peers": [f"http://127.0.0.1:{ports[other]}"],
        }

    primary = pg_pair.primary
    west = overrides(WEST)
    west["regions"] = {WEST: {"database": {
        "dsn": primary.dsn,
        "control": {"data_directory": str(primary.datadir), "bin_dir": str(primary.bindir),
                    "os_user": "postgres", "stop_timeout": "3s"}}}}
    # East holds the lock (it starts alone), so the promoter is across the region line
    # from the frozen primary and must ask west's watchdog to fence it.
    fleet.start(EAST, overrides=overrides(EAST))
    fleet.wait_for(is_event("lock_acquired"), 20, what="east holding the lock")
    fleet.start(WEST, overrides=west)
    holder = fleet.wait_ready()
    assert holder.region == f"drill-{EAST}"
    assert primary.proc is not None
    postmaster = primary.proc.pid

    primary.pause()  # SIGSTOP: it accepts connections in the kernel and never answers
    done = fleet.wait_for(is_event("pg_promote_done"), THRESHOLD + 30,
                          what="the standby promoted")
    fenced = fleet.wait_for(is_event("fenced_for_peer"), 5, what="west's fence for east")

    assert fenced["watchdog"] == f"drill-{WEST}"
    assert done["watchdog"] == f"drill-{EAST}"
    assert event_time(fenced) <= event_time(done), "promoted before the old primary was fenced"
    assert primary.proc.wait(timeout=5) == -9, "the frozen postmaster was not killed"
    assert (primary.datadir / "standby.signal").exists()
    asked = fleet.events(is_event("old_primary_peer_fence"))
    assert [e["confirmed"] for e in asked] == [True]
    # Started again the way its service manager would, it is a standby: no write commits.
    primary.start()
    deadline = time.monotonic() + 10
    while primary.sql("SELECT pg_is_in_recovery()") != "t" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert primary.sql("SELECT pg_is_in_recovery()") == "t"
    assert postmaster != primary.proc.pid
