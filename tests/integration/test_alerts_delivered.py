"""A running watchdog's alerts reach the configured webhooks, not only its log: once per
condition (deduplicated) and resolved when the condition clears."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    aws_credentials_fixture,  # noqa: F401
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
)
from tests.integration.daemon_harness import WatchdogFleet, is_event, wait_until
from tests.integration.runbook_harness import (
    EAST,
    PAGERDUTY,
    RunbookWorld,
    runbook_world_fixture,  # noqa: F401
)

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        yield started


def test_lock_lost_is_paged_once_and_resolved_when_the_lock_is_held_again(
    fleet: WatchdogFleet, redis_server: RedisServer, runbook_world: RunbookWorld,
) -> None:
    fleet.start(EAST, overrides=runbook_world.overrides())
    fleet.wait_ready()

    redis_server.kill()
    fleet.wait_for(is_event("lock_lost"), 10, what="lock_lost with the lock store down")
    time.sleep(2.0)  # several engine cycles with the lock gone: still one alert
    redis_server.start()
    fleet.wait_for(lambda e: e.get("event") == "alert" and e.get("key") == "lock"
                   and e.get("resolve") is True, 15, what="the lock alert resolved")

    def lock_alerts() -> list[dict[str, object]]:
        return [a for a in runbook_world.alerts() if a["details"]["key"] == "lock"]

    wait_until(lambda: len(lock_alerts()) == 2, 5, what="two generic webhook calls")
    opened, resolved = lock_alerts()
    assert (opened["resolve"], opened["severity"]) == (False, "critical")
    assert "lock lost" in str(opened["summary"])
    assert (resolved["resolve"], resolved["severity"]) == (True, "info")
    paged = [r.body for r in runbook_world.received(PAGERDUTY)
             if isinstance(r.body, dict) and str(r.body.get("dedup_key")).endswith("/lock")]
    assert [p["event_action"] for p in paged] == ["trigger", "resolve"]
    assert len({p["dedup_key"] for p in paged}) == 1
