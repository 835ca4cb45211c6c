"""The WAL archive as base backups see it: listed, checked for gaps, staged for a restore.

Layout and object names are the archiver's (:mod:`agentaskit_dr.backup.wal_layout`):
``wal/<timeline>/<file>``, each encrypted with its key as its object name.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.backup.crypto import KeyRing, ObjectTampered, decrypt_bytes
from agentaskit_dr.backup.manifest import BackupRecord, parse_lsn
from agentaskit_dr.backup.retention import WalFile
from agentaskit_dr.backup.wal_layout import WAL_PREFIX, wal_key
from agentaskit_dr.backup.walchain import HISTORY, missing_segments, needed_segments
from agentaskit_dr.local_servers.os_side import give_to_server_user

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from agentaskit_dr.backup.store import BackupStore, Which

#: Segments downloaded at once while staging (16 MiB each in memory at most).
STAGE_PARALLEL = 4


async def wal_files(store: BackupStore, *, bucket: Which = "primary"
                    ) -> list[tuple[WalFile, str]]:
    """Every archived WAL file with the time it was stored, and its key."""
    return [
        (WalFile(info.key.rpartition("/")[2],
                 info.last_modified.timestamp() if info.last_modified else 0.0), info.key)
        for info in await store.list(WAL_PREFIX, bucket=bucket)
    ]


async def list_wal(store: BackupStore, keyring: KeyRing, *, bucket: Which = "primary"
                   ) -> tuple[Sequence[str], Mapping[int, str]]:
    """The archived file names, and the text of each timeline history file."""
    names = [item.name for item, _ in await wal_files(store, bucket=bucket)]
    histories: dict[int, str] = {}
    for name in names:
        match = HISTORY.fullmatch(name)
        if match:
            key = wal_key(name)
            histories[int(match.group(1), 16)] = decrypt_bytes(
                keyring, key, await store.get_bytes(key, bucket=bucket)).decode()
    return names, histories


async def stage_wal(store: BackupStore, keyring: KeyRing, record: BackupRecord,
                    to_lsn: int | None, into: Path, *, bucket: Which = "primary") -> int:
    """Download, authenticate and write into ``into`` the archived WAL a recovery from
    ``record`` replays after the backup's end (to ``to_lsn``, or to the newest archived);
    the number of files staged.

    The backup holds its own WAL up to its end (``-X fetch``), so the archive is read from
    the segment of the backup's stop LSN. A gap is an error naming it: recovery would stop
    there, short of its target. With no target and nothing archived after the backup,
    nothing is staged and the copy recovers to the backup's end (``verify-backup`` is
    what flags an archive that stopped).
    """
    from agentaskit_dr.backup.restore import RestoreFailed

    names, histories = await list_wal(store, keyring, bucket=bucket)
    common = {"timeline": record.timeline, "start_lsn": parse_lsn(record.stop_lsn),
              "segment_size": record.wal_segment_size}
    needed = needed_segments(names, histories, end_lsn=to_lsn, **common)
    if to_lsn is not None or any(held for _, held in needed):
        gaps = missing_segments(names, histories, end_lsn=to_lsn, **common)
        if gaps:
            raise RestoreFailed(f"the WAL archive has a gap after backup {record.backup_id}: "
                                f"{gaps[0]}")
    wanted = [name for name, held in needed if held]
    wanted += [name for name in names if HISTORY.fullmatch(name)]
    limit = asyncio.Semaphore(STAGE_PARALLEL)

    async def stage(name: str) -> None:
        async with limit:
            key = wal_key(name)
            try:
                data = decrypt_bytes(keyring, key, await store.get_bytes(key, bucket=bucket))
            except ObjectTampered as exc:
                raise RestoreFailed(str(exc)) from None
            path = into / name
            path.write_bytes(data)
            give_to_server_user(path)

    await asyncio.gather(*(stage(name) for name in wanted))
    return len(wanted)
