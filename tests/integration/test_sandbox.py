"""The PostgreSQL sandbox behaves like the real failures the watchdog must survive."""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
import pytest

from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration


def test_pair_starts_with_a_streaming_replica_in_recovery(pg_pair: PostgresPair) -> None:
    assert pg_pair.primary.sql("SELECT pg_is_in_recovery()") == "f"
    assert pg_pair.replica.sql("SELECT pg_is_in_recovery()") == "t"
    assert (
        pg_pair.primary.sql("SELECT application_name, state FROM pg_stat_replication")
        == "replica|streaming"
    )


def test_write_on_primary_becomes_visible_on_replica(pg_pair: PostgresPair) -> None:
    pg_pair.primary.sql("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
    pg_pair.wait_replayed()
    assert pg_pair.replica.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM orders") == "1,2"


def test_replica_refuses_writes_while_in_recovery(pg_pair: PostgresPair) -> None:
    with pytest.raises(RuntimeError, match="read-only transaction"):
        pg_pair.replica.sql("CREATE TABLE orders (id int)")


def test_killed_primary_refuses_connections_and_promoted_replica_takes_writes(
    pg_pair: PostgresPair,
) -> None:
    pg_pair.primary.sql("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
    pg_pair.wait_replayed()

    pg_pair.primary.kill()

    assert not pg_pair.primary.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", pg_pair.primary.port), 1.0).close()
    assert pg_pair.replica.sql("SELECT pg_promote(wait => true)") == "t"
    assert pg_pair.replica.sql("SELECT pg_is_in_recovery()") == "f"
    assert pg_pair.replica.sql("INSERT INTO orders VALUES (2) RETURNING id") == "2"
    assert pg_pair.replica.sql("SELECT count(*) FROM orders") == "2"


def test_killed_primary_restarts_at_once_on_its_data_dir(pg_pair: PostgresPair) -> None:
    pg_pair.primary.kill()
    started = time.monotonic()

    pg_pair.primary.start()

    assert time.monotonic() - started < 5.0
    assert pg_pair.primary.sql("SELECT 1") == "1"


def test_stopped_primary_shuts_down_cleanly(pg_pair: PostgresPair) -> None:
    pg_pair.primary.stop()

    assert not pg_pair.primary.running
    assert "database system is shut down" in pg_pair.primary.log_tail()


async def test_paused_primary_accepts_tcp_but_never_answers_until_resumed(
    pg_pair: PostgresPair,
) -> None:
    pg_pair.primary.pause()
    try:
        # The kernel completes the handshake from the listen backlog...
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", pg_pair.primary.port), 1.0
        )
        writer.close()
        await writer.wait_closed()
        # ...but no postmaster ever answers the startup packet.
        with pytest.raises(TimeoutError):
            await asyncpg.connect(pg_pair.primary.dsn, timeout=1.0)
    finally:
        pg_pair.primary.resume()

    conn = await asyncpg.connect(pg_pair.primary.dsn, timeout=5.0)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_paused_primary_leaves_open_sessions_hanging(pg_pair: PostgresPair) -> None:
    conn = await asyncpg.connect(pg_pair.primary.dsn, timeout=5.0)
    try:
        pg_pair.primary.pause()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.fetchval("SELECT 1"), 1.0)
        finally:
            pg_pair.primary.resume()
    finally:
        conn.terminate()
