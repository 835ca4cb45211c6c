"""PostgresProbe against a real primary and its streaming replica."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.ports import MARKER_TABLE, PostgresObservation, Probe
from agentaskit_dr.probes import PostgresProbe, replication_lag_bytes
from agentaskit_dr.probes.postgres import dsn_target
from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration

# Written on the primary: about 1 MB of WAL.
WRITE_1MB = "CREATE TABLE filler AS SELECT repeat('x', 1000) AS pad FROM generate_series(1, 1000)"
CREATE_MARKER = (
    "CREATE SCHEMA agentaskit_dr;"
    "CREATE TABLE agentaskit_dr.failover_epoch(id int PRIMARY KEY, epoch bigint,"
    " holder text, failover_id text, promoted_at timestamptz)"
)
INSERT_EPOCH_7 = (
    "INSERT INTO agentaskit_dr.failover_epoch VALUES (1, 7, 'watchdog-a', 'fo-1', now())"
)


async def observe(dsn: str, *, within: float = 2.0, name: str = "pg") -> PostgresObservation:
    probe = PostgresProbe(name, dsn, timeout=within)
    try:
        return await probe.observe()
    finally:
        await probe.close()


def wait_for_setting(server: PostgresServer, setting: str, value: str) -> None:
    """Block until new sessions see ``setting = value`` (a reload is asynchronous)."""
    deadline = time.monotonic() + 5.0
    while server.sql(f"SHOW {setting}") != value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{setting} never became {value}")
        time.sleep(0.02)


async def test_primary_is_seen_writable_with_its_wal_position(pg_pair: PostgresPair) -> None:
    probe = PostgresProbe("primary", pg_pair.primary.dsn, timeout=2.0)
    try:
        assert isinstance(probe, Probe)
        observation = await probe.observe()
    finally:
        await probe.close()

    assert observation.reachable, observation.error
    assert observation.error is None
    assert observation.target == f"127.0.0.1:{pg_pair.primary.port}"
    assert observation.in_recovery is False
    assert observation.read_only is False
    assert observation.writable
    assert observation.current_lsn is not None
    assert observation.current_lsn > 0
    assert observation.receive_lsn is None
    assert observation.replay_lsn is None
    assert observation.replay_lag_seconds is None
    assert observation.receiver_status is None
    assert observation.marker_epoch is None
    assert observation.archive_pending_segments is None  # archive_mode off: no archive
    assert observation.archive_lag_seconds is None
    assert 0 < observation.latency < 2.0


async def test_replica_is_seen_streaming_in_recovery(pg_pair: PostgresPair) -> None:
    pg_pair.primary.sql("CREATE TABLE t AS SELECT 1 AS x")
    pg_pair.wait_replayed()

    observation = await observe(pg_pair.replica.dsn)

    assert observation.reachable, observation.error
    assert observation.in_recovery is True
    assert not observation.writable
    assert observation.current_lsn is None
    assert observation.receive_lsn is not None
    assert observation.replay_lsn is not None
    assert observation.receive_lsn > 0
    assert observation.replay_lsn > 0
    assert observation.receiver_status == "streaming"
    assert observation.replay_lag_seconds is not None
    assert observation.replay_lag_seconds >= 0


async def test_replication_lag_is_zero_once_replayed_and_grows_while_replay_is_paused(
    pg_pair: PostgresPair,
) -> None:
    pg_pair.primary.sql("CREATE TABLE t AS SELECT 1 AS x")
    primary = await observe(pg_pair.primary.dsn)
    pg_pair.wait_replayed()
    replica = await observe(pg_pair.replica.dsn)
    assert replication_lag_bytes(primary.current_lsn, replica) == 0

    pg_pair.replica.sql("SELECT pg_wal_replay_pause()")
    pg_pair.primary.sql(WRITE_1MB)
    primary = await observe(pg_pair.primary.dsn)
    replica = await observe(pg_pair.replica.dsn)

    lag = replication_lag_bytes(primary.current_lsn, replica)
    assert lag is not None
    assert lag > 500_000, "about 1 MB of WAL written while replay was paused"


async def test_killed_primary_is_unreachable_within_a_second(pg_pair: PostgresPair) -> None:
    pg_pair.primary.kill()

    observation = await observe(pg_pair.primary.dsn, within=2.0)

    assert not observation.reachable
    assert observation.error == "connection refused"
    assert observation.latency < 1.0
    assert not observation.writable


async def test_paused_primary_is_unreachable_after_the_timeout(pg_pair: PostgresPair) -> None:
    pg_pair.primary.pause()
    try:
        observation = await observe(pg_pair.primary.dsn, within=0.5)
    finally:
        pg_pair.primary.resume()

    assert not observation.reachable
    assert observation.error == "timeout after 0.5s"
    assert 0.4 < observation.latency < 1.5
    assert (await observe(pg_pair.primary.dsn)).reachable, "resumed primary answers again"


async def test_query_stuck_behind_a_lock_times_out_and_leaves_no_session(
    pg_pair: PostgresPair,
) -> None:
    pg_pair.primary.sql(CREATE_MARKER)
    holder = await asyncpg.connect(pg_pair.primary.dsn)
    try:
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {MARKER_TABLE} IN ACCESS EXCLUSIVE MODE")
            observation = await observe(pg_pair.primary.dsn, within=0.5, name="stuck")
    finally:
        await holder.close()

    assert not observation.reachable
    assert observation.error == "timeout after 0.5s"
    assert 0.4 < observation.latency < 1.5
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%probe stuck'"
    deadline = time.monotonic() + 5.0
    while pg_pair.primary.sql(sessions) != "0":
        assert time.monotonic() < deadline, "the probe's session outlived its timeout"
        await asyncio.sleep(0.05)


async def test_fencing_marker_epoch_is_read_on_both_servers(pg_pair: PostgresPair) -> None:
    pg_pair.primary.sql(CREATE_MARKER)
    pg_pair.primary.sql(INSERT_EPOCH_7)
    pg_pair.wait_replayed()

    assert (await observe(pg_pair.primary.dsn)).marker_epoch == 7
    assert (await observe(pg_pair.replica.dsn)).marker_epoch == 7


async def test_monitor_role_without_grant_on_the_marker_still_sees_the_server_up(
    pg_pair: PostgresPair,
) -> None:
    pg_pair.primary.sql("CREATE ROLE monitor LOGIN")
    pg_pair.primary.sql(CREATE_MARKER)
    pg_pair.primary.sql(INSERT_EPOCH_7)
    monitor_dsn = f"postgresql://monitor@127.0.0.1:{pg_pair.primary.port}/postgres"

    without_grant = await observe(monitor_dsn)
    pg_pair.primary.sql(
        "GRANT USAGE ON SCHEMA agentaskit_dr TO monitor;"
        "GRANT SELECT ON agentaskit_dr.failover_epoch TO monitor"
    )
    with_grant = await observe(monitor_dsn)

    assert without_grant.reachable, without_grant.error
    assert without_grant.writable
    assert without_grant.marker_epoch is None
    assert with_grant.marker_epoch == 7


async def test_empty_fencing_marker_table_gives_no_epoch(pg_pair: PostgresPair) -> None:
    pg_pair.primary.sql(CREATE_MARKER)

    observation = await observe(pg_pair.primary.dsn)

    assert observation.reachable, observation.error
    assert observation.marker_epoch is None


async def test_primary_set_read_only_is_reachable_but_not_writable(pg_pair: PostgresPair) -> None:
    pg_pair.primary.sql("ALTER SYSTEM SET default_transaction_read_only = on")
    pg_pair.primary.sql("SELECT pg_reload_conf()")
    wait_for_setting(pg_pair.primary, "default_transaction_read_only", "on")

    observation = await observe(pg_pair.primary.dsn)

    assert observation.reachable, observation.error
    assert observation.in_recovery is False
    assert observation.read_only is True
    assert not observation.writable


async def test_nothing_listening_on_the_port_is_unreachable() -> None:
    port = free_port()

    observation = await observe(f"postgresql://postgres@127.0.0.1:{port}/postgres")

    assert not observation.reachable
    assert observation.error == "connection refused"
    assert observation.target == f"127.0.0.1:{port}"


async def test_password_never_appears_in_target_or_error(pg_pair: PostgresPair) -> None:
    port = pg_pair.primary.port
    # Trust auth ignores the password; the database name equals it to force it into an error.
    accepted = await observe(f"postgresql://postgres:hunter2-pw@127.0.0.1:{port}/postgres")
    refused = await observe(f"postgresql://postgres:hunter2-pw@127.0.0.1:{free_port()}/postgres")
    no_db = await observe(f"postgresql://postgres:hunter2-pw@127.0.0.1:{port}/hunter2-pw")

    assert accepted.reachable, accepted.error
    assert not refused.reachable
    assert no_db.reachable, "a missing database is an answer, not an outage"
    assert no_db.refusal == "database_missing"
    assert no_db.error is not None
    assert "does not exist" in no_db.error
    for observation in (accepted, refused, no_db):
        assert "hunter2-pw" not in observation.target
        assert "hunter2-pw" not in (observation.error or "")


def test_failure_is_an_unreachable_observation_of_the_target() -> None:
    probe = PostgresProbe("pg", "postgresql://u:pw@db.example:6543/app", timeout=1.0)

    observation = probe.failure("probe overran its deadline", 3.0)

    assert observation == PostgresObservation(
        target="db.example:6543",
        reachable=False,
        latency=3.0,
        error="probe overran its deadline",
    )


@pytest.mark.parametrize(
    ("dsn", "target"),
    [
        ("postgresql://u:pw@10.0.0.5:6543/app", "10.0.0.5:6543"),
        ("postgresql://u:pw@db.internal/app", "db.internal:5432"),
        ("postgresql://[::1]:6000/app", "[::1]:6000"),
        ("postgresql:///app?host=10.0.0.7&port=6001", "10.0.0.7:6001"),
        ("postgresql://u:pw@h1:5432,h2:5433/app", "h1:5432,h2:5433"),
    ],
)
def test_target_is_host_and_port_without_credentials(dsn: str, target: str) -> None:
    assert dsn_target(dsn) == target


@pytest.mark.parametrize(
    ("primary_lsn", "replay_lsn", "lag"),
    [(1000, 400, 600), (1000, 1200, 0), (None, 400, None), (1000, None, None)],
)
def test_replication_lag_bytes_is_primary_minus_replay_floored_at_zero(
    primary_lsn: int | None, replay_lsn: int | None, lag: int | None
) -> None:
    standby = PostgresObservation(
        target="s:5432", reachable=True, latency=0.0, replay_lsn=replay_lsn
    )
    assert replication_lag_bytes(primary_lsn, standby) == lag


async def test_the_wal_archive_backlog_is_seen_while_archiving_fails_and_clears_after(
    pg_pair: PostgresPair,
) -> None:
    primary = pg_pair.primary
    primary.stop()
    with (primary.datadir / "postgresql.conf").open("a") as conf:
        conf.write("archive_mode = on\narchive_command = 'false'\n")  # every push fails
    primary.start()
    primary.sql("CREATE TABLE archive_lag_probe (n int)")
    for n in range(3):
        primary.sql(f"INSERT INTO archive_lag_probe VALUES ({n}); SELECT pg_switch_wal()")
    await asyncio.sleep(1.2)  # segments ready; none archived, so none counted from

    stuck = await observe(primary.dsn)
    # Nothing archived yet at all: the backlog cannot be counted from pg_stat_archiver.
    assert stuck.archive_pending_segments is None, stuck

    primary.sql("ALTER SYSTEM SET archive_command = 'true'")
    primary.sql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 20
    while primary.sql("SELECT last_archived_wal IS NOT NULL FROM pg_stat_archiver") != "t":
        assert time.monotonic() < deadline, "nothing was archived after the fix"
        await asyncio.sleep(0.1)
    primary.sql("ALTER SYSTEM SET archive_command = 'false'")
    primary.sql("SELECT pg_reload_conf()")
    wait_for_setting(primary, "archive_command", "false")
    await asyncio.sleep(0.5)
    for n in range(3):
        primary.sql(f"INSERT INTO archive_lag_probe VALUES ({n}); SELECT pg_switch_wal()")
    await asyncio.sleep(1.0)

    behind = await observe(primary.dsn)
    assert behind.archive_pending_segments is not None, behind
    assert behind.archive_pending_segments >= 3, behind
    assert behind.archive_lag_seconds is not None
    assert behind.archive_lag_seconds >= 1.0, behind

    primary.sql("ALTER SYSTEM SET archive_command = 'true'")
    primary.sql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while True:
        caught_up = await observe(primary.dsn)
        if caught_up.archive_pending_segments == 0:
            break
        assert time.monotonic() < deadline, caught_up
        await asyncio.sleep(0.2)
    assert caught_up.archive_lag_seconds == 0.0
