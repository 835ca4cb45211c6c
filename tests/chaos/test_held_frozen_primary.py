"""Seed 1013's split brain, played on purpose: the primary PostgreSQL is frozen (SIGSTOP)
while its own watchdog keeps running and hears the witness but not the other region,
which is cut off from the primary's site and promotes after the threshold.

No binding here (the watchdog never hangs, so a binding would never fire): what stops
the frozen server is its own watchdog's hold (core/own_hold.py), in control mode, once
the quorum (it and the witness) has seen the server unreachable for ``hold_after``,
before the other region may promote. The server is woken (SIGCONT) after the promotion
if anything of it is left, and no acknowledged write may land on it after the promotion.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentaskit_dr.sandbox.drill import event_time
from tests.chaos.frozen_scenario import freeze_promote_wake
from tests.chaos.world import World
from tests.integration.daemon_harness import is_event
from tests.integration.partition_harness import WEST, Timing

pytestmark = pytest.mark.integration

def test_a_frozen_primary_is_held_by_its_running_watchdog_before_the_promotion(
    tmp_path: Path,
) -> None:
    timing = Timing()
    with World(tmp_path, bound=False, timing=timing) as world:
        run = freeze_promote_wake(world, kill_watchdog=False)
        lab = world.lab
        assert lab is not None
        held = lab.events(is_event("own_primary_held_before_threshold"), nodes=[WEST])
        signal = (world.pair.primary.datadir / "standby.signal").exists()

    assert held, "the watchdog never held its frozen server"
    assert run.frozen_at < event_time(held[0]) < run.promoted_at, (
        f"held {event_time(held[0]) - run.frozen_at:.2f}s after the freeze, promoted "
        f"{run.promoted_at - run.frozen_at:.2f}s after it")
    assert held[0]["hold_after"] < timing.db_unreachable
    assert run.dead_at_wake, "the hold left the frozen postmaster alive"
    assert signal, "no standby.signal: a restart would come up writable"
    assert run.late == [], f"{len(run.late)} writes acknowledged by the old primary after " \
                           f"the promotion: {run.late[:3]}"
