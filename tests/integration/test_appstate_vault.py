"""Vault snapshots from an aiohttp server serving Vault's real snapshot format (a gzip tar
with meta.json, state.bin, SHA256SUMS, SHA256SUMS.sealed), into the moto buckets."""

from __future__ import annotations

import hashlib
import io
import json
import os
import ssl
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from agentaskit_dr.appstate import jobs
from agentaskit_dr.appstate.components import collector, file_check
from agentaskit_dr.appstate.restore import fetch_object
from agentaskit_dr.appstate.vault import SNAPSHOT_PATH, VaultSnapshotError
from agentaskit_dr.backup.store import BucketMissing
from agentaskit_dr.local_servers.tcp import free_port
from tests.integration.appstate_harness import load
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.s3_buckets import PRIMARY, REPLICA, create_buckets, keys_in
from tests.tls_material import make_tls_material

pytestmark = pytest.mark.integration
TOKEN = "hvs.test-token-never-logged-5f1e"


def snapshot(*, corrupt: str | None = None, state_size: int = 300_000) -> bytes:
    """A raft snapshot as Vault writes it; ``corrupt`` names a file changed after the sums."""
    files = {
        "meta.json": json.dumps({"Version": 1, "ID": "2-1234-1700000000000", "Index": 1234,
                                 "Term": 2, "Size": state_size}).encode(),
        "state.bin": os.urandom(state_size),
    }
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                   for name, data in files.items())
    files["SHA256SUMS"] = sums.encode()
    files["SHA256SUMS.sealed"] = os.urandom(120)  # sealed by the barrier: opaque to us
    if corrupt is not None:
        files[corrupt] = files[corrupt][:-1] + bytes([files[corrupt][-1] ^ 0xFF])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FakeVault:
    """Serves ``GET /v1/sys/storage/raft/snapshot`` to the right token, in pieces."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.port = free_port()
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if request.headers.get("X-Vault-Token") != TOKEN:
            return web.json_response({"errors": ["permission denied"]}, status=403)
        response = web.StreamResponse(headers={"Content-Type": "application/gzip"})
        await response.prepare(request)
        for start in range(0, len(self.body), 65536):
            await response.write(self.body[start:start + 65536])
        await response.write_eof()
        return response

    scheme = "http"

    @property
    def addr(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


@asynccontextmanager
async def serving(server: FakeVault, tls: ssl.SSLContext | None = None
                  ) -> AsyncIterator[FakeVault]:
    app = web.Application()
    app.router.add_get(SNAPSHOT_PATH, server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port, ssl_context=tls).start()
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def vault() -> AsyncIterator[FakeVault]:
    async with serving(FakeVault(snapshot())) as server:
        yield server


def secrets(vault: FakeVault, tmp_path: Path) -> dict[str, object]:
    (tmp_path / "vault-token").write_text(TOKEN + "\n")
    return {"secrets": {"method": "vault-snapshot", "schedule": "0 3 * * *",
                        "retention": "30d", "vault_addr": vault.addr,
                        "token_file": "vault-token"}}


async def test_snapshot_is_streamed_encrypted_into_both_buckets_and_checked_by_its_sums(
        moto_server: str, vault: FakeVault, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    _, config = load(tmp_path, moto_server, secrets(vault, tmp_path))

    with capture_logs() as logs:
        result = await jobs.run_backup(config, "vault", collector(config, "vault"),
                                       evidence_dir=tmp_path / "ev")
        verified = await jobs.verify(config, "vault", file_check("vault"),
                                     evidence_dir=tmp_path / "ev")

    assert result.outcome == "ok"
    assert result.extra["checks"]["vault.snap"] == \
        "OK, SHA256SUMS matches meta.json, state.bin"
    assert result.extra["plain_bytes"] == len(vault.body)
    assert verified.extra["checks"] == result.extra["checks"]
    prefix = f"appstate/vault/{result.backup_id}/"
    for bucket in (PRIMARY, REPLICA):
        assert await keys_in(moto_server, bucket, prefix) == [prefix + "record.json",
                                                              prefix + "vault.snap"]
    everything = repr(logs) + "".join(p.read_text() for p in (tmp_path / "ev").rglob("*.json"))
    assert TOKEN not in everything


@pytest.mark.parametrize("damaged", ["state.bin", "meta.json"])
async def test_a_snapshot_failing_its_sums_is_refused_naming_the_file(
        moto_server: str, vault: FakeVault, tmp_path: Path, damaged: str) -> None:
    await create_buckets(moto_server)
    vault.body = snapshot(corrupt=damaged)
    _, config = load(tmp_path, moto_server, secrets(vault, tmp_path))

    with pytest.raises(VaultSnapshotError, match=f"{damaged}: SHA-256 differs from SHA256SUMS"):
        await jobs.run_backup(config, "vault", collector(config, "vault"), evidence_dir=tmp_path)

    assert await keys_in(moto_server, PRIMARY, "appstate/") == []
    assert await keys_in(moto_server, REPLICA, "appstate/") == []
    [evidence] = (tmp_path / "backups").glob("appstate-vault-*.json")
    assert json.loads(evidence.read_text())["outcome"] == "failed"


async def test_a_wrong_token_is_refused_without_showing_it(
        moto_server: str, vault: FakeVault, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    state = secrets(vault, tmp_path)
    (tmp_path / "vault-token").write_text("hvs.wrong-token-value")
    _, config = load(tmp_path, moto_server, state)

    with pytest.raises(VaultSnapshotError, match="HTTP 403") as caught:
        await jobs.run_backup(config, "vault", collector(config, "vault"), evidence_dir=tmp_path)

    assert "wrong-token" not in str(caught.value)
    assert vault.requests == 1


async def test_a_token_env_that_is_not_set_names_the_field(
        moto_server: str, vault: FakeVault, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await create_buckets(moto_server)
    monkeypatch.delenv("VAULT_BACKUP_TOKEN", raising=False)
    _, config = load(tmp_path, moto_server, {"secrets": {
        "method": "vault-snapshot", "schedule": "0 3 * * *", "retention": "30d",
        "vault_addr": vault.addr, "token_env": "VAULT_BACKUP_TOKEN"}})

    with pytest.raises(ValueError, match=r"application_state\.secrets\.token_env: environment "
                       "variable VAULT_BACKUP_TOKEN is not set"):
        await jobs.run_backup(config, "vault", collector(config, "vault"), evidence_dir=tmp_path)
    assert vault.requests == 0


async def test_https_vault_is_trusted_through_ca_file_and_refused_without_it(
        moto_server: str, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    material = make_tls_material(tmp_path / "tls")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(material.site.cert, material.site.key)
    server = FakeVault(snapshot())
    server.scheme = "https"
    async with serving(server, tls):
        state = secrets(server, tmp_path)
        _, untrusting = load(tmp_path, moto_server, state)
        with pytest.raises(VaultSnapshotError, match="certificate verify failed"):
            await jobs.run_backup(untrusting, "vault", collector(untrusting, "vault"),
                                  evidence_dir=tmp_path)
        state["secrets"]["ca_file"] = str(material.ca)  # type: ignore[index]
        _, config = load(tmp_path, moto_server, state)
        result = await jobs.run_backup(config, "vault", collector(config, "vault"),
                                       evidence_dir=tmp_path)
    assert result.outcome == "ok"


async def test_fetch_gives_back_the_snapshot_byte_for_byte_and_a_missing_bucket_is_evidenced(
        moto_server: str, vault: FakeVault, tmp_path: Path) -> None:
    _, config = load(tmp_path, moto_server, secrets(vault, tmp_path))
    with pytest.raises(BucketMissing):
        await jobs.run_backup(config, "vault", collector(config, "vault"), evidence_dir=tmp_path)
    [failed] = (tmp_path / "backups").glob("appstate-vault-*.json")
    assert json.loads(failed.read_text())["outcome"] == "failed"

    await create_buckets(moto_server)
    await jobs.run_backup(config, "vault", collector(config, "vault"), evidence_dir=tmp_path)
    target = await fetch_object(config, "vault", "vault.snap", tmp_path, bucket="replica")

    assert target == tmp_path / "vault.snap"
    assert target.read_bytes() == vault.body
    with pytest.raises(ValueError, match=r"has no object 'dump\.rdb' \(it has vault\.snap\)"):
        await fetch_object(config, "vault", "dump.rdb", tmp_path)
