"""The daemon's parts built from the config: probes, promoter, lock, journal, cluster
record and the epoch floor reader. The daemon (``runtime/supervisor.py``) and the on-call
commands build them the same way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis

from agentaskit_dr.actuators.promote import PostgresPromoter
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.journal import RedisJournal
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.ports import Observation, Probe
from agentaskit_dr.probes.postgres import PostgresProbe
from agentaskit_dr.probes.region_health import RegionHealthProbe
from agentaskit_dr.runtime.engine import PRIMARY_DB, STANDBY_DB
from agentaskit_dr.runtime.epoch_floor import (
    epoch_sources,
    highest_recorded_epoch,
)
from agentaskit_dr.runtime.runbook_hooks import promoter


def build_probes(config: WatchdogConfig) -> Sequence[Probe[Observation]]:
    """The probe set for the current topology: both databases and both regions' health."""
    timeout = config.probe.timeout
    primary = config.regions[config.primary_region]
    standby = config.regions[config.secondary_region]
    probes: list[Probe[Observation]] = [
        PostgresProbe(PRIMARY_DB, primary.database.connect_dsn(), timeout=timeout,
                      session_max_age=config.probe.session_max_age),
        PostgresProbe(STANDBY_DB, standby.database.connect_dsn(), timeout=timeout,
                      session_max_age=config.probe.session_max_age),
    ]
    for name, region in config.regions.items():
        probes.append(RegionHealthProbe(
            name, region.health_urls, timeout=timeout,
            healthy_fraction=config.probe.healthy_fraction,
            session_max_age=config.probe.session_max_age,
        ))
    return probes


def build_promoter(config: WatchdogConfig) -> PostgresPromoter:
    """The promoter for the current topology: the standby region takes over."""
    return promoter(config, config.primary_region, config.secondary_region)


def build_lock(config: WatchdogConfig, *, holder: str | None = None) -> RedisLeaderLock:
    """The leader lock as ``holder`` (default: this watchdog's identity)."""
    lock = config.lock
    return RedisLeaderLock(
        lock.store_url,
        holder=holder or config.holder,
        ttl=lock.ttl,
        margin=lock.margin,
        key_prefix=lock.key_prefix,
        socket_timeout=lock.socket_timeout,
        password=lock.password_value(),
    )


def build_journal(config: WatchdogConfig, *, client: Redis | None = None) -> RedisJournal:
    """The run journal next to the lock; on the lock's own ``client`` when given."""
    lock = config.lock
    return RedisJournal(lock.store_url, key_prefix=lock.key_prefix,
                        socket_timeout=lock.socket_timeout, password=lock.password_value(),
                        client=client)


def build_cluster_store(config: WatchdogConfig, *,
                        client: Redis | None = None) -> RedisClusterStore:
    """The cluster record next to the lock; on the lock's own ``client`` when given."""
    lock = config.lock
    return RedisClusterStore(lock.store_url, key_prefix=lock.key_prefix,
                             socket_timeout=lock.socket_timeout,
                             password=lock.password_value(), client=client)


def epoch_floor_reader(config: Callable[[], WatchdogConfig], journal: RedisJournal | None,
                       cluster: RedisClusterStore | None) -> Callable[[], Awaitable[int]]:
    """The highest epoch the targets of the current config recorded (the keeper's floor).

    Each source gets the probe timeout, and at most a third of the lock TTL (the keeper
    also bounds the whole read by that).
    """

    async def read() -> int:
        current = config()
        within = min(current.probe.timeout, current.lock.ttl / 3)
        return await highest_recorded_epoch(
            epoch_sources(current, journal=journal, cluster=cluster), each_within=within)

    return read
