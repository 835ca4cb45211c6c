"""When a self-fence may be lifted automatically (docs/architecture.md, "Self-fence lifecycle").

A primary-side watchdog that was isolated fences its own primary (safety invariant 5). When
the isolation heals, the fence is lifted only if every condition below holds, continuously
for ``thresholds.recovery`` (one blocking observation restarts the clock):

- ``auto_lift``: ``self_fence.auto_lift`` is on (off: only an operator lifts);
- ``armed``: no failover running, not paused, no failback or switchover running;
- ``lock``: this watchdog holds the leader lock (the lift runs under its epoch);
- ``not_isolated``: its quorum view is healthy again (it hears a peer or the witness);
- ``recorded_primary``: the cluster record names this region as the primary;
- ``no_newer_failover``: the record names no failover newer than the epoch in force when
  the fence was applied (nobody promoted elsewhere meanwhile);
- ``other_is_standby``: the other region's server answers and is in recovery. Unknown
  blocks: a server that cannot be asked may be a primary (the safe choice).

Pure, like the rest of ``core``.
"""

from __future__ import annotations

from dataclasses import replace

from agentaskit_dr.core.assess import Verdict
from agentaskit_dr.core.lift_types import LiftSelfFence, SelfFenceFacts, SelfFenceLiftDone
from agentaskit_dr.core.model import Alert, Command, FenceOwnPrimary, Phase, Severity, WatchState

Step = tuple[WatchState, list[Command]]

STUCK_KEY = "self_fence_stuck"


def fenced(state: WatchState, now: float) -> WatchState:
    """The state once the self-fence is issued: remember when, and the newest epoch known
    in force (the failover that made this region primary, or the lock held then)."""
    known = [e for e in (state.failover.epoch if state.failover else None, state.epoch)
             if e is not None]
    return replace(state, self_fenced_at=now, self_fence_epoch=max(known) if known else None,
                   lift_ready_since=None, lift_pending=False, lift_stuck_alerted=False)


def restored(state: WatchState, fence_epoch: int | None, now: float) -> WatchState:
    """The state of a watchdog that restarts while its self-fence is in force (the runtime
    read its record): fenced under ``fence_epoch``, the recovery wait starting ``now``."""
    return replace(state, self_fenced=True, self_fenced_at=now, self_fence_epoch=fence_epoch,
                   lift_ready_since=None, lift_pending=False, lift_stuck_alerted=False,
                   self_fence_unconfirmed=True,
                   verdict=f"self-fence restored (fence epoch {fence_epoch})")


def refence_restored(state: WatchState, now: float) -> Step:
    """Isolated for ``fence_after`` with a restored fence: fence again, once (idempotent),
    as the restart may have cut the first fence short. Debounced like the first fence: a
    watchdog that just started has heard nobody yet, which is not isolation."""
    if not state.self_fence_unconfirmed or state.paused:
        return state, []
    reason = ("restored self-fence, isolated again: fenced again (the restart may have cut "
              "the fence short)")
    state = replace(state, self_fence_unconfirmed=False, self_fence_retry_at=None)
    return state, [Alert(Severity.CRITICAL, f"self-fencing the primary: {reason}",
                         key="self_fence"), FenceOwnPrimary(reason=reason)]


def lift_conditions(state: WatchState, facts: SelfFenceFacts) -> dict[str, tuple[bool, str]]:
    """Each lift condition: (holds, its value as said in the log)."""
    # Failed over and waiting for an acknowledgement is armed: the anti-flap block is on
    # failing over again, and this lift restores the primary that failover made.
    armed = (state.phase is not Phase.FAILING_OVER and not state.paused
             and state.planned_run is None)
    isolated = state.isolated_since is not None or state.assessed in (None,
                                                                      Verdict.SELF_ISOLATED)
    recorded = facts.recorded_epoch
    newer = recorded is not None and (state.self_fence_epoch is None
                                      or recorded > state.self_fence_epoch)
    other = {True: "standby", False: "primary", None: "unknown"}[facts.other_in_recovery]
    return {
        "auto_lift": (state.thresholds.self_fence_auto_lift,
                      "on" if state.thresholds.self_fence_auto_lift else "off"),
        "armed": (armed, f"phase {state.phase.value}" + (", paused" if state.paused else "")
                  + (f", {state.planned_run}" if state.planned_run else "")),
        "lock": (state.epoch is not None, f"epoch {state.epoch}" if state.epoch is not None
                 else f"held by {state.lock_holder or 'nobody reachable'}"),
        "not_isolated": (not isolated, state.assessed.value if state.assessed else "unknown"),
        "recorded_primary": (facts.recorded_region == facts.region,
                             facts.recorded_region or "record unreadable"),
        "no_newer_failover": (not newer, f"recorded epoch {recorded}, in force at the fence "
                                         f"{state.self_fence_epoch}"),
        # The server's own words stay out: an error text that varies would make the
        # status change at every reading; the stuck alert carries them.
        "other_is_standby": (facts.other_in_recovery is True, other),
    }


def self_fence_facts(state: WatchState, facts: SelfFenceFacts, now: float) -> Step:
    """Debounce the lift conditions; issue ``LiftSelfFence`` once they held long enough."""
    if not state.self_fenced or state.lift_pending:
        return state, []
    conditions = lift_conditions(state, facts)
    said = tuple((name, value) for name, (_, value) in conditions.items())
    blocking = [name for name, (holds, _) in conditions.items() if not holds]
    fenced_for = now - (state.self_fenced_at if state.self_fenced_at is not None else now)
    if blocking:
        first = blocking[0]
        # Said in the status, not the verdict: the engine's verdict stays the decision's.
        state = replace(state, lift_ready_since=None,
                        lift_status=f"not lifted: {first} ({conditions[first][1]})")
        if state.lift_stuck_alerted or fenced_for <= state.thresholds.self_fence_stuck_after:
            return state, []
        return replace(state, lift_stuck_alerted=True), [Alert(
            Severity.CRITICAL,
            f"self-fence in force for {fenced_for:.0f}s: no server takes writes; not lifted "
            f"because {', '.join(f'{n} ({conditions[n][1]})' for n in blocking)}"
            + (f"; the other server: {facts.other_detail}" if facts.other_detail else ""),
            key=STUCK_KEY)]
    since = state.lift_ready_since if state.lift_ready_since is not None else now
    held = now - since
    recovery = state.thresholds.recovery
    if held < recovery:
        return replace(state, lift_ready_since=since,
                       lift_status=f"every lift condition holds; lifting after {recovery:g}s "
                                   "of that"), []
    epoch = state.epoch
    assert epoch is not None  # the "lock" condition holds
    reason = f"every lift condition held for {held:.1f}s (>= {recovery:g}s)"
    state = replace(state, lift_ready_since=since, lift_pending=True,
                    lift_status=f"lifting under epoch {epoch}: {reason}")
    return state, [LiftSelfFence(epoch=epoch, fence_epoch=state.self_fence_epoch,
                                 reason=reason, conditions=said)]


def self_fence_lift_done(state: WatchState, event: SelfFenceLiftDone, now: float) -> Step:
    """The lift's outcome: fence gone (watch again, as primary), or debounce afresh."""
    if not state.lift_pending:
        return replace(state, verdict=f"ignored a late self-fence lift outcome: "
                                      f"{event.detail}"), []
    if not event.lifted:
        return replace(state, lift_pending=False, lift_ready_since=None,
                       lift_status=f"lift refused: {event.detail}"), [Alert(
            Severity.WARNING, f"self-fence lift refused: {event.detail}", key=STUCK_KEY)]
    state = replace(state, self_fenced=False, self_fenced_at=None, self_fence_epoch=None,
                    lift_ready_since=None, lift_pending=False, lift_stuck_alerted=False,
                    isolated_since=None, lift_status="",
                    verdict=f"self-fence lifted: {event.detail}")
    return state, [Alert(Severity.INFO, f"self-fence lifted: {event.detail}", key="self_fence",
                         resolve=True),
                   Alert(Severity.INFO, "self-fence lifted", key=STUCK_KEY, resolve=True)]
