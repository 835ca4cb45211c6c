"""The frozen-primary scenario the bound and held tests share: the other region is cut off
from the primary's site, the primary PostgreSQL is frozen (SIGSTOP, its watchdog killed
too when asked), the other region promotes, and the old primary is woken (if anything of
it is left) while the applications keep trying it first."""

from __future__ import annotations

import time
from dataclasses import dataclass

from agentaskit_dr.sandbox.drill import event_time
from tests.chaos.history import Commit
from tests.chaos.world import World
from tests.integration.daemon_harness import is_event
from tests.integration.partition_harness import EAST, SITES, WATCHDOGS, WEST, WEST_DB

#: Bound on the promotion after the freeze: threshold, decision, fence attempts, promote.
PROMOTION_TIMEOUT = 40.0
ASLEEP_AFTER_PROMOTION = 1.0
WATCH_AFTER_WAKE = 4.0


@dataclass(frozen=True, slots=True)
class FrozenRun:
    """What the run measured: the writes the old primary acknowledged after the promotion,
    when it froze and the standby was promoted, and whether its postmaster was dead when
    it was to be woken."""

    late: list[Commit]
    frozen_at: float
    promoted_at: float
    dead_at_wake: bool


def freeze_promote_wake(world: World, *, kill_watchdog: bool) -> FrozenRun:
    """Play the scenario on a started ``world`` (writers stopped at the end, links healed)."""
    lab = world.lab
    assert lab is not None
    west, east = set(SITES[WEST]), set(SITES[EAST])
    east_side = [(a, b) for a, b in lab.links
                 if (a in west and b in east) or (a in east and b in west)]
    lab.cut(east_side)
    frozen_at = time.time()
    with world.holding(WEST):
        world.pair.primary.pause()
        if kill_watchdog:
            lab.kill(WEST)
    # A killed watchdog is not watched: its exit is the point, not a failure.
    alive = [node for node in WATCHDOGS if not (kill_watchdog and node == WEST)]
    done = lab.wait_for(is_event("promotion_done", since=frozen_at), PROMOTION_TIMEOUT,
                        what="the standby promoted", nodes=alive)
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
    commits = [c for w in world.writers for c in w.commits]
    assert [c for c in commits if c.acked < frozen_at], \
        "no write before the freeze: the writers never wrote"
    late = [c for c in commits if c.server == WEST_DB and c.acked > promoted_at]
    return FrozenRun(late, frozen_at, promoted_at, dead_at_wake)
