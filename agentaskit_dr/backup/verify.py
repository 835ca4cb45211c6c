"""``verify-backup``: every object of every good backup, in both buckets, checked.

For each backup (oldest first) and each of its objects: present in the primary and the
replica bucket with the size and SHA-256 its record gives; the primary's copy decrypts
and authenticates to the end; PostgreSQL's ``backup_manifest`` agrees with the record's
WAL range. Then the WAL chain (see :mod:`agentaskit_dr.backup.walchain`) has no gap from
each backup's start: to its stop for backups older than the point-in-time window, to
the newest archived segment for the others. Broken records are problems; runs that
never wrote a record are not (``backup prune`` removes them).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from agentaskit_dr.backup.catalog import read_catalog
from agentaskit_dr.backup.crypto import KeyRing, ObjectTampered, decrypt_stream
from agentaskit_dr.backup.fetch import BackupDamaged, checked_stream
from agentaskit_dr.backup.manifest import (
    PG_MANIFEST_NAME,
    RECORD_NAME,
    BackupRecord,
    RecordError,
    object_key,
    parse_lsn,
    read_pg_manifest,
)
from agentaskit_dr.backup.walchain import missing_segments

if TYPE_CHECKING:
    from agentaskit_dr.backup.store import BackupStore
    from agentaskit_dr.config import BackupConfig

#: The archive as (segment names, history file texts by timeline).
WalListing = tuple[Sequence[str], Mapping[int, str]]
WalLister = Callable[["BackupStore", KeyRing], Awaitable[WalListing]]


@dataclass(slots=True)
class VerifyReport:
    """What was checked and the problems found, the first one first."""

    backups: list[str] = field(default_factory=list)
    objects_checked: int = 0
    bytes_checked: int = 0
    wal_segments_listed: int = 0
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


async def verify_backups(
    config: BackupConfig, *, list_wal: WalLister | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check everything; the report names each problem (object key or segment range)."""
    from agentaskit_dr.backup.store import BackupStore, StoreError

    began = time.monotonic()
    keyring = KeyRing.from_config(config.encryption)
    report = VerifyReport()
    async with BackupStore(config.storage) as store:
        catalog = await read_catalog(store, keyring)
        report.leftovers = sorted(catalog.leftovers)
        report.problems.extend(
            f"backup {backup_id}: record {object_key(backup_id, RECORD_NAME)}: {why}"
            for backup_id, why in sorted(catalog.broken.items()))
        for record in catalog.records:
            report.backups.append(record.backup_id)
            try:
                await _verify_record(store, keyring, record, report, on_bytes)
            except StoreError as exc:
                report.problems.append(f"backup {record.backup_id}: {exc}")
        if list_wal is not None and catalog.records:
            names, histories = await list_wal(store, keyring)
            report.wal_segments_listed = len(names)
            report.problems.extend(_wal_problems(
                catalog.records, names, histories,
                window_start=time.time() - config.postgresql.wal.retention))
    report.seconds = round(time.monotonic() - began, 3)
    return report


async def _verify_record(
    store: BackupStore, keyring: KeyRing, record: BackupRecord, report: VerifyReport,
    on_bytes: Callable[[int], None] | None,
) -> None:
    record_key = object_key(record.backup_id, RECORD_NAME)
    heads = [await store.head(record_key, bucket=b) for b in ("primary", "replica")]
    if heads[1] is None:
        report.problems.append(f"object {record_key} is missing from the replica bucket")
    elif heads[0] is not None and heads[0].sha256 != heads[1].sha256:
        report.problems.append(f"object {record_key} differs between the buckets")
    for item in record.objects:
        key = object_key(record.backup_id, item.name)
        for bucket in ("primary", "replica"):
            head = await store.head(key, bucket=bucket)
            if head is None:
                report.problems.append(f"object {key} is missing from the {bucket} bucket")
            elif (head.size, head.sha256) != (item.size, item.sha256):
                report.problems.append(
                    f"object {key} in the {bucket} bucket does not match its record "
                    f"({head.size} bytes sha256 {str(head.sha256)[:16]}..., record says "
                    f"{item.size} bytes sha256 {item.sha256[:16]}...)")
        try:
            plain = b""
            async for piece in decrypt_stream(keyring, key, checked_stream(
                    store, key, size=item.size, sha256=item.sha256, on_bytes=on_bytes)):
                if item.name == PG_MANIFEST_NAME:
                    plain += piece
            report.objects_checked += 1
            report.bytes_checked += item.size
        except (ObjectTampered, BackupDamaged) as exc:
            report.problems.append(str(exc))
            continue
        if item.name == PG_MANIFEST_NAME:
            _check_manifest(record, key, plain, report)


def _check_manifest(record: BackupRecord, key: str, raw: bytes, report: VerifyReport) -> None:
    try:
        wal = read_pg_manifest(raw)
    except RecordError as exc:
        report.problems.append(f"object {key}: {exc}")
        return
    if (wal.timeline, wal.start_lsn, wal.end_lsn) != (
            record.timeline, record.start_lsn, record.stop_lsn):
        report.problems.append(
            f"object {key}: WAL range {wal.start_lsn}..{wal.end_lsn} on timeline "
            f"{wal.timeline} is not the record's {record.start_lsn}..{record.stop_lsn} on "
            f"timeline {record.timeline}")


def _wal_problems(records: Sequence[BackupRecord], names: Sequence[str],
                  histories: Mapping[int, str], *, window_start: float) -> list[str]:
    base = [r for r in records if r.kind in ("full", "incremental")]
    before = [r for r in base if r.started_at <= window_start]
    pitr_from = before[-1].backup_id if before else (base[0].backup_id if base else "")
    problems: list[str] = []
    for record in records:
        to_now = record.backup_id >= pitr_from
        gaps = missing_segments(
            names, histories, timeline=record.timeline, start_lsn=parse_lsn(record.start_lsn),
            end_lsn=None if to_now else parse_lsn(record.stop_lsn),
            segment_size=record.wal_segment_size)
        problems.extend(f"backup {record.backup_id}: {gap} (WAL from its start to "
                        f"{'now' if to_now else 'its end'})" for gap in gaps)
    return problems

