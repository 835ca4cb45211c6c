"""The main job, `agentaskit-dr drill`, end to end as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_drill_promotes_once_with_three_vantages_and_keeps_the_evidence(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "drill", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Result: PASS, promoted exactly once" in done.stdout
    [drill] = (tmp_path / "evidence" / "drills").glob("*.json")
    figures = json.loads(drill.read_text())["figures"]
    assert figures["promotions"] == 1
    assert figures["decision_after_kill"] >= figures["threshold"]
    # The decision rested on all three vantage points.
    timeline = json.loads(drill.read_text())["timeline"]
    decided = next(row for row in timeline if row["event"] == "failover_decided")
    assert "witness" in decided["reason"]
    [runbook] = (tmp_path / "evidence" / "failover").glob("*.json")
    document = json.loads(runbook.read_text())
    assert document["outcome"] == "done"
    assert 0 < document["rto_seconds"] < 30
    assert runbook.with_suffix(".md").exists()
