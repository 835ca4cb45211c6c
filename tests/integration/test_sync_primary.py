"""Failback step 2, ``sync-primary``, as the real CLI against a real pair (issue 9).

The old primary (west) dies after committing rows the standby never got; the standby
(east) is promoted and takes new writes. ``sync-primary`` on west's host makes west a
streaming standby of east: by pg_rewind, or by a re-clone when pg_rewind cannot work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.test_start_gate import EAST, WEST, cli, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def old_primary(pg_pair: PostgresPair) -> Iterator[PostgresServer]:
    """West's server; whatever ``sync-primary`` started on its data dir is stopped after."""
    yield pg_pair.primary
    for datadir in pg_pair.base_dir.glob("primary*"):
        if (datadir / "postmaster.pid").exists():
            subprocess.run(
                [str(pg_pair.primary.bindir / "pg_ctl"), "stop", "-D", str(datadir),
                 "-m", "immediate"],
                user="postgres", capture_output=True, check=False, cwd="/",
            )


def diverge(pair: PostgresPair) -> None:
    """Rows 1-3 reach both; the standby then stops receiving and row 100 lands on the
    primary only: after the failover it is the old primary's diverged transaction."""
    pair.primary.sql("CREATE TABLE orders (id int PRIMARY KEY); "
                     "INSERT INTO orders VALUES (1), (2), (3)")
    pair.wait_replayed()
    pair.replica.kill()
    pair.primary.sql("INSERT INTO orders VALUES (100)")


def promote_east(pair: PostgresPair) -> None:
    """The standby comes back, is promoted and takes row 200."""
    pair.replica.start()
    pair.replica.sql("SELECT pg_promote(wait => true)")
    pair.replica.sql("INSERT INTO orders VALUES (200)")


def assert_streaming_standby_of_east(pair: PostgresPair, old: PostgresServer) -> None:
    assert old.sql("SELECT pg_is_in_recovery()") == "t"
    assert old.sql("SELECT status FROM pg_stat_wal_receiver") == "streaming"
    # The diverged row is gone, the new primary's row is there.
    assert old.sql(
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders WHERE id <= 200"
    ) == "1,2,3,200"
    with pytest.raises(RuntimeError, match="during recovery"):
        old.sql("BEGIN READ WRITE; INSERT INTO orders VALUES (300); COMMIT")
    # A write on the new primary reaches it.
    written = pair.replica.sql(
        "INSERT INTO orders SELECT max(id) + 1 FROM orders WHERE id >= 200 RETURNING id"
    )
    lsn = pair.replica.sql("SELECT pg_current_wal_lsn()")
    for _ in range(500):
        if old.sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t":
            break
    assert old.sql(f"SELECT count(*) FROM orders WHERE id = {written}") == "1"


async def test_a_crashed_old_primary_is_rewound_into_a_streaming_standby(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    diverge(pg_pair)
    for row in range(101, 105):  # five commits in all that the standby never received
        old_primary.sql(f"INSERT INTO orders VALUES ({row})")
    end_of_wal = old_primary.sql("SELECT pg_current_wal_lsn()")
    old_primary.kill()  # kill -9: it stops uncleanly
    promote_east(pg_pair)
    fork = pg_pair.replica.sql(
        "SELECT split_part(encode(pg_read_binary_file('pg_wal/00000002.history'), 'escape'),"
        " E'\\t', 2)")
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == "rewind", result
    # The failover's real loss, read from the old primary's WAL before the rewind.
    loss = result["fork_loss"]
    assert loss["lost_commits"] == 5, loss
    assert loss["fork_lsn"] == fork
    assert loss["old_end_of_wal_lsn"] == end_of_wal
    assert loss["lost_wal_bytes"] == lsn_bytes(end_of_wal) - lsn_bytes(fork) > 0
    assert (loss["old_timeline"], loss["new_timeline"]) == (1, 2)
    assert loss["first_lost_commit_at"] <= loss["last_lost_commit_at"]
    assert result["reclone_reason"] is None
    assert result["lag_bytes"] == 0
    assert result["timeline"] == 2
    assert result["confirmed_by"] == "pg_stat_wal_receiver"
    assert result["region"] == WEST
    assert result["primary_region"] == EAST
    assert result["port"] == old_primary.port
    # It crashed, so it got a start and stop in recovery before pg_rewind.
    assert list(result["phases"]) == [
        "check", "stop", "measure_loss", "clean_shutdown", "checkpoint", "rewind", "start",
        "catch_up",
    ]
    assert (old_primary.datadir / "standby.signal").is_file()
    assert_streaming_standby_of_east(pg_pair, old_primary)

    # Running it again (a resumed runbook) is harmless: stopped, nothing to rewind, streaming.
    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    again = json.loads(out)
    assert again["stopped"].startswith("stopped (pg_ctl -m fast)")
    assert again["method"] == "rewind"
    assert again["rewind_note"] == "no rewind required"
    assert again["fork_loss"]["lost_wal_bytes"] is None
    assert "resynced before" in again["fork_loss"]["note"]
    assert_streaming_standby_of_east(pg_pair, old_primary)


def lsn_bytes(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def remove_wal_before_last_checkpoint(server: PostgresServer) -> list[str]:
    """Delete the old primary's WAL segments older than its last checkpoint's redo: the
    WAL around the fork point that pg_rewind reads, as if archived and recycled."""
    control = subprocess.run(
        [str(server.bindir / "pg_controldata"), "-D", str(server.datadir)],
        capture_output=True, text=True, check=True,
    ).stdout
    redo_file = next(line.split(":", 1)[1].strip() for line in control.splitlines()
                     if line.startswith("Latest checkpoint's REDO WAL file"))
    removed = []
    for segment in sorted((server.datadir / "pg_wal").glob("0" * 7 + "1*")):
        if len(segment.name) == 24 and segment.name < redo_file:
            segment.unlink()
            removed.append(segment.name)
    return removed


async def test_without_the_wal_pg_rewind_needs_the_old_primary_is_recloned(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    diverge(pg_pair)
    for row in range(101, 104):  # the fork point's segment is left behind
        old_primary.sql(f"INSERT INTO orders VALUES ({row}); SELECT pg_switch_wal()")
    old_primary.sql("CHECKPOINT")
    old_primary.stop()
    assert remove_wal_before_last_checkpoint(old_primary)
    promote_east(pg_pair)
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == "reclone", result
    assert result["reclone_reason"].startswith("pg_rewind: error: could not ")
    # The fork's WAL segment is gone, so the loss cannot be read: said, not guessed.
    assert result["fork_loss"]["lost_wal_bytes"] is None
    assert result["fork_loss"]["note"].startswith("pg_waldump: ")
    assert "reclone" in result["phases"]
    assert "clean_shutdown" not in result["phases"]
    assert result["lag_bytes"] == 0
    # The old data directory is kept aside, diverged transactions and all.
    aside = Path(result["kept_aside"])
    assert aside.parent == old_primary.datadir.parent
    assert aside.name.startswith("primary.before-sync-")
    assert (aside / "PG_VERSION").is_file()
    assert_streaming_standby_of_east(pg_pair, old_primary)


async def test_with_an_archive_pg_rewind_restores_the_missing_wal_and_no_reclone_is_needed(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    diverge(pg_pair)
    for row in range(101, 104):
        old_primary.sql(f"INSERT INTO orders VALUES ({row}); SELECT pg_switch_wal()")
    old_primary.sql("CHECKPOINT")
    old_primary.stop()
    archive = pg_pair.base_dir / "archive"
    archive.mkdir()
    for segment in (old_primary.datadir / "pg_wal").glob("0" * 7 + "1*"):
        shutil.copy2(segment, archive / segment.name)
        shutil.chown(archive / segment.name, "postgres", "postgres")
    shutil.chown(archive, "postgres", "postgres")
    assert remove_wal_before_last_checkpoint(old_primary)
    with (old_primary.datadir / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"restore_command = 'cp {archive}/%f %p'\n")
    promote_east(pg_pair)
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    result = json.loads(out)
    assert result["restore_target_wal"] is True
    assert result["method"] == "rewind", result
    assert_streaming_standby_of_east(pg_pair, old_primary)


async def test_without_wal_log_hints_the_old_primary_is_recloned(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    old_primary.sql("ALTER SYSTEM SET wal_log_hints = off")
    old_primary.stop()
    old_primary.start()  # pg_control now records wal_log_hints off (no checksums either)
    diverge(pg_pair)
    old_primary.kill()
    promote_east(pg_pair)
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == "reclone"
    assert "wal_log_hints" in result["reclone_reason"]
    assert_streaming_standby_of_east(pg_pair, old_primary)


async def test_a_fenced_old_primary_restarted_in_recovery_is_stopped_and_rewound(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    diverge(pg_pair)
    old_primary.kill()
    promote_east(pg_pair)
    # The fence's standby.signal made its restart come up in recovery; it cannot follow
    # east (it has WAL east never had) and waits, read-only.
    (old_primary.datadir / "standby.signal").write_text("")
    shutil.chown(old_primary.datadir / "standby.signal", "postgres", "postgres")
    old_primary.start()
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    result = json.loads(out)
    assert result["stopped"].startswith("stopped (pg_ctl -m fast)")
    assert result["method"] == "rewind"
    assert old_primary.proc is not None
    assert old_primary.proc.wait(timeout=10) == 0
    old_primary.proc = None
    assert_streaming_standby_of_east(pg_pair, old_primary)


async def test_a_failed_reclone_puts_the_old_data_directory_back(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    diverge(pg_pair)
    old_primary.sql("INSERT INTO orders VALUES (101); SELECT pg_switch_wal()")
    old_primary.sql("CHECKPOINT")
    old_primary.stop()
    assert remove_wal_before_last_checkpoint(old_primary)
    promote_east(pg_pair)
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)
    data = yaml.safe_load(config.read_text())
    # Nothing listens on port 9: pg_basebackup cannot connect.
    data["regions"][EAST]["database"]["replication_dsn"] = "host=127.0.0.1 port=9 user=postgres"
    config.write_text(yaml.safe_dump(data))

    code, out, err = await cli(config, "sync-primary", "--timeout", "45s")

    assert code == 1
    assert "re-clone failed: pg_basebackup" in err
    assert "is back as it was" in err
    assert out == ""
    assert not list(old_primary.datadir.parent.glob("primary.before-sync-*"))
    assert (old_primary.datadir / "PG_VERSION").is_file()
    assert (old_primary.datadir / "standby.signal").is_file()


async def test_without_a_control_section_sync_primary_names_the_missing_key(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = write_config(tmp_path, pg_pair, control=False)

    code, out, err = await cli(config, "sync-primary")

    assert code == 2
    assert f"regions.{WEST}.database.control is not set" in err
    assert "Traceback" not in err
    assert out == ""


async def test_sync_primary_refuses_while_the_other_region_is_a_standby(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, _, err = await cli(config, "sync-primary")

    assert code == 1
    assert f"region {EAST}'s server" in err
    assert "no new primary to follow" in err
    assert pg_pair.primary.sql("SELECT pg_is_in_recovery()") == "f"
    assert not (pg_pair.primary.datadir / "standby.signal").exists()


async def test_sync_primary_refuses_to_demote_a_primary_nothing_says_has_moved(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    # Two writable servers and no marker, no cluster record: which is the primary is not
    # known, so the running one is left alone.
    pg_pair.replica.sql("SELECT pg_promote(wait => true)")
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, _, err = await cli(config, "sync-primary")

    assert code == 1
    assert "it is the current primary" in err
    assert "nothing changed" in err
    assert pg_pair.primary.sql("SELECT pg_is_in_recovery()") == "f"
    assert not (pg_pair.primary.datadir / "standby.signal").exists()


async def test_a_running_old_primary_is_stopped_when_the_new_one_carries_a_newer_marker(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    # The failover promoted east under epoch 1 while west kept running (a SQL-only fence,
    # say): the marker says the primary moved, so west is stopped and rewound.
    pg_pair.primary.sql("CREATE TABLE orders (id int PRIMARY KEY); "
                        "INSERT INTO orders VALUES (1), (2), (3)")
    pg_pair.wait_replayed()
    pg_pair.replica.sql("SELECT pg_promote(wait => true)")
    pg_pair.replica.sql("INSERT INTO orders VALUES (200)")
    old_primary.sql("INSERT INTO orders VALUES (100)")  # diverged: after the promotion
    pg_pair.replica.sql(
        "CREATE SCHEMA agentaskit_dr; CREATE TABLE agentaskit_dr.failover_epoch "
        "(id int PRIMARY KEY, epoch bigint NOT NULL); "
        "INSERT INTO agentaskit_dr.failover_epoch VALUES (1, 1)"
    )
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    result = json.loads(out)
    assert result["stopped"].startswith("stopped (pg_ctl -m fast)")
    assert "clean_shutdown" not in result["phases"]
    assert result["method"] == "rewind"
    # Stopped by sync-primary (reap it here) and restarted by it under pg_ctl.
    assert old_primary.proc is not None
    assert old_primary.proc.wait(timeout=10) == 0
    old_primary.proc = None
    assert_streaming_standby_of_east(pg_pair, old_primary)


async def test_an_old_primary_with_nothing_diverged_needs_no_rewind(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    pg_pair.primary.sql("CREATE TABLE orders (id int PRIMARY KEY); "
                        "INSERT INTO orders VALUES (1), (2), (3)")
    old_primary.stop()  # a clean stop streams its last WAL to the standby first
    pg_pair.replica.sql("SELECT pg_promote(wait => true)")
    pg_pair.replica.sql("INSERT INTO orders VALUES (200)")
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == "rewind"
    assert result["rewind_note"] == "no rewind required"
    # Measured, not assumed: nothing beyond the fork.
    assert result["fork_loss"]["lost_wal_bytes"] == 0, result["fork_loss"]
    assert result["fork_loss"]["lost_commits"] == 0
    assert_streaming_standby_of_east(pg_pair, old_primary)


async def test_sync_primary_refuses_a_down_region_the_cluster_record_names_as_primary(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    # East was promoted (a standby no more) but the record says west is the primary:
    # west, though down, is not an old primary to rewind.
    store = RedisClusterStore(redis_server.url)
    lock = RedisLeaderLock(redis_server.url, holder="west", ttl=3.0)
    lease = await lock.acquire()
    assert lease is not None
    await store.record_primary(WEST, epoch=lease.epoch, run_id="fb-west", lease=lease)
    await lock.release(lease)
    await lock.close()
    await store.close()
    pg_pair.primary.kill()
    pg_pair.replica.sql("SELECT pg_promote(wait => true)")
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, _, err = await cli(config, "sync-primary")

    assert code == 1
    assert f"the cluster record in the lock store says the primary is in {WEST}" in err
    assert "nothing changed" in err
    assert not (pg_pair.primary.datadir / "standby.signal").exists()


async def test_sync_primary_refuses_while_a_watchdog_holds_the_lock(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    diverge(pg_pair)
    old_primary.kill()
    promote_east(pg_pair)
    lock = RedisLeaderLock(redis_server.url, holder="watchdog-us-east-1", ttl=30.0)
    lease = await lock.acquire()
    assert lease is not None
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)
    try:
        code, _, err = await cli(config, "sync-primary")
    finally:
        await lock.release(lease)
        await lock.close()

    assert code == 1
    assert "the leader lock is held by watchdog-us-east-1" in err
    assert "agentaskit-dr pause" in err
    assert not (old_primary.datadir / "standby.signal").exists()


async def test_a_standby_without_hot_standby_is_confirmed_from_the_primary(
    tmp_path: Path, pg_pair: PostgresPair, old_primary: PostgresServer,
    redis_server: RedisServer,
) -> None:
    diverge(pg_pair)
    old_primary.kill()
    promote_east(pg_pair)
    # pg_rewind copies the new primary's config: the rewound standby takes no session.
    pg_pair.replica.sql("ALTER SYSTEM SET hot_standby = off")
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, out, err = await cli(config, "sync-primary", "--json", "--timeout", "45s")

    assert code == 0, err
    result = json.loads(out)
    assert result["confirmed_by"] == "pg_stat_replication"
    assert result["lag_bytes"] == 0
    assert result["replay_lsn"] == result["primary_lsn"]
    assert pg_pair.replica.sql(
        "SELECT state FROM pg_stat_replication WHERE application_name = 'agentaskit-dr-us-west-2'"
    ) == "streaming"
    with pytest.raises(RuntimeError, match=r"not accepting connections|hot standby"):
        old_primary.sql("SELECT 1")
