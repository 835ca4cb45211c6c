"""A watchdog killed in the middle of the failover runbook resumes it after a restart.

For each step of the plan, the acting watchdog (the only one: east, so it is always the
actor) SIGKILLs itself right after journaling that step done (fault injection by the test-only
wrapper ``tests.integration.crashing_watchdog``). Restarted without it, same config and
node name, it takes the lock under a new epoch once the dead one's lease expires and
finishes the same run. Nothing the world saw may happen twice: one DNS change, one scale
write per deployment, each webhook event once, one promotion (safety invariant 6).

Under load a check before the promotion may fail (the standby's, bounded by the 0.24 s
probe timeout; the leadership check, when the lease lapsed locally before its renewal):
the runbook refuses that attempt, closes its run ``failed`` (nothing irreversible was done)
and the core retries with a new run. Such refused attempts may precede the crashed run in
the journal; they are never open beside it, and the restart opens no run of its own.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.actuators.kube_scale import ANNOTATION_EPOCH, ANNOTATION_RUN
from agentaskit_dr.ports import StepStatus
from agentaskit_dr.runtime.runbook import FAILOVER_PLAN, SCALE_UP, UPDATE_DNS
from agentaskit_dr.runtime.runbook_plan import (
    CHECK_PRIMARY,
    NOTIFY_STARTED,
    OPEN_INCIDENT,
    VERIFY_STANDBY,
)
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.aws import (  # the *_fixture names register the fixtures here
    aws_credentials_fixture,  # noqa: F401
    moto_process_fixture,  # noqa: F401
    moto_server_fixture,  # noqa: F401
)
from tests.integration.daemon_harness import WatchdogFleet, is_event, merged
from tests.integration.runbook_harness import (
    DEPLOYMENTS,
    DNS_TARGETS,
    EAST,
    EXPECTED_NOTIFICATIONS,
    PAGERDUTY,
    RunbookWorld,
    describe_runs,
    done_counts,
    one_run_and_refusals,
    restart,
    runbook_world_fixture,  # noqa: F401
    start_with_crash,
    wait_exit,
)

pytestmark = pytest.mark.integration

#: Scaled down further than the fleet's default, so ten cases fit in about two minutes.
THRESHOLD, INTERVAL, LOCK_TTL = 1.5, 0.3, 2.0
#: Bound on a run's steps on local parts (the scale step polls readiness every 2 s).
RUN_TIMEOUT = 15.0
#: Bound on a watchdog's start: Python imports, config, first lock round and probes.
START_TIMEOUT = 20.0


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs", threshold=THRESHOLD,
                       interval=INTERVAL) as started:
        yield started


@pytest.mark.parametrize("step", FAILOVER_PLAN)
def test_watchdog_killed_after_a_step_resumes_the_run_and_repeats_nothing(
    step: str, fleet: WatchdogFleet, pg_pair: PostgresPair, redis_server: RedisServer,
    runbook_world: RunbookWorld,
) -> None:
    overrides = merged(runbook_world.overrides(), {"lock": {"ttl": f"{LOCK_TTL}s"}})
    first = start_with_crash(fleet, EAST, step, overrides)
    fleet.wait_ready(START_TIMEOUT)

    pg_pair.primary.kill()
    code = wait_exit(fleet, first, START_TIMEOUT + THRESHOLD + RUN_TIMEOUT,
                     what=f"crash of {first.region} after {step}")
    assert code == -signal.SIGKILL, fleet.describe()
    assert fleet.events(is_event("crash_injected"), dogs=[first])[-1]["step"] == step
    # One run: any other is an attempt refused before its promotion (a check failed
    # under load), closed before this one was opened; the core retried it as a new run.
    crashed, refused = one_run_and_refusals(runbook_world.runs(redis_server.url))
    assert crashed.finished is None
    assert done_counts(crashed) == dict.fromkeys(FAILOVER_PLAN[:FAILOVER_PLAN.index(step) + 1], 1)
    first_epoch = crashed.created_epoch

    second = restart(fleet, first)
    done = fleet.wait_for(is_event("run_done"), START_TIMEOUT + LOCK_TTL + RUN_TIMEOUT,
                          what=f"run_done of {second.region}", dogs=[second])

    # The journal: the same run, finished by the new epoch, every step started and
    # done exactly once, the ones after the crash under the new epoch; the restart
    # opened no run of its own.
    runs = runbook_world.runs(redis_server.url)
    run, refused_then = one_run_and_refusals(runs)
    assert [r.run_id for r in refused_then] == [r.run_id for r in refused], describe_runs(runs)
    second_epoch = done["epoch"]
    assert run.run_id == crashed.run_id == done["run_id"]
    assert run.finished == "done"
    assert second_epoch > first_epoch
    started = Counter(e.step for e in run.entries if e.status is StepStatus.STARTED)
    assert started == dict.fromkeys(FAILOVER_PLAN, 1), run.entries
    assert done_counts(run) == dict.fromkeys(FAILOVER_PLAN, 1), run.entries
    assert not [e for e in run.entries if e.status is StepStatus.FAILED], run.entries
    done_epoch = {e.step: e.epoch for e in run.entries if e.status is StepStatus.DONE}
    crashed_at = FAILOVER_PLAN.index(step)
    assert done_epoch == {
        name: first_epoch if index <= crashed_at else second_epoch
        for index, name in enumerate(FAILOVER_PLAN)
    }
    assert fleet.events(is_event("run_resuming", run_id=run.run_id), dogs=[second]) or (
        fleet.events(is_event("run_resumed_instead", run_id=run.run_id), dogs=[second])
    ), fleet.describe()

    # The world saw each effect once, fenced by the epoch of the step that made it.
    value, marker = runbook_world.dns_record()
    assert value == DNS_TARGETS[EAST]
    assert f"epoch={done_epoch[UPDATE_DNS]} run={run.run_id} " in marker, marker
    assert runbook_world.dns_changes == 1
    assert runbook_world.scale_writes() == dict.fromkeys(DEPLOYMENTS, 1)
    for name, original in DEPLOYMENTS.items():
        deployment = runbook_world.deployment(name)
        assert deployment.replicas == -(-original * 3 // 2), (name, deployment)
        assert deployment.annotations[ANNOTATION_EPOCH] == str(done_epoch[SCALE_UP])
        assert deployment.annotations[ANNOTATION_RUN] == run.run_id
    assert runbook_world.notifications() == EXPECTED_NOTIFICATIONS
    promotions = fleet.events(lambda e: e.get("event") == "promotion_done")
    assert [p["already_promoted"] for p in promotions] == [False], promotions
    assert pg_pair.replica.sql("SELECT pg_is_in_recovery()") == "f"

    evidence = json.loads(
        (fleet.workdir / "evidence" / "TEST" / "dr" / "failover" / "failover"
         / f"{run.run_id}.json").read_text())
    assert evidence["outcome"] == "done"
    # A crash after the last step leaves the new epoch nothing to journal but the finish.
    assert evidence["epochs"] == sorted({first_epoch, *done_epoch.values()})
    assert 0 < evidence["rto_seconds"] < 60, evidence["rto_seconds"]


def test_a_resumed_run_refused_before_the_promotion_is_closed_before_its_retry_opens_one(
    fleet: WatchdogFleet, pg_pair: PostgresPair, redis_server: RedisServer,
    runbook_world: RunbookWorld,
) -> None:
    # The interleaving behind two runs in the journal: the restarted watchdog resumes the
    # crashed run, and the standby does not answer its check in time (here it is stopped;
    # in CI it was load). The run is refused like any attempt before the promotion and
    # closed; only then does the core's retry open a run of its own.
    overrides = merged(runbook_world.overrides(), {"lock": {"ttl": f"{LOCK_TTL}s"}})
    first = start_with_crash(fleet, EAST, NOTIFY_STARTED, overrides)
    fleet.wait_ready(START_TIMEOUT)
    pg_pair.primary.kill()
    wait_exit(fleet, first, START_TIMEOUT + THRESHOLD + RUN_TIMEOUT, what="crash")
    crashed, refused = one_run_and_refusals(runbook_world.runs(redis_server.url))
    assert not refused, describe_runs([crashed, *refused])
    first_epoch = crashed.created_epoch

    pg_pair.replica.pause()
    try:
        second = restart(fleet, first)
        failed = fleet.wait_for(is_event("step_failed"), START_TIMEOUT + LOCK_TTL,
                                what="the resumed run's failed check", dogs=[second])
    finally:
        pg_pair.replica.resume()
    assert (failed["run_id"], failed["step"]) == (crashed.run_id, VERIFY_STANDBY), failed
    done = fleet.wait_for(is_event("run_done"), START_TIMEOUT + RUN_TIMEOUT,
                          what=f"run_done of {second.region}", dogs=[second])
    second_epoch = done["epoch"]
    assert second_epoch > first_epoch

    runs = runbook_world.runs(redis_server.url)
    retry, refused = one_run_and_refusals(runs)  # and the refused one closed before it
    assert [r.run_id for r in refused] == [crashed.run_id], describe_runs(runs)
    (closed,) = refused
    assert [(e.step, e.status, e.epoch) for e in closed.entries] == [
        (CHECK_PRIMARY, StepStatus.STARTED, first_epoch),
        (CHECK_PRIMARY, StepStatus.DONE, first_epoch),
        (NOTIFY_STARTED, StepStatus.STARTED, first_epoch),
        (NOTIFY_STARTED, StepStatus.DONE, first_epoch),
        (OPEN_INCIDENT, StepStatus.STARTED, second_epoch),
        (OPEN_INCIDENT, StepStatus.DONE, second_epoch),
        (VERIFY_STANDBY, StepStatus.STARTED, second_epoch),
        (VERIFY_STANDBY, StepStatus.FAILED, second_epoch),
    ], describe_runs(runs)
    assert retry.run_id == done["run_id"]
    assert retry.finished == "done"
    assert retry.created_epoch == second_epoch
    assert done_counts(retry) == dict.fromkeys(FAILOVER_PLAN, 1), describe_runs(runs)
    # In the restarted watchdog's own order: the refused run closed, then the retry opened.
    journal_events = [(e["event"], e["run_id"]) for e in fleet.events(
        lambda e: e.get("event") in ("journal_run_finished", "journal_run_opened"),
        dogs=[second])]
    assert journal_events == [("journal_run_finished", crashed.run_id),
                              ("journal_run_opened", retry.run_id),
                              ("journal_run_finished", retry.run_id)], journal_events

    # The retry stays in the incident the resumed run announced: each notification once,
    # PagerDuty's trigger resolved under its own key. One promotion, one DNS change, one
    # scale write per deployment.
    assert runbook_world.notifications() == EXPECTED_NOTIFICATIONS
    assert {r.body["dedup_key"] for r in runbook_world.received(PAGERDUTY, alerts=False)
            if isinstance(r.body, dict)} == {crashed.run_id}
    promotions = fleet.events(lambda e: e.get("event") == "promotion_done")
    assert [p["already_promoted"] for p in promotions] == [False], promotions
    assert runbook_world.dns_changes == 1
    assert runbook_world.scale_writes() == dict.fromkeys(DEPLOYMENTS, 1)
