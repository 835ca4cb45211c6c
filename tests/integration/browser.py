"""A real headless Chromium driven over the DevTools protocol (a websocket, with aiohttp).

Debian's ``chromium`` package: ``scripts/test.sh`` installs it when missing. The browser
runs with a throw-away profile, talks to nothing but loopback (background networking,
component updates and the like are off), and every console message, uncaught exception
and browser log entry (failed loads, CSP violations) is collected as a :class:`Problem`.

    async with Browser.launch(tmp_path / "profile") as browser, browser.open(url) as page:
        await page.wait_for("document.body.dataset.refreshes >= 1", within=20)
        page.problems  # errors seen so far
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

#: Where the Debian package puts the browser.
CHROMIUM = "chromium"
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--metrics-recording-only",
    "--hide-scrollbars", "--window-size=1280,900",
)


def chromium_path() -> str:
    """The browser binary, or a failure that says how to get it."""
    found = shutil.which(CHROMIUM)
    if found is None:
        raise AssertionError("chromium is not installed: run scripts/test.sh (it installs "
                             "Debian's chromium package) or apt-get install chromium")
    return found


@dataclass(frozen=True)
class Problem:
    """An error the page caused: where it was reported and what it said."""

    source: str
    text: str


@dataclass
class Page:
    """One tab, with the errors it reported."""

    socket: aiohttp.ClientWebSocketResponse
    problems: list[Problem] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _events: dict[str, asyncio.Event] = field(default_factory=dict)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and wait for its answer (its ``result``)."""
        number = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        await self.socket.send_str(json.dumps({"id": number, "method": method,
                                                "params": params}))
        message = await asyncio.wait_for(answer, 30)
        if "error" in message:
            raise AssertionError(f"{method} failed: {message['error']}")
        return dict(message.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = await self.call("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, within: float) -> None:
        """Poll until ``expression`` is truthy in the page; fail after ``within`` s."""
        async with asyncio.timeout(within):
            while True:
                if await self.evaluate(expression):
                    return
                await asyncio.sleep(0.1)

    def forget_load(self) -> None:
        self._event("Page.loadEventFired").clear()

    async def loaded(self, *, within: float = 30) -> None:
        async with asyncio.timeout(within):
            await self._event("Page.loadEventFired").wait()

    async def screenshot(self) -> bytes:
        """A PNG of the whole page (beyond the window's height)."""
        metrics = await self.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.call("Page.captureScreenshot", format="png",
                               captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": size["width"],
                                     "height": size["height"], "scale": 1})
        return base64.b64decode(shot["data"])

    def _event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    async def pump(self) -> None:
        """Read the socket: answers to commands, errors the page reports, other events."""
        async for message in self.socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                waiter = self._waiting.pop(data["id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(data)
                continue
            method, params = data.get("method", ""), data.get("params", {})
            self._event(method).set()
            self._record(method, params)

    def _record(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", "")))
                            for a in params.get("args", []))
            self.problems.append(Problem("console", text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.problems.append(Problem("exception", str(text)))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.problems.append(Problem(f"log:{entry.get('source')}",
                                             f"{entry.get('text')} {entry.get('url', '')}"))


class Browser:
    """A headless Chromium process and its DevTools endpoint; ``log`` is what it printed."""

    def __init__(self, endpoint: str, session: aiohttp.ClientSession,
                 log: list[str]) -> None:
        self.endpoint = endpoint  # http://127.0.0.1:PORT
        self.session = session
        self.log = log

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path) -> AsyncIterator[Browser]:
        """Start the browser with its profile in ``profile``; stopped on the way out."""
        process = await asyncio.create_subprocess_exec(
            chromium_path(), *_FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        log: list[str] = []
        reader = asyncio.create_task(_read_log(process, log))
        try:
            socket_url = await _devtools_url(log, reader)
            endpoint = "http://" + socket_url.removeprefix("ws://").split("/", 1)[0]
            async with aiohttp.ClientSession() as session:
                yield cls(endpoint, session, log)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    async with asyncio.timeout(10):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @contextlib.asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Page]:
        """A new tab at ``url``, with error reporting on before the page starts loading."""
        async with self.session.put(f"{self.endpoint}/json/new?about:blank") as answer:
            target = await answer.json(content_type=None)
        async with self.session.ws_connect(target["webSocketDebuggerUrl"],
                                           max_msg_size=64 * 1024 * 1024) as socket:
            page = Page(socket)
            pump = asyncio.create_task(page.pump())
            try:
                for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                    await page.call(domain)
                page.forget_load()  # about:blank's, if it came after Page.enable
                await page.call("Page.navigate", url=url)
                await page.loaded()
                yield page
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump


async def _read_log(process: asyncio.subprocess.Process, log: list[str]) -> None:
    """Keep reading the browser's stderr (a full pipe would stall it) into ``log``."""
    assert process.stderr is not None
    async for line in process.stderr:
        log.append(line.decode(errors="replace").rstrip())


async def _devtools_url(log: list[str], reader: asyncio.Task[None]) -> str:
    """The browser's DevTools websocket URL, from the line it prints once it listens."""
    async with asyncio.timeout(30):
        while True:
            found = next((m for m in map(_LISTENING.search, log) if m), None)
            if found:
                return found.group(1)
            if reader.done():
                raise AssertionError("chromium exited before it listened:\n" + "\n".join(log))
            await asyncio.sleep(0.05)
