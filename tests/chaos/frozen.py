"""Frozen primary during promotion (issue 13): ``python -m tests.chaos.frozen``.

The primary is SIGSTOPped through the whole threshold, the standby is promoted, then
the primary wakes up while the applications keep trying it first. Measured with the
watchdogs controlling their servers (``regions.<r>.database.control``) and without:
how many acknowledged writes the woken old primary took after the promotion, and for
how long. The whole history also goes through the checker.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.sandbox.drill import event_time
from tests.chaos.campaign import non_json_lines
from tests.chaos.checker import check
from tests.chaos.history import FaultRecord, History
from tests.chaos.world import World
from tests.integration.daemon_harness import is_event
from tests.integration.partition_harness import WATCHDOGS, WEST_DB

#: Bound on the promotion after the freeze: threshold, decision, fence, pg_promote.
PROMOTION_TIMEOUT = 60.0
#: How long the woken old primary stays frozen after the promotion, and is watched after.
ASLEEP_AFTER_PROMOTION = 2.0
WATCH_AFTER_WAKE = 15.0
#: Events that say the woken old primary was fenced (by the promoter or its watchdog).
FENCE_EVENTS = {"old_primary_fenced", "old_primary_fenced_by_its_watchdog", "self_fenced"}


def frozen_primary(workdir: Path, *, control: bool, bound: bool = False) -> dict[str, Any]:
    """One freeze-promote-wake; the figures and the checker's verdict. Unbound by
    default: the watchdogs stay up here, and what is measured is what remains without
    the binding (``--bound`` runs it with the binding too)."""
    with World(workdir, control=control, bound=bound) as world:
        assert world.lab is not None
        primary = world.pair.primary
        history = History(0, world.timing.db_unreachable, world.timing.region_unhealthy,
                          world.timing.fence_after, started=time.time())
        frozen_at = time.time()
        primary.pause()
        done = world.lab.wait_for(is_event("promotion_done", since=frozen_at),
                                  PROMOTION_TIMEOUT, what="the standby promoted",
                                  nodes=WATCHDOGS)
        promoted_at = event_time(done)
        time.sleep(ASLEEP_AFTER_PROMOTION)
        woke_at = time.time()
        postmaster_killed = primary.proc is not None and primary.proc.poll() is not None
        primary.resume()
        history.faults = [FaultRecord("pause_db", WEST_DB, frozen_at, woke_at,
                                      down=(WEST_DB,))]
        history.quiet_from = woke_at
        time.sleep(WATCH_AFTER_WAKE)
        world.stop_writers()
        history.commits = sorted((c for w in world.writers for c in w.commits),
                                 key=lambda c: c.acked)
        history.starts = list(world.starts)
        history.final = world.final_state()
        history.events = world.lab.events()
        history.non_json = non_json_lines(world)
        exited = world.lab.exited()
    late = [c for c in history.commits if c.server == WEST_DB and c.acked > promoted_at]
    fenced = [event_time(e) for e in history.events
              if e.get("event") in FENCE_EVENTS and event_time(e) >= woke_at]
    verdict = check(history, exited)
    history.save(workdir / "history.json")
    return {
        "control": control,
        "bound": bound,
        "promoted_after_freeze_s": round(promoted_at - frozen_at, 3),
        "postmaster_killed_before_wake": postmaster_killed,
        "old_primary_fenced_at_promotion": done.get("old_primary_fenced"),
        "writes_on_old_primary_after_promotion": len(late),
        "late_window_s": round(late[-1].acked - late[0].sent, 3) if late else 0.0,
        "last_late_write_after_wake_s": round(late[-1].acked - woke_at, 3) if late else None,
        "fenced_after_wake_s": round(min(fenced) - woke_at, 3) if fenced else None,
        "verdict": verdict.summary(),
        "violations": [v.detail for v in verdict.violations],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chaos-frozen", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode")
    parser.add_argument("--bound", action="store_true",
                        help="with the service-manager binding (tests/chaos/binding.py)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    root = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-frozen-"))
    for run in range(args.repeat):
        for control in (True, False):
            figures = frozen_primary(root / f"control-{'on' if control else 'off'}-{run}",
                                     control=control, bound=args.bound)
            print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
