"""A lock store that lost its data must not wedge the system (issue 8, epoch floor).

Real redis-server restarted empty (the epoch counter starts again at 1) while the targets
keep the epochs earlier failovers recorded: the PostgreSQL marker row, the Route 53 TXT
marker (moto server), the deployments' annotations (Kubernetes API emulation). The
keeper, built as the daemon builds it, must take the lock under an epoch above all of
them, so the next promotion, DNS switch or scale is accepted rather than refused as stale.
On today's code the new lease has epoch 1 and every one of these targets refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.config import WatchdogConfig, load_config
from agentaskit_dr.ports import Lease, StaleEpoch
from agentaskit_dr.runtime.builders import (
    build_cluster_store,
    build_journal,
    build_lock,
    epoch_floor_reader,
)
from agentaskit_dr.runtime.epoch_floor import watching_stale_epochs
from agentaskit_dr.runtime.leadership import LeadershipKeeper
from agentaskit_dr.runtime.runbook_hooks import build_hooks, dns, promoter, scaler
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    aws_credentials_fixture,  # noqa: F401
    create_zone,
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
    upsert,
)
from tests.integration.kube_api import KubeApi, kube_api_fixture  # noqa: F401

pytestmark = pytest.mark.integration

WEST, EAST = "us-west-2", "us-east-1"
RECORD = "api.agentaskit.example"
NAMESPACE = "agentaskit-production"


def watchdog_config(tmp_path: Path, pair: PostgresPair, redis: RedisServer,
                    **sections: Any) -> WatchdogConfig:
    """The daemon's config for the pair and Redis, plus ``sections`` (dns, regions...)."""
    dsn = {WEST: pair.primary.dsn, EAST: pair.replica.dsn}
    regions: dict[str, Any] = {
        name: {"health_urls": ["http://127.0.0.1:9/health"], "database": {"dsn": dsn[name]}}
        for name in (WEST, EAST)
    }
    for name, extra in sections.pop("regions", {}).items():
        regions[name].update(extra)
    data = {
        "region": EAST, "primary_region": WEST, "node_name": "floor-test",
        "regions": regions,
        "probe": {"interval": "2s", "timeout": "1s"},
        "lock": {"url": redis.url, "ttl": "3s", "socket_timeout": "0.5s"},
        "api": {"listen": None},
        "evidence_dir": str(tmp_path / "evidence"),
        **sections,
    }
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@contextlib.asynccontextmanager
async def daemon_keeper(config: WatchdogConfig) -> AsyncIterator[LeadershipKeeper]:
    """The keeper as the daemon builds it (lock, journal and record on one client), running."""
    lock = build_lock(config)
    journal = build_journal(config, client=lock.client)
    cluster = build_cluster_store(config, client=lock.client)
    keeper = LeadershipKeeper(lock, ttl=config.lock.ttl,
                              epoch_floor=epoch_floor_reader(lambda: config, journal, cluster))
    task = asyncio.create_task(keeper.run())
    try:
        yield keeper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await lock.close()


async def lease_of(keeper: LeadershipKeeper, *, above: int = 0) -> Lease:
    """The keeper's lease once it holds one under an epoch above ``above`` (at most 15 s)."""
    for _ in range(1500):
        lease = keeper.lease
        if lease is not None and lease.epoch > above:
            return lease
        await asyncio.sleep(0.01)
    raise AssertionError(f"the keeper held no lease above epoch {above} within 15 s")


def lost_its_data(redis: RedisServer) -> None:
    """A lock store without persistence restarted: every key, the epoch counter too, gone."""
    redis.restart()


def record_marker(pair: PostgresPair, epoch: int) -> None:
    """The marker row a promotion under ``epoch`` left on the primary (and its standby)."""
    pair.primary.sql(
        "CREATE SCHEMA agentaskit_dr; "
        "CREATE TABLE agentaskit_dr.failover_epoch (id int PRIMARY KEY CHECK (id = 1), "
        "epoch bigint NOT NULL, holder text NOT NULL, failover_id text NOT NULL, "
        "promoted_at timestamptz NOT NULL DEFAULT now()); "
        f"INSERT INTO agentaskit_dr.failover_epoch VALUES (1, {epoch}, 'watchdog-west', "
        f"'fo-e{epoch}')"
    )
    pair.wait_replayed()


async def test_redis_restarted_empty_next_lease_is_above_the_marker_row_and_promotion_is_accepted(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    record_marker(pg_pair, 7)
    lost_its_data(redis_server)
    config = watchdog_config(tmp_path, pg_pair, redis_server)

    async with daemon_keeper(config) as keeper:
        lease = await lease_of(keeper)
        assert lease.epoch == 8

        async def still_leader() -> bool:
            held = await keeper.verified_lease()
            return held is not None and held.epoch == lease.epoch

        pg_pair.primary.kill()
        result = await promoter(config, WEST, EAST).promote(
            epoch=lease.epoch, holder=lease.holder, failover_id="fo-after-restart",
            primary_last_lsn=None, still_leader=still_leader, force=True)

    assert not result.already_promoted
    assert pg_pair.replica.sql(
        "SELECT epoch FROM agentaskit_dr.failover_epoch WHERE id = 1").strip() == "8"


async def test_redis_restarted_empty_next_lease_is_above_the_route53_txt_marker(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer, moto_server: str,
) -> None:
    zone = await create_zone(moto_server, "agentaskit.example")
    await upsert(moto_server, zone, RECORD, "CNAME", "west-lb.agentaskit.example")
    config = watchdog_config(
        tmp_path, pg_pair, redis_server,
        regions={WEST: {"dns_target": "west-lb.agentaskit.example"},
                 EAST: {"dns_target": "east-lb.agentaskit.example"}},
        dns={"route53": {"hosted_zone_id": zone, "record_name": RECORD,
                         "endpoint_url": moto_server}},
    )
    await apply_and_close(dns(config, WEST, EAST), epoch=12, run="fo-e12")
    lost_its_data(redis_server)

    async with daemon_keeper(config) as keeper:
        lease = await lease_of(keeper)
        assert lease.epoch == 13
        # The switch back under the new epoch is accepted (12 would refuse anything lower).
        await apply_and_close(dns(config, EAST, WEST), epoch=lease.epoch, run="fo-back")


async def test_redis_restarted_empty_next_lease_is_above_the_deployments_annotations(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer, kube_api: KubeApi,
) -> None:
    kube_api.add_deployment(NAMESPACE, "api", 4)
    kube_api.add_deployment(NAMESPACE, "worker", 3)
    config = watchdog_config(
        tmp_path, pg_pair, redis_server,
        regions={EAST: {"kubernetes": {"api_url": kube_api.url, "namespace": NAMESPACE,
                                       "ready_timeout": "10s"}}},
    )
    await apply_and_close(scaler(config, WEST, EAST), epoch=15, run="fo-e15")
    lost_its_data(redis_server)

    async with daemon_keeper(config) as keeper:
        lease = await lease_of(keeper)
        assert lease.epoch == 16
        await apply_and_close(scaler(config, WEST, EAST), epoch=lease.epoch, run="fo-e16")
    assert kube_api.get(NAMESPACE, "api").annotations["agentaskit-dr/epoch"] == "16"


async def test_a_stale_dns_marker_met_while_holding_raises_the_epoch_and_the_retry_lands(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer, moto_server: str,
) -> None:
    zone = await create_zone(moto_server, "agentaskit.example")
    await upsert(moto_server, zone, RECORD, "CNAME", "west-lb.agentaskit.example")
    config = watchdog_config(
        tmp_path, pg_pair, redis_server,
        regions={WEST: {"dns_target": "west-lb.agentaskit.example"},
                 EAST: {"dns_target": "east-lb.agentaskit.example"}},
        dns={"route53": {"hosted_zone_id": zone, "record_name": RECORD,
                         "endpoint_url": moto_server}},
    )
    async with daemon_keeper(config) as keeper:
        lease = await lease_of(keeper)
        # Someone switched the record under a much newer epoch after we took the lock.
        await apply_and_close(dns(config, WEST, EAST), epoch=lease.epoch + 10, run="fo-other")
        hooks = watching_stale_epochs(build_hooks(), keeper.request_epoch_floor)
        with pytest.raises(StaleEpoch):
            await apply_and_close(hooks.dns(config, EAST, WEST), epoch=lease.epoch, run="fo-me")
        raised = await lease_of(keeper, above=lease.epoch)
        assert raised.epoch == lease.epoch + 11
        assert raised.token == lease.token  # the same holding, lifted
        await apply_and_close(hooks.dns(config, EAST, WEST), epoch=raised.epoch, run="fo-me")


async def apply_and_close(actuator: Any, *, epoch: int, run: str) -> None:
    assert actuator is not None
    try:
        await actuator.apply(epoch=epoch, failover_id=run)
    finally:
        await actuator.close()
