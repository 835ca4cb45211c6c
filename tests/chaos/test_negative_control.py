"""The checker on real parts must see a split brain when there is one (a negative control).

Someone promotes the standby by hand (``pg_promote()``) while the primary serves and the
daemons are frozen: both servers take the applications' writes, and the checker must
say so. Runs only with ``AGENTASKIT_CHAOS=1`` (about 30 s): it checks the checker, not
the daemons, so it stays out of the default run.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.chaos.campaign import non_json_lines
from tests.chaos.checker import check
from tests.chaos.history import History
from tests.chaos.world import World
from tests.integration.partition_harness import DAEMONS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.environ.get("AGENTASKIT_CHAOS"),
                       reason="set AGENTASKIT_CHAOS=1 to run the chaos controls"),
]


def test_a_standby_promoted_by_hand_under_a_serving_primary_is_split_brain(
    tmp_path: Path,
) -> None:
    # Unbound: with the binding the frozen watchdogs would be killed and their servers
    # stopped; this control checks the checker, not the binding.
    with World(tmp_path / "world", bound=False) as world:
        assert world.lab is not None
        history = History(0, world.timing.db_unreachable, world.timing.region_unhealthy,
                          world.timing.fence_after, started=time.time())
        time.sleep(2)
        # The daemons adopt a hand-promoted standby and fence the old primary within a
        # cycle: frozen, they leave the two primaries to the applications.
        for node in DAEMONS:
            world.lab.signal_daemon(node, signal.SIGSTOP)
        world.pair.replica.sql("SELECT pg_promote(wait => true)")
        time.sleep(4)
        for node in DAEMONS:
            world.lab.signal_daemon(node, signal.SIGCONT)
        world.stop_writers()
        history.commits = [c for w in world.writers for c in w.commits]
        history.final = world.final_state()
        history.events = world.lab.events()
        history.non_json = non_json_lines(world)
        verdict = check(history, world.lab.exited())
    rules = {v.rule for v in verdict.violations}
    assert "split_brain" in rules, verdict.violations
    assert {c.server for c in history.commits} == {"west-db", "east-db"}
