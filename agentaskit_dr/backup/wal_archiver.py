"""The long-running WAL archiver behind ``wal-push`` and ``wal-fetch`` (docs/backups.md).

``python -m agentaskit_dr.backup.wal_archiver --config backup.yaml --spool DIR`` (started
on demand by the first ``wal-push``/``wal-fetch`` that finds none running, or as a
service). One per spool: it holds ``archiver.lock`` from its first instructions, before
the heavy imports, so a waiting command knows it is there. It exits after
``postgresql.wal.idle_exit`` with nothing to do (``--idle-exit 0``: never).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agentaskit_dr.backup.wal_layout import Spool

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: How often the spool and ``archive_status`` are scanned: every 20 ms while there is
#: work, slowing down to every 200 ms when idle (a first request waits at most that).
SCAN_INTERVAL = (0.02, 0.2)


def _lock(spool: Spool) -> int | None:
    """The locked fd of the spool's lock file, or None when another archiver holds it."""
    fd = os.open(spool.lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # A waiting command may hold a shared lock for a moment to look.
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.01)
        else:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd


async def archive(config_path: Path, spool: Spool, idle_exit: float | None) -> int:
    """Serve pushes and fetches until idle for ``idle_exit`` seconds (or SIGTERM)."""
    import structlog

    from agentaskit_dr.backup._wal_fetch import WalFetcher
    from agentaskit_dr.backup._wal_push import WalPusher
    from agentaskit_dr.backup.crypto import KeyRing
    from agentaskit_dr.backup.store import BackupStore
    from agentaskit_dr.config import ConfigError, load_backup_config

    log = structlog.get_logger(__name__)
    try:
        config = load_backup_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("wal_archiver_bad_config", config=str(config_path),  # noqa: TRY400
                      problem=problem)  # the problem says it all; no traceback
        return EXIT_USAGE
    wal = config.postgresql.wal
    idle = wal.idle_exit if idle_exit is None else idle_exit
    ring = KeyRing.from_config(config.encryption)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("wal_archiver_started", spool=str(spool.root), pid=os.getpid(),
             parallel=wal.push_parallel, prefetch=wal.prefetch, key_id=ring.current_id,
             replication=config.storage.replication)
    async with BackupStore(config.storage) as store:
        pusher = WalPusher(spool, store, ring, parallel=wal.push_parallel)
        fetcher = WalFetcher(spool, store, ring, parallel=wal.push_parallel,
                             prefetch=wal.prefetch)
        busy_at = time.monotonic()
        interval = SCAN_INTERVAL[0]
        swept_at = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if pusher.launch() | fetcher.launch():
                busy_at = now
                interval = SCAN_INTERVAL[0]
            elif idle and now - busy_at > idle:
                break
            if now - swept_at > 60:
                fetcher.sweep()
                pusher.sweep()
                swept_at = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            interval = min(interval * 1.5, SCAN_INTERVAL[1])
        running = [*pusher.running.values(), *fetcher.running.values()]
        if running:
            # An upload cut short leaves no .ok: PostgreSQL simply asks again.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    log.info("wal_archiver_stopped", reason="signal" if stop.is_set() else "idle")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentaskit-dr wal-archiver")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--spool", required=True, type=Path)
    parser.add_argument("--idle-exit", type=float, default=None,
                        help="seconds idle before exiting (0: never; default from config)")
    args = parser.parse_args(argv)
    spool = Spool(args.spool)
    spool.make()
    fd = _lock(spool)
    if fd is None:
        return EXIT_OK  # another archiver serves this spool
    from agentaskit_dr import logs

    logs.configure("info", stream=sys.stderr)
    logs.route_uncaught()
    try:
        return asyncio.run(archive(args.config, spool, args.idle_exit))
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
