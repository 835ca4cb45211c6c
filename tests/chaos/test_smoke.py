"""The campaign's smoke run for CI: one small seeded schedule on the real world.

Seed 4 over a 12 s fault phase kills the primary PostgreSQL for 3 s (shorter than the
threshold: it must come back as the primary, no failover) while the east watchdog is
killed and restarted; then a 15 s quiet period. The checker must find no violation.
The long campaign is ``scripts/chaos.sh``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.campaign import run_once
from tests.chaos.history import History
from tests.chaos.schedule import generate

pytestmark = pytest.mark.integration

SEED = 4
DURATION = 12.0
QUIET = 15.0


def test_smoke_schedule_passes_the_checker(tmp_path: Path) -> None:
    planned = generate(SEED, DURATION)
    assert [f.kind for f in planned] == ["kill_db", "kill_daemon"]

    result = run_once(SEED, DURATION, tmp_path / "run", quiet=QUIET)

    verdict = result.verdict
    assert verdict.ok, "\n".join([f"history: {result.history_path}",
                                   *(f"{v.rule}: {v.detail}" for v in verdict.violations)])
    assert verdict.commits > 0
    assert verdict.promotions == 0
    assert result.fault_seconds > 0
    # The kill's heal started the server again behind its start gate: recorded, so the
    # checker can see it up (tests/chaos/downtime.py).
    starts = History.load(result.history_path).starts
    assert (planned[0].target, "the kill_db heal") in {(s.server, s.by) for s in starts}
