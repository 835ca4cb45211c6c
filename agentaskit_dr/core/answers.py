"""What an assessment says besides the debounce clocks: answers that are not outages.

A primary that answers the watchdog with an error is up, and one named alert while it
lasts; a failover target that is itself unhealthy holds the failover (``machine._decide``)
and is announced healthy again once. Pure, like the rest of ``core``.
"""

from __future__ import annotations

from dataclasses import replace

from agentaskit_dr.core.assess import Assessment
from agentaskit_dr.core.model import Alert, Command, Severity, WatchState


def refusal_alerts(before: str | None, assessment: Assessment) -> list[Command]:
    """One loud alert when the primary starts refusing the watchdog (or refuses for a new
    reason), one info alert when it stops; nothing while it goes on."""
    now = assessment.primary_refusal
    if now == before:
        return []
    if now is None:
        return [Alert(Severity.INFO, f"primary no longer refuses the watchdog (was {before})",
                      key="primary_refuses", resolve=True)]
    words = f" ({assessment.refusal_detail})" if assessment.refusal_detail else ""
    return [Alert(Severity.CRITICAL, f"primary refuses the watchdog: {now}{words}; it "
                                     "answers, so it is not down and is not failed over",
                  key="primary_refuses")]


def target_health(state: WatchState, assessment: Assessment) -> tuple[WatchState, list[Command]]:
    """Track the failover target's health; say once when a held failover may go again."""
    if assessment.target_failing:
        return replace(state, target_unhealthy=assessment.target_detail), []
    commands: list[Command] = []
    if state.target_hold_alerted:
        commands.append(Alert(Severity.INFO, "secondary region healthy again: the failover "
                                             "is no longer held", key="failover_held",
                              resolve=True))
    return replace(state, target_unhealthy=None, target_hold_alerted=False), commands
