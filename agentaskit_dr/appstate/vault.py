"""Vault: a raft snapshot from ``GET /v1/sys/storage/raft/snapshot``, streamed, encrypted,
and checked against the snapshot's own ``SHA256SUMS``.

A snapshot is a gzip tar holding ``meta.json``, ``state.bin``, ``SHA256SUMS`` (sha256sum
lines for the other files) and ``SHA256SUMS.sealed`` (the sums sealed by Vault's barrier:
only Vault can check it; we check it is there). The token goes in ``X-Vault-Token`` and
nowhere else: never in a log, an error or the record.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.appstate.jobs import Collected
from agentaskit_dr.appstate.objects import upload
from agentaskit_dr.appstate.record import AppStateRecord, object_key

if TYPE_CHECKING:
    import aiohttp

    from agentaskit_dr.backup.crypto import KeyRing
    from agentaskit_dr.backup.store import BackupStore
    from agentaskit_dr.config._backup import SecretsStateBackup

SNAPSHOT_NAME = "vault.snap"
SNAPSHOT_PATH = "/v1/sys/storage/raft/snapshot"
REQUIRED = ("meta.json", "state.bin", "SHA256SUMS", "SHA256SUMS.sealed")


class VaultSnapshotError(Exception):
    """Vault refused the snapshot, or the snapshot fails its own checks (the file named)."""


def check_snapshot(path: Path) -> str:
    """Check the snapshot file against its ``SHA256SUMS``; a one-line verdict.
    Blocking: run it in a thread."""
    digests: dict[str, str] = {}
    sums = ""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                digest = hashlib.sha256()
                while data := handle.read(1 << 20):
                    digest.update(data)
                    if member.name == "SHA256SUMS":
                        sums += data.decode()
                digests[member.name] = digest.hexdigest()
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise VaultSnapshotError(f"snapshot is not a gzip tar: {exc}") from None
    missing = [name for name in REQUIRED if name not in digests]
    if missing:
        raise VaultSnapshotError(f"snapshot lacks {', '.join(missing)}")
    listed = _parse_sums(sums)
    for name in ("meta.json", "state.bin"):
        if name not in listed:
            raise VaultSnapshotError(f"SHA256SUMS does not list {name}")
    for name, expected in listed.items():
        if name not in digests:
            raise VaultSnapshotError(f"SHA256SUMS lists {name}, which is not in the snapshot")
        if digests[name] != expected:
            raise VaultSnapshotError(f"{name}: SHA-256 differs from SHA256SUMS")
    return f"OK, SHA256SUMS matches {', '.join(sorted(listed))}"


def _parse_sums(text: str) -> dict[str, str]:
    listed: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name:
            raise VaultSnapshotError(f"SHA256SUMS: cannot read line {line[:80]!r}")
        listed[name] = digest.lower()
    return listed


def _ssl_context(settings: SecretsStateBackup) -> ssl.SSLContext | None:
    if settings.ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(settings.ca_file))


async def _body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for data in response.content.iter_chunked(1 << 20):
        yield data


async def collect_vault(store: BackupStore, keyring: KeyRing, backup_id: str, workdir: Path,
                        *, settings: SecretsStateBackup) -> Collected:
    """Stream the snapshot into both buckets (a local copy for the checks)."""
    import aiohttp

    if settings.vault_addr is None:
        raise ValueError("application_state.secrets.vault_addr: not set; nothing to back up")
    token = settings.token()
    assert token is not None  # the config requires a token source with vault_addr
    url = settings.vault_addr.rstrip("/") + SNAPSHOT_PATH
    local = workdir / SNAPSHOT_NAME
    timeout = aiohttp.ClientTimeout(total=settings.timeout, sock_connect=10.0)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            url, headers={"X-Vault-Token": token}, ssl=_ssl_context(settings) or True,
        ) as response:
            if response.status != 200:
                text = (await response.text(errors="replace"))[:200].strip()
                raise VaultSnapshotError(f"GET {url}: HTTP {response.status} {text}")
            item = await upload(store, keyring, object_key("vault", backup_id, SNAPSHOT_NAME),
                                SNAPSHOT_NAME, _body(response), tee=local)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise VaultSnapshotError(f"GET {url}: {exc or 'timed out'}") from None
    verdict = await asyncio.to_thread(check_snapshot, local)
    return Collected(objects=[item], checks={SNAPSHOT_NAME: verdict},
                     source={"vault_addr": settings.vault_addr,
                             "snapshot_bytes": item.plain_size})


async def check_vault_files(record: AppStateRecord, files: dict[str, Path],
                            workdir: Path) -> dict[str, str]:
    return {SNAPSHOT_NAME: await asyncio.to_thread(check_snapshot, files[SNAPSHOT_NAME])}
