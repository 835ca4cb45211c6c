"""The archiver's fetch side: requested WAL files, and the next segments ahead of them.

A file reaches ``fetched/`` only after it was downloaded whole and authenticated: a
restore never replays bytes that failed their tag. The primary bucket is read first; when
it is unreachable or missing, the replica bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from agentaskit_dr.backup.crypto import KeyRing, decrypt_bytes
from agentaskit_dr.backup.store import (
    BackupStore,
    BucketMissing,
    ObjectMissing,
    StoreUnavailable,
)
from agentaskit_dr.backup.wal_layout import Spool, next_segments, wal_key, write_atomic

log = structlog.get_logger(__name__)
#: How long "not in the archive" is remembered for prefetching (a new segment may land).
MISSING_TTL = 2.0
#: Prefetched files nobody asked for are dropped after this long.
PREFETCH_TTL = 600.0


class WalFetcher:
    """Answers fetch requests from the spool, prefetching ``prefetch`` segments ahead."""

    def __init__(self, spool: Spool, store: BackupStore, ring: KeyRing, *, parallel: int,
                 prefetch: int) -> None:
        self._spool = spool
        self._store = store
        self._ring = ring
        self._parallel = parallel
        self._prefetch = prefetch
        self._missing_until: dict[str, float] = {}
        self.running: dict[str, asyncio.Task[None]] = {}

    def launch(self) -> bool:
        """Start fetches for requests and their prefetches; True while anything is busy."""
        try:
            requested = sorted(p.name for p in self._spool.fetch.iterdir()
                               if not p.name.startswith("."))
        except FileNotFoundError:
            requested = []
        now = time.monotonic()
        wanted: list[tuple[str, bool]] = [(name, True) for name in requested]
        for name in requested:
            wanted.extend((ahead, False) for ahead in next_segments(name, self._prefetch))
        for name, asked in wanted:
            if len(self.running) >= self._parallel:
                break
            if name in self.running or (self._spool.fetched / name).exists():
                if asked and (self._spool.fetched / name).exists():
                    self._drop_request(name)
                continue
            if not asked and self._missing_until.get(name, 0.0) > now:
                continue
            task = asyncio.create_task(self._fetch(name, asked=asked), name=f"wal-fetch {name}")
            self.running[name] = task
            task.add_done_callback(self._finished)
        return bool(requested or self.running)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task.get_name().removeprefix("wal-fetch "), None)

    async def _fetch(self, name: str, *, asked: bool) -> None:
        key = wal_key(name)
        started = time.monotonic()
        try:
            blob = await self._download(key)
            if blob is None:
                self._missing_until[name] = time.monotonic() + MISSING_TTL
                if asked:
                    write_atomic(self._spool.missing(name), b"", owner_of=self._spool.root)
                    self._drop_request(name)
                return
            data = await asyncio.to_thread(decrypt_bytes, self._ring, key, blob)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the request's .error
            if asked:
                write_atomic(self._spool.fetch_error(name), str(exc).encode(),
                             owner_of=self._spool.root)
                self._drop_request(name)
            log.warning("wal_fetch_failed", file=name, error=str(exc), prefetch=not asked)
            return
        write_atomic(self._spool.fetched / name, data, owner_of=self._spool.root)
        if asked:
            self._drop_request(name)
        log.info("wal_fetched", file=name, bytes=len(data), prefetch=not asked,
                 seconds=round(time.monotonic() - started, 3))

    async def _download(self, key: str) -> bytes | None:
        """The object from the primary bucket, else from the replica; None if absent."""
        try:
            return await self._store.get_bytes(key, bucket="primary")
        except ObjectMissing:
            return None
        except (StoreUnavailable, BucketMissing) as exc:
            log.warning("wal_fetch_from_replica", key=key, reason=str(exc))
        try:
            return await self._store.get_bytes(key, bucket="replica")
        except ObjectMissing:
            return None

    def _drop_request(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._spool.fetch / name).unlink()

    def sweep(self) -> None:
        """Drop prefetched files nobody asked for in a long while."""
        cutoff = time.time() - PREFETCH_TTL
        with contextlib.suppress(FileNotFoundError):
            for path in self._spool.fetched.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
