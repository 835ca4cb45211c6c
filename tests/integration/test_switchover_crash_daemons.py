"""A watchdog SIGKILLed in the middle of a switchover it runs for ``POST /v1/switchover``
(issue 9): the run stays active in the journal, the other watchdog holds (it does not
take the stopped primary for a failure) and, as the next lock holder, or the restarted
watchdog, finishes it: the step done once, one promotion, no acknowledged write lost.

The crash is injected by the test-only wrapper ``tests.integration.crashing_switchover``
right after the switchover's demote (primary stopped, standby not promoted) or its
promotion (nothing recorded yet, the old primary not rejoined).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from agentaskit_dr.leadership.journal import RedisJournal
from agentaskit_dr.ports import RunJournal, StepStatus
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration import api_fleet
from tests.integration.api_fleet import (
    api_url,
    background_writers,
    call,
    fleet_overrides,
    token_file,
    wait_written_on,
)
from tests.integration.daemon_harness import (
    REGIONS,
    Watchdog,
    WatchdogFleet,
    is_event,
    wait_until,
)
from tests.integration.pg_state import in_recovery, marker_epoch
from tests.integration.runbook_harness import restart, wait_exit
from tests.integration.test_failback_run import prepare
from tests.integration.test_switchover import missing_on, writer_runs

pytestmark = pytest.mark.integration

fleet = api_fleet.fleet

WEST, EAST = REGIONS
START_TIMEOUT = 20.0
#: Lock TTL (3 s in the drill config) + a resume: catch-up, promotion, rejoin.
RESUME_TIMEOUT = 60.0


def watches(dog: Watchdog) -> tuple[str, str] | None:
    """The primary region ``dog`` watches and its phase, from its ``/v1/status``; None
    while its API does not answer yet (a watchdog just restarted)."""
    try:
        status = call(f"{api_url(dog)}/v1/status", token=None)[1]
    except OSError:  # urllib's URLError included: refused, not listening yet
        return None
    return status["primary_region"], status["phase"]


def stored_run(redis_url: str, run_id: str) -> RunJournal:
    async def read() -> RunJournal:
        journal = RedisJournal(redis_url)
        try:
            run = await journal.get(run_id)
        finally:
            await journal.close()
        assert run is not None, run_id
        return run

    return asyncio.run(read())


@pytest.mark.parametrize("stage", ["demote", "promote"])
def test_a_watchdog_killed_mid_switchover_leaves_a_run_that_finishes_once(
    stage: str, fleet: WatchdogFleet, pg_pair: PostgresPair, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    west, east = pg_pair.primary, pg_pair.replica
    prepare(pg_pair)
    token = token_file(tmp_path)
    # No peers: with two watchdogs and no witness, the one beside the new primary would
    # self-fence it while its crashed peer restarts (invariant 5, not what this tests).
    overrides = fleet_overrides(pg_pair, token, peers=False)
    # Both may crash once in the switchover: whichever holds the lock runs it.
    entry = ("-m", "tests.integration.crashing_switchover", stage, str(tmp_path / "crashed"))
    for region in REGIONS:
        fleet.start(region, overrides=overrides[region], entry=entry)
    first = fleet.wait_ready(START_TIMEOUT)

    with background_writers(pg_pair) as log:
        wait_written_on(log, west)  # a write before the switchover: writer_runs below
        code, started = call(f"{api_url(first)}/v1/switchover", {"to": EAST})
        assert code == 202, started
        run_id = started["run_id"]
        assert wait_exit(fleet, first, 30, what=f"the crash after {stage}") == -signal.SIGKILL
        fleet.stop(first)  # dead on purpose: the waits leave it out
        (crash,) = fleet.events(is_event("crash_injected"), dogs=[first])
        assert crash["stage"] == stage
        crashed = stored_run(redis_server.url, run_id)
        assert crashed.finished is None  # active: the next lock holder resumes it
        restart(fleet, first)  # one of fleet.live() from now on
        done = fleet.wait_for(is_event("switchover_run_done", run_id=run_id), RESUME_TIMEOUT,
                              what="the resumed switchover run done")
        # Every live watchdog follows the run's end to east: wait on their current state,
        # not on a "watching" verdict line since the run's end (the restarted one logs one
        # for a new lock holder while it still watches west; the runner may adopt east a
        # moment after its run ends).
        wait_until(lambda: all(watches(dog) == (EAST, "watching") for dog in fleet.live()),
                   20, what="every live watchdog watching us-east-1", hint=fleet.describe())
        wait_written_on(log, east)  # writes land on east
    assert asyncio.run(missing_on(east, log)) == set()
    assert writer_runs(east)[-2:] == [west.port, east.port]  # one switch, no way back

    run = stored_run(redis_server.url, run_id)
    statuses = Counter(e.status for e in run.entries)
    assert run.finished == "done"
    # Started by the crashed watchdog and again by each resume (a resume that met a
    # standby slow to answer is journaled failed and retried); done once.
    assert statuses[StepStatus.DONE] == 1, run.entries
    assert statuses[StepStatus.STARTED] == 2 + statuses[StepStatus.FAILED], run.entries
    finishing = next(e.epoch for e in run.entries if e.status is StepStatus.DONE)
    assert finishing > run.created_epoch
    # One pg_promote for the whole run; the marker carries the epoch that finished it.
    assert len(fleet.events(is_event("pg_promote_done"))) == 1
    assert marker_epoch(east) == finishing
    assert not in_recovery(east)
    assert in_recovery(west)
    # Nobody took the stopped primary for a failure while the run waited for its resume.
    assert fleet.events(is_event("failover_decided")) == []
    assert done["watchdog"] in {d.region for d in fleet.live()}
    assert fleet.events(is_event("planned_run_resuming", run_id=run_id))
    # Every live watchdog watches east as the primary, armed.
    for dog in fleet.live():
        status = call(f"{api_url(dog)}/v1/status", token=None)[1]
        assert (status["primary_region"], status["phase"]) == (EAST, "watching"), status
