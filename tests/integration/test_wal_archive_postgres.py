"""A real PostgreSQL primary archiving through wal-push, and a restore through wal-fetch."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentaskit_dr.backup.crypto import KeyRing, decrypt_bytes
from agentaskit_dr.backup.wal_layout import wal_key
from agentaskit_dr.local_servers.os_side import give_to_server_user
from agentaskit_dr.local_servers.postgres import PostgresServer
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.s3_buckets import PRIMARY, REPLICA, read_object
from tests.integration.wal_harness import (  # noqa: F401 - fixtures
    KEY_HEX,
    S3Outage,
    WalWorld,
    primary_fixture,
    proxy_fixture,
    wait_archived,
    wal_base_fixture,
    world_fixture,
)

pytestmark = pytest.mark.integration
RING = KeyRing("k1", {"k1": bytes.fromhex(KEY_HEX)})


def switch(server: PostgresServer) -> str:
    """Write a little, complete the current segment; its name."""
    server.sql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
    name = server.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    server.sql("SELECT pg_switch_wal()")
    return name


async def test_completed_segments_arrive_in_both_buckets_as_postgres_wrote_them(
    primary: PostgresServer, moto_server: str
) -> None:
    primary.sql("CREATE TABLE t (n int)")
    names = [switch(primary) for _ in range(3)]

    wait_archived(primary, names[-1])

    for name in names:
        original = (primary.datadir / "pg_wal" / name).read_bytes()
        for bucket in (PRIMARY, REPLICA):
            blob = await read_object(moto_server, bucket, wal_key(name))
            assert decrypt_bytes(RING, wal_key(name), blob) == original
    assert primary.sql("SELECT failed_count FROM pg_stat_archiver") == "0"


async def test_an_s3_outage_keeps_the_wal_until_s3_returns(
    primary: PostgresServer, proxy: S3Outage, moto_server: str
) -> None:
    primary.sql("CREATE TABLE t (n int)")
    proxy.down()
    during = switch(primary)
    ready = primary.datadir / "pg_wal" / "archive_status" / f"{during}.ready"
    _wait(lambda: primary.sql("SELECT failed_count FROM pg_stat_archiver") != "0",
          "a failed archive_command")
    assert ready.exists()  # PostgreSQL keeps the segment for the next attempt

    proxy.up()
    after = switch(primary)  # a new segment wakes the archiver process at once
    wait_archived(primary, after)

    for name in (during, after):
        blob = await read_object(moto_server, PRIMARY, wal_key(name))
        assert decrypt_bytes(RING, wal_key(name), blob) == \
            (primary.datadir / "pg_wal" / name).read_bytes()
    assert "S3 unavailable" in primary.log_tail(200)


async def test_a_base_backup_without_wal_recovers_from_the_archive_through_wal_fetch(
    primary: PostgresServer, world: WalWorld, wal_base: Path
) -> None:
    primary.sql("CREATE TABLE t (n int)")
    restored = PostgresServer("restored", wal_base / "restored", primary.bindir, primary.home)
    restored.datadir.mkdir(mode=0o700)
    give_to_server_user(restored.datadir)
    primary.run_server_binary(
        "pg_basebackup", "-D", str(restored.datadir), "-X", "none", "-c", "fast",
        "--no-sync", "-U", "postgres", "-d", f"host=127.0.0.1 port={primary.port}")
    wait_archived(primary, switch(primary))  # the backup's end and the rows after it
    rows = primary.sql("SELECT count(*) FROM t")
    with (restored.datadir / "postgresql.conf").open("a") as conf:
        conf.write("archive_mode = off\n")
        conf.write(f"restore_command = '{world.restore_command()}'\n")
    (restored.datadir / "recovery.signal").touch()
    give_to_server_user(restored.datadir / "recovery.signal")

    try:
        restored.start(timeout=60)
        # It replays the whole archive, then ends recovery (recovery.signal, no target).
        _wait(lambda: restored.sql("SELECT pg_is_in_recovery()") == "f", "end of recovery")
        recovered = restored.sql("SELECT count(*) FROM t")
    finally:
        restored.kill()

    assert recovered == rows == "1000", restored.log_tail(60) + world.log()
    assert "wal_fetched" in world.log()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
