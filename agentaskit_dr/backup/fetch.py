"""Bring a backup home: download, check, decrypt and untar its objects.

Plaintext is released one authenticated chunk at a time and untarred as it comes, so a
tampered object can leave a partial directory behind: the caller removes it and never
starts a server on it. The SHA-256 of the stored bytes is checked against the record as
well, so an object replaced by another validly encrypted one is named too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.backup.crypto import ObjectTampered, decrypt_stream
from agentaskit_dr.backup.manifest import TAR_NAME, BackupRecord, object_key
from agentaskit_dr.local_servers.os_side import give_to_server_user, server_process_options

if TYPE_CHECKING:
    from agentaskit_dr.backup.crypto import KeyRing
    from agentaskit_dr.backup.store import BackupStore, Which


class BackupDamaged(Exception):
    """An object of a backup is missing, altered or unreadable; the message names it."""


def server_dir(path: Path) -> Path:
    """A fresh 0700 directory the server user owns."""
    path.mkdir(mode=0o700, parents=True)
    give_to_server_user(path)
    return path


async def checked_stream(
    store: BackupStore, key: str, *, size: int, sha256: str, bucket: Which = "primary",
    on_bytes: Callable[[int], None] | None = None,
) -> AsyncIterator[bytes]:
    """The stored bytes of ``key``; :class:`BackupDamaged` at the end unless they are
    exactly ``size`` bytes hashing to ``sha256``."""
    digest = hashlib.sha256()
    seen = 0
    async for piece in store.get_stream(key, bucket=bucket):
        digest.update(piece)
        seen += len(piece)
        if on_bytes is not None:
            on_bytes(len(piece))
        yield piece
    if seen != size or digest.hexdigest() != sha256:
        raise BackupDamaged(f"object {key} ({bucket} bucket) does not match its record: "
                            f"{seen} bytes sha256 {digest.hexdigest()[:16]}..., record says "
                            f"{size} bytes sha256 {sha256[:16]}...")


async def fetch_base(
    store: BackupStore, keyring: KeyRing, record: BackupRecord, into: Path, *,
    home: Path, on_bytes: Callable[[int], None] | None = None, bucket: Which = "primary",
) -> None:
    """Untar ``record``'s base tar into the new directory ``into`` (as the server user).

    tar is fed from a thread (one blocking write per authenticated chunk) while the event
    loop downloads, hashes and decrypts the next chunk: two chunks in memory at most.
    """
    from agentaskit_dr.backup.store import StoreError

    item = record.object(TAR_NAME)
    key = object_key(record.backup_id, TAR_NAME)
    server_dir(into)
    untar, feed = await _spawn_untar(into, home)
    assert untar.stderr is not None
    errors = asyncio.ensure_future(untar.stderr.read())
    writing: asyncio.Future[None] | None = None
    try:
        plain = decrypt_stream(keyring, key, checked_stream(
            store, key, size=item.size, sha256=item.sha256, on_bytes=on_bytes,
            bucket=bucket))
        async for chunk in plain:
            if writing is not None:
                await writing
            writing = asyncio.get_running_loop().run_in_executor(None, _write_all, feed, chunk)
        if writing is not None:
            await writing
        os.close(feed)
        feed = -1
        code = await untar.wait()
        if code != 0:
            message = (await errors).decode(errors="replace").strip()
            raise BackupDamaged(f"object {key}: tar failed ({code}): {message[-300:]}")
    except ObjectTampered as exc:
        raise BackupDamaged(str(exc)) from None
    except (BrokenPipeError, ConnectionResetError):
        message = (await errors).decode(errors="replace").strip()
        raise BackupDamaged(f"object {key}: tar stopped reading: {message[-300:]}") from None
    except StoreError as exc:
        raise BackupDamaged(f"object {key}: {exc}") from None
    finally:
        if untar.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                untar.kill()
        # tar's zstd child reads our pipe too: a write in progress ends once it dies of
        # the broken pipe to tar; then closing our end lets it see the end and exit.
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
        if feed >= 0:
            os.close(feed)
        await untar.wait()
        errors.cancel()
        await asyncio.gather(errors, return_exceptions=True)


async def _spawn_untar(into: Path, home: Path) -> tuple[asyncio.subprocess.Process, int]:
    """``tar --zstd -x`` into ``into`` as the server user, and the end of its stdin pipe."""
    tar_in, feed = os.pipe()
    try:
        untar = await asyncio.create_subprocess_exec(
            "tar", "--zstd", "-xf", "-", "-C", str(into), stdin=tar_in,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            **server_process_options(home),
        )
    except BaseException:
        os.close(feed)
        raise
    finally:
        os.close(tar_in)
    return untar, feed


def _write_all(fd: int, data: bytes) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
