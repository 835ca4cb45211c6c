"""Point-in-time restore from a base backup and the WAL archive, checked row by row."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agentaskit_dr.backup.restore import run_restore_test
from agentaskit_dr.backup.run import run_backup
from agentaskit_dr.backup.verify import verify_backups
from agentaskit_dr.backup.wal_listing import list_wal, stage_wal
from agentaskit_dr.sandbox.postgres import PostgresServer
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
)
from tests.integration.s3_buckets import create_buckets

pytestmark = pytest.mark.integration


async def test_restore_to_a_time_between_two_transactions_has_the_first_not_the_second(
    archiving_pg: tuple[PostgresServer, LocalArchive], moto_server: str, scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, archive = archiving_pg
    await create_buckets(moto_server)
    config = backup_config(monkeypatch, server, moto_server, scratch / "staging")
    server.sql("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric, note text)")
    full, _ = await run_backup(config, "full")
    server.sql("INSERT INTO ledger SELECT g, g * 1.5, 'first' FROM generate_series(1, 300) g")
    expected = server.sql("SELECT id, amount, note FROM ledger ORDER BY id")
    await asyncio.sleep(0.3)
    between = time.time()
    await asyncio.sleep(0.3)
    server.sql("UPDATE ledger SET note = 'second' WHERE id % 7 = 0;"
               "INSERT INTO ledger VALUES (1000, 0, 'second')")
    server.sql("SELECT pg_switch_wal()")
    await _until_archived(server)
    await archive.ship(config)

    report = await run_restore_test(config, "staging", to_time=between, keep=True,
                                    stage_wal=stage_wal)

    assert report.ok, report.problems
    assert report.backup_id == full.backup_id
    assert report.wal_files_staged >= 1
    assert report.recovered_to_time is not None
    assert report.recovered_to_time < between
    restored = PostgresServer("check", Path(report.datadir or ""), server.bindir, server.home,
                              port=config.restore_targets["staging"].port)
    restored.start()
    try:
        rows = restored.sql("SELECT id, amount, note FROM ledger ORDER BY id")
    finally:
        restored.stop()
    assert rows == expected
    verified = await verify_backups(config, list_wal=list_wal)
    assert verified.ok, verified.problems


async def _until_archived(server: PostgresServer) -> None:
    query = ("SELECT last_archived_wal IS NOT NULL AND last_archived_wal >= "
             "pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver")
    while server.sql(query) != "t":  # noqa: ASYNC110 - polling the server: nothing to await
        await asyncio.sleep(0.05)
