"""A fence no client can undo, on a real primary + replica (issue 8).

The soft fence (``default_transaction_read_only = on``) is undone by any client that says
``SET default_transaction_read_only = off`` or ``BEGIN READ WRITE``. Each test here has an
application role try exactly that, on a session opened before the fence and on new ones,
and asserts that no commit lands: in SQL-only mode (roles locked out, sessions ended) and
in control mode (server stopped, any restart in recovery), including a SIGSTOPped primary.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import asyncpg
import pytest
import structlog

from agentaskit_dr.actuators.fence import FenceResult, fence_server
from agentaskit_dr.actuators.pg_control import ServerControl, postmaster_pid
from agentaskit_dr.actuators.role_fence import restore_locked_roles
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration

IO_TIMEOUT = 2.0
log = structlog.get_logger(__name__)


def app_dsn(server: PostgresServer, role: str = "app") -> str:
    return f"postgresql://{role}@127.0.0.1:{server.port}/postgres"


def add_application(server: PostgresServer) -> None:
    server.sql(
        "CREATE ROLE app LOGIN; CREATE ROLE retired NOLOGIN; "
        "CREATE TABLE orders (id int); GRANT SELECT, INSERT ON orders TO app"
    )


async def commits_read_write(conn: asyncpg.Connection, order: int) -> bool:
    """What a client that insists on writing does; True if its commit landed."""
    try:
        await conn.execute("SET default_transaction_read_only = off")
        async with conn.transaction(readonly=False):
            await conn.execute("SET TRANSACTION READ WRITE")
            await conn.execute("INSERT INTO orders VALUES ($1)", order)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return True


async def new_session_commits(dsn: str, order: int) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=IO_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return await commits_read_write(conn, order)
    finally:
        conn.terminate()


def control_of(server: PostgresServer) -> ServerControl:
    return ServerControl(
        data_directory=server.datadir, os_user="postgres", bin_dir=server.bindir,
        stop_timeout=5.0,
    )


async def fence(server: PostgresServer, control: ServerControl | None = None) -> FenceResult:
    return await fence_server(
        server.dsn, epoch=None, io_timeout=IO_TIMEOUT, flog=log, control=control,
        primary_conninfo="host=127.0.0.1 port=1 application_name=old-primary",
    )


def restart(server: PostgresServer) -> None:
    """Start the server again the way its service manager would, after it died."""
    server.kill()  # reaps the postmaster our fence stopped; no-op signals on the dead
    server.start()


async def test_sql_fence_holds_against_a_client_that_asks_for_read_write(
    pg_pair: PostgresPair,
) -> None:
    primary = pg_pair.primary
    add_application(primary)
    open_before = await asyncpg.connect(app_dsn(primary))
    try:
        assert await commits_read_write(open_before, 1)

        result = await fence(primary)

        assert result.fenced, result.detail
        assert result.roles_locked_out == ("app",)
        assert not await commits_read_write(open_before, 2)
    finally:
        open_before.terminate()
    assert not await new_session_commits(app_dsn(primary), 3)
    assert primary.sql("SELECT array_agg(id) FROM orders") == "{1}"
    # The replica keeps streaming: it can catch up with the fenced primary.
    assert primary.sql("SELECT count(*) FROM pg_stat_replication") == "1"


async def test_sql_fence_is_idempotent_and_lifting_restores_exactly_the_locked_roles(
    pg_pair: PostgresPair,
) -> None:
    primary = pg_pair.primary
    add_application(primary)
    assert (await fence(primary)).fenced
    again = await fence(primary)
    assert again.fenced, again.detail
    assert again.roles_locked_out == ()

    conn = await asyncpg.connect(primary.dsn)
    try:
        restored = await restore_locked_roles(conn, inherited_only=False)
    finally:
        await conn.close()

    assert restored == ["app"]
    assert primary.sql(
        "SELECT string_agg(rolname || '=' || rolcanlogin, ',' ORDER BY rolname) "
        "FROM pg_roles WHERE rolname IN ('app', 'retired')"
    ) == "app=true,retired=false"


async def test_a_standby_promoted_after_a_sql_fence_gives_the_inherited_logins_back(
    pg_pair: PostgresPair,
) -> None:
    # Role attributes replicate: the standby catches up with the fence's NOLOGIN.
    add_application(pg_pair.primary)
    assert (await fence(pg_pair.primary)).fenced
    pg_pair.wait_replayed()
    pg_pair.primary.kill()
    pg_pair.replica.sql("SELECT pg_promote(wait => true)")

    new_primary = await asyncpg.connect(pg_pair.replica.dsn)
    try:
        assert await restore_locked_roles(new_primary, inherited_only=True) == ["app"]
        assert await restore_locked_roles(new_primary, inherited_only=True) == []
    finally:
        await new_primary.close()
    assert await new_session_commits(app_dsn(pg_pair.replica), 4)


async def test_control_fence_stops_the_server_and_a_restart_comes_back_read_only(
    pg_pair: PostgresPair,
) -> None:
    primary = pg_pair.primary
    add_application(primary)
    control = control_of(primary)
    open_before = await asyncpg.connect(app_dsn(primary))
    try:
        result = await fence(primary, control)

        assert result.fenced, result.detail
        assert result.server_stopped
        # pg_ctl stops a server it did not start: it needs only postmaster.pid.
        assert "pg_ctl -m fast" in result.detail
        assert postmaster_pid(control) is None
        assert (primary.datadir / "standby.signal").is_file()
        assert not await commits_read_write(open_before, 1)
    finally:
        open_before.terminate()
    assert not await new_session_commits(app_dsn(primary), 2)

    restart(primary)

    assert primary.sql("SELECT pg_is_in_recovery()") == "t"
    assert not await new_session_commits(app_dsn(primary), 3)
    assert primary.sql("SELECT count(*) FROM orders") == "0"
    auto_conf = (primary.datadir / "postgresql.auto.conf").read_text()
    assert "primary_conninfo = 'host=127.0.0.1 port=1 application_name=old-primary'" in auto_conf


async def test_control_fence_kills_a_frozen_primary_for_good(pg_pair: PostgresPair) -> None:
    primary = pg_pair.primary
    add_application(primary)
    control = control_of(primary)
    assert primary.proc is not None
    postmaster = primary.proc.pid
    children = _live_processes(_children(postmaster))
    assert children
    primary.pause()  # SIGSTOP: connects in the kernel backlog, never answers

    result = await fence(primary, control)

    assert result.fenced, result.detail
    assert "SIGKILL" in result.detail
    assert postmaster_pid(control) is None
    assert primary.proc.wait(timeout=5) == -9
    assert not _live_processes(children)
    restart(primary)
    assert primary.sql("SELECT pg_is_in_recovery()") == "t"
    assert not await new_session_commits(app_dsn(primary), 1)


async def test_control_fence_kills_a_server_whose_backends_hang_in_shutdown(
    pg_pair: PostgresPair,
) -> None:
    # The postmaster answers, but its backends are stuck (a hung disk, say): neither the
    # fast nor the immediate shutdown can complete within stop_timeout.
    primary = pg_pair.primary
    add_application(primary)
    control = ServerControl(data_directory=primary.datadir, bin_dir=primary.bindir,
                            stop_timeout=1.0)
    assert primary.proc is not None
    hung = _live_processes(_children(primary.proc.pid))
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)

    result = await fence(primary, control)

    assert result.fenced, result.detail
    assert "SIGKILL" in result.detail
    assert not _live_processes(hung)
    restart(primary)
    assert primary.sql("SELECT pg_is_in_recovery()") == "t"
    assert not await new_session_commits(app_dsn(primary), 1)


async def test_control_fence_without_a_usable_pg_ctl_still_kills_the_server(
    pg_pair: PostgresPair, tmp_path: Path
) -> None:
    primary = pg_pair.primary
    control = ServerControl(data_directory=primary.datadir, bin_dir=tmp_path, stop_timeout=2.0)

    result = await fence(primary, control)

    assert result.fenced, result.detail
    assert "SIGKILL" in result.detail
    assert "cannot run" in result.detail
    restart(primary)
    assert primary.sql("SELECT pg_is_in_recovery()") == "t"


async def test_control_fence_of_a_server_already_down_makes_its_restart_read_only(
    pg_pair: PostgresPair,
) -> None:
    primary = pg_pair.primary
    add_application(primary)
    primary.kill()

    result = await fence(primary, control_of(primary))

    assert result.fenced, result.detail
    assert "already down" in result.detail
    primary.start()
    assert primary.sql("SELECT pg_is_in_recovery()") == "t"
    assert not await new_session_commits(app_dsn(primary), 1)


def _state(pid: int) -> tuple[str, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _children(parent: int) -> list[int]:
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if (state := _state(pid)) is not None and state[1] == parent]


def _live_processes(pids: list[int]) -> list[int]:
    return [pid for pid in pids if (state := _state(pid)) is not None and state[0] not in "ZX"]


async def test_two_fencers_of_one_server_at_once_both_confirm(pg_pair: PostgresPair) -> None:
    # The old primary's own watchdog and the lock holder fence it at the same moment.
    primary = pg_pair.primary
    add_application(primary)

    first, second = await asyncio.gather(fence(primary), fence(primary))

    assert first.fenced, first.detail
    assert second.fenced, second.detail
    assert not await new_session_commits(app_dsn(primary), 1)


async def test_many_fencers_racing_to_create_the_fence_table_all_confirm(
    pg_pair: PostgresPair,
) -> None:
    # The first fence of a server creates agentaskit_dr.fenced_roles. A fencer that waited
    # for the other's advisory lock must find the table the other created, not fail with
    # "relation already exists" (CI saw exactly that once, and the old primary stayed
    # unfenced for a round).
    from agentaskit_dr.actuators.role_fence import lock_out_roles

    primary = pg_pair.primary
    add_application(primary)

    async def lock_out() -> tuple[str, ...]:
        conn = await asyncpg.connect(primary.dsn, timeout=IO_TIMEOUT)
        try:
            return (await lock_out_roles(conn, epoch=1)).locked
        finally:
            await conn.close()

    for _ in range(10):
        primary.sql("DROP SCHEMA IF EXISTS agentaskit_dr CASCADE; ALTER ROLE app LOGIN")
        results = await asyncio.gather(*(lock_out() for _ in range(6)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures
        # Exactly one of them took LOGIN from app; the others found it done already.
        assert sorted(results) == [()] * 5 + [("app",)], results
    assert primary.sql("SELECT count(*) FROM agentaskit_dr.fenced_roles") == "1"


async def test_a_fencer_whose_first_look_missed_the_table_finds_it_made_by_the_winner(
    pg_pair: PostgresPair,
) -> None:
    # The loser of the creation race (its look came before the winner's commit was
    # visible to it) gets "relation already exists" from CREATE TABLE: the fence goes on.
    from agentaskit_dr.actuators.role_fence import lock_out_roles

    primary = pg_pair.primary
    add_application(primary)
    primary.sql("CREATE SCHEMA agentaskit_dr; CREATE TABLE agentaskit_dr.fenced_roles ("
                "role_oid oid PRIMARY KEY, role_name name NOT NULL, timeline int NOT NULL, "
                "epoch bigint, fenced_at timestamptz NOT NULL DEFAULT now())")

    class FirstLookMisses:
        def __init__(self, conn: asyncpg.Connection) -> None:
            self._conn = conn
            self._missed = False

        def __getattr__(self, name: str) -> object:
            return getattr(self._conn, name)

        async def fetchval(self, query: str, *args: object) -> object:
            if "to_regclass" in query and "IS NOT NULL" in query and not self._missed:
                self._missed = True
                return False
            return await self._conn.fetchval(query, *args)

    conn = await asyncpg.connect(primary.dsn, timeout=IO_TIMEOUT)
    try:
        stale = FirstLookMisses(conn)
        lockout = await lock_out_roles(stale, epoch=1)  # type: ignore[arg-type]
        assert stale._missed
    finally:
        await conn.close()
    assert lockout.locked == ("app",)
    assert primary.sql("SELECT role_name FROM agentaskit_dr.fenced_roles") == "app"
