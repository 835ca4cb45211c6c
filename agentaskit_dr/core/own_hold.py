"""When a primary-side watchdog holds its own unreachable primary before the promotion.

docs/architecture.md, "Holding an unreachable own primary". In control mode only
(``thresholds.hold_after`` is None otherwise). The rule, checked at each assessment with
database news:

- this watchdog runs in the primary's region (``primary_side``);
- the ``db_unreachable`` clock has run for ``hold_after`` (the threshold minus a margin):
  that clock runs only while *every* fresh vantage with an opinion sees the database
  unreachable, one of them outside the region (quorum agreement, the same evidence the
  other region promotes on). A server that answers with an error is reachable and stops
  the clock; one vantage that reaches it restarts it, so a broken link between this
  watchdog and its server alone never kills a server the clients still use;
- a failover may follow: this watchdog is watching (not failing over, not failed over and
  awaiting acknowledgement: the anti-flap block stops a second promotion) and the standby
  slot is not known empty; with no promotion coming, a hold would only be an outage;
- no planned run (failback, switchover) is active, and not already held or self-fenced.

Whether the other region's watchdog is heard does not matter: when it is heard it asks
for the same fence before promoting anyway, and a server unreachable from the quorum for
almost the whole threshold is failed over either way.

Pure, like the rest of ``core``.
"""

from __future__ import annotations

from dataclasses import replace

from agentaskit_dr.core.hold_types import HoldOwnPrimary, OwnPrimaryHoldFailed
from agentaskit_dr.core.model import Alert, Command, Condition, Phase, Severity, WatchState

Step = tuple[WatchState, list[Command]]

KEY = "own_primary_held"


def own_primary_hold(state: WatchState, *, primary_side: bool, now: float) -> Step:
    """After the clocks moved on database news: issue ``HoldOwnPrimary`` once it is due."""
    clock = state.clocks[Condition.DB_UNREACHABLE]
    if not clock.failing:
        # Reachable again (restarted by an operator, a failback): a later outage may hold.
        return replace(state, own_primary_held_at=None, own_hold_deferred=False), []
    hold_after = state.thresholds.hold_after
    # Only while a failover may follow: after one (awaiting acknowledgement, the anti-flap
    # block) or with no standby to promote nobody promotes, and a hold would only turn a
    # frozen primary into an outage (chaos seeds 1003, 1004: the new primary held).
    if (hold_after is None or not primary_side or state.own_primary_held_at is not None
            or state.self_fenced or state.planned_run is not None
            or state.phase is not Phase.WATCHING or state.standby_ready is False):
        return state, []
    held_for = clock.held_for()
    if held_for < hold_after:
        return state, []
    threshold = state.thresholds.db_unreachable
    reason = (f"own primary unreachable for {held_for:.1f}s as seen by the quorum "
              f"(hold at {hold_after:g}s, the other region may promote at {threshold:g}s): "
              f"{clock.detail}")
    if state.paused:
        if state.own_hold_deferred:
            return state, []
        return replace(state, own_hold_deferred=True), [Alert(
            Severity.CRITICAL, f"paused: would stop and hold the primary, {reason}", key=KEY)]
    assert clock.failing_since is not None  # a failing clock has a start
    state = replace(state, own_primary_held_at=now, own_hold_deferred=False)
    return state, [Alert(Severity.CRITICAL, f"stopping and holding the primary in recovery: "
                                            f"{reason}", key=KEY),
                   HoldOwnPrimary(reason=reason, failing_since=clock.failing_since,
                                  held_for=held_for)]


def own_primary_hold_failed(state: WatchState, event: OwnPrimaryHoldFailed) -> Step:
    """Not confirmed: due again at the next assessment that still finds it due."""
    return replace(state, own_primary_held_at=None,
                   verdict=f"holding the primary failed: {event.reason}"), [Alert(
        Severity.CRITICAL, f"holding the unreachable primary failed: {event.reason}",
        key=KEY)]
