"""A webhook receiver on 127.0.0.1 that records every request, for the notifier tests.

It stands in for Slack, PagerDuty, an incident tracker or a status page: any POST (or
GET) on any path is recorded with its headers and JSON body, then answered 200, unless
``fail_next`` asked for failures or ``delay`` makes it slow.

Test modules use the fixture with ``from tests.integration.webhook_receiver import
webhook_receiver_fixture`` (registered as ``webhook_receiver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it; ``body`` is None when it was not JSON.

    ``at`` is the event loop's time when it arrived.
    """

    at: float
    method: str
    path: str
    headers: dict[str, str]
    text: str
    body: Any


class WebhookReceiver:
    """Records requests; answers ``ok_status`` unless told to fail or to be slow.

    ``delay``: seconds each request is held before its answer (teardown releases held
    requests at once). ``fail_next(n, status)``: the next ``n`` requests get ``status``.
    """

    def __init__(self) -> None:
        self.base = ""
        self.requests: list[ReceivedRequest] = []
        self.delay = 0.0
        self.ok_status = 200
        self._failures: deque[tuple[int, str | None]] = deque()
        self._release = asyncio.Event()
        self._arrived = asyncio.Condition()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def url(self, path: str) -> str:
        """The full URL of ``path`` (which starts with "/") on this receiver."""
        return f"{self.base}{path}"

    def received(self, path: str) -> list[ReceivedRequest]:
        """Requests received on ``path``, oldest first."""
        return [r for r in self.requests if r.path == path]

    def fail_next(self, n: int, status: int = 500, retry_after: str | None = None) -> None:
        """Answer the next ``n`` requests (any path) with ``status`` instead of success,
        with a ``Retry-After: retry_after`` header when given."""
        self._failures.extend([(status, retry_after)] * n)

    async def wait_for(self, path: str, count: int) -> list[ReceivedRequest]:
        """Wait (5 s at most) until ``path`` has received ``count`` requests; return them."""
        async with asyncio.timeout(5.0), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received(path)) >= count)
        return self.received(path)

    def release(self) -> None:
        """Let every held (delayed) request answer now, and stop holding new ones."""
        self._release.set()

    async def _handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            body = json.loads(text) if text else None
        except json.JSONDecodeError:
            body = None
        self.requests.append(
            ReceivedRequest(
                asyncio.get_running_loop().time(), request.method, request.path,
                dict(request.headers), text, body,
            )
        )
        async with self._arrived:
            self._arrived.notify_all()
        if self.delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.delay)
        if self._failures:
            status, retry_after = self._failures.popleft()
            headers = {"Retry-After": retry_after} if retry_after is not None else None
            return web.Response(status=status, text=f"simulated failure {status}", headers=headers)
        return web.json_response({"status": "success"}, status=self.ok_status)


@pytest.fixture(name="webhook_receiver")
async def webhook_receiver_fixture() -> AsyncIterator[WebhookReceiver]:
    """A started ``WebhookReceiver`` on a free 127.0.0.1 port, stopped after the test."""
    receiver = WebhookReceiver()
    runner = web.AppRunner(receiver.app, shutdown_timeout=1.0)
    await runner.setup()
    # Port 0: the kernel picks a free port, with no window for another process to take it.
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    receiver.base = f"http://{host}:{port}"
    try:
        yield receiver
    finally:
        receiver.release()
        await runner.cleanup()
