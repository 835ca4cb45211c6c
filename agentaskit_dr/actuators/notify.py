"""Notification senders for the runbook: Slack, PagerDuty, a generic JSON webhook, and a hub.

The runbook checklist asks to notify stakeholders, open an incident ticket and update the
status page. None of that may hold up a failover: each ``send()`` is bounded by a total
deadline, retries only what a retry can fix (5xx, 429, lost connections, timeouts), and
answers True/False instead of raising. ``NotificationHub.dispatch`` sends in the
background so the caller never waits on a receiver.

Webhook URLs carry their secret in the path (Slack) and the PagerDuty routing key is a
credential: logs show only the URL's origin (scheme, host, port), and error texts are
scrubbed of both before they are logged.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from yarl import URL

from agentaskit_dr.ports import Notification
from agentaskit_dr.redaction import mask_secrets
from agentaskit_dr.retry import RetryCallState, last_error, retry_policy

log = structlog.get_logger(__name__)

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_SEVERITIES = frozenset({"critical", "error", "warning", "info"})
#: The kinds ``notifications.webhooks[].kind`` takes in the config.
NOTIFIER_KINDS = ("slack", "pagerduty", "generic")

_ERROR_EXCERPT = 200
_SLACK_TEXT_LIMIT = 2900  # Slack rejects section texts over 3000 characters
_SLACK_MAX_FIELDS = 10  # Slack's limit per section
_PAGERDUTY_SUMMARY_LIMIT = 1024  # PagerDuty truncates longer summaries itself


class _AttemptFailed(Exception):
    """One request failed; ``retryable`` when another attempt may fix it (5xx, 429, I/O)."""

    def __init__(
        self, reason: str, status: int | None, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


def _checked_url(kind: str, url: str) -> URL:
    parsed = URL(url)
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        # Only the scheme: the rest of a webhook URL may be its secret.
        raise ValueError(
            f"{kind} notifier: url must be an http(s) URL with a host, "
            f"got scheme {parsed.scheme or '(none)'!r}"
        )
    return parsed


class WebhookNotifier(abc.ABC):
    """Common delivery for notifiers that POST one JSON document per notification.

    ``timeout`` bounds the whole ``send()`` (every attempt and every backoff);
    ``attempt_timeout`` bounds one request; ``attempts`` is the most requests one
    ``send()`` makes; ``backoff`` is the first wait between attempts, doubled after each
    and capped at 2 s. A Retry-After in seconds (429, 503) replaces the backoff; the
    deadline still ends the send.
    """

    name: str

    def __init__(
        self,
        url: str,
        *,
        name: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        attempt_timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.2,
        secrets: Sequence[str] = (),
    ) -> None:
        if timeout <= 0 or attempt_timeout <= 0:
            raise ValueError(f"{name} notifier: timeouts must be positive")
        if attempts < 1:
            raise ValueError(f"{name} notifier: attempts must be >= 1, got {attempts}")
        self.name = name
        self._url = _checked_url(name, url)
        self.target = str(self._url.origin())
        self._headers = {
            "Content-Type": "application/json", "User-Agent": "agentaskit-dr", **(headers or {})
        }
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout
        self._attempts = attempts
        self._backoff = backoff
        # Anything that must never reach a log; short values would garble every message.
        candidates = [url, self._url.path_qs, *(headers or {}).values(), *secrets]
        self._secrets = tuple(s for s in candidates if len(s) >= 6)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, target={self.target!r})"

    @abc.abstractmethod
    def body(self, notification: Notification) -> dict[str, Any]:
        """The JSON document this receiver expects for ``notification``."""

    async def send(self, notification: Notification) -> bool:
        """POST ``notification`` with bounded retries; True when the receiver took it (2xx).

        Never raises (cancellation aside): every failure is logged and returns False.
        """
        nlog = log.bind(
            notifier=self.name, notification_event=notification.event,
            run_id=notification.run_id, epoch=notification.epoch, target=self.target,
        )
        attempts = 0
        status: int | None = None
        last: _AttemptFailed | None = None
        try:
            payload = json.dumps(self.body(notification), default=str)
            async with asyncio.timeout(self._timeout):
                async for attempt in retry_policy(_is_retryable, attempts=self._attempts,
                                                  backoff=self._wait):
                    with attempt:
                        attempts += 1
                        try:
                            status = await self._post(payload)
                        except _AttemptFailed as exc:
                            last = exc
                            raise
        except _AttemptFailed as exc:
            nlog.warning(
                "notification_failed", status=exc.status, attempts=attempts,
                reason=self._scrub(exc.reason),
            )
            return False
        except TimeoutError:
            reason = f"no delivery within the {self._timeout:g}s deadline"
            if last is not None:
                reason += f"; last attempt: {last.reason}"
            nlog.warning(
                "notification_failed", status=last.status if last else None,
                attempts=attempts, reason=self._scrub(reason),
            )
            return False
        except Exception as exc:  # noqa: BLE001 (a notifier never raises into a failover)
            nlog.warning(
                "notification_failed", status=None, attempts=attempts,
                reason=self._scrub(f"{type(exc).__name__}: {exc}"),
            )
            return False
        nlog.info("notification_sent", status=status, attempts=attempts)
        return True

    async def close(self) -> None:
        """Close the HTTP session (a later ``send()`` opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, payload: str) -> int:
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        try:
            async with self._session.post(
                self._url,
                data=payload,
                headers=self._headers,
                # A webhook that redirects is misconfigured; following it would re-send
                # the secret-bearing body to wherever it points.
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._attempt_timeout),
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return status
                excerpt = (await response.content.read(_ERROR_EXCERPT)).decode(errors="replace")
                retry_after = _seconds(response.headers.get("Retry-After"))
        except TimeoutError as exc:
            reason = f"no answer within {self._attempt_timeout:g}s"
            raise _AttemptFailed(reason, None, retryable=True) from exc
        except aiohttp.ClientConnectorError as exc:
            reason = (
                "connection refused" if isinstance(exc.os_error, ConnectionRefusedError)
                else f"cannot connect: {exc.os_error.strerror or exc.os_error}"
            )
            raise _AttemptFailed(reason, None, retryable=True) from exc
        except aiohttp.ClientConnectionError as exc:
            reason = f"connection lost: {type(exc).__name__} {exc}"
            raise _AttemptFailed(reason, None, retryable=True) from exc
        reason = f"HTTP {status}: {' '.join(excerpt.split())}".rstrip(": ")
        retryable = status == 429 or status >= 500
        raise _AttemptFailed(reason, status, retryable=retryable, retry_after=retry_after)

    def _wait(self, state: RetryCallState) -> float:
        exc = last_error(state)
        if isinstance(exc, _AttemptFailed) and exc.retry_after is not None:
            # The overall deadline still applies: a long Retry-After ends in a timeout.
            return exc.retry_after
        wait: float = min(self._backoff * 2 ** (state.attempt_number - 1), 2.0)
        return wait

    def _scrub(self, text: str) -> str:
        return mask_secrets(text, self._secrets)[: _ERROR_EXCERPT * 2]


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, _AttemptFailed) and exc.retryable


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds; the HTTP-date form is ignored (backoff applies)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackNotifier(WebhookNotifier):
    """A Slack-compatible incoming webhook: ``text`` for any receiver, ``blocks`` for Slack."""

    def __init__(self, url: str, *, name: str = "slack", **options: Any) -> None:
        super().__init__(url, name=name, **options)

    def body(self, notification: Notification) -> dict[str, Any]:
        """``text`` (the fallback line) and ``blocks`` (title, summary, context, details)."""
        n = notification
        state = "RESOLVED" if n.resolve else n.severity.upper()
        text = f"[{state}] {n.summary} (run {n.run_id}, epoch {n.epoch})"
        title = _slack_escape(f"*[{state}] {n.event}*\n{n.summary}")[:_SLACK_TEXT_LIMIT]
        context = _slack_escape(f"run {n.run_id} | epoch {n.epoch} | severity {n.severity}")
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": title}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ]
        if n.details:
            fields = [
                {"type": "mrkdwn", "text": _slack_escape(f"*{key}*\n{value}")[:1900]}
                for key, value in list(n.details.items())[:_SLACK_MAX_FIELDS]
            ]
            blocks.append({"type": "section", "fields": fields})
        return {"text": text, "blocks": blocks}


class PagerDutyNotifier(WebhookNotifier):
    """PagerDuty Events API v2: trigger, and resolve under the same dedup key (the run id).

    ``routing_key`` is a credential: the caller reads it from a file; it is sent in the
    body and kept out of every log and repr. A severity PagerDuty does not know is sent
    as ``critical``: during a failover, over-alerting beats a rejected page.
    """

    def __init__(
        self, routing_key: str, url: str = PAGERDUTY_EVENTS_URL, *, name: str = "pagerduty",
        **options: Any,
    ) -> None:
        key = routing_key.strip()
        if not key:
            raise ValueError(f"{name} notifier: routing_key is empty")
        super().__init__(url, name=name, secrets=(key,), **options)
        self._routing_key = key

    def body(self, notification: Notification) -> dict[str, Any]:
        """A ``trigger`` event with its payload, or a ``resolve`` event (no payload)."""
        n = notification
        event: dict[str, Any] = {
            "routing_key": self._routing_key,
            "event_action": "resolve" if n.resolve else "trigger",
            "dedup_key": n.dedup_key,
        }
        if not n.resolve:
            severity = n.severity.lower()
            event["payload"] = {
                "summary": n.summary[:_PAGERDUTY_SUMMARY_LIMIT],
                "source": "agentaskit-dr",
                "severity": severity if severity in PAGERDUTY_SEVERITIES else "critical",
                "custom_details": {
                    "event": n.event, "run_id": n.run_id, "epoch": n.epoch, **n.details,
                },
            }
        return event


class GenericWebhookNotifier(WebhookNotifier):
    """POSTs the notification as plain JSON: incident tickets, the status page, anything.

    ``headers`` (e.g. an Authorization header) are sent with every request, never logged.
    Give each instance its own ``name`` when several are configured.
    """

    def __init__(
        self, url: str, headers: Mapping[str, str] | None = None, *, name: str = "generic",
        **options: Any,
    ) -> None:
        super().__init__(url, name=name, headers=headers, **options)

    def body(self, notification: Notification) -> dict[str, Any]:
        """Every field of the notification plus ``sent_at`` (ISO 8601, UTC)."""
        n = notification
        return {
            "event": n.event, "run_id": n.run_id, "epoch": n.epoch, "summary": n.summary,
            "severity": n.severity, "resolve": n.resolve, "details": n.details,
            "sent_at": datetime.now(UTC).isoformat(),
        }


def build_notifier(
    kind: str, url: str | None, routing_key: str | None = None,
    headers: Mapping[str, str] | None = None, *, name: str | None = None, **options: Any,
) -> WebhookNotifier:
    """A notifier of ``kind`` ("slack", "pagerduty" or "generic"), from configuration.

    ``url`` may be None for PagerDuty (the public Events API). Raises ValueError naming
    the kind or setting that is wrong.
    """
    label = name or kind
    if kind == "pagerduty":
        if not routing_key:
            raise ValueError(f"{label} notifier: routing_key is required for kind 'pagerduty'")
        return PagerDutyNotifier(
            routing_key, url or PAGERDUTY_EVENTS_URL, name=label, headers=headers, **options
        )
    if kind not in NOTIFIER_KINDS:
        raise ValueError(
            f"unknown notifier kind {kind!r}; expected one of {', '.join(NOTIFIER_KINDS)}"
        )
    if not url:
        raise ValueError(f"{label} notifier: url is required for kind {kind!r}")
    if kind == "slack":
        return SlackNotifier(url, name=label, headers=headers, **options)
    return GenericWebhookNotifier(url, headers, name=label, **options)
