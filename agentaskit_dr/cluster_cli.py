"""The CLI's side of the cluster record: controls written straight to the lock store, and
the cluster's current primary for the on-call commands.

``pause``, ``resume`` and ``ack`` go through a watchdog's API when one answers; when none
does (every daemon down, or the API unreachable) and ``--config`` names the lock store,
they are written to the store directly, so the controls never depend on a live daemon.
"""

from __future__ import annotations

import getpass
import socket
import sys
import time
from typing import Any

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import ClusterRecord, LockUnavailable


def operator() -> str:
    """``user@host`` of whoever runs the command, for the record's "by"."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def record_summary(record: ClusterRecord) -> dict[str, Any]:
    """The record as the CLI prints it (wall times as UTC text)."""
    controls, primary = record.controls, record.primary
    return {
        "paused": controls.paused,
        "pause_reason": controls.pause_reason or None,
        "paused_by": controls.paused_by or None,
        "paused_at": _utc(controls.paused_at) if controls.paused_at else None,
        "ack_generation": controls.ack_generation,
        "acked_by": controls.acked_by or None,
        "primary_region": primary.region if primary else None,
        "primary_epoch": primary.epoch if primary else None,
        "primary_run_id": primary.run_id if primary else None,
    }


async def store_control(config: WatchdogConfig, action: str, reason: str | None) -> dict[str, Any]:
    """Write ``pause``/``resume``/``ack`` to the lock store; the record after it.

    Raises LockUnavailable when the store cannot be reached either.
    """
    from agentaskit_dr.runtime.builders import build_cluster_store

    store = build_cluster_store(config)
    try:
        by = f"{operator()} (lock store, no watchdog answered)"
        if action == "pause":
            record = await store.pause(reason=reason or "", by=by)
        elif action == "resume":
            record = await store.resume(by=by)
        else:
            record = await store.acknowledge(by=by)
    finally:
        await store.close()
    return {"cluster": record_summary(record),
            "note": "written to the lock store; every watchdog applies it at its next read"}


async def store_status(config: WatchdogConfig) -> dict[str, Any]:
    """The cluster record read from the lock store (when no watchdog answers)."""
    from agentaskit_dr.runtime.builders import build_cluster_store

    store = build_cluster_store(config)
    try:
        record = await store.read()
    finally:
        await store.close()
    return {"cluster": record_summary(record),
            "note": "no watchdog answered: the cluster record as the lock store keeps it"}


async def following_cluster_primary(config: WatchdogConfig) -> WatchdogConfig:
    """``config`` with the cluster's current primary region, as the lock store records it.

    After a failover the file still names the old primary; the record names the region
    that serves now. A store that cannot be read leaves the file's choice, with a warning.
    """
    from agentaskit_dr.runtime.builders import build_cluster_store

    store = build_cluster_store(config)
    try:
        record = await store.read()
    except LockUnavailable as exc:
        print(f"warning: cannot read the cluster record ({exc}); using the primary region "
              f"of the file, {config.primary_region}", file=sys.stderr)
        return config
    finally:
        await store.close()
    primary = record.primary
    if primary is None or primary.region == config.primary_region:
        return config
    if primary.region not in config.regions:
        print(f"warning: the cluster record names primary region {primary.region!r}, which "
              f"the file does not define; using {config.primary_region}", file=sys.stderr)
        return config
    print(f"primary region {primary.region} (from the cluster record: failover "
          f"{primary.run_id} under epoch {primary.epoch}; the file says "
          f"{config.primary_region})", file=sys.stderr)
    return config.with_primary(primary.region)


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
