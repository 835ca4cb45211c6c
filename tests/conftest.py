"""Shared fixtures: real servers on free loopback ports, and a guard against leaked tasks."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer

if TYPE_CHECKING:
    from redis.asyncio import Redis

# No per-example deadline: on a loaded 2-core CI machine an example that takes longer than
# 200 ms is not a bug, and speed is measured by bench/, never asserted by a test.
settings.register_profile("agentaskit", deadline=None)
settings.load_profile("agentaskit")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Mark the main thread's event loop as explicitly unset.

    Otherwise looptime asks the policy for a loop during a sync test that runs before
    the first async one, the policy creates a loop nobody closes, and its ResourceWarning
    fails the whole session under ``filterwarnings = error``.
    """
    asyncio.set_event_loop(None)


#: The daemon's default state directory (evidence_dir's default): a test writes its
#: evidence under tmp_path, never into the machine's.
MACHINE_STATE = Path("/var/lib/agentaskit-dr")


def _machine_state() -> dict[str, int]:
    """Every file and directory under MACHINE_STATE with its mtime (empty: none there)."""
    found: dict[str, int] = {}
    for root, dirs, files in os.walk(MACHINE_STATE):
        for name in (*dirs, *files):
            path = Path(root, name)
            with contextlib.suppress(OSError):
                found[str(path)] = path.stat().st_mtime_ns
    return found


@pytest.fixture(autouse=True)
def _machine_state_untouched() -> Iterator[None]:
    """Fail the test that writes into the daemon's default state directory on this
    machine (a config without ``evidence_dir`` in a test that fails over writes there).
    Files are compared, not only the directory: one left by an earlier run does not turn
    the check off."""
    before = _machine_state()
    yield
    after = _machine_state()
    if after != before:
        changed = sorted(path for path, mtime in after.items() if before.get(path) != mtime)
        pytest.fail(f"this test wrote into {MACHINE_STATE} (the default evidence_dir): "
                    f"{', '.join(changed[:3]) or 'removed files'}; give its config an "
                    "evidence_dir under tmp_path", pytrace=False)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started redis-server with no persistence, killed after the test."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of ``redis_server`` that answers in str (2 s socket timeout), closed after
    the test."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def pg_pair() -> Iterator[PostgresPair]:
    """A PostgreSQL primary with a streaming replica, both killed and removed after the test."""
    with PostgresPair() as pair:
        yield pair


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail the test if tasks are still pending in its loop once it and its fixtures end."""
    yield
    current = asyncio.current_task()
    leaked = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if not leaked:
        return
    report = "\n".join(repr(task) for task in leaked)
    # Cancel them so the loop closes cleanly and the report shows only this failure.
    for task in leaked:
        task.cancel()
    await asyncio.gather(*leaked, return_exceptions=True)
    pytest.fail(f"test leaked {len(leaked)} pending task(s):\n{report}")


@pytest.fixture(autouse=True)
def _async_tests_leak_no_tasks(request: pytest.FixtureRequest) -> None:
    # Set up before the test's own fixtures, so the check is torn down after theirs and
    # runs inside the test's event loop (pytest-asyncio gives each test function its own).
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("_no_leaked_tasks")
