"""Isolate, self-fence, heal, lifted: the daemons end to end (chaos seeds 1011 and 9103).

East's watchdog dies (its standby keeps streaming), so west's watchdog takes the lock;
then west's watchdog is cut from the witness: it hears nobody, and after ``fence_after``
fences its own primary (nobody promoted: the witness still reaches west-db). When the
cut heals, west hears the witness again, and the lift conditions (lock, quorum view,
nothing recorded elsewhere, east-db a standby) hold for ``thresholds.recovery``: west
lifts its fence and the primary takes writes again.

Seed 9103's shape: west's watchdog controls its server (the fence stops it and writes
``standby.signal``) and is SIGKILLed while fenced; the service manager starts the server
behind the start gate (in recovery) and the watchdog again. Its self-fence record brings
the fence back (``self_fence_restored``) and the lift stops the server and starts it as
the primary. With a failover to east recorded meanwhile, its region is no longer the
primary's at start: the record is dropped and nothing is lifted.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentaskit_dr.actuators.pg_control import postmaster_pid, stop_server
from agentaskit_dr.config import load_config
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.runtime.self_fence_record import record_path
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration import netcut, partition_lab
from tests.integration.daemon_harness import event_time, is_event
from tests.integration.netcut import Network
from tests.integration.partition_harness import (
    EAST,
    REGION,
    WEST,
    WITNESS,
    PartitionLab,
    Writer,
)
from tests.integration.partition_lab import T, takes_writes
from tests.integration.pg_state import in_recovery
from tests.integration.test_epoch_floor import daemon_keeper, lease_of
from tests.integration.test_fence_hard import control_of

pytestmark = pytest.mark.integration

network = netcut.network
lab = partition_lab.lab

SLACK = 4.0


def isolate_west_until_self_fenced(lab: PartitionLab) -> list[tuple[str, str]]:
    """East's watchdog dies, west takes the lock, then is cut from the witness (both ways)
    until it fences its own primary; the links cut."""
    killed_at = time.time()
    lab.kill(EAST)
    lab.wait_for(lambda e: e.get("event") in ("lock_acquired", "verdict")
                 and e.get("epoch") is not None and event_time(e) >= killed_at,
                 3 * T.lock_ttl + SLACK, what="west holding the lock", nodes=[WEST])
    cut_at = time.time()
    links = [(WEST, WITNESS), (WITNESS, WEST)]
    lab.cut(links)
    fenced = lab.wait_for(is_event("self_fenced", since=cut_at),
                          T.stale_after + T.fence_after + SLACK,
                          what="self_fenced of the isolated west watchdog", nodes=[WEST])
    assert fenced["fenced"] is True, fenced
    return links


def test_isolated_primary_side_self_fences_and_lifts_once_healed(
    lab: PartitionLab, pg_pair: PostgresPair
) -> None:
    links = isolate_west_until_self_fenced(lab)
    assert not takes_writes_safely(pg_pair)

    healed_at = time.time()
    for observer, target in links:
        lab.network.heal(observer, target)
    lifted = lab.wait_for(is_event("self_fence_lifted", since=healed_at),
                          T.stale_after + T.db_unreachable + 4 * T.interval + SLACK,
                          what="self_fence_lifted by west", nodes=[WEST])

    # Debounced over thresholds.recovery (db_unreachable here), never earlier.
    assert event_time(lifted) - healed_at >= T.db_unreachable, lifted
    conditions = lifted["conditions"]
    assert conditions["other_is_standby"] == "standby", conditions
    assert conditions["recorded_primary"] == "us-west-2", conditions
    assert lab.events(is_event("promotion_done")) == []
    assert in_recovery(pg_pair.replica)
    assert takes_writes(pg_pair.primary)


def takes_writes_safely(pair: PostgresPair) -> bool:
    try:
        return takes_writes(pair.primary)
    except RuntimeError:  # psql reports the read-only refusal as a failure
        return False


class ControlLab(PartitionLab):
    """The partition lab with west's watchdog controlling west's server (as in the chaos
    world), and the service manager's two starts: the daemon's and the server's."""

    def config_overrides(self, node: str) -> dict[str, Any]:
        config = super().config_overrides(node)
        if node == WEST:
            server = self.pair.primary
            config["regions"][REGION[WEST]]["database"]["control"] = {
                "data_directory": str(server.datadir), "bin_dir": str(server.bindir),
                "os_user": "postgres", "stop_timeout": "3s"}
        return config

    def start_west_db_behind_gate(self) -> None:
        """Start west's server as its service manager would: ``ExecStartPre=`` the gate."""
        dog = self.fleet.dogs[WEST]
        done = subprocess.run(
            [sys.executable, "-m", "agentaskit_dr", "start-gate", "--config", str(dog.config),
             "--region", REGION[WEST]], capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done
        self.pair.primary.kill()  # reaps the postmaster the fence stopped
        self.pair.primary.start(30.0, accepting=False)


@pytest.fixture
def control_lab(pg_pair: PostgresPair, redis_server: RedisServer, network: Network,
                tmp_path: Path) -> Iterator[ControlLab]:
    Writer.create_table(pg_pair)
    control = control_of(pg_pair.primary)
    try:
        started = ControlLab(pg_pair, redis_server, network, tmp_path / "daemons", T)
        with started:
            started.start()
            started.wait_healthy()
            yield started
    finally:
        if postmaster_pid(control) is not None and not pg_pair.primary.running:
            asyncio.run(stop_server(control))  # started by the lift's pg_ctl


def fence_then_kill_west(lab: ControlLab) -> Path:
    """East's watchdog dies, west takes the lock, is cut from the witness and self-fences
    (its server stopped, standby.signal written); then west's watchdog is SIGKILLed and
    the cut healed. The self-fence record's path."""
    links = isolate_west_until_self_fenced(lab)
    record = record_path(lab.workdir / f"evidence-{WEST}")
    assert record.is_file()
    lab.kill(WEST)
    for observer, target in links:
        lab.network.heal(observer, target)
    return record


def test_a_watchdog_killed_while_self_fenced_restores_its_fence_and_lifts_it_once_healed(
    control_lab: ControlLab, pg_pair: PostgresPair,
) -> None:
    lab = control_lab
    timeline = pg_pair.primary.sql("SELECT timeline_id FROM pg_control_checkpoint()")
    record = fence_then_kill_west(lab)
    lab.start_west_db_behind_gate()
    assert in_recovery(pg_pair.primary)

    restarted_at = time.time()
    lab.restart(WEST)
    restored = lab.wait_for(is_event("self_fence_restored", since=restarted_at), 15.0,
                            what="self_fence_restored by the restarted west", nodes=[WEST])
    lifted = lab.wait_for(is_event("self_fence_lifted", since=restarted_at),
                          T.lock_ttl + T.stale_after + T.db_unreachable + 4 * T.interval
                          + 2 * SLACK, what="self_fence_lifted by west", nodes=[WEST])

    assert event_time(lifted) - event_time(restored) >= T.db_unreachable, lifted
    assert "in recovery after this watchdog's self-fence" in lifted["detail"], lifted
    assert "server started" in lifted["detail"], lifted
    assert takes_writes(pg_pair.primary)
    assert pg_pair.primary.sql("SELECT timeline_id FROM pg_control_checkpoint()") == timeline
    assert in_recovery(pg_pair.replica)
    assert lab.events(is_event("promotion_done")) == []
    assert not record.exists()


def test_a_watchdog_killed_while_self_fenced_drops_its_record_after_a_failover_elsewhere(
    control_lab: ControlLab, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    """A failover to east recorded meanwhile (a newer epoch): at start west follows the
    cluster record, so its region is no longer the primary's and the fence is not restored
    (the record is removed, said why). West's server is the old primary now: never lifted,
    its fate is the failback's (sync-primary), not the lift's."""
    lab = control_lab
    record = fence_then_kill_west(lab)
    asyncio.run(record_failover_to_east(lab, redis_server))
    lab.start_west_db_behind_gate()

    restarted_at = time.time()
    lab.restart(WEST)
    removed = lab.wait_for(is_event("self_fence_record_removed", since=restarted_at), 15.0,
                           what="self_fence_record_removed by the restarted west", nodes=[WEST])
    lab.assert_absent(is_event("self_fence_lifted", since=restarted_at),
                      time.monotonic() + T.lock_ttl + T.stale_after + T.db_unreachable
                      + 4 * T.interval + SLACK, what="a lift", nodes=[WEST])

    assert "us-west-2 is no longer the primary's region (us-east-1 is)" in removed["why"]
    assert lab.events(is_event("self_fence_restored", since=restarted_at)) == []
    assert not record.exists()
    assert not writable(pg_pair.primary)
    assert lab.events(is_event("promotion_done")) == []


def writable(server: PostgresServer) -> bool:
    """Answers as a primary (False when in recovery or down)."""
    try:
        return server.sql("SELECT NOT pg_is_in_recovery()") == "t"
    except RuntimeError:
        return False


async def record_failover_to_east(lab: ControlLab, redis: RedisServer) -> None:
    """What a failover to east leaves in the lock store: the record names east under an
    epoch newer than west's fence (taken under a lease of its own once west's expired)."""
    async with daemon_keeper(load_config(lab.fleet.dogs[EAST].config)) as keeper:
        lease = await lease_of(keeper)
        store = RedisClusterStore(redis.url)
        try:
            await store.record_primary(REGION[EAST], epoch=lease.epoch, run_id="fo-east",
                                       lease=lease)
        finally:
            await store.close()
