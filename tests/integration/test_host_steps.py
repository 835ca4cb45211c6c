"""Host-bound failback steps run by the watchdog beside the server (issue 9, "Where each
step runs"): two real daemons, each with ``regions.<r>.database.control`` of its own
region only, and a failback run from a host that controls neither. The resync of west's
server is done by west's watchdog and the switchover by east's, through
``POST /v1/host-steps/{step}`` with the peer token; a stale epoch is refused and a step
no watchdog can run names the missing key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agentaskit_dr.config import load_config
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.runtime.host_step_client import HostStepDelegate, HostStepUnavailable
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import WatchdogFleet, is_event
from tests.integration.test_failback_run import (
    control_of,
    fail_over_with_writes,
    failback,
    prepare,
    read_text,
)
from tests.integration.test_start_gate import EAST, WEST
from tests.integration.test_switchover import servers_stopped_after, streaming_at_lag_zero
from tests.integration.test_sync_primary import old_primary  # noqa: F401 -- fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("old_primary")]

PEER_TOKEN = "peer-token-for-host-steps"


async def pause_cluster(redis_url: str) -> None:
    """Paused watchdogs leave the lock to the on-call command (and take no decision)."""
    store = RedisClusterStore(redis_url)
    try:
        await store.pause(reason="failback by hand", by="test")
    finally:
        await store.close()


def start_daemons(fleet: WatchdogFleet, pair: PostgresPair, tmp_path: Path,
                  ) -> dict[str, str]:
    """West's and east's watchdogs, each controlling only its own server; their API URLs."""
    token = tmp_path / "peer-token"
    token.write_text(PEER_TOKEN + "\n")
    urls = {region: f"http://127.0.0.1:{free_port()}" for region in (WEST, EAST)}
    servers = {WEST: pair.primary, EAST: pair.replica}
    for region, other in ((WEST, EAST), (EAST, WEST)):
        fleet.start(region, overrides={
            "peers": [urls[other]],
            "api": {"listen": urls[region].removeprefix("http://"),
                    "peer_token_file": str(token)},
            "regions": {region: {"database": {"control": control_of(servers[region])}}},
        })
    for dog in fleet.dogs.values():
        fleet.wait_for(is_event("api_started"), 20, what="api_started", dogs=[dog])
    return urls


def operator_config(fleet: WatchdogFleet, tmp_path: Path, urls: dict[str, str]) -> Path:
    """The on-call host's config: east's watchdog's, with no control of any server."""
    config = fleet.config_for(EAST, name="operator", overrides={
        "peers": [urls[WEST], urls[EAST]],
        "api": {"listen": None, "peer_token_file": str(tmp_path / "peer-token")},
    })
    config["promotion"] = {"catch_up_timeout": "20s", "timeout": "20s",
                           "max_lag_bytes": "16MiB"}
    path = tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def test_each_region_s_watchdog_runs_the_host_steps_of_a_failback(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    west = pg_pair.primary
    prepare(pg_pair)
    await pause_cluster(redis_server.url)
    async with servers_stopped_after(pg_pair):
        with WatchdogFleet(pg_pair, redis_server, tmp_path / "fleet", threshold=5.0) as fleet:
            urls = start_daemons(fleet, pg_pair, tmp_path)
            config = operator_config(fleet, tmp_path, urls)
            await fail_over_with_writes(pg_pair, redis_server.url)

            code, out, err = await failback(config, "--yes")

            assert code == 0, err + fleet.describe()
            assert west.sql("SELECT pg_is_in_recovery()") == "f"
            assert await streaming_at_lag_zero(pg_pair.replica, west)
            done = fleet.events(is_event("host_step_done"))
            assert {(e["watchdog"], e["step"]) for e in done} == {
                (f"drill-{WEST}", "sync-primary"), (f"drill-{EAST}", "switchover")}
            # Polled until done, each started once.
            assert len(fleet.events(is_event("host_step_started"))) == 2
    evidence = json.loads(read_text(json.loads(out[out.index("{"):])["evidence"]))
    figures = evidence["extra"]
    assert figures["sync"]["timeline"] == 2
    assert (figures["switchover"]["old_timeline"], figures["switchover"]["new_timeline"]) \
        == (2, 3)
    assert "on us-west-2's watchdog" in out  # the plan says where the step runs


async def post(url: str, body: dict[str, Any], token: str = PEER_TOKEN
               ) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
        url, json=body, headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json()


async def test_a_stale_epoch_is_refused_and_a_step_nobody_can_run_names_the_key(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    await pause_cluster(redis_server.url)
    lock = RedisLeaderLock(redis_server.url, holder="operator/cli:test", ttl=30.0)
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "fleet", threshold=5.0) as fleet:
        urls = start_daemons(fleet, pg_pair, tmp_path)
        try:
            old = await lock.acquire()
            assert old is not None
            await lock.release(old)
            lease = await lock.acquire()  # a newer epoch holds the lock now
            assert lease is not None
            assert lease.epoch > old.epoch
            body = {"run_id": "failback-test", "epoch": old.epoch, "holder": old.holder,
                    "region": WEST, "params": {"timeout": 30}}

            status, answer = await post(f"{urls[WEST]}/v1/host-steps/sync-primary", body)

            assert status == 409
            assert answer["refusal"] == "stale_epoch"
            assert f"held by {lease.holder} under epoch {lease.epoch}" in answer["error"]
            assert not fleet.events(is_event("host_step_started"))

            status, answer = await post(f"{urls[WEST]}/v1/host-steps/sync-primary",
                                        body, token="wrong")
            assert status == 401

            config = load_config(operator_config(fleet, tmp_path, {WEST: urls[WEST],
                                                                  EAST: urls[WEST]}))

            with pytest.raises(HostStepUnavailable) as refused:
                await HostStepDelegate(config).run(
                    "switchover", region=EAST, run_id="failback-test", lease=lease,
                    params={"to": WEST}, within=10, still_leader=_yes, progress=_ignore)

            assert f"regions.{EAST}.database.control is not set on this host" in str(
                refused.value)
            assert f"needs regions.{EAST}.database.control: not set on drill-{WEST}" in str(
                refused.value)
        finally:
            await lock.close()


async def _yes() -> bool:
    return True


async def _ignore(_: str) -> None:
    return None
