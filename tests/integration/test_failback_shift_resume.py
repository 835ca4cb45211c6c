"""The failback's ``shift_traffic`` step resumed after a crash mid-shift rolls a failed
health gate back to the weights read before its *first* attempt's first write (journaled
by that attempt), not to the weights the crashed attempt left. Against moto in server mode
(Route 53) and a real local health endpoint."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.config import WatchdogConfig, load_config
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.ports import JournalEntry, Lease, RunJournal, StepStatus
from agentaskit_dr.runtime.failback_steps import (
    FAILBACK_PLAN,
    SHIFT_TRAFFIC,
    StepContext,
    StepFailed,
    shift_traffic,
)
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    aws_credentials_fixture,  # noqa: F401
    create_zone,
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
    upsert,
)
from tests.integration.test_traffic_shift import (
    EAST,
    RECORD,
    TARGETS,
    WEST,
    ZONE,
    HealthEndpoint,
)

pytestmark = pytest.mark.integration

RUN_ID = "failback-20261129T120000Z-e2"


class FailsAfter(HealthEndpoint):
    """Healthy for the first ``good`` requests (the preflight), then 503."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    async def _answer(self, request: Any) -> Any:
        self.good -= 1
        if self.good < 0:
            self.status = 503
        return await super()._answer(request)


@pytest.fixture
async def health() -> AsyncIterator[FailsAfter]:
    endpoint = FailsAfter(good=1)
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()


async def weighted_zone(moto: str, weights: dict[str, int]) -> str:
    zone = await create_zone(moto, ZONE)
    for region, weight in weights.items():
        await upsert(moto, zone, RECORD, "CNAME", TARGETS[region], SetIdentifier=region,
                     Weight=weight)
    return zone


async def current_weights(moto: str, zone: str) -> dict[str, int]:
    from tests.integration.aws import record_sets

    return {r["SetIdentifier"]: r["Weight"]
            for r in await record_sets(moto, zone, RECORD) if r["Type"] == "CNAME"}


def config_for(tmp_path: Path, moto: str, zone: str, health: str) -> WatchdogConfig:
    nowhere = f"postgresql://dr@127.0.0.1:{free_port()}/postgres"
    data = {
        "region": EAST, "primary_region": WEST,
        "regions": {name: {"health_urls": [health], "database": {"dsn": nowhere},
                           "dns_target": TARGETS[name]} for name in (WEST, EAST)},
        "probe": {"interval": "0.3s", "timeout": "0.25s"},
        "lock": {"url": f"redis://127.0.0.1:{free_port()}/0"},
        "dns": {"route53": {"hosted_zone_id": zone, "record_name": RECORD,
                            "style": "weighted", "endpoint_url": moto}},
        "failback": {"soak": "1s"},
        "evidence_dir": str(tmp_path / "evidence"),
        "api": {"listen": None},
    }
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def context(config: WatchdogConfig, entries: tuple[JournalEntry, ...],
            marks: list[dict[str, Any]]) -> StepContext:
    run = RunJournal(run_id=RUN_ID, kind="failback", plan=FAILBACK_PLAN, created_at=0.0,
                     created_epoch=2, reason="test", entries=entries)

    async def yes() -> bool:
        return True

    async def mark(_: str, data: dict[str, Any]) -> None:
        marks.append(data)

    async def nothing(*_: Any) -> Any:
        return 0

    return StepContext(
        config=config, home=WEST, away=EAST, run=run,
        lease=lambda: Lease(epoch=3, token="t", holder="test", safe_until=math.inf),
        still_leader=yes, record_primary=nothing, acknowledge=nothing, mark=mark,
        sync_timeout=10.0, integrity_wait=10.0)


async def test_a_resumed_shift_rolls_back_to_the_weights_before_the_first_attempt(
    tmp_path: Path, moto_server: str, health: FailsAfter,
) -> None:
    # The first attempt read east 100 %, journaled it, set west to 10 % and was killed.
    zone = await weighted_zone(moto_server, {WEST: 10, EAST: 90})
    config = config_for(tmp_path, moto_server, zone, health.url)
    journaled = (
        JournalEntry(step=SHIFT_TRAFFIC, status=StepStatus.STARTED, epoch=2, at=1.0),
        JournalEntry(step=SHIFT_TRAFFIC, status=StepStatus.STARTED, epoch=2, at=1.1,
                     data={"rollback_to": {"serving": EAST, "percent": 100}}),
        JournalEntry(step=SHIFT_TRAFFIC, status=StepStatus.STARTED, epoch=3, at=9.0),
    )
    marks: list[dict[str, Any]] = []

    with pytest.raises(StepFailed) as failed:
        await shift_traffic(context(config, journaled, marks))

    assert "rolled_back" in str(failed.value).replace(" ", "_")
    assert await current_weights(moto_server, zone) == {WEST: 0, EAST: 100}
    assert marks == []  # the first attempt's split stays the one to roll back to


async def test_the_first_attempt_journals_the_weights_before_its_first_write(
    tmp_path: Path, moto_server: str, health: FailsAfter,
) -> None:
    zone = await weighted_zone(moto_server, {WEST: 0, EAST: 100})
    config = config_for(tmp_path, moto_server, zone, health.url)
    marks: list[dict[str, Any]] = []

    with pytest.raises(StepFailed):
        await shift_traffic(context(config, (), marks))

    assert marks == [{"rollback_to": {"serving": EAST, "percent": 100}}]
    assert await current_weights(moto_server, zone) == {WEST: 0, EAST: 100}
