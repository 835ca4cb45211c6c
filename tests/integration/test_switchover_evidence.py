"""A switchover run writes its own evidence file, in the failover evidence's layout, and
the readers list it (its write-unavailability window as "writes blocked", not as RTO):
the real CLI against a real PostgreSQL pair and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from agentaskit_dr.actuators.pg_control import postmaster_pid, stop_server
from agentaskit_dr.actuators.pg_start import parse_lsn
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import build_app
from agentaskit_dr.runtime.evidence_layout import run_roots
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.test_switchover_command import EAST, WEST, cli, control, write_config
from tests.unit.test_api_server import FakeController
from tests.unit.test_status_page import page_status

#: Where the layout puts switchover evidence under ``evidence_dir`` (default layout).
KIND_DIR = Path("TEST/dr/failover/switchover")


def evidence(tmp_path: Path, run_id: str) -> dict[str, Any]:
    path = tmp_path / "evidence" / KIND_DIR / f"{run_id}.json"
    body = json.loads(path.read_text())
    assert isinstance(body, dict)
    return body


async def objectives_json(evidence_dir: Path) -> dict[str, Any]:
    """``agentaskit-dr objectives --evidence-dir DIR --json``, as a subprocess."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentaskit_dr", "objectives", "--evidence-dir", str(evidence_dir),
        "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    body = json.loads(out)
    assert isinstance(body, dict)
    return body


async def status_page_lists(evidence_dir: Path) -> str:
    """The real status page over ``evidence_dir``: its refreshable part."""
    controller = FakeController()
    controller.status_payload = page_status()
    app = build_app(controller, metrics=Metrics(), token_file=None,
                    evidence_dir=lambda: run_roots(evidence_dir))
    async with TestClient(TestServer(app)) as client, client.get("/ui/main") as response:
        assert response.status == 200
        return await response.text()


async def test_a_switchover_writes_its_evidence_and_the_readers_show_it(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    west, east = pg_pair.primary, pg_pair.replica
    config = write_config(tmp_path / "west.yaml", pg_pair, redis_server, region=WEST)
    try:
        code, out, err = await cli(config, "--to", EAST, "--yes")
    finally:
        for server in (west, east):
            if postmaster_pid(control(server)) is not None:
                await stop_server(control(server))
    assert code == 0, err
    result = json.loads(out[out.index("{"):])
    run_id = result["run_id"]
    assert result["evidence"] == str(tmp_path / "evidence" / KIND_DIR / f"{run_id}.json")

    body = evidence(tmp_path, run_id)
    assert (body["kind"], body["run_id"], body["outcome"]) == ("switchover", run_id, "done")
    extra = body["extra"]
    assert (extra["from_region"], extra["to_region"]) == (WEST, EAST)
    assert extra["epoch"] == result["epoch"] == body["created_epoch"]
    assert extra["started_at_unix"] <= extra["ended_at_unix"]
    assert body["created_at"]
    assert body["recovered_at"]
    # The measured window: from the stop's CHECKPOINT to the new primary's first write.
    assert 0 < extra["write_unavailable_seconds"] == result["write_unavailable_seconds"]
    assert extra["write_unavailable_seconds"] < extra["total_seconds"]
    # RPO: measured, 0 bytes: the new primary replayed past the old one's final checkpoint.
    rpo = body["rpo"]
    assert (rpo["basis"], rpo["lower_bound"], rpo["lag_bytes"]) == (
        "switchover_shutdown_checkpoint", False, 0)
    assert rpo["old_primary_final_lsn"] == extra["final_lsn"] == result["final_lsn"]
    assert parse_lsn(rpo["new_primary_replay_lsn"]) > parse_lsn(rpo["old_primary_final_lsn"])
    assert extra["step_outcomes"] == [
        {"step": "switch_database", "status": "done",
         "detail": f"{EAST} is the primary; {WEST} streams from it"}]
    assert [e["status"] for e in body["timeline"]] == ["started", "done"]
    assert (tmp_path / "evidence" / KIND_DIR / f"{run_id}.md").is_file()

    window = extra["write_unavailable_seconds"]
    code, out, err = await cli(config, "list", command="evidence")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if line.startswith(f"switchover/{run_id}  ")]
    assert f"  done  writes blocked {window:g}s  RPO 0 bytes  " in line
    assert "RTO" not in line
    # Found by its id alone, as for a failover.
    code, out, err = await cli(config, "show", run_id, command="evidence")
    assert code == 0, err
    assert json.loads(out) == body
    html = await status_page_lists(tmp_path / "evidence")
    assert f'<a href="/ui/timeline/switchover/{run_id}.svg">{run_id}</a>' in html
    assert f"Latest switchover: {run_id}" in html
    row = html.split(f'{run_id}.svg">{run_id}</a>', 1)[1].split("</tr>", 1)[0]
    assert f"<td>—</td><td>{window:.3g} s</td>" in row  # no RTO; writes blocked
    svg = (tmp_path / "evidence" / KIND_DIR / f"{run_id}.svg").read_text()
    assert 'data-label="writes unavailable (switchover)"' in svg
    # Objectives: its own line; RTO and MTTR stay the failovers' (there are none).
    objectives = await objectives_json(tmp_path / "evidence")
    switches = objectives["switchover_writes_blocked"]
    assert switches["latest_seconds"] == switches["worst_seconds"] == window
    assert switches["latest_evidence"] == result["evidence"]
    assert objectives["rto"]["measures"][0]["note"] == "no failover evidence in failover/"
    assert objectives["mttr"]["measured_seconds"] is None


async def test_a_failed_switchover_writes_evidence_of_its_failure(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    west, east = pg_pair.primary, pg_pair.replica
    east.kill()  # nothing to switch to: refused before anything changes
    config = write_config(tmp_path / "west.yaml", pg_pair, redis_server, region=WEST)

    code, _, err = await cli(config, "--to", EAST, "--yes")

    assert code == 1
    assert west.sql("SELECT pg_is_in_recovery()") == "f"
    paths = list((tmp_path / "evidence" / KIND_DIR).glob("*.json"))
    assert len(paths) == 1, err
    body = evidence(tmp_path, paths[0].stem)
    assert body["outcome"] == "failed"
    assert body["rto_seconds"] is None
    assert body["rpo"]["lower_bound"] is True
    assert body["extra"]["write_unavailable_seconds"] is None
    [step] = body["extra"]["step_outcomes"]
    assert (step["step"], step["status"]) == ("switch_database", "failed")
    assert step["detail"] in err
