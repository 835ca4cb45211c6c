"""The engine stops when cancelled, even while reports keep arriving.

Seen end to end: a watchdog polled ~10 times a second logged ``task_did_not_stop`` after
SIGTERM and kept deciding for the whole grace period, because Python 3.11's
``asyncio.wait_for`` returns an item that arrives in the same instant as a cancellation
and drops the cancellation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentaskit_dr.actuators.promote import PostgresPromoter
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import Lease
from agentaskit_dr.runtime.engine import Engine
from agentaskit_dr.runtime.executor import FailoverExecutor
from tests.unit.fake_journal import engine_runbook


class NoLease:
    async def verified_lease(self) -> Lease | None:
        return None


def config() -> WatchdogConfig:
    return WatchdogConfig.model_validate({
        "region": "us-east-1",
        "primary_region": "us-west-2",
        "node_name": "watchdog-east",
        "regions": {
            name: {
                "health_urls": [f"http://127.0.0.1:9/{name}/healthz"],
                "database": {"dsn": f"postgresql://postgres@127.0.0.1:9/{name}"},
            }
            for name in ("us-west-2", "us-east-1")
        },
    })


def no_promoter(_config: WatchdogConfig) -> PostgresPromoter:
    raise AssertionError("nothing may be promoted here")


async def test_engine_stops_when_cancelled_as_a_report_arrives(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    executor = FailoverExecutor(NoLease(), holder="watchdog-east")
    engine = Engine(
        config(),
        config_path=None,
        probes=lambda _config: [],
        promoters=no_promoter,
        executor=executor,
        runbook=engine_runbook(executor, no_promoter, config, tmp_path, loop.time),
    )
    running = asyncio.create_task(engine.run())
    await asyncio.sleep(0.01)  # the engine now waits on its queue
    cycles = engine.cycles

    engine.leadership_changed(None, "watchdog-west (epoch 1)")
    running.cancel()

    try:
        # asyncio.wait, not a timeout around ``await``: cancelling our wait would cancel
        # the engine a second time and hide the lost first cancellation.
        done, _ = await asyncio.wait({running}, timeout=1.0)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert running in done, "the engine ignored its cancellation and kept cycling"
    assert running.cancelled()
    assert engine.cycles == cycles
