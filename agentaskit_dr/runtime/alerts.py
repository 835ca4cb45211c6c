"""Alerts reach people, not only the log: one notification per open alert, a resolve when
it clears.

Every alert is logged (``alert`` event) as before. An alert with a ``key`` also goes to the
configured notifiers, deduplicated: the first alert of a key opens it and is sent; later
alerts of the same open key are sent again only when they are more severe, or say
something new after ``repeat_after``; an alert with ``resolve`` closes the key and sends
the resolve (PagerDuty resolves the incident under the same dedup key). Sending never
blocks the caller: the notifications are dispatched in the background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agentaskit_dr.core import Alert, Severity
from agentaskit_dr.ports import Notification

log = structlog.get_logger(__name__)

_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}

#: Notification event of every alert; the key and message are in the details and summary.
ALERT_EVENT = "alert"


@dataclass(slots=True)
class _Open:
    severity: Severity
    message: str
    sent_at: float


class AlertRouter:
    """Routes the core's and the runtime's alerts to the log and, deduplicated, to people.

    ``send`` dispatches a notification in the background (``NotificationHub.dispatch``;
    replaceable after a reload). ``node`` names this daemon in the dedup key, so each
    watchdog's view of a condition is one incident of its own.
    """

    def __init__(
        self,
        send: Callable[[Notification], None],
        *,
        node: str,
        clock: Callable[[], float],
        repeat_after: float = 300.0,
    ) -> None:
        self.send = send
        self.node = node
        self._clock = clock
        self.repeat_after = repeat_after
        self._open: dict[str, _Open] = {}

    @property
    def open_alerts(self) -> dict[str, str]:
        """``{key: latest message}`` of the alerts not resolved yet (for the status)."""
        return {key: alert.message for key, alert in self._open.items()}

    def route(self, alert: Alert, *, epoch: int | None = None) -> bool:
        """Log ``alert`` and notify if it opens, escalates, changes or resolves its key;
        True when a notification was dispatched."""
        log.warning("alert", severity=alert.severity.value, message=alert.message,
                    key=alert.key, resolve=alert.resolve or None)
        if alert.key is None:
            return False
        now = self._clock()
        current = self._open.get(alert.key)
        if alert.resolve:
            if current is None:
                return False
            del self._open[alert.key]
        elif current is None:
            self._open[alert.key] = _Open(alert.severity, alert.message, now)
        else:
            escalated = _RANK[alert.severity] > _RANK[current.severity]
            changed = (alert.message != current.message
                       and now - current.sent_at >= self.repeat_after)
            if not (escalated or changed):
                return False
            self._open[alert.key] = _Open(alert.severity, alert.message, now)
        self.send(Notification(
            event=ALERT_EVENT,
            run_id=f"agentaskit-dr/{self.node}/{alert.key}",
            epoch=epoch or 0,
            summary=f"agentaskit-dr {self.node}: {alert.message}",
            severity=alert.severity.value,
            resolve=alert.resolve,
            details={"key": alert.key, "node": self.node},
        ))
        return True
