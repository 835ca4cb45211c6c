"""A failover learnt from the peers' reports while the cluster record cannot be read
(chaos seed 1000): which report counts, and the core adopting it."""

from __future__ import annotations

from typing import Any

from agentaskit_dr.core import Phase, RecordedPrimary
from agentaskit_dr.runtime.peer_failover import PeerFailover, failover_reported
from agentaskit_dr.runtime.peers import WireReport, parse_report
from tests.unit.test_machine import run
from tests.unit.test_peers import EAST, WEST, encode, report

REGIONS = (WEST, EAST)


def reports(**by_label: dict[str, Any]) -> dict[str, WireReport]:
    return {label: parse_report(encode(report(**changes))) for label, changes in by_label.items()}


def test_a_witness_watching_the_other_region_under_a_newer_epoch_is_a_failover() -> None:
    heard = reports(witness={"node": "w", "role": "witness", "primary_region": EAST,
                             "failover_epoch": 5},
                    peer1={"node": "east-dog", "region": EAST})

    found = failover_reported(heard, watching=WEST, regions=REGIONS, known=None)

    assert found == PeerFailover("witness", "w", EAST, 5)
    assert failover_reported(heard, watching=WEST, regions=REGIONS, known=4) == found


def test_no_newer_epoch_no_region_change_or_an_older_report_is_nothing() -> None:
    assert failover_reported(reports(witness={"primary_region": EAST, "failover_epoch": 5}),
                             watching=WEST, regions=REGIONS, known=5) is None
    # A failback to this region, or a report without the field (an older daemon).
    assert failover_reported(reports(witness={"failover_epoch": 9}, peer1={}),
                             watching=WEST, regions=REGIONS, known=None) is None
    assert failover_reported(reports(peer1={"primary_region": EAST}),
                             watching=WEST, regions=REGIONS, known=None) is None
    # A region this daemon does not know.
    assert failover_reported(reports(peer1={"primary_region": "eu-1", "failover_epoch": 3}),
                             watching=WEST, regions=REGIONS, known=None) is None


def test_the_newest_of_two_reports_wins() -> None:
    heard = reports(witness={"node": "w", "primary_region": EAST, "failover_epoch": 3},
                    peer1={"node": "e", "primary_region": EAST, "failover_epoch": 6})
    found = failover_reported(heard, watching=WEST, regions=REGIONS, known=None)
    assert found is not None
    assert found.epoch == 6
    assert found.label == "peer1"


def test_the_core_adopts_a_peers_report_saying_who_said_so() -> None:
    event = RecordedPrimary(EAST, 5, "epoch-5", acknowledged=False,
                            source="witness (w)'s report")

    state, commands = run([(10.0, event)])

    assert commands == []
    assert state.phase is Phase.FAILED_OVER
    assert state.failover is not None
    assert state.failover.epoch == 5
    assert state.verdict.startswith(f"following witness (w)'s report: {EAST} is the primary")
