"""Notifiers against a real HTTP receiver on 127.0.0.1: payloads, retries, deadlines, the hub."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.actuators.notify import (
    GenericWebhookNotifier,
    PagerDutyNotifier,
    SlackNotifier,
    build_notifier,
)
from agentaskit_dr.actuators.notify_hub import NotificationHub
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.ports import Notification
from tests.integration.webhook_receiver import (
    WebhookReceiver,
    webhook_receiver_fixture,  # noqa: F401 (registers the fixture)
)

pytestmark = pytest.mark.integration

SLACK_PATH = "/services/T0001/B0002/sEcReTtOkEn42"
ROUTING_KEY = "R0UT1NGKEYabcdef0123456789"
FAST = {"backoff": 0.05, "attempt_timeout": 1.0, "timeout": 3.0}

STARTED = Notification(
    event="failover_started",
    run_id="run-2024-0001",
    epoch=7,
    summary="us-west-2 down for 5m: promoting the us-east-1 replica",
    details={"verdict": "primary_down", "lag_bytes": 0},
)


def _log_text(logs: list[dict[str, Any]]) -> str:
    return " ".join(f"{key}={value}" for entry in logs for key, value in entry.items())


async def test_slack_posts_text_and_blocks_with_run_epoch_and_severity(
    webhook_receiver: WebhookReceiver,
) -> None:
    notifier = SlackNotifier(webhook_receiver.url(SLACK_PATH), **FAST)
    try:
        assert await notifier.send(STARTED) is True
    finally:
        await notifier.close()

    [request] = webhook_receiver.received(SLACK_PATH)
    assert request.headers["Content-Type"] == "application/json"
    body = request.body
    assert body["text"] == (
        "[CRITICAL] us-west-2 down for 5m: promoting the us-east-1 replica "
        "(run run-2024-0001, epoch 7)"
    )
    title, context, details = body["blocks"]
    assert "failover_started" in title["text"]["text"]
    assert context["elements"][0]["text"] == "run run-2024-0001 | epoch 7 | severity critical"
    assert [f["text"] for f in details["fields"]] == ["*verdict*\nprimary_down", "*lag_bytes*\n0"]


async def test_pagerduty_triggers_then_resolves_under_the_run_dedup_key(
    webhook_receiver: WebhookReceiver,
) -> None:
    notifier = PagerDutyNotifier(ROUTING_KEY + "\n", webhook_receiver.url("/v2/enqueue"), **FAST)
    done = Notification(
        event="failover_done", run_id=STARTED.run_id, epoch=7, summary="done", resolve=True
    )
    try:
        assert await notifier.send(STARTED) is True
        assert await notifier.send(done) is True
    finally:
        await notifier.close()

    trigger, resolve = (r.body for r in webhook_receiver.received("/v2/enqueue"))
    assert trigger == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "run-2024-0001",
        "payload": {
            "summary": STARTED.summary,
            "source": "agentaskit-dr",
            "severity": "critical",
            "custom_details": {
                "event": "failover_started", "run_id": "run-2024-0001", "epoch": 7,
                "verdict": "primary_down", "lag_bytes": 0,
            },
        },
    }
    assert resolve == {
        "routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "run-2024-0001"
    }


async def test_pagerduty_maps_an_unknown_severity_to_critical(
    webhook_receiver: WebhookReceiver,
) -> None:
    notifier = PagerDutyNotifier(ROUTING_KEY, webhook_receiver.url("/pd"), **FAST)
    odd = Notification(event="status_page", run_id="r1", epoch=1, summary="s", severity="SEV1")
    warning = Notification(event="status_page", run_id="r1", epoch=1, summary="s",
                           severity="Warning")
    try:
        assert await notifier.send(odd)
        assert await notifier.send(warning)
    finally:
        await notifier.close()
    severities = [r.body["payload"]["severity"] for r in webhook_receiver.received("/pd")]
    assert severities == ["critical", "warning"]


async def test_generic_webhook_posts_the_notification_with_its_headers(
    webhook_receiver: WebhookReceiver,
) -> None:
    notifier = GenericWebhookNotifier(
        webhook_receiver.url("/tickets"), {"Authorization": "Bearer tkt-secret-123"},
        name="incident_ticket", **FAST,
    )
    webhook_receiver.ok_status = 201
    try:
        assert await notifier.send(STARTED) is True
    finally:
        await notifier.close()

    [request] = webhook_receiver.received("/tickets")
    assert request.headers["Authorization"] == "Bearer tkt-secret-123"
    sent_at = request.body.pop("sent_at")
    assert sent_at.endswith("+00:00")
    assert request.body == {
        "event": "failover_started", "run_id": "run-2024-0001", "epoch": 7,
        "summary": STARTED.summary, "severity": "critical", "resolve": False,
        "details": {"verdict": "primary_down", "lag_bytes": 0},
    }


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_retryable_answer_is_retried_once_then_delivered(
    webhook_receiver: WebhookReceiver, status: int
) -> None:
    webhook_receiver.fail_next(1, status)
    notifier = GenericWebhookNotifier(webhook_receiver.url("/status"), **FAST)
    with capture_logs() as logs:
        try:
            assert await notifier.send(STARTED) is True
        finally:
            await notifier.close()
    assert len(webhook_receiver.received("/status")) == 2
    [sent] = [e for e in logs if e["event"] == "notification_sent"]
    assert sent["attempts"] == 2
    assert sent["status"] == 200


async def test_a_429_retry_after_sets_the_wait_before_the_next_attempt(
    webhook_receiver: WebhookReceiver,
) -> None:
    webhook_receiver.fail_next(1, 429, retry_after="0.5")
    notifier = GenericWebhookNotifier(webhook_receiver.url("/status"), **FAST)
    try:
        assert await notifier.send(STARTED) is True
    finally:
        await notifier.close()
    first, second = webhook_receiver.received("/status")
    assert 0.5 <= second.at - first.at < 1.0  # not the 0.05 s backoff


async def test_a_400_is_not_retried(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.fail_next(3, 400)
    notifier = SlackNotifier(webhook_receiver.url(SLACK_PATH), **FAST)
    with capture_logs() as logs:
        try:
            assert await notifier.send(STARTED) is False
        finally:
            await notifier.close()
    assert len(webhook_receiver.received(SLACK_PATH)) == 1
    [failed] = [e for e in logs if e["event"] == "notification_failed"]
    assert failed["status"] == 400
    assert failed["attempts"] == 1
    assert failed["reason"] == "HTTP 400: simulated failure 400"


async def test_persistent_5xx_gives_up_after_the_attempts(
    webhook_receiver: WebhookReceiver,
) -> None:
    webhook_receiver.fail_next(10, 502)
    notifier = SlackNotifier(webhook_receiver.url(SLACK_PATH), attempts=3, **FAST)
    try:
        assert await notifier.send(STARTED) is False
    finally:
        await notifier.close()
    assert len(webhook_receiver.received(SLACK_PATH)) == 3


async def test_an_unreachable_receiver_returns_false_without_raising() -> None:
    notifier = SlackNotifier(f"http://127.0.0.1:{free_port()}{SLACK_PATH}", **FAST)
    started = time.monotonic()
    with capture_logs() as logs:
        try:
            assert await notifier.send(STARTED) is False
        finally:
            await notifier.close()
    assert time.monotonic() - started < FAST["timeout"]
    [failed] = [e for e in logs if e["event"] == "notification_failed"]
    assert failed["attempts"] == 3
    assert failed["reason"] == "connection refused"


async def test_a_hanging_receiver_costs_no_more_than_the_deadline(
    webhook_receiver: WebhookReceiver,
) -> None:
    webhook_receiver.delay = 30
    notifier = GenericWebhookNotifier(
        webhook_receiver.url("/status"), timeout=1.0, attempt_timeout=0.4, backoff=0.05
    )
    started = time.monotonic()
    with capture_logs() as logs:
        try:
            assert await notifier.send(STARTED) is False
        finally:
            await notifier.close()
    assert time.monotonic() - started < 1.5
    [failed] = [e for e in logs if e["event"] == "notification_failed"]
    assert "no answer within 0.4s" in failed["reason"]


async def test_logs_show_only_the_receiver_origin_never_secrets(
    webhook_receiver: WebhookReceiver,
) -> None:
    slack = SlackNotifier(webhook_receiver.url(SLACK_PATH), **FAST)
    pager = PagerDutyNotifier(ROUTING_KEY, webhook_receiver.url("/v2/enqueue"), **FAST)
    webhook_receiver.fail_next(1, 403)
    with capture_logs() as logs:
        try:
            assert await slack.send(STARTED) is False
            assert await pager.send(STARTED) is True
        finally:
            await slack.close()
            await pager.close()
    text = _log_text(logs) + repr(slack) + repr(pager)
    assert "sEcReTtOkEn42" not in text
    assert ROUTING_KEY not in text
    assert {e["target"] for e in logs} == {webhook_receiver.base}
    assert {(e["event"], e["notifier"], e["notification_event"], e["run_id"]) for e in logs} == {
        ("notification_failed", "slack", "failover_started", "run-2024-0001"),
        ("notification_sent", "pagerduty", "failover_started", "run-2024-0001"),
    }


def test_build_notifier_makes_each_kind_and_rejects_bad_settings() -> None:
    assert isinstance(build_notifier("slack", "https://hooks.example/x"), SlackNotifier)
    pager = build_notifier("pagerduty", None, routing_key=ROUTING_KEY)
    assert isinstance(pager, PagerDutyNotifier)
    assert pager.target == "https://events.pagerduty.com"
    ticket = build_notifier("generic", "https://t.example/api", name="incident_ticket")
    assert isinstance(ticket, GenericWebhookNotifier)
    assert ticket.name == "incident_ticket"

    with pytest.raises(ValueError, match=r"unknown notifier kind 'email'; expected one of"):
        build_notifier("email", "https://x.example")
    with pytest.raises(ValueError, match="routing_key is required"):
        build_notifier("pagerduty", None)
    with pytest.raises(ValueError, match="url is required for kind 'slack'"):
        build_notifier("slack", None)
    with pytest.raises(ValueError, match="got scheme 'ftp'") as bad_url:
        build_notifier("slack", "ftp://hooks.example/services/sEcReT")
    assert "sEcReT" not in str(bad_url.value)


class _RaisingNotifier:
    """Breaks the Notifier contract on purpose: the hub must absorb it."""

    name = "broken"

    async def send(self, notification: Notification) -> bool:
        raise RuntimeError("boom")

    async def close(self) -> None:
        return None


async def test_hub_notify_reports_each_notifier(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.fail_next(1, 404)  # the first request; the order is not fixed
    hub = NotificationHub([
        GenericWebhookNotifier(webhook_receiver.url("/a"), name="a", **FAST),
        GenericWebhookNotifier(webhook_receiver.url("/b"), name="b", **FAST),
        _RaisingNotifier(),
    ])
    try:
        results = await hub.notify(STARTED)
    finally:
        await hub.close()
    assert results["broken"] is False
    assert sorted([results["a"], results["b"]]) == [False, True]


async def test_hub_notify_gives_up_on_a_slow_notifier_at_its_deadline(
    webhook_receiver: WebhookReceiver,
) -> None:
    webhook_receiver.delay = 30
    slow = GenericWebhookNotifier(webhook_receiver.url("/slow"), name="slow", timeout=20.0)
    hub = NotificationHub([slow], deadline=0.5)
    started = time.monotonic()
    try:
        assert await hub.notify(STARTED) == {"slow": False}
    finally:
        await hub.close()
    assert time.monotonic() - started < 1.0


def test_hub_rejects_two_notifiers_with_one_name() -> None:
    with pytest.raises(ValueError, match="repeated: generic"):
        NotificationHub([
            GenericWebhookNotifier("https://a.example/x"),
            GenericWebhookNotifier("https://b.example/y"),
        ])


async def test_dispatch_delivers_in_the_background_and_drain_waits_for_it(
    webhook_receiver: WebhookReceiver,
) -> None:
    hub = NotificationHub([SlackNotifier(webhook_receiver.url(SLACK_PATH), **FAST)])
    try:
        hub.dispatch(STARTED)
        assert webhook_receiver.received(SLACK_PATH) == []  # nothing sent before we yield
        assert await hub.drain(5.0) is True
    finally:
        await hub.close()
    assert len(webhook_receiver.received(SLACK_PATH)) == 1


async def test_dispatch_never_blocks_the_failover_when_a_receiver_hangs(
    webhook_receiver: WebhookReceiver,
) -> None:
    webhook_receiver.delay = 30
    hub = NotificationHub(
        [GenericWebhookNotifier(webhook_receiver.url("/status"), timeout=20.0)], deadline=20.0
    )
    try:
        started = time.monotonic()
        hub.dispatch(STARTED)
        hub.dispatch(STARTED)
        assert time.monotonic() - started < 0.05
        await webhook_receiver.wait_for("/status", 2)
        assert await hub.drain(0.1) is False
    finally:
        with capture_logs() as logs:
            await hub.close()
    hub_tasks = [
        t for t in asyncio.all_tasks() if t.get_name().startswith(("dispatch:", "notify:"))
    ]
    assert hub_tasks == []
    assert [e["count"] for e in logs if e["event"] == "notifications_abandoned"] == [2]

    with capture_logs() as logs:
        hub.dispatch(STARTED)  # after close: dropped, and no task started
    assert [e["event"] for e in logs] == ["notification_dropped"]
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("dispatch:")]
