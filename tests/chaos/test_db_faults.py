"""The database faults on real servers: a kill or a pause acts on the server whoever
started it (here its watchdog's ``pg_ctl start``), and one that finds nothing running says
so in the fault log and stops nothing."""

from __future__ import annotations

import contextlib
import subprocess
from types import SimpleNamespace
from typing import cast

import pytest

from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.chaos.faults import FaultCatalog
from tests.chaos.schedule import PlannedFault
from tests.chaos.world import World
from tests.integration.partition_harness import EAST_DB, WEST_DB
from tests.integration.test_adopted_postmaster import processes_in, restart_as_its_watchdog

pytestmark = pytest.mark.integration


def catalog(pair: PostgresPair) -> FaultCatalog:
    world = SimpleNamespace(servers={WEST_DB: pair.primary, EAST_DB: pair.replica},
                            binding=None, holding=lambda _: contextlib.nullcontext())
    return FaultCatalog(cast(World, world))


def test_a_kill_db_kills_a_server_its_watchdog_restarted(pg_pair: PostgresPair) -> None:
    restart_as_its_watchdog(pg_pair.primary)
    faults = catalog(pg_pair)

    fault = faults.inject(PlannedFault("kill_db", WEST_DB, 0, 5))

    assert (fault.error, fault.down) == ("", (WEST_DB,))
    assert processes_in(pg_pair.primary.datadir) == []


def test_a_kill_db_that_finds_nothing_running_says_so_and_downs_nothing(
    pg_pair: PostgresPair,
) -> None:
    pg_pair.primary.kill()
    faults = catalog(pg_pair)

    record = faults.heal(faults.inject(PlannedFault("kill_db", WEST_DB, 0, 5)))

    assert record.down == ()
    assert record.note == "nothing running to kill: already down"
    assert not pg_pair.primary.running  # the heal starts nothing it did not stop


def test_a_pause_db_freezes_a_server_its_watchdog_restarted_until_healed(
    pg_pair: PostgresPair,
) -> None:
    restart_as_its_watchdog(pg_pair.primary)
    faults = catalog(pg_pair)

    fault = faults.inject(PlannedFault("pause_db", WEST_DB, 0, 5))
    try:
        assert fault.down == (WEST_DB,)
        with pytest.raises(subprocess.TimeoutExpired):
            pg_pair.primary.sql("SELECT 1", timeout=1.5)
    finally:
        record = faults.heal(fault)

    assert (record.error, record.note) == ("", "")
    assert pg_pair.primary.sql("SELECT 1", timeout=10) == "1"


def test_a_pause_db_that_finds_nothing_running_says_so_and_downs_nothing(
    pg_pair: PostgresPair,
) -> None:
    pg_pair.primary.kill()
    faults = catalog(pg_pair)

    record = faults.heal(faults.inject(PlannedFault("pause_db", WEST_DB, 0, 5)))

    assert record.down == ()
    assert record.note == "nothing running to pause: already down"
