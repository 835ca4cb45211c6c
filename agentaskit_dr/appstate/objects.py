"""Moving application-state objects in and out of the buckets, encrypted, with checksums.

:func:`upload` streams plaintext through the encryptor into :meth:`BackupStore.put_stream`
(both buckets, multipart past one part) and can keep a local copy on the way (``tee``)
for the checks that need a file (``redis-check-rdb``, a Vault snapshot's SHA256SUMS):
nothing is read twice from the source. :func:`download` authenticates while it writes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agentaskit_dr.appstate.record import (
    RECORD_NAME,
    AppStateRecord,
    Component,
    RecordError,
    backup_id_time,
    component_prefix,
    object_key,
)
from agentaskit_dr.backup.crypto import (
    KeyRing,
    ObjectTampered,
    decrypt_bytes,
    decrypt_stream,
    encrypt_bytes,
    encrypt_stream,
)
from agentaskit_dr.backup.manifest import StoredObject

if TYPE_CHECKING:
    from agentaskit_dr.backup.store import BackupStore, Which


class AppStateDamaged(Exception):
    """A stored backup is missing an object, fails its checksum or does not authenticate;
    the message names the object."""


async def upload(store: BackupStore, keyring: KeyRing, key: str, name: str,
                 source: AsyncIterator[bytes], *, tee: Path | None = None) -> StoredObject:
    """Encrypt ``source`` into ``key`` (both buckets); a copy of the plaintext goes to
    ``tee`` if given. The record entry of the object named ``name``."""
    plain = hashlib.sha256()
    size = 0
    local: IO[bytes] | None = None

    async def counted() -> AsyncIterator[bytes]:
        nonlocal size
        async for data in source:
            plain.update(data)
            size += len(data)
            if local is not None:
                await asyncio.to_thread(local.write, data)
            yield data

    if tee is not None:
        local = tee.open("wb")
    try:
        info = await store.put_stream(key, encrypt_stream(keyring, key, counted()))
    finally:
        if local is not None:
            local.close()
        # A failed upload leaves the source half read: close it (the Redis socket) now.
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
    assert info.sha256 is not None  # put_stream always knows it
    return StoredObject(name=name, size=info.size, sha256=info.sha256, plain_size=size,
                        plain_sha256=plain.hexdigest())


async def read_file(path: Path, piece: int = 1 << 20) -> AsyncIterator[bytes]:
    """A local file in pieces, read off the event loop."""
    with path.open("rb") as handle:
        while data := await asyncio.to_thread(handle.read, piece):
            yield data


async def one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def download(store: BackupStore, keyring: KeyRing, record: AppStateRecord,
                   item: StoredObject, dest: Path, *, bucket: Which = "primary") -> None:
    """Write the plaintext of ``item`` to ``dest``; :class:`AppStateDamaged` unless it
    authenticates and matches the record's plaintext checksum."""
    key = object_key(record.component, record.backup_id, item.name)
    digest = hashlib.sha256()
    try:
        with dest.open("wb") as out:
            async for data in decrypt_stream(keyring, key, store.get_stream(key, bucket=bucket)):
                digest.update(data)
                await asyncio.to_thread(out.write, data)
    except ObjectTampered as exc:
        raise AppStateDamaged(f"{bucket} {key}: {exc}") from None
    if digest.hexdigest() != item.plain_sha256:
        raise AppStateDamaged(f"{bucket} {key}: plaintext SHA-256 differs from the record")


async def write_record(store: BackupStore, keyring: KeyRing, record: AppStateRecord) -> None:
    """Store the record (encrypted) in both buckets: from now on the backup is good."""
    key = object_key(record.component, record.backup_id, RECORD_NAME)
    await store.put_bytes(key, encrypt_bytes(keyring, key, record.to_json()))


async def read_record(store: BackupStore, keyring: KeyRing, component: Component,
                      backup_id: str, *, bucket: Which = "primary") -> AppStateRecord:
    key = object_key(component, backup_id, RECORD_NAME)
    try:
        return AppStateRecord.from_json(decrypt_bytes(keyring, key,
                                                      await store.get_bytes(key, bucket=bucket)))
    except (ObjectTampered, RecordError) as exc:
        raise AppStateDamaged(f"{bucket} {key}: {exc}") from None


@dataclass
class Catalog:
    """The backups of one component: good ones (with a record), oldest first, and the
    ids of leftovers (objects without a record: a job that died)."""

    records: list[AppStateRecord] = field(default_factory=list)
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)


async def read_catalog(store: BackupStore, keyring: KeyRing, component: Component, *,
                       bucket: Which = "primary") -> Catalog:
    """Every backup of ``component`` in ``bucket``."""
    prefix = component_prefix(component)
    keys_by_id: dict[str, list[str]] = {}
    for info in await store.list(prefix, bucket=bucket):
        backup_id = info.key[len(prefix):].partition("/")[0]
        if backup_id_time(backup_id) is not None:
            keys_by_id.setdefault(backup_id, []).append(info.key)
    catalog = Catalog()
    for backup_id, keys in sorted(keys_by_id.items()):
        if object_key(component, backup_id, RECORD_NAME) not in keys:
            catalog.leftovers[backup_id] = keys
            continue
        try:
            catalog.records.append(
                await read_record(store, keyring, component, backup_id, bucket=bucket))
        except AppStateDamaged as exc:
            catalog.unreadable[backup_id] = str(exc)
    catalog.records.sort(key=lambda record: record.finished_at)
    return catalog
