"""A long runbook does not stall the daemon: while the run waits on slow webhooks, the
engine keeps cycling, ``/healthz`` stays 200 (a liveness probe never kills the daemon
mid-failover), the status shows the step, and a pause is answered at once."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    aws_credentials_fixture,  # noqa: F401
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
)
from tests.integration.daemon_harness import THRESHOLD, WatchdogFleet, is_event, wait_until
from tests.integration.runbook_harness import (
    EAST,
    RunbookWorld,
    runbook_world_fixture,  # noqa: F401
)

pytestmark = pytest.mark.integration

TOKEN = "runbook-beside-loop-token"
#: Each webhook call is held this long: four notification steps make a run of ~10 s,
#: many times the liveness limit (five probe intervals, 2 s here).
WEBHOOK_DELAY = 2.5


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        yield started


def get(url: str, *, token: str | None = None, body: dict[str, Any] | None = None) -> tuple[
    int, dict[str, Any], float
]:
    """(status, JSON body, seconds it took)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"{}"), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), time.monotonic() - started


def test_a_slow_runbook_leaves_health_status_and_pause_answering(
    fleet: WatchdogFleet, pg_pair: PostgresPair, runbook_world: RunbookWorld, tmp_path: Path,
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    overrides = runbook_world.overrides()
    overrides["api"] = {"token_file": str(token_file)}
    dog = fleet.start(EAST, overrides=overrides)
    fleet.wait_ready()
    base = f"http://{yaml.safe_load(dog.config.read_text())['api']['listen']}"
    runbook_world.receiver.delay = WEBHOOK_DELAY

    pg_pair.primary.kill()
    steps: list[str] = []

    def in_a_run() -> bool:
        status = get(f"{base}/v1/status")[1]
        if status.get("run"):
            steps.append(status["run"]["step"])
        return bool(status.get("run"))

    wait_until(in_a_run, THRESHOLD + 10, what="a run in progress in the status")
    health: list[int] = []
    paused_in: float | None = None
    while not fleet.events(is_event("run_done")) and len(health) < 150:
        code, _, _ = get(f"{base}/healthz")
        health.append(code)
        in_a_run()
        if len(health) == 10:  # mid-run: a pause is answered at once, not after the run
            code, answer, paused_in = get(f"{base}/v1/pause", token=TOKEN,
                                          body={"reason": "mid-run"})
            assert code == 200, answer
            code, answer, _ = get(f"{base}/v1/resume", token=TOKEN, body={})
            assert code == 200, answer
        time.sleep(0.2)
    assert fleet.events(is_event("run_done")), fleet.describe()
    assert paused_in is not None
    assert paused_in < 2.0, f"the pause waited {paused_in:.1f}s for the run"
    assert len(health) >= 20, "the run was meant to last many liveness limits"
    assert set(health) == {200}, health
    assert len(set(steps)) >= 3, steps  # the status followed the run from step to step
