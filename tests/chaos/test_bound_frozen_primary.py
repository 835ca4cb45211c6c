"""Seed 1011's split brain, played on purpose (issue 13): the primary PostgreSQL is frozen
(SIGSTOP) and its own watchdog killed while the other region is cut off from the
primary's site; the other region promotes after the threshold, and the old primary wakes
up while the applications keep trying it first.

Unbound, nothing can stop that server: it wakes writable and takes writes after the
promotion until a fence reaches it. Bound to its watchdog (tests/chaos/binding.py, as
the systemd units bind them), it is stopped the moment its watchdog dies, so no
acknowledged write lands on it after the promotion. The watchdog is kept down (a
``RestartSec=`` longer than the run, as a daemon that cannot start would be) so the
failover does happen. The unbound control runs only with ``AGENTASKIT_CHAOS=1``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agentaskit_dr.sandbox.drill import event_time
from tests.chaos.binding import BindingTiming
from tests.chaos.history import Commit
from tests.chaos.world import World
from tests.integration.daemon_harness import is_event
from tests.integration.partition_harness import EAST, SITES, WATCHDOGS, WEST, WEST_DB, Timing

pytestmark = pytest.mark.integration

#: Bound on the promotion after the freeze: threshold, decision, fence attempts, promote.
PROMOTION_TIMEOUT = 40.0
ASLEEP_AFTER_PROMOTION = 1.0
WATCH_AFTER_WAKE = 4.0


def freeze_kill_promote_wake(workdir: Path, *, bound: bool) -> tuple[World, list[Commit],
                                                                    float, bool]:
    """The run; the world (stopped), the writes acknowledged by the old primary after the
    promotion, the promotion's time, and whether the old postmaster was dead at wake."""
    timing = Timing()
    # The watchdog stays dead: its restart would bring the server back before any
    # failover, and the shape to prove is the one where the other region promotes.
    kept_down = BindingTiming(watchdog_sec=BindingTiming.scaled(timing).watchdog_sec,
                              restart_sec=600.0)
    with World(workdir, bound=bound, timing=timing, binding=kept_down) as world:
        lab = world.lab
        assert lab is not None
        west, east = set(SITES[WEST]), set(SITES[EAST])
        east_side = [(a, b) for a, b in lab.links
                     if (a in west and b in east) or (a in east and b in west)]
        lab.cut(east_side)
        frozen_at = time.time()
        with world.holding(WEST):
            world.pair.primary.pause()
            lab.kill(WEST)
        done = lab.wait_for(is_event("promotion_done", since=frozen_at), PROMOTION_TIMEOUT,
                            what="the standby promoted", nodes=[EAST])
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
        assert lab.events(is_event("promotion_done"), nodes=WATCHDOGS)
    return world, late, promoted_at, dead_at_wake


def test_a_frozen_primary_whose_watchdog_dies_takes_no_write_after_the_promotion(
    tmp_path: Path,
) -> None:
    world, late, _, dead_at_wake = freeze_kill_promote_wake(tmp_path / "bound", bound=True)

    assert world.binding is not None
    assert dead_at_wake, "the binding left the frozen postmaster alive"
    stops = [r for r in world.binding.fault_records() if r.kind == "binding_stop"]
    assert [r.target for r in stops] == [WEST_DB]
    assert late == [], f"{len(late)} writes acknowledged by the old primary after the " \
                       f"promotion: {late[:3]}"


@pytest.mark.skipif(not os.environ.get("AGENTASKIT_CHAOS"),
                    reason="set AGENTASKIT_CHAOS=1 to run the unbound control (~40 s)")
def test_unbound_the_same_frozen_primary_wakes_writable_after_the_promotion(
    tmp_path: Path,
) -> None:
    _, late, promoted_at, dead_at_wake = freeze_kill_promote_wake(tmp_path / "unbound",
                                                                  bound=False)

    assert not dead_at_wake
    assert late, "the woken old primary took no write: the scenario did not play"
    assert late[0].acked > promoted_at
