"""What the config says about fencing a region's server: its control, where it should stream
from once fenced, and what the lock store and the other region's server say of the primary.

The glue between ``config`` and the fence actuators (which know nothing of the config).
``primary_sources`` asks :func:`record_says` and :func:`other_server_says` for the
``start-gate`` (``start_gate``) and ``unfence`` (``fence_lift``) commands;
:func:`server_control` and :func:`primary_conninfo_for` serve whoever calls
``fence_server``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import structlog

from agentaskit_dr.actuators.fence import (
    PromotionRefused,
    describe_dsn,
    read_marker_epoch,
    session,
)
from agentaskit_dr.actuators.pg_control import ServerControl
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.ports import ClusterPrimary, LockUnavailable
from agentaskit_dr.redaction import redact_url

log = structlog.get_logger(__name__)


def server_control(config: WatchdogConfig, region: str) -> ServerControl | None:
    """``regions.<region>.database.control`` for the actuators; None when not configured."""
    control = config.regions[region].database.control
    if control is None:
        return None
    return ServerControl(
        data_directory=control.data_directory,
        os_user=control.os_user,
        bin_dir=control.bin_dir,
        stop_timeout=control.stop_timeout,
    )


def other_region(config: WatchdogConfig, region: str) -> str:
    """The region of the two that is not ``region``."""
    return next(name for name in config.regions if name != region)


def primary_conninfo_for(config: WatchdogConfig, region: str) -> str:
    """A ``primary_conninfo`` pointing at ``region``'s server, for a fenced server's restart.

    Host, port and user of that region's DSN, never its password: a restart in recovery
    streams once that role may replicate (REPLICATION, pg_hba, the OS user's ``~/.pgpass``)
    and otherwise waits, read-only, which is all the fence needs. Failback writes its own.
    """
    parts = urlsplit(config.regions[region].database.dsn)
    words = [f"host={parts.hostname or 'localhost'}"]
    try:
        if parts.port:
            words.append(f"port={parts.port}")
    except ValueError:
        pass
    if parts.username:
        words.append(f"user={_conninfo_value(unquote(parts.username))}")
    words.append(f"application_name={_conninfo_value(f'agentaskit-dr-fenced-{region}')}")
    return " ".join(words)


def _conninfo_value(value: str) -> str:
    if value and all(ch.isalnum() or ch in "-_." for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class SourceAnswer:
    """What one source (the lock store, a server, a peer) says of the primary's place.

    ``elsewhere``: why this region's server must not run as primary (None: nothing says
    so). ``silent``: the source did not answer, and why (None: it answered).
    """

    elsewhere: str | None = None
    silent: str | None = None


async def primary_elsewhere(config: WatchdogConfig, region: str) -> str | None:
    """Why ``region``'s server must not run as primary, or None when nothing says so.

    The one seam for "is the cluster's primary in another region?". First the cluster
    record in the lock store (:func:`record_says`), then the other region's server
    (:func:`other_server_says`). A store or server that does not answer tells nothing
    here; the start gate and ``unfence`` (``primary_sources``) also refuse when nothing
    answered at all.
    """
    recorded = await record_says(config, region)
    if recorded.elsewhere is not None:
        return recorded.elsewhere
    return (await other_server_says(config, region)).elsewhere


async def record_says(config: WatchdogConfig, region: str) -> SourceAnswer:
    """The cluster record in the lock store: a failover records the region it promoted."""
    try:
        recorded = await read_recorded_primary(config)
    except LockUnavailable as exc:
        log.info("cluster_record_unknown", reason=str(exc))
        return SourceAnswer(silent=f"lock store {redact_url(config.lock.store_url)}: "
                                   f"{str(exc)[:200]}")
    if recorded is not None and recorded.region != region:
        return SourceAnswer(
            f"the cluster record in the lock store says the primary is in "
            f"{recorded.region} since the failover of epoch {recorded.epoch} "
            f"(run {recorded.run_id})")
    return SourceAnswer()


async def other_server_says(config: WatchdogConfig, region: str) -> SourceAnswer:
    """The other region's server: it answers, is not in recovery, and carries a
    fencing-epoch marker newer than this region's (unknown counts as none) -- it was
    promoted after this one."""
    other = other_region(config, region)
    timeout = config.probe.timeout
    other_dsn = config.regions[other].database.connect_dsn()
    try:
        async with session(other_dsn, role=f"{other} server", io_timeout=timeout) as conn:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                return SourceAnswer()
            other_epoch = await read_marker_epoch(conn)
    except PromotionRefused as exc:
        log.info("primary_elsewhere_unknown", region=other, reason=exc.reason)
        return SourceAnswer(silent=exc.reason[:200])
    if other_epoch is None:
        return SourceAnswer()
    local_epoch = await _local_marker(config, region)
    if local_epoch is not None and local_epoch >= other_epoch:
        return SourceAnswer()
    local = "none" if local_epoch is None else str(local_epoch)
    return SourceAnswer(
        f"region {other}'s server {describe_dsn(other_dsn)} is a primary promoted under "
        f"epoch {other_epoch} (this region's marker: {local})"
    )


async def recorded_primary(config: WatchdogConfig) -> ClusterPrimary | None:
    """The cluster's primary as the lock store records it; None if none is recorded or the
    store cannot be read (logged)."""
    try:
        return await read_recorded_primary(config)
    except LockUnavailable as exc:
        log.info("cluster_record_unknown", reason=str(exc))
        return None


async def read_recorded_primary(config: WatchdogConfig) -> ClusterPrimary | None:
    """The cluster's primary as the lock store records it (None: none recorded);
    LockUnavailable when the store cannot be read."""
    lock = config.lock
    store = RedisClusterStore(lock.store_url, key_prefix=lock.key_prefix,
                              socket_timeout=lock.socket_timeout, password=lock.password_value())
    try:
        return (await store.read()).primary
    finally:
        await store.close()


async def _local_marker(config: WatchdogConfig, region: str) -> int | None:
    dsn = config.regions[region].database.connect_dsn()
    try:
        async with session(dsn, role=f"{region} server", io_timeout=config.probe.timeout) as conn:
            return await read_marker_epoch(conn)
    except PromotionRefused:
        return None
