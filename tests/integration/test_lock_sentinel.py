"""The lock store behind Redis Sentinel: a master, a replica, three Sentinels (issue 13).

The lock, the journal and the cluster record open the master the Sentinels name; after a
Sentinel failover they find the new master by themselves. A failed call in between is a
``LockUnavailable``, never a hang or a traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.config import ConfigError, load_config
from agentaskit_dr.ports import LockUnavailable
from agentaskit_dr.runtime.builders import build_journal, build_lock
from agentaskit_dr.sandbox.sentinel import SERVICE, SentinelSet
from tests.unit.test_config import shipped, shipped_env, write  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shipped_env")]


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    with SentinelSet() as started:
        yield started


def sentinel_config(tmp_path: Path, sentinel_list: list[str], service: str | None) -> Path:
    data = shipped("watchdog.yaml")
    data["lock"] = {"url": "redis://127.0.0.1:1/3", "sentinels": sentinel_list,
                    "service_name": service, "ttl": "15s", "socket_timeout": "0.5s"}
    if service is None:
        del data["lock"]["service_name"]
    return write(tmp_path, data)


async def test_the_lock_follows_the_master_the_sentinels_name_across_a_failover(
    sentinels: SentinelSet, tmp_path: Path,
) -> None:
    config = load_config(sentinel_config(tmp_path, sentinels.addresses, SERVICE))
    assert config.lock.store_url.endswith(f"/{SERVICE}/3")
    lock = build_lock(config, holder="west-watchdog")
    try:
        lease = await lock.acquire()
        assert lease is not None
        assert await lock.current() == ("west-watchdog", lease.epoch)
        # Database 3 of the master, as the url says: the Sentinel set is not the url's host.
        assert sentinels.master.port == sentinels.master_port()
        assert sentinels.wait_replicated() == 1  # the replica holds the lock's keys

        old = sentinels.master_port()
        sentinels.master.kill()
        new = sentinels.wait_failover(old)
        assert new == sentinels.replica.port

        deadline = time.monotonic() + 10
        current = None
        failures = 0
        while time.monotonic() < deadline:
            try:
                current = await lock.current()
                break
            except LockUnavailable:
                failures += 1
                await asyncio.sleep(0.1)
        # The replicated lease survived the failover on the new master.
        assert current == ("west-watchdog", lease.epoch), (current, failures)
        renewed = await lock.renew(lease)
        assert renewed is not None
        assert renewed.epoch == lease.epoch
    finally:
        await lock.close()


def test_a_forced_sentinel_failover_promotes_the_replica_and_demotes_the_master(
    sentinels: SentinelSet,
) -> None:
    assert sentinels.master_server() is sentinels.master
    old = sentinels.master_port()

    sentinels.force_failover()  # the campaign's sentinel_failover fault, mode 0

    assert sentinels.wait_failover(old) == sentinels.replica.port
    assert sentinels.master_server() is sentinels.replica


async def test_the_journal_opens_through_the_sentinels_too(
    sentinels: SentinelSet, tmp_path: Path,
) -> None:
    config = load_config(sentinel_config(tmp_path, sentinels.addresses, SERVICE))
    journal = build_journal(config)
    try:
        assert await journal.active() is None
    finally:
        await journal.close()


def test_sentinels_without_a_service_name_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="service_name"):
        load_config(sentinel_config(tmp_path, ["127.0.0.1:26379"], None))


def test_a_sentinel_entry_that_is_not_host_port_is_named(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        load_config(sentinel_config(tmp_path, ["127.0.0.1"], "x"))
