"""The automatic lift of a self-fence on a real pair + Redis (chaos seed 1011's convergence).

West runs the primary and its watchdog self-fenced it (isolated); east streams from it.
The lift is the daemon's (``runtime.self_fence_lift``): under the real lock's epoch, with
the cluster record in the real lock store and east's server asked over SQL. Healthy
conditions lift the fence and an application commits again; a newer failover in the
record, the record naming east, or a server marker newer than the lift's epoch each keep
the fence (no commit lands). East's server down counts as a standby only when east's
watchdog says it holds it stopped with ``standby.signal`` in place. A server found running
in recovery is lifted only when this watchdog's self-fence record says its own fence left
it so (chaos seed 9103).
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest
import structlog

from agentaskit_dr.actuators.fence import fence_server
from agentaskit_dr.actuators.pg_control import ServerControl, postmaster_pid, stop_server
from agentaskit_dr.atomic_file import write_atomically
from agentaskit_dr.config import WatchdogConfig, load_config
from agentaskit_dr.core import LiftSelfFence
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.ports import Lease
from agentaskit_dr.runtime.outlook import server_held
from agentaskit_dr.runtime.self_fence_lift import gather_facts, lift
from agentaskit_dr.runtime.self_fence_record import record_path
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.pg_state import in_recovery
from tests.integration.test_epoch_floor import daemon_keeper, lease_of
from tests.integration.test_fence_hard import app_dsn, control_of, new_session_commits
from tests.integration.test_start_gate import EAST, WEST, write_config

pytestmark = pytest.mark.integration

log = structlog.get_logger(__name__)


def config_of(tmp_path: Path, pair: PostgresPair, redis: RedisServer, *,
              control: bool) -> WatchdogConfig:
    return load_config(write_config(tmp_path, pair, control=control, lock_url=redis.url))


async def record(redis: RedisServer, region: str, lease: Lease) -> None:
    store = RedisClusterStore(redis.url)
    try:
        await store.record_primary(region, epoch=lease.epoch, run_id=f"fo-{region}",
                                   lease=lease)
    finally:
        await store.close()


async def self_fence(server: PostgresServer, control: ServerControl | None = None) -> None:
    server.sql("CREATE ROLE app LOGIN; CREATE TABLE orders (id int); "
               "GRANT SELECT, INSERT ON orders TO app")
    assert await new_session_commits(app_dsn(server), 1)
    result = await fence_server(server.dsn, epoch=None, io_timeout=2.0, flog=log,
                                control=control, primary_conninfo="host=127.0.0.1 port=1")
    assert result.fenced, result.detail
    assert not await new_session_commits(app_dsn(server), 2)


def command(lease: Lease, fence_epoch: int | None) -> LiftSelfFence:
    return LiftSelfFence(epoch=lease.epoch, fence_epoch=fence_epoch, reason="test",
                         conditions=())


async def test_healthy_conditions_lift_a_sql_self_fence_and_writes_commit_again(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    config = config_of(tmp_path, pg_pair, redis_server, control=False)
    await self_fence(pg_pair.primary)
    async with daemon_keeper(config) as keeper:
        lease = await lease_of(keeper)
        await record(redis_server, WEST, lease)
        facts = await gather_facts(config, WEST)
        assert (facts.recorded_region, facts.recorded_epoch) == (WEST, lease.epoch)
        assert facts.other_in_recovery is True

        done = await lift(config, WEST, command(lease, lease.epoch), keeper)

    assert done.lifted, done.detail
    assert "LOGIN given back to: app" in done.detail
    assert await new_session_commits(app_dsn(pg_pair.primary), 3)


@pytest.mark.parametrize("case", ["newer_failover", "recorded_elsewhere", "newer_marker"])
async def test_an_unsafe_condition_keeps_the_self_fence(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer, case: str,
) -> None:
    config = config_of(tmp_path, pg_pair, redis_server, control=False)
    await self_fence(pg_pair.primary)
    async with daemon_keeper(config) as keeper:
        lease = await lease_of(keeper)
        fence_epoch: int | None = lease.epoch
        if case == "newer_failover":
            # The fence was applied under an older epoch; a failover under this one since.
            fence_epoch = lease.epoch - 1
            await record(redis_server, WEST, lease)
        elif case == "recorded_elsewhere":
            await record(redis_server, EAST, lease)
        else:
            await record(redis_server, WEST, lease)
            record_marker_here(pg_pair, lease.epoch + 5)

        done = await lift(config, WEST, command(lease, fence_epoch), keeper)

    assert not done.lifted
    expected = {"newer_failover": f"a failover of epoch {lease.epoch} is recorded",
                "recorded_elsewhere": "the cluster record names us-east-1",
                "newer_marker": "StaleEpoch"}[case]
    assert expected in done.detail
    assert not await new_session_commits(app_dsn(pg_pair.primary), 4)


def record_marker_here(pair: PostgresPair, epoch: int) -> None:
    """A marker a newer epoch left on the fenced server (written past its read-only default)."""
    pair.primary.sql(
        "BEGIN READ WRITE; CREATE SCHEMA IF NOT EXISTS agentaskit_dr; "
        "CREATE TABLE agentaskit_dr.failover_epoch (id int PRIMARY KEY CHECK (id = 1), "
        "epoch bigint NOT NULL, holder text NOT NULL, failover_id text NOT NULL, "
        "promoted_at timestamptz NOT NULL DEFAULT now()); "
        f"INSERT INTO agentaskit_dr.failover_epoch VALUES (1, {epoch}, 'other', 'fo-x'); "
        "COMMIT"
    )


async def test_a_control_mode_self_fence_is_lifted_by_starting_the_server_as_primary(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    config = config_of(tmp_path, pg_pair, redis_server, control=True)
    control = control_of(pg_pair.primary)
    await self_fence(pg_pair.primary, control)
    pg_pair.primary.kill()  # reaps the postmaster the fence stopped
    assert (pg_pair.primary.datadir / "standby.signal").is_file()
    try:
        async with daemon_keeper(config) as keeper:
            lease = await lease_of(keeper)
            await record(redis_server, WEST, lease)
            done = await lift(config, WEST, command(lease, lease.epoch), keeper)

        assert done.lifted, done.detail
        assert "us-east-1: in recovery; standby.signal removed; server started" in done.detail
        assert not (pg_pair.primary.datadir / "standby.signal").exists()
        conn = await asyncpg.connect(pg_pair.primary.dsn, timeout=2.0)
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        finally:
            await conn.close()
        assert await new_session_commits(app_dsn(pg_pair.primary), 5)
    finally:
        if postmaster_pid(control) is not None:  # started by pg_ctl: not the sandbox's
            await stop_server(control)


async def test_an_unreachable_other_server_keeps_the_fence_unless_its_watchdog_holds_it(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    config = config_of(tmp_path, pg_pair, redis_server, control=False)
    await self_fence(pg_pair.primary)
    pg_pair.replica.kill()  # down, standby.signal in place (it was a streaming standby)
    async with daemon_keeper(config) as keeper:
        lease = await lease_of(keeper)
        await record(redis_server, WEST, lease)

        unknown = await lift(config, WEST, command(lease, lease.epoch), keeper)
        assert not unknown.lifted
        assert "not known to be a standby" in unknown.detail
        assert not await new_session_commits(app_dsn(pg_pair.primary), 6)

        done = await lift(config, WEST, command(lease, lease.epoch), keeper,
                          held=lambda: {EAST: "east (peer1)"})

    assert done.lifted, done.detail
    assert "stopped with standby.signal in place, says east (peer1)" in done.detail
    assert await new_session_commits(app_dsn(pg_pair.primary), 7)


async def test_a_watchdog_reports_its_server_held_only_when_stopped_with_standby_signal(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    path = write_config(tmp_path, pg_pair, control=True, control_region=EAST,
                        lock_url=redis_server.url)
    config = load_config(path).model_copy(update={"region": EAST})

    assert server_held(config) is None, "running"
    pg_pair.replica.kill()
    assert server_held(config) == EAST
    (pg_pair.replica.datadir / "standby.signal").unlink()
    assert server_held(config) is None, "a start would come up as a primary"


async def test_a_server_its_own_recorded_fence_left_in_recovery_is_stopped_and_lifted(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    """Chaos seed 9103: the watchdog restarted while fenced and its service manager started
    the server behind the gate, in recovery. Without the self-fence record that is an
    operator's call; with it (our own fence put it there) the lift stops and starts it."""
    config = config_of(tmp_path, pg_pair, redis_server, control=True).model_copy(
        update={"evidence_dir": tmp_path / "evidence"})
    control = control_of(pg_pair.primary)
    timeline = pg_pair.primary.sql("SELECT timeline_id FROM pg_control_checkpoint()")
    await self_fence(pg_pair.primary, control)
    pg_pair.primary.kill()  # reaps the postmaster the fence stopped
    pg_pair.primary.start(accepting=False)  # the service manager, behind the gate
    assert in_recovery(pg_pair.primary)
    try:
        async with daemon_keeper(config) as keeper:
            lease = await lease_of(keeper)
            await record(redis_server, WEST, lease)
            refused = await lift(config, WEST, command(lease, lease.epoch), keeper)
            assert not refused.lifted
            assert "a promotion is not a lift" in refused.detail
            assert in_recovery(pg_pair.primary)

            write_atomically(record_path(config.evidence_dir), json.dumps(
                {"region": WEST, "fence_epoch": lease.epoch, "fenced_at": 0.0,
                 "reason": "test"}))
            done = await lift(config, WEST, command(lease, lease.epoch), keeper)

        assert done.lifted, done.detail
        assert "in recovery after this watchdog's self-fence: stopped" in done.detail
        assert "standby.signal removed; server started" in done.detail
        assert not in_recovery(pg_pair.primary)
        assert pg_pair.primary.sql(
            "SELECT timeline_id FROM pg_control_checkpoint()") == timeline
        assert await new_session_commits(app_dsn(pg_pair.primary), 5)
        assert in_recovery(pg_pair.replica)
    finally:
        if postmaster_pid(control) is not None:  # started by pg_ctl: not the sandbox's
            await stop_server(control)
