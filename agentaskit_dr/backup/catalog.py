"""The backups in a bucket (the primary unless told), as their records say.

A backup id with a ``backup.json`` that decrypts and parses is good; one without is a
leftover of a run that never finished (listed apart, pruned after a day); one whose
record fails to decrypt or parse is broken (listed, never used).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentaskit_dr.backup.crypto import BackupKeyError, ObjectTampered, decrypt_bytes
from agentaskit_dr.backup.manifest import (
    BASE_PREFIX,
    RECORD_NAME,
    BackupRecord,
    RecordError,
    is_backup_id,
    object_key,
)

if TYPE_CHECKING:
    from agentaskit_dr.backup.crypto import KeyRing
    from agentaskit_dr.backup.store import BackupStore, Which


@dataclass(slots=True)
class Catalog:
    """Good records (oldest first), leftovers (id -> newest object time), broken records."""

    records: list[BackupRecord] = field(default_factory=list)
    leftovers: dict[str, float] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    @property
    def ids(self) -> set[str]:
        """Every backup id in the bucket, good or not."""
        return {r.backup_id for r in self.records} | set(self.leftovers) | set(self.broken)

    def get(self, backup_id: str) -> BackupRecord | None:
        return next((r for r in self.records if r.backup_id == backup_id), None)

    def latest(self, kinds: Sequence[str] = ("full", "incremental", "restore-point"),
               *, system_identifier: str | None = None) -> BackupRecord | None:
        found = [
            r for r in self.records if r.kind in kinds
            and (system_identifier is None or r.system_identifier == system_identifier)
        ]
        return found[-1] if found else None


def _stamp(value: dt.datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


async def read_catalog(store: BackupStore, keyring: KeyRing, *,
                       bucket: Which = "primary") -> Catalog:
    """Every backup under ``base/`` in ``bucket``."""
    catalog = Catalog()
    newest: dict[str, float] = {}
    with_record: set[str] = set()
    for info in await store.list(BASE_PREFIX, bucket=bucket):
        backup_id, _, name = info.key.removeprefix(BASE_PREFIX).partition("/")
        if not is_backup_id(backup_id):
            continue
        newest[backup_id] = max(newest.get(backup_id, 0.0), _stamp(info.last_modified))
        if name == RECORD_NAME:
            with_record.add(backup_id)
    for backup_id in sorted(newest):
        if backup_id not in with_record:
            catalog.leftovers[backup_id] = newest[backup_id]
            continue
        key = object_key(backup_id, RECORD_NAME)
        try:
            blob = await store.get_bytes(key, bucket=bucket)
            record = BackupRecord.from_json(decrypt_bytes(keyring, key, blob))
        except (ObjectTampered, BackupKeyError, RecordError) as exc:
            catalog.broken[backup_id] = str(exc)
            continue
        if record.backup_id != backup_id:
            catalog.broken[backup_id] = f"record names another backup ({record.backup_id})"
            continue
        catalog.records.append(record)
    return catalog
