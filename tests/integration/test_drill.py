"""The main job, `agentaskit-dr drill`, end to end as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_drill_failover_schedule import assert_recorded_in_the_schedule

pytestmark = pytest.mark.integration


def test_drill_promotes_once_with_three_vantages_and_keeps_the_evidence(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "drill", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Result: PASS, promoted exactly once" in done.stdout
    [drill] = (tmp_path / "evidence" / "operational_audit" / "dr_drills").glob("*.json")
    figures = json.loads(drill.read_text())["figures"]
    assert figures["promotions"] == 1
    assert figures["decision_after_kill"] >= figures["threshold"]
    # The decision rested on all three vantage points.
    timeline = json.loads(drill.read_text())["timeline"]
    decided = next(row for row in timeline if row["event"] == "failover_decided")
    assert "witness" in decided["reason"]
    runs = tmp_path / "evidence" / "TEST" / "dr" / "failover"  # the plan's layout
    [runbook] = (runs / "failover").glob("*.json")
    document = json.loads(runbook.read_text())
    assert document["outcome"] == "done"
    assert 0 < document["rto_seconds"] < 30
    assert runbook.with_suffix(".md").exists()


def test_drill_failback_goes_full_circle_and_prints_both_evidence_files(
    tmp_path: Path,
) -> None:
    # With --evidence-dir the run is also recorded in that schedule (the failover drill
    # row): one full circle checks both, as ``drill --failback`` is run by the job.
    recorded = tmp_path / "recorded"
    done = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "drill", "--failback", "--threshold", "3s",
         "--interval", "0.4s", "--workdir", str(tmp_path), "--evidence-dir", str(recorded)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Result: PASS, promoted exactly once, and failed back home" in done.stdout
    assert_recorded_in_the_schedule(recorded)
    for figure in ("failover: kill -> writable", "switchover: write-unavailable",
                   "failback: per-step times", "failback: resync method"):
        assert figure in done.stdout
    [drill] = (tmp_path / "evidence" / "operational_audit" / "dr_drills").glob("*.json")
    circle = json.loads(drill.read_text())["failback"]
    assert circle["outcome"] == "done"
    assert circle["resync_method"] in ("rewind", "reclone")
    assert circle["timelines"] == [2, 3]
    assert circle["rpo_lag_bytes"] == 0
    assert circle["switchover_write_unavailable_seconds"] is not None
    assert set(circle["per_step_seconds"]) == {
        "check_recovered", "sync_primary", "verify_data_integrity", "shift_traffic",
        "restore_standby"}
    # Each host-bound step was run by the watchdog beside its server, through the API.
    ran = {(json.loads(line)["step"], path.name)
           for path in tmp_path.glob("watchdog-us-*.log")
           for line in path.read_text().splitlines()
           if '"host_step_done"' in line}
    assert ran == {("sync-primary", "watchdog-us-west-2.log"),
                   ("switchover", "watchdog-us-east-1.log")}
    # The failover's review draft links to the failback that closed it.
    runs = tmp_path / "evidence" / "TEST" / "dr" / "failover"  # the plan's layout
    [failover_review] = (runs / "failover").glob("*.md")
    assert f"(../failback/{circle['run_id']}.md)" in failover_review.read_text()
