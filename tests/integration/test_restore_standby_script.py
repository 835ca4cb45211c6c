"""``scripts/dr/restore-standby.sh`` (the plan's failback step 5, ``agentaskit-dr
restore-standby``) on a real pair and Redis: after a failover and ``sync-primary``, the
database switches back home with no acknowledged write lost, the old primary region's
server is the primary again and the other streams from it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from agentaskit_dr.ports import RunJournal
from agentaskit_dr.runtime.evidence import (
    failover_evidence,
    write_evidence,
)
from agentaskit_dr.runtime.incident_review import write_incident_review
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.test_failback_run import (
    fail_over_with_writes,
    failback_runs,
    health_endpoint,
    prepare,
    read_text,
    write_config,
)
from tests.integration.test_start_gate import EAST, WEST
from tests.integration.test_switchover import (
    missing_on,
    servers_stopped_after,
    streaming_at_lag_zero,
    writers,
)
from tests.integration.test_sync_primary import old_primary  # noqa: F401 -- fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("old_primary")]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "dr"


def write_failover_evidence(directory: Path) -> None:
    run = RunJournal(run_id="failover-test", kind="failover", plan=("promote",),
                     created_at=1_767_225_600.0, created_epoch=1, reason="primary killed",
                     entries=(), finished="done")
    document = failover_evidence(run, detected_at=None, decided_at=None, lag_bytes=0,
                                 lag_seconds=0.0, outcome="done",
                                 extra={"failback": "planned"})
    write_evidence(directory, "failover", "failover-test", document)
    write_incident_review(directory, "failover", "failover-test", document)


async def run(*command: str, config: Path) -> tuple[int, str, str]:
    # The script runs the installed agentaskit-dr: the one of the venv running the tests.
    env = {**os.environ, "AGENTASKIT_DR_CONFIG": str(config),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_restore_standby_script_switches_the_database_back_home(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    west, east = pg_pair.primary, pg_pair.replica
    prepare(pg_pair)
    async with servers_stopped_after(pg_pair), health_endpoint() as health:
        config = write_config(tmp_path, pg_pair, redis_url=redis_server.url, health=health)
        # The failover's evidence on this host (the run record_east_primary names).
        write_failover_evidence(tmp_path / "evidence")
        async with writers(pg_pair) as log:
            await fail_over_with_writes(pg_pair, redis_server.url)
            code, _, err = await run(sys.executable, "-m", "agentaskit_dr", "sync-primary",
                                     "--config", str(config), "--region", WEST,
                                     "--timeout", "60s", config=config)
            assert code == 0, err

            code, out, err = await run("bash", str(SCRIPTS / "restore-standby.sh"), "--yes",
                                       config=config)

            assert code == 0, err
            await asyncio.sleep(0.3)  # writes land on west again
        assert await missing_on(west, log) == set()
        assert west.sql("SELECT pg_is_in_recovery()") == "f"
        assert await streaming_at_lag_zero(east, west)

        again, _, refusal = await run("bash", str(SCRIPTS / "restore-standby.sh"), "--yes",
                                      config=config)

        assert again == 1
        assert f"{WEST} is already the cluster's primary region" in refusal

    assert f"restore-standby from {EAST} to {WEST}:" in out
    assert "5. restore_standby:" in out
    assert "1. check_recovered" not in out  # step 5 alone
    result = json.loads(out[out.index("{"):])
    assert result["outcome"] == "done"
    assert result["run_id"].startswith("restore-standby-")
    assert not await failback_runs(redis_server.url)  # its own kind, not a failback run
    evidence = json.loads(read_text(result["evidence"]))
    assert [s["step"] for s in evidence["steps"]] == ["restore_standby"]
    switch = evidence["extra"]["switchover"]
    assert (switch["old_timeline"], switch["new_timeline"]) == (2, 3)
    assert switch["write_unavailable_seconds"] is not None
    assert evidence["extra"]["undoes"] == "failover-test"
    # The failover's review draft links to the run that closed it.
    review = read_text(str(tmp_path / "evidence" / "failover" / "failover-test.md"))
    # The failover was written in the layout before evidence_layout (<evidence_dir>/failover),
    # the run that closed it in the plan's (TEST/dr/failover/): the link still leads there.
    assert f"(../TEST/dr/failover/failback/{result['run_id']}.md)" in review
    assert result["evidence"].startswith(str(tmp_path / "evidence" / "TEST" / "dr" / "failover"))
    assert "- [x] Failback planned:" in review
    failover = json.loads(read_text(str(tmp_path / "evidence" / "failover" /
                                        "failover-test.json")))
    assert failover["extra"]["closed_by"]["run_id"] == result["run_id"]


async def test_restore_standby_dry_run_changes_nothing(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = write_config(tmp_path, pg_pair, redis_url="redis://127.0.0.1:9/0",
                          health="http://127.0.0.1:9/healthz", east_control=False)

    code, out, err = await run("bash", str(SCRIPTS / "restore-standby.sh"), "--dry-run",
                               config=config)

    assert code == 0, err
    assert "MISSING: restore_standby needs regions.us-east-1.database.control" in out
