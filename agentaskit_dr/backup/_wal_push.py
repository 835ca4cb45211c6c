"""The archiver's push side: every ``.ready`` WAL file and every request, in parallel.

Durability rule: a file's ``.ok`` is written only after a PUT of its encrypted bytes
succeeded in the primary bucket and, with ``storage.replication: client``, in the replica
bucket too (S3 acknowledges a PUT once the object is durably stored). With ``s3``
replication only the primary is written; S3 replication copies it.

Idempotence: each PUT is conditional (If-None-Match: *). A bucket that already holds the
key gets its copy downloaded, authenticated and compared with the local file: the same
bytes count as archived, other bytes fail the file with a message naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import structlog

from agentaskit_dr.backup.crypto import (
    BackupKeyError,
    KeyRing,
    ObjectTampered,
    decrypt_bytes,
    encrypt_bytes,
)
from agentaskit_dr.backup.store import BackupStore, ObjectExists, Which
from agentaskit_dr.backup.wal_layout import Spool, stat_signature, wal_key, write_atomic

log = structlog.get_logger(__name__)
#: Seconds between attempts at a failing file: doubling from the first to the last.
BACKOFF = (0.5, 5.0)
#: Verdicts nobody collected (PostgreSQL stopped asking) are dropped after this long; a
#: later call just pushes again, which the conditional PUT turns into a comparison.
VERDICT_TTL = 3600.0


class WalConflict(Exception):
    """The archive already holds another file under this name."""


class WalPusher:
    """Finds work in the spool and in ``pg_wal/archive_status``, and pushes it."""

    def __init__(self, spool: Spool, store: BackupStore, ring: KeyRing, *, parallel: int
                 ) -> None:
        self._spool = spool
        self._store = store
        self._ring = ring
        self._parallel = parallel
        self._pg_wal_dirs: set[Path] = set()
        self._done: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self.running: dict[str, asyncio.Task[None]] = {}

    def _candidates(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        with contextlib.suppress(FileNotFoundError):
            for request in self._spool.push.iterdir():
                if request.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path = Path(request.read_text(encoding="utf-8").strip())
                    found[request.name] = path
                    if (path.parent / "archive_status").is_dir():
                        self._pg_wal_dirs.add(path.parent)
        for pg_wal in self._pg_wal_dirs:
            with contextlib.suppress(FileNotFoundError):
                for status in (pg_wal / "archive_status").iterdir():
                    if status.name.endswith(".ready"):
                        name = status.name.removesuffix(".ready")
                        found.setdefault(name, pg_wal / name)
        return found

    def launch(self) -> bool:
        """Start pushes for what waits; True if anything is waiting or running."""
        candidates = self._candidates()
        for name in list(self._done):
            if name not in candidates:
                del self._done[name]
        now = time.monotonic()
        waiting = []
        for name, path in candidates.items():
            if name in self.running or self._retry_at.get(name, 0.0) > now:
                continue
            if name in self._done:
                with contextlib.suppress(OSError):
                    if self._done[name] == stat_signature(path):
                        self._confirm_again(name)
                        continue
            waiting.append((not name.endswith(".history"), name, path))
        waiting.sort()  # timeline history files first, then oldest first
        for _, name, path in waiting[: max(0, self._parallel - len(self.running))]:
            task = asyncio.create_task(self._push(name, path), name=f"wal-push {name}")
            self.running[name] = task
            task.add_done_callback(self._finished)
        return bool(waiting or self.running)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task.get_name().removeprefix("wal-push "), None)

    async def _push(self, name: str, path: Path) -> None:
        started = time.monotonic()
        try:
            signature = stat_signature(path)
            data = await asyncio.to_thread(path.read_bytes)
            _unchanged(path, signature)
            key = wal_key(name)
            blob = await asyncio.to_thread(encrypt_bytes, self._ring, key, data)
            await self._store_once(name, key, data, blob)
        except FileNotFoundError as exc:
            request = self._spool.push / name
            if request.exists():  # someone waits for it: tell them, once
                self._failed(name, exc)
                request.unlink(missing_ok=True)
            else:
                self._forget(name)  # gone from pg_wal: PostgreSQL no longer wants it archived
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes the file's .error
            self._failed(name, exc)
            return
        write_atomic(self._spool.ok(name), signature.encode(), owner_of=self._spool.root)
        self._forget(name)
        self._done[name] = signature
        log.info("wal_pushed", file=name, bytes=len(data),
                 seconds=round(time.monotonic() - started, 3))

    async def _store_once(self, name: str, key: str, data: bytes, blob: bytes) -> None:
        """The primary gets a conditional PUT; the replica (client replication) a copy made
        inside S3 from the primary, unless it holds the same object already."""
        primary = await self._put_or_compare(name, key, data, blob)
        if "replica" not in self._store.writes:
            return
        there = await self._store.head(key, bucket="replica")
        if there is None:
            await self._store.copy_to_replica(key)
        elif there.sha256 != primary:
            await self._compare(name, key, data, "replica")

    async def _put_or_compare(self, name: str, key: str, data: bytes, blob: bytes
                              ) -> str | None:
        """PUT ``blob`` to the primary unless it is there; the SHA-256 the primary holds."""
        try:
            info = await self._store.put_bytes(key, blob, if_absent=True,
                                               buckets=("primary",))
        except ObjectExists:
            await self._compare(name, key, data, "primary")
            there = await self._store.head(key, bucket="primary")
            return None if there is None else there.sha256
        return info.sha256

    async def _compare(self, name: str, key: str, data: bytes, which: Which) -> None:
        """Fail unless the archived copy in ``which`` decrypts to ``data``."""
        existing = await self._store.get_bytes(key, bucket=which)
        try:
            same = await asyncio.to_thread(decrypt_bytes, self._ring, key, existing)
        except (ObjectTampered, BackupKeyError) as exc:
            raise WalConflict(f"{name} is already in the {which} bucket but cannot "
                              f"be read back: {exc}") from exc
        if same != data:
            raise WalConflict(f"{name} is already archived in the {which} bucket "
                              "with different content")
        log.info("wal_already_archived", file=name, bucket=which)

    def _confirm_again(self, name: str) -> None:
        """A request for a file pushed already (PostgreSQL asks again when it could not
        record the last success): answer it from memory."""
        request = self._spool.push / name
        if request.exists() and not self._spool.ok(name).exists():
            write_atomic(self._spool.ok(name), self._done[name].encode(),
                         owner_of=self._spool.root)
            with contextlib.suppress(FileNotFoundError):
                request.unlink()

    def _failed(self, name: str, exc: BaseException) -> None:
        failures = self._failures.get(name, 0) + 1
        self._failures[name] = failures
        delay = min(BACKOFF[0] * 2 ** (failures - 1), BACKOFF[1])
        self._retry_at[name] = time.monotonic() + delay
        message = f"{name}: {exc}" if name not in str(exc) else str(exc)
        write_atomic(self._spool.push_error(name), message.encode(),
                     owner_of=self._spool.root)
        log.warning("wal_push_failed", file=name, error=message, attempt=failures,
                    retry_in=delay)

    def sweep(self) -> None:
        """Drop ``.ok``/``.error`` files older than :data:`VERDICT_TTL`."""
        cutoff = time.time() - VERDICT_TTL
        with contextlib.suppress(FileNotFoundError):
            for path in self._spool.pushed.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()

    def _forget(self, name: str) -> None:
        self._retry_at.pop(name, None)
        self._failures.pop(name, None)
        for path in (self._spool.push_error(name), self._spool.push / name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _unchanged(path: Path, signature: str) -> None:
    if stat_signature(path) != signature:
        raise WalConflict(f"{path} changed while it was read")
