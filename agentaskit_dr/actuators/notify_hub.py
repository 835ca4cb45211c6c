"""Sends a notification to every notifier at once; a slow or failing one holds up nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from agentaskit_dr.ports import Notification, Notifier

log = structlog.get_logger(__name__)


class NotificationHub:
    """Sends each notification to every notifier at once, never holding up its caller.

    ``deadline`` bounds one ``notify()`` as a whole, a backstop over each notifier's own
    timeout. The hub owns its notifiers: ``close()`` closes them.
    """

    def __init__(self, notifiers: Sequence[Notifier], *, deadline: float = 15.0) -> None:
        names = [n.name for n in notifiers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"notifier names must be unique; repeated: {', '.join(duplicates)}")
        if deadline <= 0:
            raise ValueError(f"notification deadline must be positive, got {deadline}")
        self.notifiers = tuple(notifiers)
        self.deadline = deadline
        self._pending: set[asyncio.Task[dict[str, bool]]] = set()
        self._closed = False

    async def notify(self, notification: Notification) -> dict[str, bool]:
        """Send to all notifiers in parallel; ``{name: delivered}`` within ``deadline``.

        A notifier still busy at the deadline is cancelled and counts as not delivered;
        one that raises despite its contract counts as not delivered too.
        """
        if not self.notifiers:
            return {}
        sends = {
            asyncio.create_task(n.send(notification), name=f"notify:{n.name}"): n.name
            for n in self.notifiers
        }
        try:
            _, late = await asyncio.wait(sends, timeout=self.deadline)
        finally:
            # Also when this notify() is itself cancelled (hub closed): no send outlives it.
            unfinished = [task for task in sends if not task.done()]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        results: dict[str, bool] = {}
        for task, name in sends.items():
            if task in late:
                reason = f"hub deadline of {self.deadline:g}s passed"
            elif task.cancelled() or task.exception() is not None:
                error = "cancelled" if task.cancelled() else type(task.exception()).__name__
                reason = f"notifier raised {error}"
            else:
                results[name] = task.result()
                continue
            log.warning(
                "notification_failed", notifier=name, notification_event=notification.event,
                run_id=notification.run_id, status=None, reason=reason,
            )
            results[name] = False
        return results

    def dispatch(self, notification: Notification) -> None:
        """Start ``notify()`` in the background and return at once (fire and forget).

        After ``close()`` the notification is dropped, with a log event.
        """
        if self._closed:
            log.warning(
                "notification_dropped", notification_event=notification.event,
                run_id=notification.run_id, reason="hub closed",
            )
            return
        task = asyncio.create_task(
            self.notify(notification), name=f"dispatch:{notification.event}"
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (waits, then reports)
        """Wait up to ``timeout`` for dispatched notifications; True if none is left."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
        return not self._pending

    async def close(self) -> None:
        """Cancel dispatched notifications still running, then close every notifier."""
        self._closed = True
        leftovers = set(self._pending)
        if leftovers:
            log.warning("notifications_abandoned", count=len(leftovers))
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
        for notifier in self.notifiers:
            try:
                await notifier.close()
            except Exception as exc:  # noqa: BLE001 (one bad notifier must not stop the others)
                log.warning(
                    "notifier_close_failed", notifier=notifier.name, reason=type(exc).__name__
                )
