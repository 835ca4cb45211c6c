"""Where the service record sends traffic, read from its record sets (the shift's rollback
target): pure, no Route 53."""

from __future__ import annotations

import pytest

from agentaskit_dr.actuators._route53_records import Records, split_of

WEST, EAST = "us-west-2", "us-east-1"
TARGETS = {WEST: "west-lb", EAST: "east-lb"}


def weighted(west: int, east: int) -> Records:
    return {WEST: {"value": "west-lb", "ttl": 60, "weight": west},
            EAST: {"value": "east-lb", "ttl": 60, "weight": east}}


@pytest.mark.parametrize(
    ("records", "style", "split"),
    [
        (weighted(0, 100), "weighted", (EAST, 100)),
        (weighted(10, 90), "weighted", (EAST, 90)),
        (weighted(100, 0), "weighted", (WEST, 100)),
        (weighted(7, 1), "weighted", None),  # set by hand: not a split of 100
        ({WEST: weighted(0, 100)[WEST]}, "weighted", None),  # one region's record missing
        ({WEST: {"value": "other-lb", "ttl": 60, "weight": 0},
          EAST: weighted(0, 100)[EAST]}, "weighted", None),  # a value of neither region
        ({"": {"value": "east-lb", "ttl": 60}}, "simple", (EAST, 100)),
        ({"": {"value": "elsewhere", "ttl": 60}}, "simple", None),
        ({}, "simple", None),
        ({"primary": {"value": "west-lb", "ttl": 60, "failover": "PRIMARY"},
          "secondary": {"value": "east-lb", "ttl": 60, "failover": "SECONDARY"}},
         "failover", (WEST, 100)),
    ],
)
def test_split_of_the_records(records: Records, style: str,
                              split: tuple[str, int] | None) -> None:
    assert split_of(records, TARGETS, style) == split
