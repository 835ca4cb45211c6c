"""Failback step 4, ``shift-traffic``: weighted records moved 10 -> 50 -> 100 % back to the
recovered region, against moto in server mode over real HTTP, with the soak's health gate
checking a real local HTTP endpoint."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from agentaskit_dr.actuators.dns_route53 import Route53Switch
from agentaskit_dr.ports import StaleEpoch
from agentaskit_dr.runtime.traffic_shift import (
    RegionHealthGate,
    ShiftRefused,
    Split,
    shift_traffic_gated,
)
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    Route53Counter,
    aws_credentials_fixture,  # noqa: F401
    create_zone,
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
    record_sets,
    route53_counter_fixture,  # noqa: F401
    upsert,
)

pytestmark = pytest.mark.integration

ZONE = "example.com"
RECORD = "app.example.com"
MARKER = "_agentaskit-dr.app.example.com"
WEST, EAST = "us-west-2", "us-east-1"  # WEST recovered: traffic moves back to it
TARGETS = {WEST: "west-lb.example.net", EAST: "east-lb.example.net"}
NS = "{https://route53.amazonaws.com/doc/2013-04-01/}"

SwitchFor = Callable[[str, int], Route53Switch]


class HealthEndpoint:
    """A real HTTP health URL on loopback whose answer the test turns bad."""

    def __init__(self) -> None:
        self.status = 200
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/healthz"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, _request: web.Request) -> web.Response:
        return web.Response(status=self.status, text="ok" if self.status == 200 else "down")


@pytest.fixture
async def health() -> AsyncIterator[HealthEndpoint]:
    endpoint = HealthEndpoint()
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()


@pytest.fixture
async def gate(health: HealthEndpoint) -> AsyncIterator[RegionHealthGate]:
    region_gate = RegionHealthGate(WEST, [health.url], timeout=1.0, healthy_fraction=1.0)
    try:
        yield region_gate
    finally:
        await region_gate.close()


@pytest.fixture
async def zone_id(route53_counter: Route53Counter) -> str:
    """A zone where, after the failover, EAST serves everything: weights EAST 100, WEST 0."""
    zone = await create_zone(route53_counter.upstream, ZONE)
    for region, weight in ((EAST, 100), (WEST, 0)):
        await upsert(route53_counter.upstream, zone, RECORD, "CNAME", TARGETS[region],
                     SetIdentifier=region, Weight=weight)
    return zone


def switches(counter: Route53Counter, zone: str, *, style: str = "weighted") -> SwitchFor:
    def switch_for(serving: str, percent: int) -> Route53Switch:
        return Route53Switch(
            hosted_zone_id=zone, record_name=RECORD, record_type="CNAME", ttl=60,
            style=style,  # type: ignore[arg-type]
            targets=TARGETS, serving_region=serving, weight=percent,
            endpoint_url=counter.url, timeout=2.0, attempts=3, backoff=0.01,
            insync_poll=0.05)

    return switch_for


async def weights(counter: Route53Counter, zone: str) -> dict[str, int]:
    return {r["SetIdentifier"]: r["Weight"]
            for r in await record_sets(counter.upstream, zone, RECORD) if r["Type"] == "CNAME"}


def batch_contents(body: str) -> tuple[dict[str, int], list[str]]:
    """(weight by set identifier of the service record, actions on the marker) of a batch."""
    rrsets = ET.fromstring(body).iter(f"{NS}Change")
    found: dict[str, int] = {}
    marker: list[str] = []
    for change in rrsets:
        rrset = change.find(f"{NS}ResourceRecordSet")
        assert rrset is not None
        name = rrset.findtext(f"{NS}Name")
        if name == MARKER:
            marker.append(str(change.findtext(f"{NS}Action")))
        elif name == RECORD:
            found[str(rrset.findtext(f"{NS}SetIdentifier"))] = int(
                str(rrset.findtext(f"{NS}Weight")))
    return found, marker


async def test_each_step_moves_both_weights_and_the_marker_in_one_batch(
    route53_counter: Route53Counter, zone_id: str
) -> None:
    switch_for = switches(route53_counter, zone_id)

    for percent in (10, 50, 100):
        switch = switch_for(WEST, percent)
        try:
            outcome = await switch.apply(epoch=4, failover_id="fb-1")
        finally:
            await switch.close()
        assert outcome.changed
        assert outcome.data["insync"] is True
        expected = {WEST: percent, EAST: 100 - percent}
        assert await weights(route53_counter, zone_id) == expected
        batch, marker = batch_contents(route53_counter.batches[-1])
        assert batch == expected
        # The first batch creates the marker; later ones replace it (compare-and-set).
        assert marker == (["CREATE"] if percent == 10 else ["DELETE", "CREATE"])
    assert route53_counter.changes == 3


async def test_gated_shift_goes_10_50_100_while_the_target_stays_healthy(
    route53_counter: Route53Counter, zone_id: str, gate: RegionHealthGate
) -> None:
    run = await shift_traffic_gated(
        switches(route53_counter, zone_id), gate, target=WEST, other=EAST, weighted=True,
        steps=(10, 50, 100), soak=0.2, interval=0.05, epoch=4, run_id="fb-1")

    assert run.outcome == "done", run.reason
    assert run.before == Split(EAST, 100)
    assert [(s.percent, s.weights, s.outcome) for s in run.steps] == [
        (10, {WEST: 10, EAST: 90}, "held"), (50, {WEST: 50, EAST: 50}, "held"),
        (100, {WEST: 100, EAST: 0}, "held")]
    assert all(s.gate and all(sample.healthy for sample in s.gate) for s in run.steps)
    assert await weights(route53_counter, zone_id) == {WEST: 100, EAST: 0}
    assert route53_counter.changes == 3
    json.dumps(run.to_json())


async def test_health_failing_during_the_soak_rolls_the_weights_back_and_stops(
    route53_counter: Route53Counter, zone_id: str, gate: RegionHealthGate,
    health: HealthEndpoint,
) -> None:
    async def nothing() -> None:
        return None

    async def west_goes_down() -> None:
        health.status = 503

    # The 10 % step lands and holds; the target fails once it carries 50 %.
    route53_counter.after_next_change(nothing)
    route53_counter.after_next_change(west_goes_down)

    run = await shift_traffic_gated(
        switches(route53_counter, zone_id), gate, target=WEST, other=EAST, weighted=True,
        steps=(10, 50, 100), soak=0.2, interval=0.05, epoch=4, run_id="fb-1")

    assert run.outcome == "rolled back"
    assert run.reason is not None
    assert "health gate failed" in run.reason
    assert "50% to us-west-2" in run.reason
    assert "0/1 health URLs of us-west-2 answered 2xx" in run.reason
    assert [(s.percent, s.outcome) for s in run.steps] == [(10, "held"), (50, "gate failed")]
    assert not run.steps[1].gate[-1].healthy
    assert await weights(route53_counter, zone_id) == {EAST: 100, WEST: 0}
    assert run.rollback is not None
    assert run.rollback["weights"] == {EAST: 100, WEST: 0}
    assert batch_contents(route53_counter.batches[-1])[0] == {EAST: 100, WEST: 0}
    assert route53_counter.changes == 3  # 10 %, 50 %, the rollback; never 100 %
    record = json.loads(json.dumps(run.to_json()))
    assert record["steps"][1]["gate"][-1]["healthy"] is False
    assert record["before"]["weights"] == {EAST: 100, WEST: 0}


async def test_an_unhealthy_target_stops_the_shift_before_any_change(
    route53_counter: Route53Counter, zone_id: str, gate: RegionHealthGate,
    health: HealthEndpoint,
) -> None:
    health.status = 500

    run = await shift_traffic_gated(
        switches(route53_counter, zone_id), gate, target=WEST, other=EAST, weighted=True,
        steps=(10, 50, 100), soak=0.2, interval=0.05, epoch=4, run_id="fb-1")

    assert run.outcome == "stopped"
    assert run.reason is not None
    assert "nothing changed" in run.reason
    assert run.steps == []
    assert route53_counter.changes == 0


async def test_a_simple_record_is_switched_at_100_only_and_the_run_says_so(
    route53_counter: Route53Counter, gate: RegionHealthGate
) -> None:
    zone = await create_zone(route53_counter.upstream, ZONE)
    await upsert(route53_counter.upstream, zone, RECORD, "CNAME", TARGETS[EAST])

    run = await shift_traffic_gated(
        switches(route53_counter, zone, style="simple"), gate, target=WEST, other=EAST,
        weighted=False, steps=(10, 50, 100), soak=0.1, interval=0.05, epoch=4,
        run_id="fb-1")

    assert run.outcome == "done", run.reason
    assert [s.percent for s in run.steps] == [100]
    assert run.notes == ["the record is not weighted: switched at 100 only, steps 10%, 50% "
                         "skipped"]
    [cname] = [r for r in await record_sets(route53_counter.upstream, zone, RECORD)
               if r["Type"] == "CNAME"]
    assert cname["ResourceRecords"] == [{"Value": TARGETS[WEST]}]


async def test_records_that_split_traffic_no_known_way_refuse_the_shift(
    route53_counter: Route53Counter, zone_id: str, gate: RegionHealthGate
) -> None:
    # Weights set by hand that do not add up to 100: the rollback would not know the way.
    await upsert(route53_counter.upstream, zone_id, RECORD, "CNAME", TARGETS[WEST],
                 SetIdentifier=WEST, Weight=7)

    with pytest.raises(ShiftRefused, match=r"cannot tell how app\.example\.com \(weighted\) "
                       r"splits traffic now: .*\"weight\": 7.*fix the records by hand"):
        await shift_traffic_gated(
            switches(route53_counter, zone_id), gate, target=WEST, other=EAST,
            weighted=True, steps=(10, 50, 100), soak=0.1, interval=0.05, epoch=4,
            run_id="fb-1")
    assert route53_counter.changes == 0



@pytest.mark.parametrize(("refused", "outcome", "left"), [
    (1, "rolled back", {EAST: 100, WEST: 0}),  # the 50 % write only
    (2, "rollback failed", {WEST: 10, EAST: 90}),  # the rollback's write too
])
async def test_a_failed_write_rolls_back_to_the_split_before_the_run(
    route53_counter: Route53Counter, zone_id: str, gate: RegionHealthGate, refused: int,
    outcome: str, left: dict[str, int],
) -> None:
    async def refuse_the_next_writes() -> None:
        route53_counter.fail_next(403, "AccessDenied", times=refused)

    route53_counter.after_next_change(refuse_the_next_writes)  # once 10 % has landed

    run = await shift_traffic_gated(
        switches(route53_counter, zone_id), gate, target=WEST, other=EAST, weighted=True,
        steps=(10, 50, 100), soak=0.1, interval=0.05, epoch=4, run_id="fb-1")

    assert run.outcome == outcome
    assert run.reason is not None
    assert run.reason.startswith("setting 50% to us-west-2 failed: ")
    assert "AccessDenied" in run.reason
    assert [(s.percent, s.outcome) for s in run.steps] == [(10, "held"), (50, "write failed")]
    assert await weights(route53_counter, zone_id) == left


async def test_a_lost_lease_stops_the_shift_without_writing_more(
    route53_counter: Route53Counter, zone_id: str, gate: RegionHealthGate
) -> None:
    answers = iter([True, False])

    async def still_leader() -> bool:
        return next(answers)

    run = await shift_traffic_gated(
        switches(route53_counter, zone_id), gate, target=WEST, other=EAST, weighted=True,
        steps=(10, 50, 100), soak=0.1, interval=0.05, epoch=4, run_id="fb-1",
        still_leader=still_leader)

    assert run.outcome == "stopped"
    assert run.reason is not None
    assert "lease was lost before setting 50%" in run.reason
    assert [(s.percent, s.outcome) for s in run.steps] == [(10, "held"), (50, "lease lost")]
    assert await weights(route53_counter, zone_id) == {WEST: 10, EAST: 90}
    assert route53_counter.changes == 1


async def test_a_newer_epoch_in_the_marker_refuses_and_rolls_nothing_back(
    route53_counter: Route53Counter, zone_id: str, gate: RegionHealthGate
) -> None:
    await upsert(route53_counter.upstream, zone_id, MARKER, "TXT",
                 '"epoch=9 run=fb-9 serving=us-east-1 weight=100"')

    with pytest.raises(StaleEpoch, match="epoch 9"):
        await shift_traffic_gated(
            switches(route53_counter, zone_id), gate, target=WEST, other=EAST,
            weighted=True, steps=(10, 50, 100), soak=0.1, interval=0.05, epoch=4,
            run_id="fb-1")
    assert route53_counter.changes == 0
    assert await weights(route53_counter, zone_id) == {EAST: 100, WEST: 0}
