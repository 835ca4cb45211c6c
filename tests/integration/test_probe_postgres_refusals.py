"""PostgresProbe on real servers that answer with an error: reachable, with a named refusal.

Only a server that does not answer (refused, reset, killed, SIGSTOPped, no answer within
the probe timeout) is unreachable. A server that answers "no" to the watchdog (pg_hba,
too many connections, no such database, not accepting connections yet) is up: failing
over away from it is the classic false failover.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import asyncpg
import pytest

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.ports import PostgresObservation
from agentaskit_dr.probes import PostgresProbe
from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration

WATCHDOG_ROLE = "watchdog"
APP_ROLE = "app"


async def observe(dsn: str, *, within: float = 2.0) -> PostgresObservation:
    probe = PostgresProbe("pg", dsn, timeout=within)
    try:
        return await probe.observe()
    finally:
        await probe.close()


def role_dsn(server: PostgresServer, role: str, database: str = "postgres") -> str:
    return f"postgresql://{role}@127.0.0.1:{server.port}/{database}"


def create_roles(server: PostgresServer) -> None:
    """A watchdog role and an application role that owns a table it writes to."""
    server.sql(
        f"CREATE ROLE {WATCHDOG_ROLE} LOGIN; CREATE ROLE {APP_ROLE} LOGIN;"
        f"CREATE TABLE orders (id serial PRIMARY KEY, at timestamptz);"
        f"ALTER TABLE orders OWNER TO {APP_ROLE}"
    )


async def reject_in_pg_hba(server: PostgresServer, role: str) -> None:
    """Prepend a ``reject`` line for ``role`` to pg_hba.conf and reload, as a DB team would;
    returns once a new session of ``role`` is rejected (a reload is asynchronous)."""
    hba = server.datadir / "pg_hba.conf"
    hba.write_text(f"host all {role} 127.0.0.1/32 reject\n" + hba.read_text())
    server.sql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 5.0
    while True:
        try:
            conn = await asyncpg.connect(role_dsn(server, role), timeout=2.0)
        except asyncpg.InvalidAuthorizationSpecificationError:
            return
        await conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"pg_hba reject of {role} not in force after 5s")
        await asyncio.sleep(0.05)


async def app_writes(server: PostgresServer) -> bool:
    conn = await asyncpg.connect(role_dsn(server, APP_ROLE), timeout=2.0)
    try:
        await conn.execute("INSERT INTO orders (at) VALUES (now())")
        return await conn.fetchval("SELECT count(*) FROM orders") == 1  # type: ignore[no-any-return]
    finally:
        await conn.close()


async def test_watchdog_role_rejected_by_pg_hba_is_reachable_with_a_named_refusal(
    pg_pair: PostgresPair,
) -> None:
    create_roles(pg_pair.primary)
    await reject_in_pg_hba(pg_pair.primary, WATCHDOG_ROLE)

    seen = await observe(role_dsn(pg_pair.primary, WATCHDOG_ROLE))

    assert seen.reachable, "the server answered: it is up"
    assert seen.refusal == "auth_rejected"
    assert seen.sqlstate == "28000"
    assert seen.error is not None
    assert "pg_hba.conf rejects connection" in seen.error
    # Nothing about its role could be read: unknown, not "a standby" and not "writable".
    assert seen.in_recovery is None
    assert seen.read_only is None
    assert not seen.writable
    assert not seen.status_read
    assert await app_writes(pg_pair.primary), "the application still writes"


async def test_role_that_does_not_exist_is_a_named_refusal(pg_pair: PostgresPair) -> None:
    seen = await observe(role_dsn(pg_pair.primary, "nobody_here"))

    assert seen.reachable
    assert (seen.refusal, seen.sqlstate) == ("role_missing", "28000")


async def test_database_that_does_not_exist_is_a_named_refusal(pg_pair: PostgresPair) -> None:
    seen = await observe(role_dsn(pg_pair.primary, "postgres", database="nowhere"))

    assert seen.reachable
    assert (seen.refusal, seen.sqlstate) == ("database_missing", "3D000")
    assert seen.error is not None
    assert "does not exist" in seen.error


async def test_too_many_connections_is_reachable_with_a_named_refusal(
    pg_pair: PostgresPair,
) -> None:
    primary = pg_pair.primary
    create_roles(primary)
    # Three slots for ordinary roles (one more is reserved for superusers).
    primary.sql("ALTER SYSTEM SET max_connections = 4")
    primary.sql("ALTER SYSTEM SET superuser_reserved_connections = 1")
    primary.stop()
    primary.start()
    held = []
    try:
        while True:
            try:
                held.append(await asyncpg.connect(role_dsn(primary, APP_ROLE), timeout=2.0))
            except asyncpg.TooManyConnectionsError:
                break
            assert len(held) < 10, "max_connections did not take effect"

        seen = await observe(role_dsn(primary, WATCHDOG_ROLE))
    finally:
        for conn in held:
            await conn.close()

    assert seen.reachable, seen.error
    assert (seen.refusal, seen.sqlstate) == ("too_many_connections", "53300")
    assert seen.in_recovery is None
    assert (await observe(role_dsn(primary, WATCHDOG_ROLE))).status_read, "slots freed"


async def test_standby_not_accepting_connections_is_reachable_with_a_named_refusal(
    pg_pair: PostgresPair,
) -> None:
    replica = pg_pair.replica
    replica.sql("ALTER SYSTEM SET hot_standby = off")
    replica.stop()
    # hot_standby off: the server runs and answers every session with 57P03.
    replica.start(accepting=False)

    seen = await observe(replica.dsn)

    assert seen.reachable, seen.error
    assert (seen.refusal, seen.sqlstate) == ("not_accepting_connections", "57P03")
    assert seen.in_recovery is None


async def test_killed_server_is_unreachable_with_no_refusal(pg_pair: PostgresPair) -> None:
    pg_pair.primary.kill()

    seen = await observe(pg_pair.primary.dsn)

    assert not seen.reachable
    assert (seen.refusal, seen.sqlstate) == (None, None)
    assert seen.error == "connection refused"


async def test_sigstopped_server_is_unreachable_after_the_timeout(pg_pair: PostgresPair) -> None:
    pg_pair.primary.pause()
    try:
        seen = await observe(pg_pair.primary.dsn, within=0.5)
    finally:
        pg_pair.primary.resume()

    assert not seen.reachable
    assert (seen.refusal, seen.sqlstate) == (None, None)
    assert seen.error == "timeout after 0.5s"


async def test_a_wal_receiver_status_the_role_may_not_read_is_unreadable_not_absent(
    pg_pair: PostgresPair,
) -> None:
    create_roles(pg_pair.primary)
    pg_pair.wait_replayed()

    plain = await observe(role_dsn(pg_pair.replica, WATCHDOG_ROLE))
    pg_pair.primary.sql(f"GRANT pg_monitor TO {WATCHDOG_ROLE}")
    pg_pair.wait_replayed()
    monitor = await observe(role_dsn(pg_pair.replica, WATCHDOG_ROLE))

    assert (plain.in_recovery, plain.receiver_status) == (True, "unreadable")
    assert (monitor.in_recovery, monitor.receiver_status) == (True, "streaming")


@pytest.mark.parametrize("linger", [True, False], ids=["reset", "closed"])
async def test_a_listener_that_drops_the_connection_is_unreachable(linger: bool) -> None:
    """Something on the port accepts and hangs up (a dying server, a proxy with no
    backend): the answer never came, whether the close is a RST or a FIN."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if linger:  # SO_LINGER 0: close() sends a RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:  # read the startup packet first, so that close() is a plain FIN
            await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        seen = await observe(f"postgresql://watchdog@127.0.0.1:{port}/postgres")
    finally:
        server.close()
        await server.wait_closed()

    assert not seen.reachable, seen
    assert (seen.refusal, seen.sqlstate) == (None, None)


async def test_a_pg_hba_reject_shows_once_the_kept_session_ages_out(
    pg_pair: PostgresPair,
) -> None:
    create_roles(pg_pair.primary)
    probe = PostgresProbe("aging", role_dsn(pg_pair.primary, WATCHDOG_ROLE), timeout=2.0,
                          session_max_age=0.5)
    try:
        assert (await probe.observe()).refusal is None
        await reject_in_pg_hba(pg_pair.primary, WATCHDOG_ROLE)
        kept = await probe.observe()  # the session opened before the change still answers
        await asyncio.sleep(0.6)
        aged = await probe.observe()
    finally:
        await probe.close()

    assert kept.reachable
    assert kept.refusal is None
    assert aged.reachable, "the server answered: it is up"
    assert aged.refusal == "auth_rejected"
