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

import time
from pathlib import Path

import pytest

from agentaskit_dr.sandbox.drill import event_time
from tests.chaos.world import World
from tests.integration.daemon_harness import is_event
from tests.integration.partition_harness import EAST, SITES, WATCHDOGS, WEST, WEST_DB, Timing

pytestmark = pytest.mark.integration

#: Bound on the promotion after the freeze: threshold, decision, fence attempts, promote.
PROMOTION_TIMEOUT = 40.0
ASLEEP_AFTER_PROMOTION = 1.0
WATCH_AFTER_WAKE = 4.0


def test_a_frozen_primary_is_held_by_its_running_watchdog_before_the_promotion(
    tmp_path: Path,
) -> None:
    timing = Timing()
    with World(tmp_path, bound=False, timing=timing) as world:
        lab = world.lab
        assert lab is not None
        west, east = set(SITES[WEST]), set(SITES[EAST])
        east_side = [(a, b) for a, b in lab.links
                     if (a in west and b in east) or (a in east and b in west)]
        lab.cut(east_side)
        frozen_at = time.time()
        with world.holding(WEST):
            world.pair.primary.pause()
        done = lab.wait_for(is_event("promotion_done", since=frozen_at), PROMOTION_TIMEOUT,
                            what="the standby promoted", nodes=WATCHDOGS)
        promoted_at = event_time(done)
        time.sleep(ASLEEP_AFTER_PROMOTION)
        with world.holding(WEST):
            primary = world.pair.primary
            dead_at_wake = primary.proc is None or primary.proc.poll() is not None
            if not dead_at_wake:
                primary.resume()
        time.sleep(WATCH_AFTER_WAKE)
        for link in east_side:
            lab.network.heal(*link)
        world.stop_writers()
        late = [c for w in world.writers for c in w.commits
                if c.server == WEST_DB and c.acked > promoted_at]
        assert [c for w in world.writers for c in w.commits if c.acked < frozen_at], \
            "no write before the freeze: the writers never wrote"
        held = lab.events(is_event("own_primary_held_before_threshold"), nodes=[WEST])
        signal = (world.pair.primary.datadir / "standby.signal").exists()

    assert held, "the watchdog never held its frozen server"
    assert frozen_at < event_time(held[0]) < promoted_at, (
        f"held {event_time(held[0]) - frozen_at:.2f}s after the freeze, promoted "
        f"{promoted_at - frozen_at:.2f}s after it")
    assert held[0]["hold_after"] < timing.db_unreachable
    assert dead_at_wake, "the hold left the frozen postmaster alive"
    assert signal, "no standby.signal: a restart would come up writable"
    assert late == [], f"{len(late)} writes acknowledged by the old primary after the " \
                       f"promotion: {late[:3]}"
