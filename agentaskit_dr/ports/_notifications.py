"""Notifications to stakeholders and the Notifier Protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# ---------------------------------------------------------------- notifications


@dataclass(frozen=True, slots=True)
class Notification:
    """A message to stakeholders about a run.

    ``event`` is one of "failover_started", "failover_done", "failover_failed",
    "incident_opened", "status_page", "failback_planned" (free text is allowed).
    ``dedup_key`` groups trigger and resolve of one incident (``incident``, else the run id).
    """

    event: str
    run_id: str
    epoch: int
    summary: str
    severity: str = "critical"
    resolve: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    # The incident the run belongs to: a failover retried after a refusal is one incident.
    incident: str | None = None

    @property
    def dedup_key(self) -> str:
        return self.incident or self.run_id


class Notifier(Protocol):
    """Delivers notifications; never raises and never blocks a failover."""

    name: str

    async def send(self, notification: Notification) -> bool:
        """Deliver once with bounded retries; True when the receiver accepted it."""
        ...

    async def close(self) -> None: ...
