"""``backup prune``: apply the retention plan (:mod:`agentaskit_dr.backup.retention`) to
both buckets. A backup's record is deleted first, so a backup half deleted by a crash
is a leftover, never a good backup with objects missing."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from agentaskit_dr.backup.catalog import read_catalog
from agentaskit_dr.backup.crypto import KeyRing
from agentaskit_dr.backup.manifest import BASE_PREFIX, RECORD_NAME, object_key
from agentaskit_dr.backup.retention import PrunePlan, WalFile, plan_prune

if TYPE_CHECKING:
    from agentaskit_dr.backup.store import BackupStore
    from agentaskit_dr.config import BackupConfig

log = structlog.get_logger(__name__)

#: The archived WAL files with their keys: (file, key) pairs.
WalFiles = Callable[["BackupStore"], Awaitable[Sequence[tuple[WalFile, str]]]]


async def prune(config: BackupConfig, *, dry_run: bool, wal_files: WalFiles | None = None,
                now: float | None = None) -> PrunePlan:
    """Plan, and unless ``dry_run`` carry out, the deletions; the plan."""
    from agentaskit_dr.backup.store import BackupStore

    keyring = KeyRing.from_config(config.encryption)
    moment = time.time() if now is None else now
    async with BackupStore(config.storage) as store:
        catalog = await read_catalog(store, keyring)
        wal = list(await wal_files(store)) if wal_files is not None else []
        retention = config.postgresql
        plan = plan_prune(
            catalog.records, catalog.leftovers.items(), [item for item, _ in wal], now=moment,
            full_retention=retention.full.retention,
            incremental_retention=retention.incremental.retention,
            wal_retention=retention.wal.retention)
        if dry_run:
            return plan
        for backup_id in [*plan.delete_backups, *plan.delete_leftovers]:
            await store.delete([object_key(backup_id, RECORD_NAME)])
            keys = [info.key for info in await store.list(f"{BASE_PREFIX}{backup_id}/")]
            await store.delete(keys)
            log.info("backup_pruned", backup_id=backup_id, objects=len(keys) + 1)
        doomed = set(plan.delete_wal)
        wal_keys = [key for item, key in wal if item.name in doomed]
        if wal_keys:
            await store.delete(wal_keys)
            log.info("wal_pruned", segments=len(wal_keys))
    return plan
