"""The running daemon's HTTP API, as an operator and Prometheus reach it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import WatchdogFleet, is_event, is_verdict

pytestmark = pytest.mark.integration

TOKEN = "s3cret-api-token"


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        yield started


def call(url: str, *, body: dict[str, Any] | None = None,
         token: str | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_status_metrics_and_a_guarded_pause_on_the_running_daemon(
    fleet: WatchdogFleet, tmp_path: Path
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    dog = fleet.start("us-east-1", overrides={"api": {"token_file": str(token_file)}})
    fleet.wait_ready()
    listen = yaml.safe_load(dog.config.read_text())["api"]["listen"]
    base = f"http://{listen}"

    assert call(f"{base}/healthz")[0] == 200
    assert call(f"{base}/readyz")[0] == 200
    code, text = call(f"{base}/v1/status")
    status = json.loads(text)
    assert code == 200
    assert (status["region"], status["epoch"], status["paused"]) == ("us-east-1", 1, False)
    # The DR testing schedule and the objectives, read from the evidence directory.
    assert status["dr_testing"]["failover_drill"]["result"] == "never run"
    assert status["objectives"]["rto"]["target_seconds"] == 4 * 3600
    code, text = call(f"{base}/metrics")
    assert code == 200
    assert "agentaskit_dr_lock_held 1.0" in text
    assert 'agentaskit_dr_dr_test_overdue{test="dr_exercise"} 0.0' in text
    assert 'agentaskit_dr_probe_up{probe="db:primary"' in text

    before = time.time()
    assert call(f"{base}/v1/pause", body={"reason": "upgrade"})[0] == 401
    assert call(f"{base}/v1/pause", body={"reason": "upgrade"}, token="wrong")[0] == 401
    assert call(f"{base}/v1/pause", body={"reason": 5}, token=TOKEN)[0] == 400
    assert json.loads(call(f"{base}/v1/status")[1])["paused"] is False
    fleet.wait_for(is_event("api_unauthorized", since=before), 5, what="api_unauthorized")

    code, text = call(f"{base}/v1/pause", body={"reason": "upgrade"}, token=TOKEN)
    assert code == 200, text
    assert json.loads(call(f"{base}/v1/status")[1])["paused"] is True
    # Paused: a dead primary is watched but nothing is actuated.
    fleet.pair.primary.kill()
    fleet.wait_for(is_verdict("paused: db_unreachable for"), fleet.threshold + 5,
                   what="a paused verdict past the threshold")
    assert fleet.events(is_event("failover_decided")) == []
    code, text = call(f"{base}/v1/failover", body={"dry_run": True}, token=TOKEN)
    assert code == 200, text
    plan = json.loads(text)
    assert plan["would_run"] is False
    assert "paused" in plan["blocked_by"]
    assert any(step.startswith("promote:") for step in plan["plan"])
    # Resumed: the failover follows at the next cycle.
    assert call(f"{base}/v1/resume", body={}, token=TOKEN)[0] == 200
    fleet.wait_for(is_event("promotion_done"), 10, what="promotion after resume")
