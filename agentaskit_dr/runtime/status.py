"""The status snapshot the API's ``GET /v1/status`` and ``agentaskit-dr status`` show."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import WatchState


def engine_status(state: WatchState, config: WatchdogConfig, *, now: float,
                  lag_bytes: int | None, peers: Mapping[str, bool],
                  probes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-able snapshot of the watch state; times are seconds ago. ``probes``: each
    probe's latest observation (``outlook.probe_summaries``)."""
    failover = state.failover

    def ago(at: float | None) -> float | None:
        return None if at is None else round(now - at, 3)

    clocks = {
        condition.value: {
            "failing": clock.failing,
            "failing_for": round(clock.held_for(), 3) if clock.failing else None,
            "failing_since_ago": ago(clock.failing_since),
            "threshold": state.thresholds.for_condition(condition),
            "detail": clock.detail,
        }
        for condition, clock in state.clocks.items()
    }
    last = None
    if failover is not None:
        last = dataclasses.asdict(failover)
        last["decided_ago"] = ago(failover.decided_at)
        last["completed_ago"] = ago(failover.completed_at)
    return {
        "node": config.holder,
        "role": config.role,
        "region": config.region,
        "primary_region": config.primary_region,
        "phase": state.phase.value,
        "verdict": state.verdict,
        "assessment": {
            "verdict": state.assessed.value if state.assessed else None,
            "since_ago": ago(state.assessed_since),
            "detail": state.assessment_detail,
        },
        "conditions": clocks,
        "paused": state.paused,
        "pause_reason": state.pause_reason or None,
        "self_fenced": state.self_fenced,
        "self_fence_lift": state.lift_status if state.self_fenced else None,
        # Answers that are not outages: the primary refusing the watchdog, and a failover
        # held because the region it would go to is unhealthy too.
        "primary_refusal": state.primary_refusal,
        "failover_held_by": state.target_unhealthy,
        "probes": dict(probes or {}),
        "epoch": state.epoch,
        "lock_holder": state.lock_holder,
        "lag_bytes": lag_bytes,
        "peers": dict(peers),
        "last_failover": last,
    }
