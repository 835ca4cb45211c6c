"""Our record of one base backup (``backup.json``), written after every other object.

A backup is listed as good only once its record exists: a run killed mid-way leaves
objects (or a multipart upload) behind but no record. The record names each stored
object with its size and the SHA-256 of its stored (encrypted) bytes, the WAL range
from PostgreSQL's own ``backup_manifest`` and what a restore needs (kind, parent chain,
timeline, server version, key id).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

RECORD_FORMAT = 1
BASE_PREFIX = "base/"
RECORD_NAME = "backup.json"
TAR_NAME = "base.tar.zst"
PG_MANIFEST_NAME = "backup_manifest"

#: full: a complete copy; incremental: PostgreSQL >= 17 block-level incremental on top of
#: its parent; restore-point: (PostgreSQL < 17) a named restore point on top of the
#: latest full whose WAL was verified complete in the archive: restoring it replays WAL.
Kind = Literal["full", "incremental", "restore-point"]
KINDS: tuple[Kind, ...] = ("full", "incremental", "restore-point")
_ID = re.compile(r"\d{8}T\d{6}Z-[FIR]")


class RecordError(ValueError):
    """A ``backup.json`` that cannot be read as a backup record."""


def new_backup_id(now: float, kind: Kind, taken: Collection[str] = ()) -> str:
    """Sortable by time: ``20261129T020000Z-F`` (F full, I incremental, R restore point);
    a second later than ``now`` while the id is in ``taken`` (two runs in one second)."""
    letter = {"full": "F", "incremental": "I", "restore-point": "R"}[kind]
    while True:
        stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        backup_id = f"{stamp}-{letter}"
        if backup_id not in taken and not any(t.startswith(stamp) for t in taken):
            return backup_id
        now += 1.0


def is_backup_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def object_key(backup_id: str, name: str) -> str:
    """The key of one object of a backup, relative to the bucket's prefix."""
    return f"{BASE_PREFIX}{backup_id}/{name}"


def parse_lsn(text: str) -> int:
    """``'0/3000028'`` as an integer."""
    high, slash, low = text.partition("/")
    if not slash:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object of a backup: its name in the backup, size and SHA-256 as stored, and
    the plaintext's size and SHA-256 where they were measured (the application-state
    backups record both; a base backup's ``plain_size`` is the compressed tar's)."""

    name: str
    size: int
    sha256: str
    plain_size: int | None = None
    plain_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """What ``backup.json`` holds; see the module docstring."""

    backup_id: str
    kind: Kind
    parent: str | None
    chain: tuple[str, ...]
    """Ids this backup needs, oldest (the full) first, itself last."""
    pg_version: int
    system_identifier: str
    timeline: int
    start_lsn: str
    stop_lsn: str
    started_at: float
    stopped_at: float
    database_bytes: int
    key_id: str
    compression: str
    objects: tuple[StoredObject, ...] = ()
    wal_segment_size: int = 16 * 2**20
    format: int = RECORD_FORMAT
    notes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stored_bytes(self) -> int:
        return sum(item.size for item in self.objects)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["chain"] = list(self.chain)
        data["notes"] = dict(self.notes)
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BackupRecord:
        try:
            data = json.loads(raw)
            fmt, kind = data.get("format"), data.get("kind")
            objects = tuple(StoredObject(**item) for item in data.pop("objects"))
            chain = tuple(data.pop("chain"))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RecordError(f"not a backup record: {exc}") from None
        if fmt != RECORD_FORMAT:
            raise RecordError(f"record format {fmt!r} is not {RECORD_FORMAT}")
        if kind not in KINDS:
            raise RecordError(f"unknown backup kind {kind!r}")
        try:
            return cls(objects=objects, chain=chain, **data)
        except TypeError as exc:
            raise RecordError(f"not a backup record: {exc}") from None

    def object(self, name: str) -> StoredObject:
        for item in self.objects:
            if item.name == name:
                return item
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class WalRange:
    """The WAL a base backup needs, from ``backup_manifest``'s ``WAL-Ranges``."""

    timeline: int
    start_lsn: str
    end_lsn: str
    database_bytes: int


def read_pg_manifest(raw: bytes) -> WalRange:
    """The last WAL range and the sum of file sizes of a PostgreSQL ``backup_manifest``."""
    try:
        data = json.loads(raw)
        ranges = data["WAL-Ranges"]
        files = data["Files"]
        last = ranges[-1]
        return WalRange(
            timeline=int(last["Timeline"]),
            start_lsn=str(ranges[0]["Start-LSN"]),
            end_lsn=str(last["End-LSN"]),
            database_bytes=sum(int(item["Size"]) for item in files),
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RecordError(f"backup_manifest is not PostgreSQL's backup manifest: {exc}") from None
