"""Runbook step 3, "update DNS to the secondary", and failback's traffic shift, against moto
in server mode over real HTTP. A counting proxy in front of moto proves how many record
changes landed and plays Route 53's failures: 503, throttling, a rival writer."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.actuators.dns_route53 import Route53Switch
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.ports import ActuationFailed, StaleEpoch
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
RECORD = "api.example.com"
MARKER = "_agentaskit-dr.api.example.com"
WEST, EAST = "us-west-2", "us-east-1"
TARGETS = {WEST: "west-lb.example.net", EAST: "east-lb.example.net"}

SwitchFactory = Callable[..., Route53Switch]


@pytest.fixture
async def zone_id(route53_counter: Route53Counter) -> str:
    """A hosted zone with the record serving the primary region (us-west-2)."""
    zone = await create_zone(route53_counter.upstream, ZONE)
    await upsert(route53_counter.upstream, zone, RECORD, "CNAME", TARGETS[WEST])
    return zone


@pytest.fixture
async def make_switch(
    route53_counter: Route53Counter, zone_id: str
) -> AsyncIterator[SwitchFactory]:
    """Build Route53Switch objects talking through the counter; all closed afterwards."""
    made: list[Route53Switch] = []

    def make(**overrides: Any) -> Route53Switch:
        settings: dict[str, Any] = {
            "hosted_zone_id": zone_id, "record_name": RECORD, "record_type": "CNAME",
            "ttl": 60, "style": "simple", "targets": TARGETS, "serving_region": EAST,
            "endpoint_url": route53_counter.url, "timeout": 2.0, "attempts": 3,
            "backoff": 0.01, "insync_poll": 0.05,
        } | overrides
        switch = Route53Switch(**settings)
        made.append(switch)
        return switch

    yield make
    for switch in made:
        await switch.close()


async def sets_by_id(endpoint: str, zone: str) -> dict[str, dict[str, Any]]:
    return {r.get("SetIdentifier", ""): r for r in await record_sets(endpoint, zone, RECORD)
            if r["Type"] == "CNAME"}


async def marker_text(endpoint: str, zone: str) -> str:
    txt = await record_sets(endpoint, zone, MARKER)
    assert len(txt) == 1, txt
    return " ".join(r["Value"] for r in txt[0]["ResourceRecords"])


# ---------------------------------------------------------------- the three styles


async def test_simple_switch_points_record_at_secondary_and_records_epoch(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    switch = make_switch()

    outcome = await switch.apply(epoch=7, failover_id="fo-1")

    assert outcome.changed
    assert outcome.detail == f"{RECORD} CNAME: west-lb.example.net -> east-lb.example.net"
    assert outcome.data["old"] == {"": {"value": "west-lb.example.net", "ttl": 60}}
    assert outcome.data["new"] == {"": {"value": "east-lb.example.net", "ttl": 60}}
    assert outcome.data["epoch"] == 7
    assert outcome.data["change_id"]
    assert outcome.data["insync"] is True
    sets = await sets_by_id(route53_counter.upstream, zone_id)
    assert [r["Value"] for r in sets[""]["ResourceRecords"]] == ["east-lb.example.net"]
    assert re.fullmatch(
        r'"epoch=7 run=fo-1 serving=us-east-1 weight=100 at=\S+Z"',
        await marker_text(route53_counter.upstream, zone_id),
    )
    assert route53_counter.changes == 1
    current = await switch.current()
    assert (current["epoch"], current["run"], current["serving"]) == (7, "fo-1", EAST)


async def test_weighted_failback_shifts_10_50_100_percent_to_primary(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    endpoint = route53_counter.upstream
    weighted_record = "app.example.com"
    await make_switch(record_name=weighted_record, style="weighted", weight=100).apply(
        epoch=3, failover_id="fo-1"
    )

    for percent in (10, 50, 100):
        switch = make_switch(
            record_name=weighted_record, style="weighted", serving_region=WEST, weight=percent
        )
        outcome = await switch.apply(epoch=4, failover_id="fb-1")
        assert outcome.changed, percent
        sets = {r["SetIdentifier"]: r for r in await record_sets(endpoint, zone_id,
                                                                 weighted_record)
                if r["Type"] == "CNAME"}
        assert {region: r["Weight"] for region, r in sets.items()} == {
            WEST: percent, EAST: 100 - percent}
        assert sets[WEST]["ResourceRecords"] == [{"Value": TARGETS[WEST]}]
        assert sets[EAST]["ResourceRecords"] == [{"Value": TARGETS[EAST]}]
        assert (await switch.current())["weight"] == percent
    assert route53_counter.changes == 4


async def test_failover_style_makes_serving_region_primary(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    record = "db.example.com"
    outcome = await make_switch(record_name=record, style="failover").apply(
        epoch=2, failover_id="fo-2"
    )

    assert outcome.changed
    sets = {r["SetIdentifier"]: r for r in await record_sets(route53_counter.upstream,
                                                             zone_id, record)
            if r["Type"] == "CNAME"}
    assert sets["primary"]["Failover"] == "PRIMARY"
    assert sets["primary"]["ResourceRecords"] == [{"Value": TARGETS[EAST]}]
    assert sets["secondary"]["Failover"] == "SECONDARY"
    assert sets["secondary"]["ResourceRecords"] == [{"Value": TARGETS[WEST]}]


# ---------------------------------------------------------------- idempotency and fencing


async def test_same_epoch_applied_twice_changes_dns_once(
    make_switch: SwitchFactory, route53_counter: Route53Counter
) -> None:
    first = await make_switch().apply(epoch=5, failover_id="fo-1")
    # A successor resuming the journal builds its own switch: state comes from Route 53.
    second = await make_switch().apply(epoch=5, failover_id="fo-1")

    assert first.changed
    assert not second.changed
    assert second.detail == f"{RECORD} CNAME already east-lb.example.net under epoch 5"
    assert route53_counter.changes == 1


async def test_new_epoch_records_itself_even_when_record_already_points_right(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    await make_switch().apply(epoch=5, failover_id="fo-1")

    outcome = await make_switch().apply(epoch=6, failover_id="fo-2")

    assert outcome.changed
    assert "epoch=6 run=fo-2" in await marker_text(route53_counter.upstream, zone_id)
    assert route53_counter.changes == 2


async def test_newer_epoch_in_marker_refuses_without_changing_dns(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    endpoint = route53_counter.upstream
    await upsert(endpoint, zone_id, MARKER, "TXT",
                 '"epoch=9 run=fo-9 serving=us-west-2 weight=100"')
    changes_before = route53_counter.changes

    with capture_logs() as logs, pytest.raises(StaleEpoch) as refused:
        await make_switch().apply(epoch=8, failover_id="fo-8")

    assert "epoch 9" in str(refused.value)
    assert "epoch 8" in str(refused.value)
    assert route53_counter.changes == changes_before
    sets = await sets_by_id(endpoint, zone_id)
    assert sets[""]["ResourceRecords"] == [{"Value": TARGETS[WEST]}]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["dns_switch_refused"]


async def test_lower_epoch_after_a_switch_is_refused(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    await make_switch().apply(epoch=5, failover_id="fo-5")

    with pytest.raises(StaleEpoch, match=r"epoch 5.*our epoch 4"):
        await make_switch(serving_region=WEST).apply(epoch=4, failover_id="fo-4")

    assert route53_counter.changes == 1
    sets = await sets_by_id(route53_counter.upstream, zone_id)
    assert sets[""]["ResourceRecords"] == [{"Value": TARGETS[EAST]}]


async def test_rival_writing_newer_epoch_between_read_and_write_wins(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    """Route 53 rejects a DELETE whose value moved; moto does not check it, so the proxy
    plays Route 53: the rival's write lands, then our batch gets InvalidChangeBatch."""
    endpoint = route53_counter.upstream
    await make_switch().apply(epoch=5, failover_id="fo-5")

    async def rival_switches_to_west() -> None:
        await upsert(endpoint, zone_id, RECORD, "CNAME", TARGETS[WEST])
        await upsert(endpoint, zone_id, MARKER, "TXT",
                     '"epoch=7 run=fo-7 serving=us-west-2 weight=100"')

    route53_counter.fail_next(400, "InvalidChangeBatch", before=rival_switches_to_west)

    with pytest.raises(StaleEpoch, match="epoch 7"):
        await make_switch(serving_region=EAST).apply(epoch=6, failover_id="fo-6")

    sets = await sets_by_id(endpoint, zone_id)
    assert sets[""]["ResourceRecords"] == [{"Value": TARGETS[WEST]}]
    assert route53_counter.changes == 1


async def test_change_whose_answer_was_lost_is_not_applied_twice(
    make_switch: SwitchFactory, route53_counter: Route53Counter
) -> None:
    """The change lands but its answer is lost (503): the retry's marker DELETE no longer
    matches, Route 53 rejects it, and the actuator finds its own epoch in place."""
    route53_counter.fail_next(503, forward=True)

    outcome = await make_switch().apply(epoch=4, failover_id="fo-4")
    again = await make_switch().apply(epoch=4, failover_id="fo-4")

    assert outcome.changed
    assert outcome.data["new"] == {"": {"value": TARGETS[EAST], "ttl": 60}}
    assert not again.changed
    assert route53_counter.changes == 1


async def test_record_that_does_not_read_back_fails_the_step(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    endpoint = route53_counter.upstream

    async def hand_edit_back_to_west() -> None:
        await upsert(endpoint, zone_id, RECORD, "CNAME", TARGETS[WEST])

    route53_counter.after_next_change(hand_edit_back_to_west)

    with pytest.raises(ActuationFailed, match=r"reads back west-lb\.example\.net with marker "
                       r"epoch 2 after the change, expected east-lb\.example\.net"):
        await make_switch().apply(epoch=2, failover_id="fo-2")


async def test_change_not_insync_in_time_is_a_warning_not_a_failure(
    make_switch: SwitchFactory, route53_counter: Route53Counter, zone_id: str
) -> None:
    route53_counter.changes_pending = True

    with capture_logs() as logs:
        outcome = await make_switch(insync_timeout=0.3).apply(epoch=2, failover_id="fo-2")

    assert outcome.changed
    assert outcome.data["insync"] is False
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["dns_change_not_insync"]
    sets = await sets_by_id(route53_counter.upstream, zone_id)
    assert sets[""]["ResourceRecords"] == [{"Value": TARGETS[EAST]}]


# ---------------------------------------------------------------- dry run and status


async def test_describe_reads_the_plan_and_changes_nothing(
    make_switch: SwitchFactory, route53_counter: Route53Counter
) -> None:
    await make_switch(serving_region=WEST).apply(epoch=3, failover_id="fo-3")
    changes_before = route53_counter.changes

    text = await make_switch().describe()

    assert text == (
        f"{RECORD} CNAME: west-lb.example.net -> east-lb.example.net "
        "(marker epoch 3 -> this run's epoch)"
    )
    assert route53_counter.changes == changes_before


# ---------------------------------------------------------------- errors


async def test_unknown_zone_fails_naming_the_zone(make_switch: SwitchFactory) -> None:
    switch = make_switch(hosted_zone_id="ZNOSUCHZONE")

    with pytest.raises(ActuationFailed) as failed:
        await switch.apply(epoch=1, failover_id="fo-1")

    assert "ZNOSUCHZONE" in str(failed.value)
    assert "NoSuchHostedZone" in str(failed.value)
    assert "Traceback" not in str(failed.value)


@pytest.mark.parametrize(("status", "code"), [(503, ""), (400, "Throttling")])
async def test_transient_error_on_change_is_retried_once_and_lands(
    make_switch: SwitchFactory, route53_counter: Route53Counter, status: int, code: str
) -> None:
    route53_counter.fail_next(status, code)

    with capture_logs() as logs:
        outcome = await make_switch().apply(epoch=2, failover_id="fo-2")

    assert outcome.changed
    assert route53_counter.failed == 1
    assert route53_counter.changes == 1
    retries = [e for e in logs if e["event"] == "route53_call_retry"]
    assert [e["operation"] for e in retries] == ["change_resource_record_sets"]


async def test_transient_error_on_read_is_retried(
    make_switch: SwitchFactory, route53_counter: Route53Counter
) -> None:
    route53_counter.fail_next(500, "InternalError", on="read")

    text = await make_switch().describe()

    assert "-> east-lb.example.net" in text
    assert route53_counter.failed == 1


async def test_persistent_throttling_fails_after_bounded_attempts(
    make_switch: SwitchFactory, route53_counter: Route53Counter
) -> None:
    route53_counter.fail_next(400, "Throttling", times=10)

    with pytest.raises(ActuationFailed, match="after 3 attempts: Throttling"):
        await make_switch().apply(epoch=2, failover_id="fo-2")

    assert route53_counter.failed == 3
    assert route53_counter.changes == 0


async def test_unreachable_endpoint_fails_quickly_and_clearly(
    make_switch: SwitchFactory,
) -> None:
    switch = make_switch(endpoint_url=f"http://127.0.0.1:{free_port()}", attempts=2)
    started = time.monotonic()

    with pytest.raises(ActuationFailed, match="after 2 attempts: EndpointConnectionError"):
        await switch.describe()

    assert time.monotonic() - started < 5


async def test_bad_failover_id_is_refused_before_any_call(
    make_switch: SwitchFactory, route53_counter: Route53Counter
) -> None:
    with pytest.raises(ActuationFailed, match="failover_id 'fo 1'"):
        await make_switch().apply(epoch=1, failover_id="fo 1")
    assert route53_counter.changes == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"serving_region": "eu-west-1"}, "serving_region 'eu-west-1' has no entry"),
        ({"weight": 50}, "weight 50 needs style 'weighted'"),
        ({"style": "weighted", "weight": 150}, "weight 150 is not a percentage"),
        ({"style": "failover", "targets": {EAST: "x"}}, "needs exactly two regions"),
        ({"record_type": "A"}, "targets['us-west-2'] 'west-lb.example.net' is not an IP"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(
    overrides: dict[str, Any], message: str
) -> None:
    settings: dict[str, Any] = {
        "hosted_zone_id": "Z1", "record_name": RECORD, "record_type": "CNAME", "ttl": 60,
        "style": "simple", "targets": TARGETS, "serving_region": EAST,
    } | overrides
    with pytest.raises(ValueError, match=re.escape(message)):
        Route53Switch(**settings)
