"""The engine on virtual time with answers that are not outages, and an unhealthy target.

The same rig as ``test_engine_virtual_time`` (real scheduler, core, executor and runbook;
a scripted world behind the ports), production timing: db_unreachable 120 s, probes every
5 s. The watchdog runs in us-east-1, the failover's target region.
"""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.core import Phase
from tests.unit.test_engine_virtual_time import (
    DB_UNREACHABLE,
    EAST,
    INTERVAL,
    WEST,
    Rig,
    World,
    events,
    from_,
    sleep_until,
)


def alerts(logs: list[dict[str, object]], containing: str) -> list[dict[str, object]]:
    return [e for e in events(logs, "alert") if containing in str(e["message"])]


@pytest.mark.looptime
async def test_primary_refusing_the_watchdog_for_20_minutes_never_fails_over() -> None:
    world = World()
    world.db_refuses[WEST] = from_(10)
    rig = Rig(world)
    with capture_logs() as logs:
        await rig.run_until(20 * 60)
    assert world.promote_calls == []
    assert rig.engine.state.phase is Phase.WATCHING
    [alert] = alerts(logs, "primary refuses the watchdog: auth_rejected")
    assert alert["severity"] == "critical"
    assert "28000: pg_hba.conf rejects connection" in str(alert["message"])
    assert rig.engine.status()["primary_refusal"] == "auth_rejected"
    report = rig.engine.observations()
    probe = report["probes"]["db:primary"]
    assert (probe["ok"], probe["refusal"], probe["sqlstate"]) == (True, "auth_rejected", "28000")
    assert report["regions"][WEST]["db_reachable"] is True
    assert report["regions"][WEST]["db_refusal"] == "auth_rejected"


@pytest.mark.looptime
async def test_a_primary_slot_answering_as_a_standby_is_up_and_named() -> None:
    world = World()
    world.demoted.add(WEST)
    rig = Rig(world)
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    assert world.promote_calls == []
    [alert] = alerts(logs, "primary refuses the watchdog: in_recovery")
    assert "answers as a standby (in recovery) where the primary should be" in str(
        alert["message"])


@pytest.mark.looptime
async def test_a_standby_that_refuses_the_watchdog_is_not_taken_for_promoted() -> None:
    world = World()
    world.db_refuses[EAST] = from_(10)
    rig = Rig(world)
    with capture_logs() as logs:
        await rig.run_until(10 * 60)
    assert rig.engine.state.phase is Phase.WATCHING
    assert not alerts(logs, "standby found promoted")
    assert rig.engine.state.standby_ready is True, "last known: a standby"


@pytest.mark.looptime
async def test_primary_down_while_the_secondary_region_is_unhealthy_holds_until_it_heals() -> None:
    world = World()
    world.db_down[WEST] = from_(10)
    world.region_down[EAST] = from_(0, 300)
    rig = Rig(world)
    with capture_logs() as logs:
        async with rig:
            await sleep_until(299)
            assert world.promote_calls == []
            held = rig.engine.state.verdict
            status = rig.engine.status()
            await sleep_until(20 * 60)
    assert held.startswith("no action: db_unreachable for ")
    assert held.endswith("but the secondary region us-east-1 unhealthy as seen from "
                         "watchdog-east (self); holding the failover")
    assert status["failover_held_by"] == ("secondary region us-east-1 unhealthy as seen "
                                          "from watchdog-east (self)")
    [hold] = alerts(logs, "holding the failover")
    assert hold["severity"] == "critical"
    # Healthy again at the health probe at 300: the failover goes at once.
    assert world.promote_calls == [300]
    assert alerts(logs, "secondary region healthy again")
    assert rig.engine.state.phase is Phase.FAILED_OVER
    assert 10 + DB_UNREACHABLE + INTERVAL < 300
