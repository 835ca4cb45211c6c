"""Stop this region's unreachable primary and hold it in recovery (core/own_hold.py decides).

The control half of the hard fence (``actuators.fence._fence_by_stopping``) without its
SQL half: the quorum has found the server unreachable, so asking it to go read-only first
would only spend two I/O timeouts of the margin before the other region may promote.
``standby.signal`` and ``primary_conninfo`` are written first, then the postmaster is
stopped (killed at once when SIGSTOPped). A server so held is published as
``server_held`` (runtime/outlook.py); nothing here restarts it: failback, resync or the
start gate bring it back. A server already down (no postmaster) is left as it is: it
cannot wake by itself, and its restart goes through the start gate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from agentaskit_dr.actuators.pg_control import postmaster_pid, stop_and_hold
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import HoldOwnPrimary
from agentaskit_dr.fencing import other_region, primary_conninfo_for, server_control

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HoldResult:
    held: bool
    detail: str


async def hold_own_primary(config: WatchdogConfig, command: HoldOwnPrimary, *,
                           monotonic_now: float) -> HoldResult:
    """Stop and hold this region's server; log ``own_primary_held_before_threshold``.

    ``monotonic_now``: the engine's clock reading when the hold was decided, so the log
    can say how long before the other region's earliest promotion it was done.
    """
    region = config.region
    control = server_control(config, region)
    if control is None:
        return HoldResult(False, f"no database.control for {region}: cannot hold its server")
    if postmaster_pid(control) is None:
        # Dead, not frozen: it cannot wake by itself, and its restart goes through the start
        # gate, which knows of a failover. A standby.signal written now would bring it back
        # in recovery even when no failover happened (chaos seed 1002: the new primary,
        # killed, came back a standby, and no server was writable).
        log.warning("own_primary_hold_not_needed", region=region, reason=command.reason,
                    detail="server already down; its restart goes through the start gate")
        return HoldResult(True, f"{region} server already down: nothing to hold")
    started = time.monotonic()
    how, problems = await stop_and_hold(
        control, primary_conninfo_for(config, other_region(config, region)))
    took = time.monotonic() - started
    threshold = config.thresholds.db_unreachable
    timings = {"failing_since_ago": round(monotonic_now - command.failing_since, 3),
               "unreachable_for": round(command.held_for, 3),
               "hold_after": config.core_thresholds().hold_after,
               "db_unreachable": threshold, "stop_took": round(took, 3),
               "before_threshold": round(threshold - command.held_for - took, 3)}
    if problems:
        detail = f"{region} server not held ({how}): {'; '.join(dict.fromkeys(problems))}"
        log.error("own_primary_hold_failed", region=region, reason=command.reason,
                  error=detail, **timings)
        return HoldResult(False, detail)
    detail = f"{region} server {how}; standby.signal written, a restart comes up in recovery"
    log.critical("own_primary_held_before_threshold", region=region, reason=command.reason,
                 detail=detail, **timings)
    return HoldResult(True, detail)
