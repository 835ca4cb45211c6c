"""The commands end to end: backup run/list/prune, verify-backup and test-restore (and
their scripts) on a PostgreSQL 15 server whose WAL is archived."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from agentaskit_dr.backup.wal_layout import wal_key
from agentaskit_dr.local_servers.postgres import PostgresServer
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.backup_harness import (  # noqa: F401 - fixtures
    LocalArchive,
    archiving_pg_fixture,
    backup_config,
    scratch_fixture,
    write_config,
)
from tests.integration.s3_buckets import PRIMARY, REPLICA, create_buckets, s3_client

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


async def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def agentaskit(*argv: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "agentaskit_dr", *argv)


async def test_backup_verify_and_restore_commands_on_pg15_with_a_restore_point(
    archiving_pg: tuple[PostgresServer, LocalArchive], moto_server: str, scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, archive = archiving_pg
    await create_buckets(moto_server)
    config = backup_config(monkeypatch, server, moto_server, scratch / "staging")
    path = write_config(config, scratch / "backup.yaml")
    server.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    stop = asyncio.Event()
    shipper = asyncio.create_task(archive.ship_until(config, stop))
    try:
        code, out, err = await cli(*agentaskit("backup", "run", "--kind", "full", "--config",
                                               str(path), "--json"))
        assert code == 0, err
        full = json.loads(out)
        server.sql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g")
        code, out, err = await cli(*agentaskit("backup", "run", "--kind", "incremental",
                                               "--config", str(path), "--json"))
        assert code == 0, err
        point = json.loads(out)
    finally:
        stop.set()
        await shipper
    code, out, _ = await cli(*agentaskit("backup", "list", "--config", str(path), "--json"))
    listed = json.loads(out)["backups"]
    code_ok, verified, err_ok = await cli(*agentaskit("verify-backup", "--config", str(path),
                                                      "--json"))
    code_plan, plan, _ = await cli(*agentaskit("backup", "prune", "--dry-run", "--config",
                                               str(path), "--json"))

    assert full["kind"] == "full"
    assert point["kind"] == "restore-point"
    assert "PostgreSQL 15 has no block-level incremental" in point["reason"]
    assert [b["kind"] for b in listed] == ["full", "restore-point"]
    assert "WAL verified" in listed[1]["meaning"]
    assert code_ok == 0, err_ok
    assert json.loads(verified)["ok"] is True
    assert code_plan == 0
    assert json.loads(plan)["delete_backups"] == []
    evidence = sorted(p.name for p in (scratch / "staging" / "evidence" / "backups").iterdir())
    assert len([name for name in evidence if name.startswith("backup-")]) == 2

    # A segment lost from both buckets: verify names it, a restore refuses to start.
    names = sorted(archive.shipped)
    segment = names[1]
    async with s3_client(moto_server) as client:
        for bucket in (PRIMARY, REPLICA):
            await client.delete_object(Bucket=bucket, Key=wal_key(segment))
    code_gap, _, err_gap = await cli(str(ROOT / "scripts" / "dr" / "verify-backup.sh"),
                                     env=_script_env(scratch, path))
    code_restore, _, err_restore = await cli(*agentaskit(
        "test-restore", "--target=staging", "--config", str(path)))

    assert code_gap == 1
    assert f"WAL segment {segment} is missing" in err_gap
    assert code_restore == 1
    assert segment in err_restore
    assert not [p for p in (scratch / "staging").iterdir() if p.name.startswith("restore-")]


async def test_test_restore_refuses_an_unknown_target_and_the_source_server(
    archiving_pg: tuple[PostgresServer, LocalArchive], moto_server: str, scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _ = archiving_pg
    config = backup_config(monkeypatch, server, moto_server, scratch / "staging",
                           restore_targets={"same-port": {"workdir": str(scratch / "x"),
                                                          "port": server.port}})
    path = write_config(config, scratch / "backup.yaml")

    unknown = await cli(*agentaskit("test-restore", "--target=prod", "--config", str(path)))
    same = await cli(*agentaskit("test-restore", "--target=same-port", "--config", str(path)))

    assert unknown[0] == 2
    assert "--target 'prod': not a restore target" in unknown[2]
    assert "configured: same-port, staging" in unknown[2]
    assert same[0] == 2
    assert f"restore_targets.same-port.port: {server.port} is the source server's port" in same[2]
    assert "Traceback" not in unknown[2] + same[2]


def _script_env(scratch: Path, config: Path) -> dict[str, str]:
    bin_dir = scratch / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "agentaskit-dr"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m agentaskit_dr \"$@\"\n")
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}",
            "AGENTASKIT_DR_BACKUP_CONFIG": str(config)}
