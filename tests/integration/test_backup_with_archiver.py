"""Base backups on top of the real WAL archive (``archive_command`` = ``wal-push``): a
restore point, verify-backup, and a point-in-time restore, checked row by row."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agentaskit_dr.backup.restore import run_restore_test
from agentaskit_dr.backup.run import run_backup
from agentaskit_dr.backup.verify import verify_backups
from agentaskit_dr.backup.wal_listing import list_wal, stage_wal
from agentaskit_dr.local_servers.postgres import PostgresServer
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.backup_harness import backup_config
from tests.integration.wal_harness import (  # noqa: F401 - fixtures
    S3Outage,
    WalWorld,
    primary_fixture,
    proxy_fixture,
    wait_archived,
    wal_base_fixture,
    world_fixture,
)

pytestmark = pytest.mark.integration


def current_segment(server: PostgresServer) -> str:
    name = server.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    server.sql("SELECT pg_switch_wal()")
    return name


async def test_pitr_through_the_real_archive_and_a_verified_restore_point(
    primary: PostgresServer, proxy: S3Outage, wal_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = backup_config(monkeypatch, primary, proxy.url, wal_base / "staging")
    primary.sql("CREATE TABLE orders (id int PRIMARY KEY, state text)")
    full, _ = await run_backup(config, "full")
    primary.sql("INSERT INTO orders SELECT g, 'paid' FROM generate_series(1, 500) g")
    expected = primary.sql("SELECT id, state FROM orders ORDER BY id")
    await asyncio.sleep(0.3)
    between = time.time()
    await asyncio.sleep(0.3)
    primary.sql("UPDATE orders SET state = 'refunded' WHERE id <= 250")
    point, decision = await run_backup(config, "incremental")
    await asyncio.to_thread(wait_archived, primary, current_segment(primary))

    verified = await verify_backups(config, list_wal=list_wal)
    report = await run_restore_test(config, "staging", to_time=between, keep=True,
                                    stage_wal=stage_wal)

    assert point.kind == "restore-point"
    assert decision.parent is not None
    assert decision.parent.backup_id == full.backup_id
    assert verified.ok, verified.problems
    assert verified.wal_segments_listed >= 2
    assert report.ok, report.problems
    assert report.recovered_to_time is not None
    assert report.recovered_to_time < between
    restored = PostgresServer("check", Path(report.datadir or ""), primary.bindir,
                              primary.home, port=config.restore_targets["staging"].port)
    restored.start()
    try:
        rows = restored.sql("SELECT id, state FROM orders ORDER BY id")
    finally:
        restored.stop()
    assert rows == expected
