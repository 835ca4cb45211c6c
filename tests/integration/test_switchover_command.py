"""``agentaskit-dr switchover`` as the real CLI, against a real PostgreSQL pair and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
from pathlib import Path

import pytest
import yaml

from agentaskit_dr.actuators.pg_control import ServerControl, postmaster_pid, stop_server
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration

WEST, EAST = "us-west-2", "us-east-1"


def control(server: PostgresServer) -> ServerControl:
    owner = pwd.getpwuid(server.datadir.stat().st_uid).pw_name
    return ServerControl(data_directory=server.datadir, os_user=owner, bin_dir=server.bindir)


def write_config(path: Path, pair: PostgresPair, redis: RedisServer, *, region: str) -> Path:
    west, east = pair.primary, pair.replica
    regions = {
        WEST: {"health_urls": ["http://127.0.0.1:9/health"],
               "database": {"dsn": west.dsn, "control": {
                   "data_directory": str(west.datadir), "bin_dir": str(west.bindir),
                   "os_user": control(west).os_user}}},
        EAST: {"health_urls": ["http://127.0.0.1:9/health"], "database": {"dsn": east.dsn}},
    }
    config = {
        "region": region, "primary_region": WEST, "node_name": "switchover-test",
        "regions": regions,
        "probe": {"interval": "2s", "timeout": "1s"},
        "lock": {"url": redis.url, "ttl": "5s", "socket_timeout": "0.5s"},
        "api": {"listen": None},
        "evidence_dir": str(path.parent / "evidence"),
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def cli(config: Path, *args: str, command: str = "switchover") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentaskit_dr", command, *args, "--config", str(config),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_switchover_command_plans_refuses_and_switches(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    west, east = pg_pair.primary, pg_pair.replica
    config = write_config(tmp_path / "west.yaml", pg_pair, redis_server, region=WEST)
    try:
        code, out, _ = await cli(config, "--to", EAST, "--dry-run")
        assert code == 0
        assert "pg_ctl stop -m fast" in out
        assert west.sql("SELECT pg_is_in_recovery()") == "f"
        code, _, err = await cli(config, "--to", WEST, "--yes")
        assert (code, "already the primary region" in err) == (1, True)
        code, _, err = await cli(config, "--to", "eu-north-1", "--yes")
        assert (code, "--to: must be one of the regions" in err) == (2, True)
        code, _, err = await cli(config, "--to", EAST)
        assert (code, "pass --yes" in err) == (1, True)
        east_side = write_config(tmp_path / "east.yaml", pg_pair, redis_server, region=EAST)
        code, _, err = await cli(east_side, "--to", EAST, "--yes")
        assert code == 1
        assert f"regions.{WEST}.database.control" in err
        assert west.sql("SELECT pg_is_in_recovery()") == "f"

        code, out, err = await cli(config, "--to", EAST, "--yes")
        assert code == 0, err
        result = json.loads(out[out.index("{"):])
        assert result["rejoined"], result["rejoin_detail"]
        assert (result["old_timeline"], result["new_timeline"]) == (1, 2)
        assert east.sql("SELECT pg_is_in_recovery()") == "f"
        assert west.sql("SELECT pg_is_in_recovery()") == "t"
        assert east.sql("SELECT epoch FROM agentaskit_dr.failover_epoch") == str(result["epoch"])
        store = RedisClusterStore(redis_server.url)
        try:
            primary = (await store.read()).primary
        finally:
            await store.close()
        assert primary is not None
        assert (primary.region, primary.epoch) == (EAST, result["epoch"])
        # The file still says us-west-2; the cluster record says us-east-1 now.
        code, _, err = await cli(config, "--to", EAST, "--yes")
        assert (code, "already the primary region" in err) == (1, True)
    finally:
        for server in (west, east):
            if postmaster_pid(control(server)) is not None:
                await stop_server(control(server))
