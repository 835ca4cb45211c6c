"""The full DR exercise end to end through the CLI: start, check every item of the
runbook checklist, finish; the evidence names who ran it and the schedule shows it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agentaskit_dr.drtesting.exercise import ITEMS


def cli(evidence: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", *args, "--evidence-dir", str(evidence)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_an_exercise_walks_the_checklist_and_updates_the_schedule(tmp_path: Path) -> None:
    started = cli(tmp_path, "exercise", "start", "--by", "alice", "--note", "annual", "--json")
    assert started.returncode == 0, started.stderr
    exercise_id = json.loads(started.stdout)["exercise_id"]
    again = cli(tmp_path, "exercise", "start")
    assert again.returncode == 2
    assert f"exercise {exercise_id} is in progress" in again.stderr
    for item in ITEMS:
        done = cli(tmp_path, "exercise", "check", item, "--by", "bob", "--note", f"{item} ok")
        assert done.returncode == 0, done.stderr
    twice = cli(tmp_path, "exercise", "check", "status-page")
    assert twice.returncode == 2
    assert "status-page was already checked" in twice.stderr
    finished = cli(tmp_path, "exercise", "finish", "--by", "alice")
    assert finished.returncode == 0, finished.stderr
    assert "complete" in finished.stdout

    evidence = json.loads((tmp_path / "dr_exercises" / f"{exercise_id}.json").read_text())
    assert (evidence["started_by"], evidence["finished_by"]) == ("alice", "alice")
    assert evidence["outcome"] == "complete"
    assert evidence["unchecked"] == []
    phases = {entry["phase"] for entry in evidence["checklist"]}
    assert phases == {"pre-failover", "during", "post-failover"}
    assert all(e["checked_by"] == "bob" and e["checked_at"] for e in evidence["checklist"])

    shown = cli(tmp_path, "schedule", "--json")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)["dr_exercise"]
    assert row["result"] == "passed: every checklist item done"
    assert row["evidence"].endswith(f"{exercise_id}.json")
    assert row["last_test"]


def test_an_exercise_finished_with_items_open_is_a_failed_test(tmp_path: Path) -> None:
    assert cli(tmp_path, "exercise", "start").returncode == 0
    assert cli(tmp_path, "exercise", "check", "not-transient").returncode == 0
    finished = cli(tmp_path, "exercise", "finish")
    assert finished.returncode == 1
    shown = cli(tmp_path, "schedule", "--json")
    assert shown.returncode == 1  # a failed test is never silent
    assert json.loads(shown.stdout)["dr_exercise"]["status"] == "failed"


def test_bad_exercise_input_is_one_line(tmp_path: Path) -> None:
    nothing = cli(tmp_path, "exercise", "check", "not-transient")
    assert nothing.returncode == 2
    assert "no exercise in progress" in nothing.stderr
    assert cli(tmp_path, "exercise", "start").returncode == 0
    unknown = cli(tmp_path, "exercise", "check", "coffee")
    assert unknown.returncode == 2
    assert "unknown checklist item 'coffee'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
