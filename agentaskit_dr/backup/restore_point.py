"""What an incremental is on PostgreSQL < 17: a verified restore point.

Those servers cannot take a block-level incremental backup. Their hourly "incremental"
is a named restore point (``pg_create_restore_point``) on top of the latest full backup,
made durable by switching WAL segment and waiting for the archive to hold it, and kept
only once the archive holds every segment from the full backup's start to the point.
Restoring it means restoring the full backup and replaying archived WAL to its LSN: it
costs no upload, and it proves the hour's WAL is restorable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agentaskit_dr.backup.crypto import KeyRing, encrypt_bytes
from agentaskit_dr.backup.manifest import (
    RECORD_NAME,
    BackupRecord,
    new_backup_id,
    object_key,
    parse_lsn,
)
from agentaskit_dr.backup.pgtools import BackupSourceError, ServerFacts, connect_dsn
from agentaskit_dr.backup.walchain import missing_segments

if TYPE_CHECKING:
    from agentaskit_dr.backup.run import Decision
    from agentaskit_dr.backup.store import BackupStore
    from agentaskit_dr.config import BackupConfig

#: How long the archive may take to ship the segment holding the restore point.
ARCHIVE_WAIT = 120.0


async def take_restore_point(
    config: BackupConfig, store: BackupStore, keyring: KeyRing, *, facts: ServerFacts,
    decision: Decision, clock: Callable[[], float], taken: set[str],
) -> BackupRecord:
    """Create the point, wait for its WAL in the archive, check the chain, write the record."""
    import asyncpg

    from agentaskit_dr.backup.wal_listing import list_wal

    full = decision.parent
    assert full is not None
    started_at = clock()
    backup_id = new_backup_id(started_at, "restore-point", taken)
    conn = await asyncpg.connect(connect_dsn(config.postgresql), timeout=10)
    try:
        lsn = await conn.fetchval("SELECT pg_create_restore_point($1)::text", backup_id)
        await conn.execute("SELECT pg_switch_wal()")
    except asyncpg.PostgresError as exc:
        raise BackupSourceError(f"cannot create restore point {backup_id}: {exc}") from None
    finally:
        await conn.close()
    deadline = time.monotonic() + ARCHIVE_WAIT
    while True:
        names, histories = await list_wal(store, keyring)
        gaps = missing_segments(names, histories, timeline=full.timeline,
                                start_lsn=parse_lsn(full.start_lsn), end_lsn=parse_lsn(lsn),
                                segment_size=full.wal_segment_size)
        if not gaps:
            break
        if time.monotonic() > deadline:
            raise BackupSourceError(f"restore point {backup_id} at {lsn}: {gaps[0]} in the "
                                    f"archive after {ARCHIVE_WAIT:g}s (is archive_command "
                                    "working?)")
        await asyncio.sleep(1.0)
    record = BackupRecord(
        backup_id=backup_id, kind="restore-point", parent=full.backup_id,
        chain=(full.backup_id, backup_id), pg_version=facts.version,
        system_identifier=facts.system_identifier, timeline=facts.timeline, start_lsn=lsn,
        stop_lsn=lsn, started_at=started_at, stopped_at=clock(),
        database_bytes=full.database_bytes, key_id=keyring.current_id, compression="none",
        notes={"wal_verified_from": full.start_lsn},
    )
    key = object_key(backup_id, RECORD_NAME)
    await store.put_bytes(key, encrypt_bytes(keyring, key, record.to_json()))
    return record
