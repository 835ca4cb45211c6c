"""What the start gate reads in a peer's report, and the report's optional failover fields."""

from __future__ import annotations

import pytest

from agentaskit_dr.primary_sources import judge_report
from agentaskit_dr.runtime.peers import parse_report
from tests.unit.test_peers import EAST, WEST, encode, report


def test_an_older_report_without_failover_fields_parses_and_says_nothing_of_one() -> None:
    parsed = parse_report(encode(report()))
    assert parsed.failover_epoch is None
    assert parsed.failover_in_progress is None
    assert judge_report(WEST, "peer1", parsed).elsewhere is None


def test_a_peer_watching_the_primary_elsewhere_refuses_with_its_epoch() -> None:
    parsed = parse_report(encode(report(primary_region=EAST, failover_epoch=7,
                                        role="witness", node="w", region="site-3")))
    said = judge_report(WEST, "witness", parsed)
    assert said.elsewhere == "witness (w, witness in site-3) reports the primary in " \
                            f"{EAST} since epoch 7"
    assert said.silent is None


def test_a_peer_running_a_failover_now_refuses() -> None:
    parsed = parse_report(encode(report(region=EAST, failover_in_progress=True)))
    said = judge_report(WEST, "peer1", parsed)
    assert said.elsewhere is not None
    assert "running a failover away from us-west-2" in said.elsewhere


def test_a_peer_watching_this_region_after_a_failback_confirms() -> None:
    parsed = parse_report(encode(report(failover_epoch=9, failover_in_progress=False)))
    said = judge_report(WEST, "peer1", parsed)
    assert said == type(said)()


@pytest.mark.parametrize("value", [-1, "3", 1.5])
def test_a_bad_failover_epoch_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(ValueError, match="failover_epoch"):
        parse_report(encode(report(failover_epoch=value)))
