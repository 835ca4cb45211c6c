"""The whole failover runbook, end to end: a real watchdog, a real dead primary, and every
part the runbook reaches (Route 53 on moto, the east cluster's API, three webhooks).

The assertions read the world, not the daemon's word for it: the journal in Redis, the
DNS record and its TXT marker, the deployments' replicas and annotations, what each
webhook received, the evidence files on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.actuators.kube_scale import ANNOTATION_EPOCH, ANNOTATION_ORIGINAL, ANNOTATION_RUN
from agentaskit_dr.ports import StepStatus
from agentaskit_dr.runtime.runbook import FAILOVER_PLAN
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    aws_credentials_fixture,  # noqa: F401
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
)
from tests.integration.daemon_harness import THRESHOLD, WatchdogFleet, is_event
from tests.integration.runbook_harness import (
    DEPLOYMENTS,
    DNS_TARGETS,
    EAST,
    EXPECTED_NOTIFICATIONS,
    PAGERDUTY,
    ROUTING_KEY,
    RunbookWorld,
    done_counts,
    runbook_world_fixture,  # noqa: F401
)

pytestmark = pytest.mark.integration

#: Bound on the run after the decision: ten steps on local parts take about a second.
RUN_TIMEOUT = 20.0


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        yield started


def test_primary_killed_runs_every_runbook_step_once_and_leaves_evidence(
    fleet: WatchdogFleet, pg_pair: PostgresPair, redis_server: RedisServer,
    runbook_world: RunbookWorld,
) -> None:
    fleet.start_pair(runbook_world.overrides())
    holder = fleet.wait_ready()

    killed_at = time.time()  # before kill(): it also reaps and cleans up after itself
    pg_pair.primary.kill()
    done = fleet.wait_for(is_event("run_done"), THRESHOLD + RUN_TIMEOUT,
                          what="run_done after the primary was killed")

    # The journal: one run, every step done once under the holder's epoch, finished.
    (run,) = runbook_world.runs(redis_server.url)
    epoch = run.created_epoch
    assert done["watchdog"] == holder.region
    assert done["run_id"] == run.run_id
    assert done["epoch"] == epoch
    assert run.finished == "done"
    assert run.plan == FAILOVER_PLAN
    assert [run.last_status(step) for step in FAILOVER_PLAN] == (
        [StepStatus.DONE] * len(FAILOVER_PLAN)), run.entries
    assert done_counts(run) == dict.fromkeys(FAILOVER_PLAN, 1)
    assert {e.epoch for e in run.entries} == {epoch}
    assert [e.step for e in run.entries if e.status is StepStatus.DONE] == list(FAILOVER_PLAN)

    # Route 53: the record serves the east, and the marker names this epoch and run.
    value, marker = runbook_world.dns_record()
    assert value == DNS_TARGETS[EAST]
    assert f"epoch={epoch} " in marker, marker
    assert f"run={run.run_id} " in marker, marker
    assert f"serving={EAST} " in marker, marker
    assert runbook_world.dns_changes == 1

    # Kubernetes: +50% (4 -> 6, 3 -> 5, rounded up), each fenced by annotations.
    for name, original in DEPLOYMENTS.items():
        deployment = runbook_world.deployment(name)
        assert deployment.replicas == -(-original * 3 // 2), (name, deployment)
        assert deployment.annotations == {
            ANNOTATION_ORIGINAL: str(original), ANNOTATION_EPOCH: str(epoch),
            ANNOTATION_RUN: run.run_id,
        }
    assert runbook_world.scale_writes() == dict.fromkeys(DEPLOYMENTS, 1)

    # Webhooks: each event once, in runbook order; PagerDuty resolves what it triggered.
    assert runbook_world.notifications() == EXPECTED_NOTIFICATIONS
    trigger, resolve = (r.body for r in runbook_world.received(PAGERDUTY, alerts=False))
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert run.run_id in trigger["dedup_key"]
    assert trigger["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    assert trigger["payload"]["severity"] == "critical"

    # The new primary took the write check of this epoch.
    assert pg_pair.replica.sql("SELECT pg_is_in_recovery()") == "f"
    assert pg_pair.replica.sql(
        "SELECT run || ' ' || epoch FROM agentaskit_dr.write_check WHERE id = 1"
    ) == f"{run.run_id} {epoch}"

    # Evidence: measured figures that fit what the test saw, and the review draft.
    folder = fleet.workdir / "evidence" / "TEST" / "dr" / "failover" / "failover"
    evidence = json.loads((folder / f"{run.run_id}.json").read_text())
    assert evidence["outcome"] == "done"
    assert evidence["run_id"] == run.run_id
    assert evidence["epochs"] == [epoch]
    assert 0 < evidence["rto_seconds"] < 60, evidence["rto_seconds"]
    assert THRESHOLD * 0.95 <= evidence["detection_seconds"] < THRESHOLD + 2, evidence
    assert 0 < evidence["decision_to_recovery_seconds"] < RUN_TIMEOUT, evidence
    assert evidence["detected_at"] is not None
    assert evidence["decided_at"] is not None
    # Detected after the kill (give or take the daemon's clock conversion), decided
    # after the threshold.
    assert evidence["meta"]["detected_at"] >= killed_at - 0.1, evidence["meta"]
    assert evidence["meta"]["decided_at"] >= killed_at + THRESHOLD * 0.95, evidence["meta"]
    lag = evidence["rpo"]["lag_bytes"]
    assert isinstance(lag, int), evidence["rpo"]
    assert 0 <= lag < 16 * 2**20
    assert [s["status"] for s in evidence["steps"]] == ["done"] * len(FAILOVER_PLAN)
    assert evidence["extra"]["failback"] == "planned"
    review = (folder / f"{run.run_id}.md").read_text()
    assert f"# Incident review (draft): failover {run.run_id}" in review
    assert "Failback planned" in review
    assert ROUTING_KEY not in review
