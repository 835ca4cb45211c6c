"""The failover's real RPO, measured when its old primary is resynced (issue 13).

The promoter sees only its last view of a dead primary, so its lag is a lower bound. Here
the old primary commits rows its standby never receives, dies, the standby is promoted,
and failback resyncs the old primary: ``sync_primary`` reads the old primary's WAL beyond
the fork before rewinding it, and the failover's evidence gets the measured loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from agentaskit_dr.sandbox.writer import TABLE
from tests.integration.test_failback_run import (
    failback,
    health_endpoint,
    prepare,
    read_text,
    record_east_primary,
    write_config,
)
from tests.integration.test_start_gate import fail_over
from tests.integration.test_switchover import servers_stopped_after

pytestmark = pytest.mark.integration

FAILOVER_ID = "failover-test"  # what record_east_primary names as the run


def failover_evidence_file(evidence_dir: Path) -> Path:
    """The failover's evidence as its runbook wrote it: the promoter never reached the
    old primary, so its lag (0) is a lower bound at its last view."""
    folder = evidence_dir / "failover"
    folder.mkdir(parents=True)
    path = folder / f"{FAILOVER_ID}.json"
    path.write_text(json.dumps({
        "schema_version": 1, "run_id": FAILOVER_ID, "kind": "failover",
        "created_at": "2026-11-29T12:00:00Z", "outcome": "done", "rto_seconds": 7.0,
        "rpo": {"lag_bytes": 0, "lag_seconds": 0.0, "basis": "last_view",
                "lower_bound": True, "rpo_lag_bytes_at_last_view": 0,
                "last_view_age_seconds": 1.5, "measured": None},
        "extra": {},
    }))
    (folder / f"{FAILOVER_ID}.md").write_text("# Incident review (draft): failover\n")
    return path


async def fail_over_and_back(tmp_path: Path, pair: PostgresPair, redis_url: str, *,
                             unreplicated_rows: int) -> tuple[dict[str, object],
                                                              dict[str, object]]:
    """Fail over with ``unreplicated_rows`` commits the standby never got, then fail back;
    the failover's and the failback's evidence documents."""
    west = pair.primary
    prepare(pair)
    west.sql(f"INSERT INTO {TABLE} (id) VALUES (1)")
    pair.wait_replayed()
    if unreplicated_rows:
        pair.replica.kill()  # the stream is cut: what west commits now stays on west
        for row in range(unreplicated_rows):
            west.sql(f"INSERT INTO {TABLE} (id) VALUES ({100 + row})")
        west.kill()
        pair.replica.start()
    fail_over(pair)  # kill -9 of west (if alive), pg_promote on east
    await record_east_primary(redis_url)
    async with servers_stopped_after(pair), health_endpoint() as health:
        config = write_config(tmp_path, pair, redis_url=redis_url, health=health)
        failover_path = failover_evidence_file(tmp_path / "evidence")

        code, out, err = await failback(config, "--yes")

    assert code == 0, err
    result = json.loads(out[out.index("{"):])
    assert result["outcome"] == "done", result
    return json.loads(failover_path.read_text()), json.loads(read_text(result["evidence"]))


async def test_commits_the_standby_never_received_are_measured_as_lost_at_the_resync(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    failover, failback_doc = await fail_over_and_back(tmp_path, pg_pair, redis_server.url,
                                                      unreplicated_rows=7)

    measured = failover["rpo"]["measured"]  # type: ignore[index]
    assert measured["lost_commits"] == 7, measured
    assert measured["lost_wal_bytes"] > 0
    assert (measured["old_timeline"], measured["new_timeline"]) == (1, 2)
    assert measured["by"]["kind"] == "failback"
    # The promotion's figure is kept, and still says it was only a lower bound.
    assert failover["rpo"]["lag_bytes"] == 0  # type: ignore[index]
    assert failover["rpo"]["lower_bound"] is True  # type: ignore[index]
    extra = failback_doc["extra"]
    assert extra["failover_loss"]["lost_commits"] == 7  # type: ignore[index]
    review = (tmp_path / "evidence" / "failover" / f"{FAILOVER_ID}.md").read_text()
    assert "## Data loss measured at the resync" in review
    assert f"{measured['lost_wal_bytes']} bytes of WAL and 7 committed" in review


async def test_a_failover_that_lost_nothing_is_measured_as_zero(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
) -> None:
    failover, _ = await fail_over_and_back(tmp_path, pg_pair, redis_server.url,
                                           unreplicated_rows=0)

    measured = failover["rpo"]["measured"]  # type: ignore[index]
    assert (measured["lost_wal_bytes"], measured["lost_commits"]) == (0, 0), measured
