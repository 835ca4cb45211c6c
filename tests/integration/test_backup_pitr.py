"""Point-in-time restore from a base backup and the WAL archive, checked row by row."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agentaskit_dr.backup.manifest import parse_lsn
from agentaskit_dr.backup.prune import prune
from agentaskit_dr.backup.restore import run_restore_test
from agentaskit_dr.backup.run import run_backup
from agentaskit_dr.backup.verify import verify_backups
from agentaskit_dr.backup.wal_listing import list_wal, stage_wal, wal_files
from agentaskit_dr.backup.walchain import segment_name
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
)
from tests.integration.s3_buckets import PRIMARY, REPLICA, create_buckets, keys_in

pytestmark = pytest.mark.integration
SEGMENT = 16 << 20


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


async def test_prune_keeps_the_newest_full_and_the_wal_it_needs_in_both_buckets(
    archiving_pg: tuple[PostgresServer, LocalArchive], moto_server: str, scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, archive = archiving_pg
    await create_buckets(moto_server)
    config = backup_config(monkeypatch, server, moto_server, scratch / "staging")
    server.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    old, _ = await run_backup(config, "full")
    server.sql("INSERT INTO t SELECT g FROM generate_series(1, 100) g")
    server.sql("SELECT pg_switch_wal()")
    new, _ = await run_backup(config, "full")
    server.sql("INSERT INTO t SELECT g FROM generate_series(1, 100) g")
    server.sql("SELECT pg_switch_wal()")
    await _until_archived(server)
    await archive.ship(config)
    later = time.time() + 40 * 86400  # both fulls past 30 days, all WAL past 24 hours

    plan = await prune(config, dry_run=False, wal_files=wal_files, now=later)

    assert plan.delete_backups == [old.backup_id]
    assert plan.kept == {new.backup_id: "the newest full backup"}
    for bucket in (PRIMARY, REPLICA):
        keys = await keys_in(moto_server, bucket)
        assert not [k for k in keys if old.backup_id in k]
        assert len([k for k in keys if new.backup_id in k]) == 3
        kept_wal = sorted(k.rpartition("/")[2] for k in keys if k.startswith("wal/")
                          and not k.endswith((".history", ".backup")))
        start = segment_name(new.timeline, parse_lsn(new.start_lsn) // SEGMENT, SEGMENT)
        assert kept_wal
        assert kept_wal[0] == start
    verified = await verify_backups(config, list_wal=list_wal)
    assert verified.ok, verified.problems
