"""The planned switchover on real PostgreSQL: the primary moves to its streaming standby and
back (timelines 1 -> 2 -> 3) while clients write continuously, and no acknowledged write is
lost. Each test gets its own primary + streaming replica (``pg_pair``)."""

from __future__ import annotations

import asyncio
import contextlib
import pwd
from collections.abc import AsyncIterator

import asyncpg
import pytest

from agentaskit_dr.actuators.pg_control import (
    ServerControl,
    postmaster_pid,
    standby_signal_present,
    stop_server,
    write_recovery_config,
)
from agentaskit_dr.actuators.switchover import (
    PostgresSwitchover,
    SwitchoverRefused,
    SwitchoverResult,
)
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.writer import CREATE_TABLE, TABLE, WriterLog, write_continuously

pytestmark = pytest.mark.integration

WRITERS = 3
#: Bound on the writers finding a server that takes writes (they retry every few ms).
WRITE_TIMEOUT = 10.0


def control(server: PostgresServer) -> ServerControl:
    owner = pwd.getpwuid(server.datadir.stat().st_uid).pw_name
    return ServerControl(data_directory=server.datadir, os_user=owner, bin_dir=server.bindir)


def switchover(old: PostgresServer, new: PostgresServer, **timeouts: float) -> PostgresSwitchover:
    return PostgresSwitchover(
        primary_dsn=old.dsn, primary_control=control(old), standby_dsn=new.dsn,
        primary_conninfo=(
            f"host=127.0.0.1 port={new.port} user=postgres application_name={old.name}"),
        io_timeout=2.0, **timeouts,
    )


async def still_leader() -> bool:
    return True


async def switch(old: PostgresServer, new: PostgresServer, epoch: int,
                 promoted: list[str] | None = None) -> SwitchoverResult:
    async def record_primary() -> None:
        # What the caller records here (the new primary region) must find it writable.
        assert new.sql("SELECT pg_is_in_recovery()") == "f"
        if promoted is not None:
            promoted.append(new.name)

    return await switchover(old, new).switch(
        epoch=epoch, holder="watchdog-test", switchover_id=f"so-{epoch}",
        still_leader=still_leader, on_promoted=record_primary)


@contextlib.asynccontextmanager
async def servers_stopped_after(pair: PostgresPair) -> AsyncIterator[None]:
    """The switchover restarts servers with pg_ctl, outside the pair's own process handles."""
    try:
        yield
    finally:
        for server in (pair.primary, pair.replica):
            if postmaster_pid(control(server)) is not None:
                await stop_server(control(server))


@contextlib.asynccontextmanager
async def writers(pair: PostgresPair) -> AsyncIterator[WriterLog]:
    log = WriterLog()
    stop = asyncio.Event()
    servers = {pair.primary.name: pair.primary.dsn, pair.replica.name: pair.replica.dsn}
    tasks = [asyncio.create_task(write_continuously(servers, log, stop, writer=n))
             for n in range(1, WRITERS + 1)]
    try:
        yield log
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def written_on(log: WriterLog, server: PostgresServer) -> None:
    """Wait until ``server`` acknowledges a write from now on: the writers found it (not a
    fixed pause, which a busy machine can outlast before the first write lands)."""
    before = len(log.acked_on(server.name))
    for _ in range(int(WRITE_TIMEOUT / 0.02)):
        if len(log.acked_on(server.name)) > before:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no write acknowledged by {server.name} within about "
                         f"{WRITE_TIMEOUT:g}s; last failures: {log.failed[-3:]}")


async def missing_on(server: PostgresServer, log: WriterLog) -> set[int]:
    """The rows acknowledged so far that ``server`` does not hold."""
    acked = {a.row_id for a in log.acked}
    conn = await asyncpg.connect(server.dsn)
    try:
        found = await conn.fetch(f"SELECT id FROM {TABLE} WHERE id = ANY($1::bigint[])",
                                 list(acked))
    finally:
        await conn.close()
    return acked - {row["id"] for row in found}


def writer_runs(server: PostgresServer) -> list[int]:
    """The servers that took writes, in the order of the writes' server-side timestamps,
    one entry per unbroken run."""
    ports = server.sql(f"SELECT server_port FROM {TABLE} ORDER BY written_at, id").split()
    runs: list[int] = []
    for port in map(int, ports):
        if not runs or runs[-1] != port:
            runs.append(port)
    return runs


async def streaming_at_lag_zero(standby: PostgresServer, primary: PostgresServer) -> bool:
    target = primary.sql("SELECT pg_current_wal_lsn()")
    for _ in range(200):
        if standby.sql(
            f"SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= '{target}' "
            "AND (SELECT status FROM pg_stat_wal_receiver) = 'streaming'"
        ) == "t":
            return True
        await asyncio.sleep(0.05)
    return False


async def test_switchover_and_back_loses_no_acknowledged_write(pg_pair: PostgresPair) -> None:
    a, b = pg_pair.primary, pg_pair.replica
    a.sql(CREATE_TABLE)
    pg_pair.wait_replayed()
    async with servers_stopped_after(pg_pair):
        async with writers(pg_pair) as log:
            await written_on(log, a)
            promoted: list[str] = []
            there = await switch(a, b, epoch=7, promoted=promoted)
            await written_on(log, b)
            assert await missing_on(b, log) == set()
            back = await switch(b, a, epoch=8, promoted=promoted)
            await written_on(log, a)
        # Zero loss: every write a client got a COMMIT for is on the final primary.
        assert await missing_on(a, log) == set()
        assert log.failed, "the writers saw no refused write: the switch was not exercised"
        # One writable primary at a time: a, then b, then a again, never interleaved.
        assert writer_runs(a) == [a.port, b.port, a.port]
        assert (there.old_timeline, there.new_timeline, back.new_timeline) == (1, 2, 3)
        assert promoted == [b.name, a.name]
        assert there.rejoined, there.rejoin_detail
        assert back.rejoined, back.rejoin_detail
        assert a.sql("SELECT pg_is_in_recovery()") == "f"
        assert await streaming_at_lag_zero(b, a)
        assert a.sql("SELECT epoch FROM agentaskit_dr.failover_epoch") == "8"
        # Neither rejoin needed pg_rewind: both came back with nothing but standby.signal.
        assert "pg_rewind" not in (there.rejoin_detail + back.rejoin_detail)
        assert there.as_dict()["phases"]["promote"] >= 0


async def test_standby_that_does_not_catch_up_rolls_the_primary_back(
    pg_pair: PostgresPair,
) -> None:
    a, b = pg_pair.primary, pg_pair.replica
    a.sql("CREATE TABLE before_switch (id int)")
    pg_pair.wait_replayed()
    b.sql("SELECT pg_wal_replay_pause()")
    async with servers_stopped_after(pg_pair):
        with pytest.raises(SwitchoverRefused, match="did not replay the shutdown") as err:
            await switchover(a, b, catch_up_timeout=1.0).switch(
                epoch=3, holder="watchdog-test", switchover_id="so-3", still_leader=still_leader)
        assert err.value.rolled_back
        assert not standby_signal_present(control(a))
        a.sql("INSERT INTO before_switch VALUES (1)")  # the primary takes writes again
        assert b.sql("SELECT pg_is_in_recovery()") == "t"
        b.sql("SELECT pg_wal_replay_resume()")
        assert await streaming_at_lag_zero(b, a)


async def test_a_switch_to_a_standby_that_does_not_stream_is_refused_untouched(
    pg_pair: PostgresPair,
) -> None:
    a, b = pg_pair.primary, pg_pair.replica
    async with servers_stopped_after(pg_pair):
        with pytest.raises(SwitchoverRefused, match="not a standby"):
            await switch(a, a, epoch=3)
        with pytest.raises(SwitchoverRefused, match="not a primary"):
            await switch(b, a, epoch=3)
        b.sql("ALTER SYSTEM SET primary_conninfo = ''")
        b.sql("SELECT pg_reload_conf()")
        for _ in range(100):
            if b.sql("SELECT count(*) FROM pg_stat_wal_receiver") == "0":
                break
            await asyncio.sleep(0.05)
        with pytest.raises(SwitchoverRefused, match="not streaming") as err:
            await switch(a, b, epoch=3)
        assert not err.value.rolled_back
        assert a.sql("SELECT pg_is_in_recovery()") == "f"
        assert not standby_signal_present(control(a))


def conninfo_for(new: PostgresServer, old: PostgresServer) -> str:
    return f"host=127.0.0.1 port={new.port} user=postgres application_name={old.name}"


async def test_a_switchover_that_crashed_after_the_stop_resumes_and_loses_nothing(
    pg_pair: PostgresPair,
) -> None:
    a, b = pg_pair.primary, pg_pair.replica
    a.sql(CREATE_TABLE)
    pg_pair.wait_replayed()
    async with servers_stopped_after(pg_pair):
        async with writers(pg_pair) as log:
            await asyncio.sleep(0.3)
            # What the demote does before a crash: signal file, then the fast stop.
            write_recovery_config(control(a), conninfo_for(b, a))
            await stop_server(control(a))
            await asyncio.sleep(0.3)
            assert not log.acked_on(b.name), "the standby took writes before any promotion"
            resumed = await switch(a, b, epoch=7)
            await asyncio.sleep(0.3)
        assert resumed.resumed_at == "catch_up"
        assert (resumed.old_timeline, resumed.new_timeline) == (1, 2)
        assert resumed.rejoined, resumed.rejoin_detail
        assert await missing_on(b, log) == set()
        assert log.acked_on(b.name)
        # Called again (a crash before the run recorded its end): confirmed, not redone.
        again = await switch(a, b, epoch=7)
        assert (again.resumed_at, again.new_timeline, again.rejoined) == ("rejoin", 2, True)
        # The old primary stopped again before it streamed: the rejoin starts it.
        await stop_server(control(a))
        restarted = await switch(a, b, epoch=7)
        assert (restarted.resumed_at, restarted.rejoined) == ("rejoin", True)
        assert b.sql("SELECT epoch FROM agentaskit_dr.failover_epoch") == "7"
        # The same run resumed by a successor watchdog, under a newer epoch: adopted.
        successor = await switchover(a, b).switch(
            epoch=8, holder="watchdog-test", switchover_id="so-7", still_leader=still_leader)
        assert (successor.resumed_at, successor.new_timeline) == ("promote", 2)
        assert b.sql("SELECT epoch FROM agentaskit_dr.failover_epoch") == "8"
        # Another run finds the switchover done by someone else: refused, nothing touched.
        with pytest.raises(SwitchoverRefused, match="not promoted by this switchover"):
            await switch(a, b, epoch=9)
        assert b.sql("SELECT pg_is_in_recovery()") == "f"


async def test_a_promotion_sent_before_a_crash_is_adopted_under_the_epoch(
    pg_pair: PostgresPair,
) -> None:
    a, b = pg_pair.primary, pg_pair.replica
    async with servers_stopped_after(pg_pair):
        write_recovery_config(control(a), conninfo_for(b, a))
        await stop_server(control(a))
        pg_pair.replica.sql("SELECT pg_promote(wait => true)")
        resumed = await switch(a, b, epoch=9)
        assert resumed.resumed_at == "promote"
        assert resumed.rejoined, resumed.rejoin_detail
        assert b.sql("SELECT epoch FROM agentaskit_dr.failover_epoch") == "9"


async def test_a_switchover_that_lost_the_lock_after_the_stop_leaves_the_primary_fenced(
    pg_pair: PostgresPair,
) -> None:
    # Another watchdog may hold the lock now and fail over to the standby: restarting the
    # old primary as a primary could make two.
    a, b = pg_pair.primary, pg_pair.replica
    answers = [True]

    async def leader_until_the_stop() -> bool:
        return answers.pop(0) if answers else False

    async with servers_stopped_after(pg_pair):
        with pytest.raises(SwitchoverRefused, match="lock lost") as err:
            await switchover(a, b).switch(epoch=4, holder="watchdog-test",
                                          switchover_id="so-4", still_leader=leader_until_the_stop)
        assert not err.value.rolled_back
        assert postmaster_pid(control(a)) is None
        assert standby_signal_present(control(a))
        assert b.sql("SELECT pg_is_in_recovery()") == "t"


async def test_an_adopted_promotion_short_of_the_shutdown_checkpoint_keeps_the_old_primary_down(
    pg_pair: PostgresPair,
) -> None:
    # Someone promoted the standby before it had the old primary's last WAL: that primary
    # cannot follow the new timeline, and the switchover says so instead of starting it.
    a, b = pg_pair.primary, pg_pair.replica
    async with servers_stopped_after(pg_pair):
        b.sql("ALTER SYSTEM SET primary_conninfo = ''")
        b.sql("SELECT pg_reload_conf()")
        for _ in range(100):
            if a.sql("SELECT count(*) FROM pg_stat_replication") == "0":
                break
            await asyncio.sleep(0.05)
        a.sql("CREATE TABLE written_after_the_standby_left (id int)")
        write_recovery_config(control(a), conninfo_for(b, a))
        await stop_server(control(a))
        b.sql("SELECT pg_promote(wait => true)")
        resumed = await switch(a, b, epoch=5)
        assert resumed.resumed_at == "promote"
        assert not resumed.rejoined
        assert "sync-primary" in resumed.rejoin_detail
        assert postmaster_pid(control(a)) is None
        assert standby_signal_present(control(a))
