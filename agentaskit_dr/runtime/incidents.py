"""One incident per attempt window: what the stakeholders were told, and under which key.

A failover refused before the promotion is retried while its condition holds; every
attempt of that window carries the core's ``incident_since``. The incident's key (the
PagerDuty dedup key) is the first attempt's run id; the opening notifications are sent
once per incident, and the incident is resolved by the run's final notification or
closed by ``close`` (the condition cleared, or a refusal that can never succeed). Kept in
memory; a watchdog that resumes a run from the journal (after a restart, or as a successor)
``adopt``s that run's incident, so that a retry after the resumed run is refused stays in
it rather than announcing a second incident and leaving the first one open.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from agentaskit_dr.ports import Notification

log = structlog.get_logger(__name__)


class IncidentBook:
    """The incident open for stakeholders, and the notifications already sent for it."""

    def __init__(self) -> None:
        # (incident_since, key); incident_since None: adopted, bound by the next attempt.
        self._open: tuple[float | None, str] | None = None
        self._announced: set[tuple[str, str]] = set()  # (key, notification event)

    def key_for(self, incident_since: float | None, run_id: str) -> str:
        """The incident key of an attempt: the first attempt's run id for every retry."""
        if incident_since is not None and self._open is not None and (
            self._open[0] in (incident_since, None)
        ):
            self._open = (incident_since, self._open[1])
            return self._open[1]
        self._open = None if incident_since is None else (incident_since, run_id)
        return run_id

    def adopt(self, key: str, announced: Iterable[str]) -> None:
        """Take over the incident ``key`` of a run resumed from the journal, whose
        ``announced`` notifications the journal records as sent. It becomes the open
        incident unless one is open here already; the next attempt keeps its key."""
        if self._open is None:
            self._open = (None, key)
        self._announced |= {(key, event) for event in announced}

    def announced(self, key: str, event: str) -> bool:
        """Whether ``event`` (failover started, incident opened) was already sent."""
        return (key, event) in self._announced

    def sent(self, key: str, event: str, *, resolve: bool) -> None:
        """``event`` went out for ``key``; a resolve ends the incident."""
        if not resolve:
            self._announced.add((key, event))
        elif self._open is not None and self._open[1] == key:
            self._open = None

    def close(self, reason: str, epoch: int) -> Notification | None:
        """The resolve of the open incident, ended without a failover; None if none is open.

        The caller dispatches it (every notifier kind): PagerDuty resolves the incident
        under the same dedup key, Slack and the generic hook hear that it is over.
        """
        if self._open is None:
            return None
        key = self._open[1]
        self._open = None
        self._announced = {entry for entry in self._announced if entry[0] != key}
        log.warning("incident_closed", incident=key, reason=reason)
        return Notification(
            event="failover_abandoned", run_id=key, epoch=epoch, incident=key,
            summary=f"agentaskit-dr failover incident {key} closed: {reason}",
            severity="info", resolve=True, details={"reason": reason},
        )
