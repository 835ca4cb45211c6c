"""``backup run``: one base backup, uploaded encrypted to both buckets, its record last.

Order of writes: the tar stream (multipart, both buckets), PostgreSQL's
``backup_manifest``, then ``backup.json``. A run that dies before the record leaves no
backup that ``backup list`` or a restore would use; the next run aborts the multipart
uploads it left and ``backup prune`` removes its objects.

Which kind runs: ``incremental`` becomes ``full`` when there is no full backup of this
server yet, or the server's timeline changed since the last full (a promotion, failover
or failback: incremental chains across a timeline switch have had correctness bugs). On
PostgreSQL 17 and newer an incremental is ``pg_basebackup --incremental`` on top of the
newest backup of the chain; older servers get a restore point (see ``restore_point``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agentaskit_dr.backup.basebackup import COMPRESSION, StreamResult, stream_basebackup
from agentaskit_dr.backup.catalog import Catalog, read_catalog
from agentaskit_dr.backup.crypto import (
    BackupKeyError,
    KeyRing,
    decrypt_bytes,
    encrypt_bytes,
    encrypt_stream,
)
from agentaskit_dr.backup.manifest import (
    BASE_PREFIX,
    PG_MANIFEST_NAME,
    RECORD_NAME,
    TAR_NAME,
    BackupRecord,
    Kind,
    StoredObject,
    new_backup_id,
    object_key,
    read_pg_manifest,
)
from agentaskit_dr.backup.pgtools import BackupSourceError, ServerFacts, server_facts

if TYPE_CHECKING:
    from agentaskit_dr.backup.store import BackupStore, ObjectInfo
    from agentaskit_dr.config import BackupConfig

log = structlog.get_logger(__name__)

#: A multipart upload older than this under ``base/`` belongs to a dead run.
STALE_UPLOAD_AGE = 60.0
INCREMENTAL_MIN_MAJOR = 17
#: The largest object one S3 CopyObject copies.
COPY_LIMIT = 5 << 30


@dataclass(frozen=True, slots=True)
class Decision:
    """The kind a run takes, and on top of what."""

    kind: Kind
    parent: BackupRecord | None
    reason: str


def decide(requested: Kind, facts: ServerFacts, catalog: Catalog) -> Decision:
    """Which backup to take (pure; see the module docstring)."""
    if requested == "full":
        return Decision("full", None, "full backup asked for")
    full = catalog.latest(("full",), system_identifier=facts.system_identifier)
    if full is None:
        return Decision("full", None, "no full backup of this server yet")
    if full.timeline != facts.timeline:
        return Decision("full", None, f"timeline changed from {full.timeline} to "
                        f"{facts.timeline} since full backup {full.backup_id} (a promotion, "
                        "failover or failback): the next backup is a full one")
    chain = [r for r in catalog.records if r.chain[0] == full.backup_id
             and r.kind in ("full", "incremental")]
    parent = chain[-1]
    if facts.major < INCREMENTAL_MIN_MAJOR:
        return Decision("restore-point", full, f"PostgreSQL {facts.major} has no block-level "
                        "incremental backup: a restore point on top of " + full.backup_id)
    return Decision("incremental", parent, f"incremental on top of {parent.backup_id}")


async def run_backup(
    config: BackupConfig,
    requested: Kind,
    *,
    on_bytes: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.time,
    stale_upload_age: float = STALE_UPLOAD_AGE,
) -> tuple[BackupRecord, Decision]:
    """Take one backup; the record written and the decision that chose its kind.

    Refuses (writing nothing) when the newest backup's record cannot be read: with a
    wrong key every record fails to authenticate, and a backup under that key would
    start a chain nothing else can read.
    """
    from agentaskit_dr.backup.store import BackupStore

    keyring = KeyRing.from_config(config.encryption)
    facts = await server_facts(config.postgresql)
    if facts.in_recovery:
        raise BackupSourceError("postgresql.dsn: the server is a standby; back up the primary")
    async with BackupStore(config.storage) as store:
        catalog = await read_catalog(store, keyring)
        newest = max([*catalog.broken, *(r.backup_id for r in catalog.records)], default=None)
        if newest in catalog.broken:
            raise BackupKeyError(
                f"the newest backup's record cannot be read ({catalog.broken[newest]}): a "
                "wrong encryption key? Nothing was written")
        aborted = await store.abort_stale_uploads(BASE_PREFIX, stale_upload_age)
        if aborted:
            log.info("backup_stale_uploads_aborted", count=aborted)
        decision = decide(requested, facts, catalog)
        log.info("backup_started", kind=decision.kind, requested=requested,
                 reason=decision.reason)
        if decision.kind == "restore-point":
            from agentaskit_dr.backup.restore_point import take_restore_point

            record = await take_restore_point(config, store, keyring, facts=facts,
                                              decision=decision, clock=clock,
                                              taken=catalog.ids)
        else:
            record = await _base_backup(config, store, keyring, facts=facts, decision=decision,
                                        clock=clock, on_bytes=on_bytes, taken=catalog.ids)
    log.info("backup_finished", backup_id=record.backup_id, kind=record.kind,
             stored_bytes=record.stored_bytes, seconds=round(record.stopped_at -
                                                              record.started_at, 3))
    return record, decision


async def upload_once(config: BackupConfig, store: BackupStore, key: str,
                      chunks: AsyncIterator[bytes]) -> ObjectInfo:
    """Upload a stream to the primary bucket, then (``replication: client``) copy it into
    the replica inside S3: the bytes leave this host once, and the second bucket costs a
    server-side copy, not a second upload. Past S3's 5 GiB copy limit the replica's copy
    is streamed from the primary instead."""
    from agentaskit_dr.backup.store import BackupStore

    if config.storage.replication != "client":
        return await store.put_stream(key, chunks)
    storage = config.storage
    async with BackupStore(storage.model_copy(update={"replication": "s3"})) as primary:
        info = await primary.put_stream(key, chunks)
    if info.size <= COPY_LIMIT:
        await store.copy_to_replica(key)
        return info
    swapped = storage.model_copy(update={"primary": storage.replica, "replica": storage.primary,
                                         "replication": "s3"})
    async with BackupStore(swapped) as replica:
        await replica.put_stream(key, store.get_stream(key))
    return info


async def _base_backup(
    config: BackupConfig,
    store: BackupStore,
    keyring: KeyRing,
    *,
    facts: ServerFacts,
    decision: Decision,
    clock: Callable[[], float],
    on_bytes: Callable[[int], None] | None,
    taken: set[str],
) -> BackupRecord:
    started_at = clock()
    backup_id = new_backup_id(started_at, decision.kind, taken)
    parent = decision.parent
    with tempfile.TemporaryDirectory(prefix="agentaskit-dr-backup-") as scratch:
        previous: Path | None = None
        if decision.kind == "incremental":
            assert parent is not None
            if not facts.summarize_wal:
                raise BackupSourceError("an incremental backup needs summarize_wal = on on "
                                        "the server (PostgreSQL 17+)")
            key = object_key(parent.backup_id, PG_MANIFEST_NAME)
            previous = Path(scratch) / PG_MANIFEST_NAME
            previous.write_bytes(decrypt_bytes(keyring, key, await store.get_bytes(key)))
        stream = StreamResult()
        tar_key = object_key(backup_id, TAR_NAME)
        tar_info = await upload_once(config, store, tar_key, encrypt_stream(
            keyring, tar_key, stream_basebackup(
                config.postgresql, stream, label=f"agentaskit-dr {backup_id}",
                incremental_from=previous, on_bytes=on_bytes)))
    stopped_at = clock()
    wal = read_pg_manifest(stream.pg_manifest)
    manifest_key = object_key(backup_id, PG_MANIFEST_NAME)
    manifest_info = await store.put_bytes(
        manifest_key, encrypt_bytes(keyring, manifest_key, stream.pg_manifest))
    assert tar_info.sha256 is not None
    assert manifest_info.sha256 is not None
    record = BackupRecord(
        backup_id=backup_id, kind=decision.kind,
        parent=parent.backup_id if parent is not None else None,
        chain=(*(parent.chain if parent is not None else ()), backup_id),
        pg_version=facts.version, system_identifier=facts.system_identifier,
        timeline=wal.timeline, start_lsn=wal.start_lsn, stop_lsn=wal.end_lsn,
        started_at=started_at, stopped_at=stopped_at, database_bytes=wal.database_bytes,
        key_id=keyring.current_id, compression=COMPRESSION,
        objects=(
            StoredObject(TAR_NAME, tar_info.size, tar_info.sha256, stream.compressed_bytes),
            StoredObject(PG_MANIFEST_NAME, manifest_info.size, manifest_info.sha256,
                         len(stream.pg_manifest)),
        ),
    )
    record_key = object_key(backup_id, RECORD_NAME)
    await store.put_bytes(record_key, encrypt_bytes(keyring, record_key, record.to_json()))
    return record
