"""Isolate, self-fence, heal, lifted: the daemons end to end (chaos seed 1011's shape).

East's watchdog dies (its standby keeps streaming), so west's watchdog takes the lock;
then west's watchdog is cut from the witness: it hears nobody, and after ``fence_after``
fences its own primary (nobody promoted: the witness still reaches west-db). When the
cut heals, west hears the witness again, and the lift conditions (lock, quorum view,
nothing recorded elsewhere, east-db a standby) hold for ``thresholds.recovery``: west
lifts its fence and the primary takes writes again.
"""

from __future__ import annotations

import time

import pytest

from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration import netcut, partition_lab
from tests.integration.daemon_harness import event_time, is_event
from tests.integration.partition_harness import EAST, WEST, WITNESS, PartitionLab
from tests.integration.partition_lab import T, takes_writes
from tests.integration.pg_state import in_recovery

pytestmark = pytest.mark.integration

network = netcut.network
lab = partition_lab.lab

SLACK = 4.0


def test_isolated_primary_side_self_fences_and_lifts_once_healed(
    lab: PartitionLab, pg_pair: PostgresPair
) -> None:
    killed_at = time.time()
    lab.kill(EAST)
    lab.wait_for(lambda e: e.get("event") in ("lock_acquired", "verdict")
                 and e.get("epoch") is not None and event_time(e) >= killed_at,
                 3 * T.lock_ttl + SLACK, what="west holding the lock", nodes=[WEST])

    cut_at = time.time()
    links = [(WEST, WITNESS), (WITNESS, WEST)]
    lab.cut(links)
    fenced = lab.wait_for(is_event("self_fenced", since=cut_at),
                          T.stale_after + T.fence_after + SLACK,
                          what="self_fenced of the isolated west watchdog", nodes=[WEST])
    assert fenced["fenced"] is True, fenced
    assert not takes_writes_safely(pg_pair)

    healed_at = time.time()
    for observer, target in links:
        lab.network.heal(observer, target)
    lifted = lab.wait_for(is_event("self_fence_lifted", since=healed_at),
                          T.stale_after + T.db_unreachable + 4 * T.interval + SLACK,
                          what="self_fence_lifted by west", nodes=[WEST])

    # Debounced over thresholds.recovery (db_unreachable here), never earlier.
    assert event_time(lifted) - healed_at >= T.db_unreachable, lifted
    conditions = lifted["conditions"]
    assert conditions["other_is_standby"] == "standby", conditions
    assert conditions["recorded_primary"] == "us-west-2", conditions
    assert lab.events(is_event("promotion_done")) == []
    assert in_recovery(pg_pair.replica)
    assert takes_writes(pg_pair.primary)


def takes_writes_safely(pair: PostgresPair) -> bool:
    try:
        return takes_writes(pair.primary)
    except RuntimeError:  # psql reports the read-only refusal as a failure
        return False
