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
from pathlib import Path

import pytest

from tests.chaos.binding import BindingTiming
from tests.chaos.frozen_scenario import FrozenRun, freeze_promote_wake
from tests.chaos.world import World
from tests.integration.daemon_harness import is_event
from tests.integration.partition_harness import WATCHDOGS, WEST_DB, Timing

pytestmark = pytest.mark.integration

def freeze_kill_promote_wake(workdir: Path, *, bound: bool) -> tuple[World, FrozenRun]:
    """The run with the primary's watchdog killed; the world (stopped) and what it measured."""
    timing = Timing()
    # The watchdog stays dead: its restart would bring the server back before any
    # failover, and the shape to prove is the one where the other region promotes.
    kept_down = BindingTiming(watchdog_sec=BindingTiming.scaled(timing).watchdog_sec,
                              restart_sec=600.0)
    with World(workdir, bound=bound, timing=timing, binding=kept_down) as world:
        run = freeze_promote_wake(world, kill_watchdog=True)
        assert world.lab is not None
        assert world.lab.events(is_event("promotion_done"), nodes=WATCHDOGS)
    return world, run


def test_a_frozen_primary_whose_watchdog_dies_takes_no_write_after_the_promotion(
    tmp_path: Path,
) -> None:
    world, run = freeze_kill_promote_wake(tmp_path / "bound", bound=True)
    late = run.late

    assert world.binding is not None
    assert run.dead_at_wake, "the binding left the frozen postmaster alive"
    stops = [r for r in world.binding.fault_records() if r.kind == "binding_stop"]
    assert [r.target for r in stops] == [WEST_DB]
    assert late == [], f"{len(late)} writes acknowledged by the old primary after the " \
                       f"promotion: {late[:3]}"


@pytest.mark.skipif(not os.environ.get("AGENTASKIT_CHAOS"),
                    reason="set AGENTASKIT_CHAOS=1 to run the unbound control (~40 s)")
def test_unbound_the_same_frozen_primary_wakes_writable_after_the_promotion(
    tmp_path: Path,
) -> None:
    _, run = freeze_kill_promote_wake(tmp_path / "unbound", bound=False)

    assert not run.dead_at_wake
    assert run.late, "the woken old primary took no write: the scenario did not play"
    assert run.late[0].acked > run.promoted_at
