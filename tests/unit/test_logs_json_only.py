"""Every line the daemon writes is JSON, also when a library speaks through stdlib logging.

The stray line seen at a daemon's stop was asyncio's "Future exception was never
retrieved ... ConnectionError('unexpected connection_lost() call')": asyncpg's
``TLSUpgradeProto`` fails its ``on_data`` future when a connection attempt is cancelled
in the middle of its TLS negotiation, and nobody awaits that future any more. Each test
runs a small Python process configured by ``logs`` (process-wide state) and checks its
real stdout and stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

#: Reproduces asyncpg's leftover: the protocol of a cancelled connect loses its connection.
ASYNCPG_LEFTOVER = """
    import asyncio, gc
    from asyncpg.connect_utils import TLSUpgradeProto

    async def cancelled_connect() -> None:
        loop = asyncio.get_running_loop()
        proto = TLSUpgradeProto(loop, "127.0.0.1", 5432, None, False)
        proto.connection_lost(None)  # what transport.close() does after the cancel
        del proto
        gc.collect()  # the future is dropped unretrieved: asyncio reports it
"""


def run_python(body: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """Every stdout and stderr line parsed as a JSON object; fails on the first that is not."""
    events = []
    for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                pytest.fail(f"{stream} line is not JSON: {line!r}\nstdout: {result.stdout}\n"
                            f"stderr: {result.stderr}")
            assert isinstance(event, dict), line
            events.append(event)
    return events


def test_asyncpgs_unretrieved_future_through_stdlib_logging_is_one_json_line() -> None:
    result = run_python(ASYNCPG_LEFTOVER + """
    from agentaskit_dr import logs
    logs.configure("info")
    asyncio.run(cancelled_connect())
    """)

    events = json_lines(result)
    [event] = [e for e in events if "never retrieved" in str(e.get("event"))]
    assert event["logger"] == "asyncio"
    assert event["level"] == "error"
    assert "unexpected connection_lost() call" in event["event"]


def test_the_loops_exception_handler_makes_it_a_structured_warning() -> None:
    result = run_python(ASYNCPG_LEFTOVER + """
    from agentaskit_dr import logs
    logs.configure("info")

    async def main() -> None:
        logs.route_asyncio_errors(asyncio.get_running_loop())
        await cancelled_connect()

    asyncio.run(main())
    """)

    [event] = json_lines(result)
    assert (event["event"], event["level"]) == ("asyncio_error", "warning")
    assert event["message"] == "Future exception was never retrieved"
    assert "unexpected connection_lost() call" in event["exception"]


def test_aiohttp_server_errors_and_warnings_are_json() -> None:
    result = run_python("""
    import logging, warnings
    from agentaskit_dr import logs
    logs.configure("info")
    logging.getLogger("aiohttp.server").error("Error handling request", exc_info=ValueError("x"))
    warnings.warn("something old", DeprecationWarning, stacklevel=1)
    """)

    events = json_lines(result)
    assert [(e["logger"], e["level"]) for e in events] == [
        ("aiohttp.server", "error"), ("py.warnings", "warning")]
    assert "ValueError: x" in events[0]["exception"]


def test_an_uncaught_exception_is_a_json_crashed_event() -> None:
    result = run_python("""
    from agentaskit_dr import logs
    logs.configure("info")
    logs.route_uncaught()
    raise RuntimeError("boom")
    """)

    [event] = json_lines(result)
    assert (event["event"], event["level"]) == ("crashed", "critical")
    assert "RuntimeError: boom" in event["exception"]
    assert result.returncode == 1
