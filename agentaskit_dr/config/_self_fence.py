"""``self_fence``: what happens to a self-fence once the isolation that caused it heals."""

from __future__ import annotations

from pydantic import Field

from agentaskit_dr.config._base import ConfigModel, PositiveDuration


class SelfFenceConfig(ConfigModel):
    """The lift of a self-fence (docs/architecture.md, "Self-fence lifecycle")."""

    auto_lift: bool = Field(default=True, strict=True)
    """Lift a self-fence automatically once every lift condition has held for
    ``thresholds.recovery``; false keeps it for an operator (``unfence``)."""
    stuck_alert_after: PositiveDuration = 300.0
    """Alert once when a self-fence stays in force this long because a lift condition
    blocks it (the alert names the condition)."""
