"""An old primary that comes back takes no write: the start gate and ``unfence``, as the real
CLI against a real pair (issue 8).

The scenario measured in the issue: the primary is killed, the standby is promoted, and
the old primary's service manager starts it again. With ``start-gate`` in its unit the
start is refused, and a start anyway (the gate wrote ``standby.signal``) comes up in
recovery: a writer retrying against it never commits.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest
import structlog
import yaml

from agentaskit_dr.actuators.fence import fence_server
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration

WEST, EAST = "us-west-2", "us-east-1"
WRITER_ATTEMPTS = 20


#: A lock store that refuses at once: the gate then decides from the servers alone.
NO_LOCK_STORE = "redis://127.0.0.1:9/0"


def write_config(
    tmp_path: Path, pair: PostgresPair, *, control: bool = True, control_region: str = WEST,
    lock_url: str = NO_LOCK_STORE,
) -> Path:
    """West runs the primary, east the standby; ``control_region``'s runs on this host."""
    regions: dict[str, dict[str, object]] = {
        WEST: {"health_urls": ["http://127.0.0.1:9/healthz"],
               "database": {"dsn": pair.primary.dsn}},
        EAST: {"health_urls": ["http://127.0.0.1:9/healthz"],
               "database": {"dsn": pair.replica.dsn}},
    }
    if control:
        server = pair.primary if control_region == WEST else pair.replica
        regions[control_region]["database"] = {
            "dsn": server.dsn,
            "control": {"data_directory": str(server.datadir),
                        "bin_dir": str(server.bindir), "os_user": "postgres",
                        "stop_timeout": "5s"},
        }
    config = {
        "region": WEST, "primary_region": WEST, "regions": regions,
        "probe": {"interval": "1s", "timeout": "0.5s"},
        "api": {"listen": None},
        "lock": {"url": lock_url, "ttl": "3s", "socket_timeout": "0.5s"},
    }
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    """``agentaskit-dr ARGS --config CONFIG`` as a subprocess: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentaskit_dr", *args, "--config", str(config),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def fail_over(pair: PostgresPair, epoch: int = 1) -> None:
    """The primary dies (kill -9); the standby is promoted and records its epoch marker."""
    pair.primary.kill()
    pair.replica.sql("SELECT pg_promote(wait => true)")
    pair.replica.sql(
        "CREATE SCHEMA agentaskit_dr; CREATE TABLE agentaskit_dr.failover_epoch "
        "(id int PRIMARY KEY, epoch bigint NOT NULL, holder text NOT NULL, "
        "failover_id text NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now()); "
        f"INSERT INTO agentaskit_dr.failover_epoch VALUES (1, {epoch}, 'east', 'fo-{epoch}')"
    )


async def writer_commits(
    server: PostgresServer, attempts: int = WRITER_ATTEMPTS, *, until: asyncio.Event | None = None
) -> int:
    """An application retrying writes that insist on READ WRITE; how many committed.

    ``until``: instead of ``attempts``, keep retrying until it is set, then a few more.
    """
    committed = 0
    for attempt in range(attempts):
        if until is not None and until.is_set():
            return committed + await writer_commits(server)
        try:
            conn = await asyncpg.connect(server.dsn, timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.sleep(0.02)
            continue
        try:
            await conn.execute("SET default_transaction_read_only = off")
            async with conn.transaction(readonly=False):
                await conn.execute("SET TRANSACTION READ WRITE")
                await conn.execute("CREATE TABLE IF NOT EXISTS orders (id int)")
                await conn.execute("INSERT INTO orders VALUES ($1)", attempt)
            committed += 1
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
        finally:
            conn.terminate()
    return committed


async def test_a_killed_primary_restarted_after_a_failover_never_commits(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = write_config(tmp_path, pg_pair)
    fail_over(pg_pair)
    old = pg_pair.primary

    code, _, err = await cli(config, "start-gate")

    # Its service manager runs the gate first: the start is refused, with the reason.
    assert code == 1, err
    assert f"region {EAST}'s server" in err
    assert "promoted under epoch 1" in err
    assert (old.datadir / "standby.signal").is_file()
    assert await writer_commits(old, attempts=3) == 0  # not started: nothing to write to
    # Started anyway (by hand, or a unit without the gate), with a writer retrying all
    # along: it comes up read-only and stays so.
    started = asyncio.Event()
    writer = asyncio.create_task(writer_commits(old, attempts=10**6, until=started))
    try:
        await asyncio.to_thread(old.start)
    finally:
        started.set()
    assert await writer == 0
    assert old.sql("SELECT pg_is_in_recovery()") == "t"
    # Now the gate lets it run: it is not a primary any more.
    code, out, err = await cli(config, "start-gate")
    assert code == 0, err
    assert "starts in recovery" in out
    assert await writer_commits(pg_pair.replica, attempts=1) == 1


async def test_the_gate_lets_the_primary_start_when_no_primary_is_elsewhere(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = write_config(tmp_path, pg_pair)
    pg_pair.primary.kill()  # the other region's server is still a standby

    code, out, err = await cli(config, "start-gate")

    assert code == 0, err
    assert "may start as primary" in out
    assert not (pg_pair.primary.datadir / "standby.signal").exists()


async def test_the_gate_lets_a_standby_start_even_when_the_primary_carries_a_marker(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    # After a failback the primary (west) carries a marker; east's standby restarts.
    pg_pair.primary.sql(
        "CREATE SCHEMA agentaskit_dr; CREATE TABLE agentaskit_dr.failover_epoch "
        "(id int PRIMARY KEY, epoch bigint NOT NULL); "
        "INSERT INTO agentaskit_dr.failover_epoch VALUES (1, 2)"
    )
    pg_pair.wait_replayed()
    pg_pair.replica.kill()
    with_control = write_config(tmp_path, pg_pair, control_region=EAST)
    code, out, err = await cli(with_control, "start-gate", "--region", EAST)
    assert code == 0, err
    assert "starts in recovery" in out
    # Without control the gate cannot see the standby's data directory (documented).
    code, _, _ = await cli(write_config(tmp_path, pg_pair, control=False),
                           "start-gate", "--region", EAST)
    assert code == 1


async def test_the_gate_without_control_refuses_and_writes_nothing(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = write_config(tmp_path, pg_pair, control=False)
    fail_over(pg_pair)

    code, _, err = await cli(config, "start-gate", "--region", WEST)

    assert code == 1
    assert "refusing to start us-west-2 as primary" in err
    assert not (pg_pair.primary.datadir / "standby.signal").exists()


async def test_unfence_refuses_the_old_primary_while_the_new_one_runs(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = write_config(tmp_path, pg_pair)
    fail_over(pg_pair)
    assert (await cli(config, "start-gate"))[0] == 1

    code, _, err = await cli(config, "unfence", "--region", WEST, "--yes",
                             "--remove-standby-signal")

    assert code == 1
    assert "refusing to lift us-west-2's fence" in err
    assert (pg_pair.primary.datadir / "standby.signal").is_file()


async def test_unfence_lifts_a_sql_fence_by_hand(tmp_path: Path, pg_pair: PostgresPair) -> None:
    config = write_config(tmp_path, pg_pair, control=False)
    pg_pair.primary.sql("CREATE ROLE app LOGIN")
    result = await fence_server(pg_pair.primary.dsn, epoch=None, io_timeout=2.0,
                                flog=structlog.get_logger())
    assert result.roles_locked_out == ("app",)

    code, out, err = await cli(config, "unfence", "--region", WEST, "--yes")

    assert code == 0, err
    assert "LOGIN given back to: app" in out
    assert pg_pair.primary.sql(
        "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'"
    ) == "t"
    assert pg_pair.primary.sql("SHOW default_transaction_read_only") == "off"


async def test_the_gate_believes_the_cluster_record_when_the_new_primary_is_out_of_reach(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    # The failover recorded east as the cluster's primary; east is now down (or cut off):
    # its server tells nothing, the lock store's record still does.
    store = RedisClusterStore(redis_server.url)
    store_lease = RedisLeaderLock(redis_server.url, holder="east", ttl=3.0)
    lease = await store_lease.acquire()
    assert lease is not None
    await store.record_primary(EAST, epoch=lease.epoch, run_id="fo-east", lease=lease)
    await store_lease.close()
    await store.close()
    pg_pair.primary.kill()
    pg_pair.replica.kill()
    config = write_config(tmp_path, pg_pair, lock_url=redis_server.url)

    code, _, err = await cli(config, "start-gate")

    assert code == 1, err
    assert "the cluster record in the lock store says the primary is in us-east-1" in err
    assert (pg_pair.primary.datadir / "standby.signal").exists()
