"""The failover drill row: ``drill-failover`` runs the sandbox drill (real PostgreSQL pair,
Redis, two watchdogs; failover then failback) and records it in the schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentaskit_dr.drtesting.drill_record import drill_result

pytestmark = pytest.mark.integration


# ``drill --failback --evidence-dir`` is checked by test_drill's full-circle run, which
# calls assert_recorded_in_the_schedule: one sandbox drill (~25 s) fewer.
@pytest.mark.parametrize("command", [["drill-failover"], ["drill-failover", "--json"]])
def test_the_sandbox_drill_is_recorded_in_the_schedule(tmp_path: Path,
                                                       command: list[str]) -> None:
    evidence = tmp_path / "evidence"
    done = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", *command, "--evidence-dir", str(evidence)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    kept = sorted((evidence / "operational_audit" / "dr_drills").glob("sandbox-drill-*.json"))
    assert len(kept) == 1
    if "--json" in command:  # as the daemon's job runs it: stdout is one JSON answer
        answer = json.loads(done.stdout)
        assert (answer["outcome"], answer["evidence"]) == ("passed", str(kept[0]))
        assert answer["result"].startswith("sandbox drill passed")
        assert answer["recorded"] == str(evidence / "dr_testing" / "schedule.json")
    assert_recorded_in_the_schedule(evidence)


def assert_recorded_in_the_schedule(evidence: Path) -> None:
    """One passed sandbox drill with failback kept under ``evidence`` and shown by
    ``schedule`` as the failover drill row."""
    kept = sorted((evidence / "operational_audit" / "dr_drills").glob("sandbox-drill-*.json"))
    assert len(kept) == 1
    shown = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "schedule", "--json", "--evidence-dir",
         str(evidence)], capture_output=True, text=True, timeout=60, check=False)
    row = json.loads(shown.stdout)["failover_drill"]
    assert row["status"] == "ok"
    assert row["evidence"] == str(kept[0])
    assert row["result"].startswith("sandbox drill passed: promoted 1 time(s)")
    assert row["result"].endswith("failback done")


def test_the_sandbox_drill_result_line() -> None:
    passed, result = drill_result({"promotions": 1, "kill_to_writable": 6.9},
                                  {"outcome": "done"}, exit_code=0)
    assert passed
    assert result == ("sandbox drill passed: promoted 1 time(s), writable 6.9s after the "
                      "kill; failback done")
    failed, result = drill_result({"promotions": 2}, {}, exit_code=1)
    assert not failed
    assert result.startswith("sandbox drill FAILED: promoted 2 time(s)")
    assert result.endswith("failback not run")
