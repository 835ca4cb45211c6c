"""Block-level incrementals on PostgreSQL 18, combined at restore; a new timeline forces
a full backup."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentaskit_dr.backup.restore import run_restore_test
from agentaskit_dr.backup.run import run_backup
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.backup_harness import (  # noqa: F401 - fixtures
    backup_config,
    pg18_fixture,
    scratch_fixture,
)
from tests.integration.s3_buckets import create_buckets

pytestmark = pytest.mark.integration


async def test_incrementals_on_pg18_chain_to_their_full_and_restore_combined(
    pg18: PostgresServer, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_buckets(moto_server)
    config = backup_config(monkeypatch, pg18, moto_server, scratch / "staging")
    pg18.sql("CREATE TABLE items (id int PRIMARY KEY, note text);"
             "INSERT INTO items SELECT g, 'full' FROM generate_series(1, 20000) g")
    full, _ = await run_backup(config, "full")
    pg18.sql("UPDATE items SET note = 'first' WHERE id <= 100;"
             "INSERT INTO items SELECT g, 'first' FROM generate_series(20001, 20500) g")
    first, first_decision = await run_backup(config, "incremental")
    pg18.sql("DELETE FROM items WHERE id > 20400; UPDATE items SET note = 'second' "
             "WHERE id BETWEEN 50 AND 60")
    second, _ = await run_backup(config, "incremental")
    pg18.sql("INSERT INTO items VALUES (99999, 'after the last backup')")

    assert (full.kind, first.kind, second.kind) == ("full", "incremental", "incremental")
    assert first_decision.parent is not None
    assert first_decision.parent.backup_id == full.backup_id
    assert second.chain == (full.backup_id, first.backup_id, second.backup_id)
    assert second.stored_bytes < full.stored_bytes / 2  # only changed blocks

    report = await run_restore_test(config, "staging", keep=True)

    assert report.ok, report.problems
    assert report.chain == list(second.chain)
    assert {"database": "postgres", "table": "public.items", "rows": 20400} in report.tables
    restored = PostgresServer("check", Path(report.datadir or ""), pg18.bindir, pg18.home,
                              port=config.restore_targets["staging"].port)
    restored.start()
    try:
        notes = restored.sql("SELECT note, count(*) FROM items GROUP BY note ORDER BY note")
    finally:
        restored.stop()
    assert notes.splitlines() == ["first|489", "full|19900", "second|11"]


async def test_after_a_promotion_the_next_incremental_is_a_full_backup(
    pg_pair: PostgresPair, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_buckets(moto_server)
    before = backup_config(monkeypatch, pg_pair.primary, moto_server, scratch / "staging")
    full, _ = await run_backup(before, "full")
    pg_pair.primary.kill()
    pg_pair.replica.sql("SELECT pg_promote(wait => true)")
    pg_pair.replica.sql("CHECKPOINT")
    after = backup_config(monkeypatch, pg_pair.replica, moto_server, scratch / "staging")

    record, decision = await run_backup(after, "incremental")

    assert (full.timeline, record.timeline) == (1, 2)
    assert record.kind == "full"
    assert record.parent is None
    assert "timeline changed from 1 to 2" in decision.reason
