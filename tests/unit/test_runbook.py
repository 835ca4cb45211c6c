"""The failover runbook as a journaled run, on fakes: every step in plan order, refusals
before the promotion, retries after it, resumes by the same watchdog or its successor.

The journal is an in-memory store with the real one's fence (``fake_journal``); the
effects (promoter, probes, actuators, notifiers) record what reached the world.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from agentaskit_dr.actuators.promote import (
    FenceResult,
    PromotionInDoubt,
    PromotionRefused,
    PromotionResult,
)
from agentaskit_dr.config import WatchdogConfig, load_config
from agentaskit_dr.core import Alert, Condition, FailoverRefused, FailoverSucceeded, StartFailover
from agentaskit_dr.leadership.journal import ActiveRunExists
from agentaskit_dr.ports import (
    ActuationFailed,
    Lease,
    Notification,
    PeerFence,
    RunJournal,
    StaleEpoch,
    StepOutcome,
    StepStatus,
)
from agentaskit_dr.runtime import runbook as runbook_module
from agentaskit_dr.runtime.evidence import read_evidence
from agentaskit_dr.runtime.evidence_layout import run_root
from agentaskit_dr.runtime.executor import FailoverExecutor
from agentaskit_dr.runtime.runbook import (
    FAILOVER_PLAN,
    PROMOTE,
    Hooks,
    Runbook,
)
from tests.unit.fake_journal import FakeJournal, FakeLeases, LockStore

WEST, EAST = "us-west-2", "us-east-1"
WALL_START = 1_750_000_000.0
# What reaches the world for each step of FAILOVER_PLAN when everything is configured.
EVERY_EFFECT = [
    "check_primary", "notify:failover_started", "notify:incident_opened", "verify_standby",
    "promote", "dns", "scaler", "verifier", "notify:status_page", "notify:failover_done",
]


class SimulatedCrash(Exception):
    """The watchdog process died here: nothing after it ran, nothing was journaled."""


def write_config(tmp_path: Path, *, wired: bool) -> WatchdogConfig:
    """A valid config; ``wired`` adds Route 53, Kubernetes and two webhooks."""
    regions: dict[str, dict[str, Any]] = {
        name: {
            "health_urls": [f"http://127.0.0.1:9/{name}/healthz"],
            "database": {"dsn": f"postgresql://postgres@127.0.0.1:9/{name}"},
        }
        for name in (WEST, EAST)
    }
    data: dict[str, Any] = {
        "region": EAST, "primary_region": WEST, "node_name": "watchdog-east",
        "regions": regions, "evidence_dir": str(tmp_path / "evidence"),
    }
    if wired:
        regions[EAST]["dns_target"] = "lb.us-east-1.agentaskit.example"
        regions[EAST]["kubernetes"] = {"api_url": "http://127.0.0.1:9"}
        data["dns"] = {"route53": {"hosted_zone_id": "Z0TEST",
                                   "record_name": "api.agentaskit.example"}}
        data["notifications"] = {"webhooks": [
            {"kind": "slack", "url": "http://127.0.0.1:9/slack"},
            {"kind": "generic", "url": "http://127.0.0.1:9/incidents"},
        ]}
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


class Clocks:
    """A monotonic and a wall clock that both move 0.25 s at each read."""

    def __init__(self) -> None:
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        return 1000.0 + 0.25 * self.reads

    def wall(self) -> float:
        self.reads += 1
        return WALL_START + 0.25 * self.reads


class World:
    """What the fakes did, in order; ``fail`` and ``during`` script each named effect."""

    def __init__(self) -> None:
        self.effects: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.during: dict[str, Callable[[], object]] = {}

    def act(self, name: str) -> None:
        self.effects.append(name)
        if name in self.during:
            self.during.pop(name)()
        if name in self.fail:
            raise self.fail[name]


class FakePromoter:
    """The ``Promoter``: records each call; refuses when the lock is lost, like the real one."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.calls: list[dict[str, Any]] = []
        self.extra_calls: list[dict[str, Any]] = []
        self.crash_after_promote = False

    async def promote(
        self, *, epoch: int, holder: str, failover_id: str, primary_last_lsn: int | None,
        still_leader: Callable[[], Awaitable[bool]], force: bool = False,
        resuming: bool = False, old_primary_answering: bool = False,
        adopt_from: Collection[str] = (),
    ) -> PromotionResult:
        self.calls.append({"epoch": epoch, "holder": holder, "failover_id": failover_id,
                           "primary_last_lsn": primary_last_lsn, "resuming": resuming})
        self.extra_calls.append({"old_primary_answering": old_primary_answering,
                                 "adopt_from": list(adopt_from)})
        if not await still_leader():
            raise PromotionRefused("lock lost before pg_promote")
        self.world.act(PROMOTE)
        if self.crash_after_promote:
            self.crash_after_promote = False
            raise SimulatedCrash("watchdog killed right after pg_promote returned")
        return PromotionResult(
            already_promoted=resuming, lag_bytes=4096, promote_seconds=0.08,
            writable_at=time.monotonic(), old_primary_fenced=True,
            detail=f"standby in {EAST} promoted under epoch {epoch}",
        )

    async def fence(self, dsn: str, *, epoch: int | None) -> FenceResult:
        raise AssertionError("the runbook fences through promote(), never on its own")


class FakeActuator:
    """An ``Actuator`` that records each ``apply`` and ``close``."""

    def __init__(self, name: str, world: World) -> None:
        self.name = name
        self.world = world
        self.applied: list[tuple[int, str]] = []
        self.closed = 0
        self.data: dict[str, Any] = {"target": f"{name}-target"}

    async def describe(self) -> str:
        return f"{self.name}: would change {self.name}-target"

    async def apply(self, *, epoch: int, failover_id: str) -> StepOutcome:
        self.applied.append((epoch, failover_id))
        self.world.act(self.name)
        return StepOutcome(True, f"{self.name} applied under epoch {epoch}", self.data)

    async def close(self) -> None:
        self.closed += 1


class Rig:
    """A Runbook on fakes: one lock store and journal, one watchdog holding the lock."""

    def __init__(self, config: WatchdogConfig, *, holder: str = "watchdog-east") -> None:
        self.config = config
        self.clocks = Clocks()
        self.world = World()
        self.lock = LockStore()
        self.journal = FakeJournal(self.lock, wall_clock=self.clocks.wall)
        self.promoter = FakePromoter(self.world)
        self.dns: FakeActuator | None = FakeActuator("dns", self.world)
        self.scaler: FakeActuator | None = FakeActuator("scaler", self.world)
        self.verifier: FakeActuator | None = FakeActuator("verifier", self.world)
        self.notifications: list[tuple[Notification, tuple[str, ...]]] = []
        self.delivery = {"slack": True, "generic": True}
        self.hooks = Hooks(
            promoter=lambda *_: self.promoter,
            check_primary=self._check_primary,
            verify_standby=self._verify_standby,
            dns=lambda *_: self.dns,
            scaler=lambda *_: self.scaler,
            verifier=lambda *_: self.verifier,
            notify=self._notify,
        )
        self.lease = self.lock.take_over(holder)
        self.leases = FakeLeases(self.lock, self.lease)
        self.runbook = self.runbook_for(self.leases)

    def runbook_for(self, leases: FakeLeases) -> Runbook:
        assert leases.lease is not None
        executor = FailoverExecutor(leases, holder=leases.lease.holder)
        return Runbook(self.journal, executor, self.hooks, config=lambda: self.config,
                       clock=self.clocks.monotonic, wall_clock=self.clocks.wall)

    def successor(self, holder: str = "watchdog-west") -> tuple[Runbook, Lease]:
        """Another watchdog takes the lock (a higher epoch) and builds its own runbook."""
        lease = self.lock.take_over(holder)
        return self.runbook_for(FakeLeases(self.lock, lease)), lease

    def command(self, epoch: int | None = None) -> StartFailover:
        now = self.clocks.monotonic()
        return StartFailover(
            condition=Condition.DB_UNREACHABLE, epoch=self.lease.epoch if epoch is None else epoch,
            reason="primary database unreachable for 121s", failing_since=now - 121.0,
            decided_at=now - 1.0,
        )

    async def only_run(self) -> RunJournal:
        runs = await self.journal.recent()
        assert len(runs) == 1, f"expected exactly one run, found {[r.run_id for r in runs]}"
        return runs[0]

    async def _check_primary(self, _config: WatchdogConfig, from_region: str,
                             _to: str) -> StepOutcome:
        self.world.act("check_primary")
        return StepOutcome(False, f"old primary in {from_region}: unreachable",
                           {"reachable": False})

    async def _verify_standby(self, _config: WatchdogConfig, _from: str, to_region: str,
                              journal: RunJournal) -> StepOutcome:
        self.world.act("verify_standby")
        return StepOutcome(False, f"standby in {to_region} in recovery, receiver streaming",
                           {"promote_started_before": journal.last_status(PROMOTE) is not None})

    async def _notify(self, _config: WatchdogConfig, notification: Notification,
                      kinds: Sequence[str]) -> dict[str, bool]:
        self.world.act(f"notify:{notification.event}")
        self.notifications.append((notification, tuple(kinds)))
        return dict(self.delivery)


def steps(run: RunJournal) -> list[tuple[str, StepStatus]]:
    return [(entry.step, entry.status) for entry in run.entries]


def entries_of(run: RunJournal, step: str) -> list[StepStatus]:
    return [entry.status for entry in run.entries if entry.step == step]


@pytest.fixture
def wired(tmp_path: Path) -> Rig:
    """Everything configured: DNS, Kubernetes, verification, Slack and a generic webhook."""
    return Rig(write_config(tmp_path, wired=True))


@pytest.fixture
def bare(tmp_path: Path) -> Rig:
    """Only the two databases: DNS, scaling, verification and incident steps are skipped."""
    rig = Rig(write_config(tmp_path, wired=False))
    rig.dns = rig.scaler = rig.verifier = None
    rig.delivery = {}
    return rig


# ---------------------------------------------------------------- a decided failover


async def test_decided_failover_runs_every_step_in_plan_order_and_writes_evidence(
    wired: Rig,
) -> None:
    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverSucceeded), outcome
    assert outcome.epoch == 1
    assert wired.world.effects == EVERY_EFFECT
    run = await wired.only_run()
    assert steps(run) == [(name, status) for name in FAILOVER_PLAN
                          for status in (StepStatus.STARTED, StepStatus.DONE)]
    assert {entry.epoch for entry in run.entries} == {1}
    assert run.finished == "done"
    assert await wired.journal.active() is None
    assert not wired.runbook.incomplete
    assert run.meta["from_region"] == WEST
    assert run.meta["to_region"] == EAST
    assert run.meta["condition"] == "db_unreachable"
    # A fresh run: pg_promote has not been tried before, the actuators got this run's id.
    assert [call["resuming"] for call in wired.promoter.calls] == [False]
    assert wired.promoter.calls[0]["failover_id"] == run.run_id
    for actuator in (wired.dns, wired.scaler, wired.verifier):
        assert actuator is not None
        assert actuator.applied == [(1, run.run_id)]
        assert actuator.closed == 1

    evidence = read_evidence(run_root(wired.config.evidence_dir), "failover", run.run_id)
    assert evidence["outcome"] == "done"
    assert [(e["step"], e["status"]) for e in evidence["timeline"]] == [
        (step, status.value) for step, status in steps(run)]
    assert evidence["rpo"]["lag_bytes"] == 4096  # measured by the promotion
    assert evidence["rto_seconds"] is not None
    assert evidence["rto_seconds"] > 121
    assert evidence["extra"]["failback"] == "planned"
    review = (wired.config.evidence_dir / "TEST" / "dr" / "failover" / "failover"
              / f"{run.run_id}.md").read_text()
    assert f"Incident review (draft): failover {run.run_id}" in review
    for name in FAILOVER_PLAN:
        assert f"| {name} | done |" in review


async def test_steps_without_an_actuator_are_journaled_skipped_with_the_reason(
    bare: Rig,
) -> None:
    outcome = await bare.runbook.failover(bare.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverSucceeded), outcome
    run = await bare.only_run()
    assert run.finished == "done"
    skipped = {e.step: e.detail for e in run.entries if e.status is StepStatus.SKIPPED}
    assert skipped == {
        "open_incident": "no generic webhook configured",
        "update_dns": "dns.route53 or dns_target not set",
        "scale_up": f"regions.{EAST}.kubernetes not set",
        "verify_services": "nothing to verify",
        "update_status_page": "no generic webhook configured",
    }
    for name in skipped:
        assert entries_of(run, name) == [StepStatus.SKIPPED], name
    assert bare.world.effects == [
        "check_primary", "notify:failover_started", "verify_standby", "promote",
        "notify:failover_done",
    ]
    evidence = read_evidence(run_root(bare.config.evidence_dir), "failover", run.run_id)
    assert evidence["outcome"] == "done"
    assert evidence["rto_seconds"] is not None  # skipped steps count as complete


# ---------------------------------------------------------------- refusals before promotion


async def test_standby_not_verified_refuses_the_failover_and_closes_the_run_failed(
    wired: Rig,
) -> None:
    wired.world.fail["verify_standby"] = ActuationFailed(
        "standby db:standby unreachable: connection refused")

    with capture_logs() as logs:
        outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert outcome == FailoverRefused(
        "verify_standby: standby db:standby unreachable: connection refused", retry=True)
    assert wired.world.effects == EVERY_EFFECT[:4]  # nothing after the failed step
    assert wired.promoter.calls == []
    run = await wired.only_run()
    assert run.finished == "failed"
    assert await wired.journal.active() is None
    assert steps(run)[-2:] == [("verify_standby", StepStatus.STARTED),
                               ("verify_standby", StepStatus.FAILED)]
    assert run.entries[-1].detail == "standby db:standby unreachable: connection refused"
    evidence = read_evidence(run_root(wired.config.evidence_dir), "failover", run.run_id)
    assert evidence["outcome"] == "refused at verify_standby"
    assert evidence["rto_seconds"] is None
    refusals = [e for e in logs if e["event"] == "failover_refused"]
    assert [(e["step"], e["run_id"], e["epoch"]) for e in refusals] == [
        ("verify_standby", run.run_id, 1)]


async def test_promotion_in_doubt_keeps_the_run_open_and_the_next_attempt_resumes_it(
    wired: Rig,
) -> None:
    wired.world.fail[PROMOTE] = PromotionInDoubt(
        "timeout during pg_promote; it may still complete the promotion", promoted=False)

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert outcome == FailoverRefused(
        "promote: timeout during pg_promote; it may still complete the promotion", retry=True)
    assert wired.runbook.incomplete
    active = await wired.journal.active()
    assert active is not None
    assert entries_of(active, PROMOTE) == [StepStatus.STARTED, StepStatus.FAILED]
    del wired.world.fail[PROMOTE]

    again = await wired.runbook.failover(wired.command(), primary_last_lsn=None,
                                         old_primary_answering=True)

    assert isinstance(again, FailoverSucceeded), again
    run = await wired.only_run()
    assert run.finished == "done"
    assert [call["resuming"] for call in wired.promoter.calls] == [False, True]
    # Seen answering by the caller of the retry: the resumed promotion must fence first.
    assert [c["old_primary_answering"] for c in wired.promoter.extra_calls] == [False, True]


async def test_promoted_without_marker_is_a_success_with_the_run_left_open(wired: Rig) -> None:
    wired.world.fail[PROMOTE] = PromotionInDoubt(
        "the standby was promoted but its epoch marker was not recorded", promoted=True)

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverSucceeded), outcome
    assert "marker was not recorded" in outcome.detail
    assert wired.runbook.incomplete
    assert wired.world.effects == EVERY_EFFECT[:5]
    del wired.world.fail[PROMOTE]

    resumed = await wired.runbook.resume()

    assert isinstance(resumed, FailoverSucceeded), resumed
    assert not wired.runbook.incomplete
    assert wired.world.effects == EVERY_EFFECT[:5] + EVERY_EFFECT[4:]


async def test_a_new_run_adopts_from_the_attempts_of_its_incident_that_reached_promote(
    wired: Rig,
) -> None:
    wired.world.fail["verify_standby"] = ActuationFailed("standby unreachable")
    await wired.runbook.failover(wired.command(), primary_last_lsn=None)  # never promoted
    del wired.world.fail["verify_standby"]
    wired.world.fail[PROMOTE] = PromotionRefused("fence not confirmed: pg_hba rejects")
    await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    del wired.world.fail[PROMOTE]
    [reached_promote, _never] = await wired.journal.recent()

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverSucceeded), outcome
    assert [c["adopt_from"] for c in wired.promoter.extra_calls] == [
        [], [reached_promote.run_id]]
    # A completed failover ends the incident: the next one adopts nothing from before it.
    latest = (await wired.journal.recent())[0]
    assert latest.meta["adopts_promotion_of"] == [reached_promote.run_id]
    wired.world.fail[PROMOTE] = PromotionRefused("fence not confirmed")
    await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    assert (await wired.journal.recent())[0].meta["adopts_promotion_of"] == []


async def test_promotion_refused_by_the_lag_gate_refuses_and_nothing_after_runs(
    wired: Rig,
) -> None:
    wired.world.fail[PROMOTE] = PromotionRefused(
        "standby lag 20 MiB exceeds promotion.max_lag_bytes 16 MiB")

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert outcome == FailoverRefused(
        "promote: standby lag 20 MiB exceeds promotion.max_lag_bytes 16 MiB", retry=True)
    assert wired.world.effects == EVERY_EFFECT[:5]
    run = await wired.only_run()
    assert run.finished == "failed"
    assert entries_of(run, PROMOTE) == [StepStatus.STARTED, StepStatus.FAILED]
    assert entries_of(run, "update_dns") == []
    assert not wired.runbook.incomplete


async def test_stale_epoch_at_promotion_refuses_without_retry(wired: Rig) -> None:
    wired.world.fail[PROMOTE] = StaleEpoch("standby carries marker epoch 7, newer than 1")

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverRefused), outcome
    assert outcome.retry is False
    assert "marker epoch 7" in outcome.reason
    assert (await wired.only_run()).finished == "failed"
    assert "dns" not in wired.world.effects


async def test_lock_taken_over_mid_run_refuses_and_writes_nothing_more(
    wired: Rig,
) -> None:
    wired.world.during["check_primary"] = wired.successor
    writes_before = wired.journal.writes

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverRefused), outcome
    # Retry-able: the lock moved on, no target refused us (not a stale-epoch alert); the
    # run stays active for whoever holds the lock, this watchdog too if it takes it back.
    assert outcome.retry is True
    assert "stale" in outcome.reason
    assert wired.world.effects == ["check_primary"]
    run = await wired.only_run()
    # Opened and check_primary started; the "done" after the takeover was fenced off.
    assert wired.journal.writes == writes_before + 2
    assert steps(run) == [("check_primary", StepStatus.STARTED)]
    assert run.finished is None  # the successor resumes it


async def test_lock_lost_before_the_run_refuses_and_opens_nothing(wired: Rig) -> None:
    wired.lock.expire()

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert outcome == FailoverRefused("lock lost before the run started")
    assert wired.world.effects == []
    assert await wired.journal.recent() == []


async def test_command_of_an_older_epoch_refuses_and_opens_nothing(wired: Rig) -> None:
    _, lease = wired.successor("watchdog-east")  # re-acquired: epoch 2
    wired.leases.lease = lease

    outcome = await wired.runbook.failover(wired.command(epoch=1), primary_last_lsn=None)

    assert outcome == FailoverRefused("lock lost before the run started")
    assert await wired.journal.recent() == []


# ---------------------------------------------------------------- after promotion


async def test_dns_failure_after_promotion_keeps_the_run_open_and_resume_retries_from_dns(
    wired: Rig,
) -> None:
    wired.world.fail["dns"] = ActuationFailed("Route 53 Z0TEST: 403 AccessDenied")

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverSucceeded), outcome
    assert "update_dns failed (Route 53 Z0TEST: 403 AccessDenied)" in outcome.detail
    assert wired.runbook.incomplete
    assert wired.world.effects == EVERY_EFFECT[:6]
    active = await wired.journal.active()
    assert active is not None
    assert active.finished is None
    assert active.last_status("update_dns") is StepStatus.FAILED
    assert wired.dns is not None
    assert wired.dns.closed == 1  # closed even when apply raised

    del wired.world.fail["dns"]
    wired.world.effects.clear()
    resumed = await wired.runbook.resume()

    assert isinstance(resumed, FailoverSucceeded), resumed
    assert wired.world.effects == EVERY_EFFECT[5:]  # done steps are not called again
    assert len(wired.promoter.calls) == 1
    assert not wired.runbook.incomplete
    run = await wired.only_run()
    assert run.run_id == active.run_id
    assert run.finished == "done"
    assert entries_of(run, "update_dns") == [StepStatus.STARTED, StepStatus.FAILED,
                                             StepStatus.STARTED, StepStatus.DONE]
    assert entries_of(run, "check_primary") == [StepStatus.STARTED, StepStatus.DONE]
    evidence = read_evidence(run_root(wired.config.evidence_dir), "failover", run.run_id)
    [dns_step] = [s for s in evidence["steps"] if s["step"] == "update_dns"]
    assert (dns_step["status"], dns_step["attempts"]) == ("done", 2)


async def test_stale_epoch_from_an_actuator_after_promotion_leaves_the_run_open(
    wired: Rig,
) -> None:
    wired.world.fail["scaler"] = StaleEpoch("deployment api annotated with epoch 3")

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverSucceeded), outcome
    assert wired.runbook.incomplete
    active = await wired.journal.active()
    assert active is not None
    assert active.last_status("scale_up") is StepStatus.FAILED
    assert "verifier" not in wired.world.effects


async def test_resume_without_an_active_run_does_nothing(wired: Rig) -> None:
    assert await wired.runbook.resume() is None
    assert wired.journal.writes == 0
    assert wired.world.effects == []


async def test_resume_without_the_lock_does_nothing(wired: Rig) -> None:
    wired.world.fail["dns"] = ActuationFailed("Route 53 Z0TEST: 403 AccessDenied")
    await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    wired.lock.expire()
    writes = wired.journal.writes

    assert await wired.runbook.resume() is None
    assert wired.journal.writes == writes


async def test_successor_resumes_the_same_run_under_its_epoch_and_tells_the_promoter(
    wired: Rig,
) -> None:
    wired.promoter.crash_after_promote = True
    with pytest.raises(SimulatedCrash):
        await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    crashed = await wired.journal.active()
    assert crashed is not None
    assert crashed.last_status(PROMOTE) is StepStatus.STARTED

    successor, _ = wired.successor("watchdog-west")
    wired.world.effects.clear()
    outcome = await successor.resume()

    assert outcome == FailoverSucceeded(epoch=2, detail=f"run {crashed.run_id} done")
    assert wired.world.effects == EVERY_EFFECT[4:]  # from the promotion on, once each
    assert wired.promoter.calls[-1] == {
        "epoch": 2, "holder": "watchdog-west", "failover_id": crashed.run_id,
        "primary_last_lsn": None, "resuming": True,
    }
    run = await wired.only_run()
    assert run.run_id == crashed.run_id
    assert run.finished == "done"
    assert run.created_epoch == 1
    assert {e.epoch for e in run.entries if e.step == "check_primary"} == {1}
    assert [(e.status, e.epoch) for e in run.entries if e.step == PROMOTE] == [
        (StepStatus.STARTED, 1), (StepStatus.STARTED, 2), (StepStatus.DONE, 2)]
    assert wired.dns is not None
    assert wired.dns.applied == [(2, crashed.run_id)]
    evidence = read_evidence(run_root(wired.config.evidence_dir), "failover", run.run_id)
    assert evidence["epochs"] == [1, 2]
    # The old holder, back from the dead, has no lease and so changes nothing.
    assert await wired.runbook.resume() is None


async def test_failover_while_a_run_is_active_resumes_that_run_instead_of_a_second_one(
    wired: Rig,
) -> None:
    wired.promoter.crash_after_promote = True
    with pytest.raises(SimulatedCrash):
        await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    first = await wired.only_run()

    with capture_logs() as logs:
        outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert outcome == FailoverSucceeded(epoch=1, detail=f"run {first.run_id} done")
    run = await wired.only_run()
    assert run.run_id == first.run_id
    assert run.finished == "done"
    assert [call["resuming"] for call in wired.promoter.calls] == [False, True]
    assert wired.world.effects.count("check_primary") == 1
    assert "run_resumed_instead" in [e["event"] for e in logs]


async def test_the_fake_journal_refuses_a_second_active_run_and_a_stale_lease(
    wired: Rig,
) -> None:
    journal, lease = wired.journal, wired.lease
    opened = await journal.open("fo-a", lease=lease, kind="failover", plan=FAILOVER_PLAN,
                                reason="test")
    assert await journal.open("fo-a", lease=lease, kind="failover", plan=(), reason="x") \
        == opened
    with pytest.raises(ActiveRunExists, match="run fo-a is active"):
        await journal.open("fo-b", lease=lease, kind="failover", plan=FAILOVER_PLAN,
                           reason="test")
    wired.successor()
    with pytest.raises(StaleEpoch, match="held by watchdog-west under epoch 2"):
        await journal.finish("fo-a", "failed", lease=lease)


# ---------------------------------------------------------------- the lock store fails


async def test_lock_store_outage_during_a_step_ends_the_attempt_and_a_resume_finishes(
    wired: Rig,
) -> None:
    wired.world.during["check_primary"] = lambda: setattr(wired.journal, "down", True)

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverRefused), outcome
    assert outcome.retry is True
    assert outcome.reason.startswith("journal: lock store 127.0.0.1:1 did not answer")
    assert wired.world.effects == ["check_primary"]

    wired.journal.down = False
    wired.world.effects.clear()
    resumed = await wired.runbook.resume()

    assert isinstance(resumed, FailoverSucceeded), resumed
    assert wired.world.effects == EVERY_EFFECT
    run = await wired.only_run()
    assert entries_of(run, "check_primary") == [StepStatus.STARTED, StepStatus.STARTED,
                                                StepStatus.DONE]


async def test_lock_store_outage_while_resuming_keeps_the_retry_owed(wired: Rig) -> None:
    wired.world.fail["dns"] = ActuationFailed("Route 53 Z0TEST: 403 AccessDenied")
    await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    wired.journal.down = True
    writes = wired.journal.writes

    outcome = await wired.runbook.resume()

    assert not isinstance(outcome, FailoverRefused), outcome  # the promotion stands
    assert wired.runbook.incomplete  # still owed: the engine retries later
    assert wired.journal.writes == writes
    assert wired.world.effects.count("dns") == 1


async def test_lock_store_down_when_the_next_failover_is_decided_refuses_it(
    wired: Rig,
) -> None:
    # An earlier failover finished; much later (after a failback) the lock is taken again
    # and a new failover is decided just as the lock store stops answering.
    assert isinstance(await wired.runbook.failover(wired.command(), primary_last_lsn=None),
                      FailoverSucceeded)
    _, wired.lease = wired.successor("watchdog-east")
    wired.leases.lease = wired.lease
    wired.journal.down = True
    wired.world.effects.clear()
    stale = (
        "BUG in runbook.py: the journal could not be read, so nothing of this run happened, "
        "yet the runbook answered {!r} (incomplete={}). Runbook._promoted is left over from "
        "the previous run and is reset only inside _drive, which an unreadable journal never "
        "reaches. Reset it (and _promoted_epoch) at the top of failover() and resume()."
    )

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverRefused), stale.format(outcome,
                                                              wired.runbook.incomplete)
    assert outcome.retry is True
    assert wired.world.effects == []
    resumed = await wired.runbook.resume()
    assert resumed is None, stale.format(resumed, wired.runbook.incomplete)
    assert not wired.runbook.incomplete, stale.format(resumed, wired.runbook.incomplete)


async def test_lock_store_outage_after_promotion_keeps_the_run_open_for_a_resume(
    wired: Rig,
) -> None:
    # The standby is promoted; then the lock store stops answering while DNS is repointed.
    wired.world.during["dns"] = lambda: setattr(wired.journal, "down", True)

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert PROMOTE in wired.world.effects
    bug = (
        "BUG in runbook.py: the standby was promoted, then the journal raised "
        "LockUnavailable during update_dns, and the runbook reported "
        f"{outcome!r} with incomplete={wired.runbook.incomplete}. The core then treats the "
        "failover as refused (retry later) while the database is already promoted, and the "
        "engine never schedules a resume (it only does when runbook.incomplete is True), so "
        "DNS, scale-up and verification are never retried. Expected FailoverSucceeded with "
        "runbook.incomplete=True, as for a failed step after the promotion."
    )
    assert isinstance(outcome, FailoverSucceeded), bug
    assert wired.runbook.incomplete, bug

    wired.journal.down = False
    resumed = await wired.runbook.resume()

    assert isinstance(resumed, FailoverSucceeded), resumed
    assert not wired.runbook.incomplete
    assert wired.world.effects == [*EVERY_EFFECT[:6], *EVERY_EFFECT[5:]]  # DNS applied again
    assert (await wired.only_run()).finished == "done"


# ---------------------------------------------------------------- plan, notifications, data


async def test_describe_lists_every_step_with_the_reasons_for_skipping(
    bare: Rig, tmp_path: Path,
) -> None:
    lines = bare.runbook.describe()

    assert [line.split(":")[0] for line in lines] == [*FAILOVER_PLAN, "then"]
    skipped = {line.split(":")[0]: line.split("(skipped: ")[1].rstrip(")")
               for line in lines if "(skipped: " in line}
    assert skipped == {
        "open_incident": "no generic webhook configured",
        "update_dns": "dns.route53 or dns_target not set",
        "scale_up": f"regions.{EAST}.kubernetes not set",
        "verify_services": "nothing to verify",
        "update_status_page": "no generic webhook configured",
    }
    assert lines[-1].startswith(f"then: evidence and incident review draft in "
                                f"{bare.config.evidence_dir}/TEST/dr/failover/failover/")

    (tmp_path / "wired").mkdir()
    wired = Rig(write_config(tmp_path / "wired", wired=True)).runbook.describe()
    assert not [line for line in wired if "skipped" in line]
    assert "update_dns: Route 53 api.agentaskit.example -> lb.us-east-1.agentaskit.example" \
        in wired
    assert f"scale_up: deployments in agentaskit-production of {EAST} +50%" in wired
    assert bare.world.effects == []  # a dry run reaches nothing


async def test_notifications_carry_the_run_id_as_dedup_key_and_done_resolves(
    wired: Rig,
) -> None:
    wired.delivery = {"slack": False, "generic": True}

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverSucceeded), outcome  # a lost message never blocks
    run = await wired.only_run()
    sent = {n.event: (n, kinds) for n, kinds in wired.notifications}
    assert list(sent) == ["failover_started", "incident_opened", "status_page",
                          "failover_done"]
    for notification, _ in sent.values():
        assert notification.dedup_key == run.run_id
        assert notification.epoch == 1
        assert notification.details["reason"] == "primary database unreachable for 121s"
    started, started_kinds = sent["failover_started"]
    done, _ = sent["failover_done"]
    assert (started.resolve, started.severity) == (False, "critical")
    assert started_kinds == ("slack", "pagerduty", "generic")
    assert sent["incident_opened"][1] == ("generic",)
    assert (done.resolve, done.severity) == (True, "info")
    assert done.details["failback"] == "planned"
    [notify_done] = [e for e in run.entries
                     if e.step == "notify_done" and e.status is StepStatus.DONE]
    assert notify_done.detail == "1/2 delivered; not delivered: slack (logged; never blocks)"
    assert notify_done.data["delivered"] == {"slack": False, "generic": True}


async def test_step_data_in_the_journal_is_json_able(wired: Rig) -> None:
    assert wired.dns is not None
    wired.dns.data = {
        "old": "lb.us-west-2.agentaskit.example",
        "changed_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "weights": (Decimal("0.5"), 50, None),
        "nested": {"zone": Path("/hostedzone/Z0TEST"), 7: True},
        "object": object(),
    }

    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverSucceeded), outcome
    run = await wired.only_run()
    [done] = [e for e in run.entries if e.step == "update_dns" and e.status is StepStatus.DONE]
    assert json.loads(json.dumps(done.data, allow_nan=False)) == done.data
    assert done.data["old"] == "lb.us-west-2.agentaskit.example"
    assert done.data["changed_at"] == "2025-01-02 03:04:05+00:00"
    assert done.data["weights"] == ["0.5", 50, None]
    assert done.data["nested"] == {"zone": "/hostedzone/Z0TEST", "7": True}
    assert done.data["object"].startswith("<object object at ")
    assert done.data["changed"] is True
    assert isinstance(done.data["seconds"], float)


async def test_step_data_with_a_non_finite_number_still_reaches_the_journal(
    wired: Rig,
) -> None:
    assert wired.dns is not None
    wired.dns.data = {"propagation_seconds": math.inf, "lag_seconds": math.nan}

    try:
        outcome: object = await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    except ValueError as exc:
        pytest.fail(
            "BUG in runbook.py: _jsonable passes float inf/nan through, but the journal (like "
            "RedisJournal, json.dumps(allow_nan=False)) and write_evidence refuse them, so "
            f"the failover crashed after the promotion with: {exc}. Expected the values as "
            "text (e.g. 'inf', 'nan'), like every other value that is not JSON."
        )
    assert isinstance(outcome, FailoverSucceeded), outcome


async def test_a_retry_right_after_a_refusal_opens_a_new_run(
    wired: Rig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both attempts fall in the same second under the same epoch, so they get one run id.
    monkeypatch.setattr(runbook_module, "new_failover_id",
                        lambda epoch: f"fo-20250101T000000Z-e{epoch}")
    wired.world.fail["verify_standby"] = ActuationFailed("standby db:standby unreachable")
    refused = await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    assert isinstance(refused, FailoverRefused), refused
    del wired.world.fail["verify_standby"]

    try:
        outcome: object = await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    except Exception as exc:
        pytest.fail(
            "BUG in runbook.py: a failover retried within the same second as a refused one "
            "(an operator's request right after a refusal) gets the same run id; "
            "journal.open returns the finished run unchanged and _drive then writes to it, "
            f"which the journal refuses: {type(exc).__name__}: {exc}. Expected a new run "
            "(a unique run id, or open() refused for a finished run and a fresh id tried)."
        )
    assert isinstance(outcome, FailoverSucceeded), outcome


# ---------------------------------------------------------------- fault injection


async def test_after_step_seam_runs_right_after_each_step_is_journaled_done(
    wired: Rig,
) -> None:
    seen: list[tuple[str, list[tuple[str, StepStatus]], int]] = []

    def after_step(name: str) -> None:
        [run_id] = wired.journal.run_ids()
        seen.append((name, steps(wired.journal.peek(run_id)), len(wired.world.effects)))

    wired.runbook.after_step = after_step
    await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    promote = [entry for entry in seen if entry[0] == PROMOTE]
    assert len(promote) == 1
    _, journaled, effects = promote[0]
    assert journaled[-1] == (PROMOTE, StepStatus.DONE)  # the last thing journaled
    assert effects == 5  # and nothing after the promotion had reached the world yet
    assert [name for name, _, _ in seen] == [
        name for name, status in steps(wired.journal.peek(wired.journal.run_ids()[0]))
        if status is StepStatus.DONE]


# ---------------------------------------------------------------- one incident per attempt window


async def test_a_refused_attempt_and_its_retry_are_one_incident_for_the_stakeholders(
    wired: Rig,
) -> None:
    first = dataclasses.replace(wired.command(), incident_since=500.0)
    wired.world.fail[PROMOTE] = PromotionRefused("old primary answers and the fence failed")
    refused = await wired.runbook.failover(first, primary_last_lsn=None)
    assert isinstance(refused, FailoverRefused)
    del wired.world.fail[PROMOTE]

    retry = dataclasses.replace(wired.command(), incident_since=500.0)
    done = await wired.runbook.failover(retry, primary_last_lsn=None)
    assert isinstance(done, FailoverSucceeded), done

    events = [n.event for n, _ in wired.notifications]
    assert events.count("failover_started") == 1
    assert events.count("incident_opened") == 1
    keys = {n.dedup_key for n, _ in wired.notifications}
    runs = await wired.journal.recent()
    assert len(runs) == 2
    assert keys == {runs[-1].run_id}, "every notification under the first attempt's run id"
    resolved = [n for n, _ in wired.notifications if n.resolve]
    assert [n.event for n in resolved] == ["failover_done"]
    assert wired.runbook.close_incident("late", 1) is None  # resolved by the run


async def test_a_restarted_watchdog_keeps_the_incident_of_the_run_it_resumed_and_refused(
    wired: Rig,
) -> None:
    # The watchdog dies right after announcing the failover; restarted (its incident book
    # is gone), it resumes the run, the standby check times out, the run is refused; the
    # core's retry (under its own incident_since) is still the incident announced before.
    def crash(step: str) -> None:
        if step == "notify_stakeholders":
            raise SimulatedCrash("killed right after announcing the failover")

    wired.runbook.after_step = crash
    with pytest.raises(SimulatedCrash):
        await wired.runbook.failover(dataclasses.replace(wired.command(), incident_since=500.0),
                                     primary_last_lsn=None)
    crashed = await wired.only_run()

    restarted, lease = wired.successor("watchdog-east")
    wired.world.fail["verify_standby"] = ActuationFailed("standby unreachable: timeout")
    assert isinstance(await restarted.resume(), FailoverRefused)
    del wired.world.fail["verify_standby"]
    retry = dataclasses.replace(wired.command(epoch=lease.epoch), incident_since=3.0)
    assert isinstance(await restarted.failover(retry, primary_last_lsn=None), FailoverSucceeded)

    assert [r.finished for r in await wired.journal.recent()] == ["done", "failed"]
    events = [n.event for n, _ in wired.notifications]
    assert events == ["failover_started", "incident_opened", "status_page", "failover_done"]
    assert {n.dedup_key for n, _ in wired.notifications} == {crashed.run_id}
    assert restarted.close_incident("late", lease.epoch) is None  # resolved by the retry


async def test_an_abandoned_incident_is_resolved_under_its_key(wired: Rig) -> None:
    attempt = dataclasses.replace(wired.command(), incident_since=700.0)
    wired.world.fail[PROMOTE] = PromotionRefused("lag gate")
    await wired.runbook.failover(attempt, primary_last_lsn=None)
    (run,) = await wired.journal.recent()

    resolve = wired.runbook.close_incident("the condition cleared", 1)
    assert resolve is not None
    assert (resolve.event, resolve.resolve, resolve.dedup_key) == (
        "failover_abandoned", True, run.run_id)
    assert wired.runbook.close_incident("again", 1) is None


async def test_a_new_incident_announces_itself_again(wired: Rig) -> None:
    wired.world.fail[PROMOTE] = PromotionRefused("lag gate")
    await wired.runbook.failover(dataclasses.replace(wired.command(), incident_since=1.0),
                                 primary_last_lsn=None)
    wired.runbook.close_incident("cleared", 1)
    await wired.runbook.failover(dataclasses.replace(wired.command(), incident_since=2.0),
                                 primary_last_lsn=None)
    events = [n.event for n, _ in wired.notifications]
    assert events.count("failover_started") == 2
    assert len({n.dedup_key for n, _ in wired.notifications}) == 2


# ---------------------------------------------------------------- journal lost after promotion


async def test_a_journal_lost_after_the_promotion_is_an_alert_and_the_run_is_completed(
    wired: Rig,
) -> None:
    # Promoted; then the lock store stops answering while DNS is repointed, and comes back
    # empty (restarted without its data): the run is gone from the journal.
    wired.world.during["dns"] = lambda: setattr(wired.journal, "down", True)
    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)
    assert isinstance(outcome, FailoverSucceeded)
    assert wired.runbook.incomplete
    wired.journal.down = False
    (lost,) = await wired.journal.recent()
    wired.journal = FakeJournal(wired.lock, wall_clock=wired.clocks.wall)
    wired.runbook.journal = wired.journal
    raised: list[Alert] = []
    wired.runbook.on_alert = raised.append

    resumed = await wired.runbook.resume()

    assert isinstance(resumed, FailoverSucceeded), resumed
    assert not wired.runbook.incomplete
    (recovered,) = await wired.journal.recent()
    assert recovered.run_id.startswith(lost.run_id)
    assert recovered.meta["recovered_from"] == lost.run_id
    assert recovered.finished == "done"
    assert [(e.step, e.status) for e in recovered.entries[:5]] == [
        (step, StepStatus.SKIPPED) for step in FAILOVER_PLAN[:5]]
    # Nothing before the promotion ran again; DNS onwards did.
    assert wired.world.effects == [*EVERY_EFFECT[:6], *EVERY_EFFECT[5:]]
    assert [(a.key, a.resolve) for a in raised] == [("journal", False), ("journal", True)]
    assert "journal lost after the promotion" in raised[0].message


# ---------------------------------------------------------------- the old primary's own watchdog


def peer_answers(answer: PeerFence, asked: list[tuple[str, int, str]]) -> Callable[
    [WatchdogConfig, str, int, str], Awaitable[PeerFence]
]:
    async def peer_fence(_config: WatchdogConfig, region: str, epoch: int,
                         run_id: str) -> PeerFence:
        asked.append((region, epoch, run_id))
        return answer
    return peer_fence


async def test_the_old_primarys_watchdog_is_asked_to_fence_before_the_promotion(
    wired: Rig,
) -> None:
    asked: list[tuple[str, int, str]] = []
    wired.hooks.peer_fence = peer_answers(PeerFence(True, "stopped for good", "peer1"), asked)
    command = wired.command()
    outcome = await wired.runbook.failover(command, primary_last_lsn=None,
                                           old_primary_answering=True)

    assert isinstance(outcome, FailoverSucceeded), outcome
    (run,) = await wired.journal.recent()
    assert asked == [(WEST, command.epoch, run.run_id)]
    # Fenced (stopped) by its own watchdog: what the vantages saw answering is now fenced.
    assert [c["old_primary_answering"] for c in wired.promoter.extra_calls] == [False]
    promote = [e for e in run.entries if e.step == PROMOTE and e.status is StepStatus.DONE]
    assert promote[0].data["peer_fence"] == {"peer": "peer1", "confirmed": True,
                                             "detail": "stopped for good"}


async def test_an_old_primary_its_own_watchdog_cannot_fence_is_not_promoted_past(
    wired: Rig,
) -> None:
    wired.hooks.peer_fence = peer_answers(
        PeerFence(False, "fence target refused the session: too many connections", "peer1"),
        [])
    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverRefused), outcome
    assert outcome.retry is True
    assert "own watchdog (peer1) could not fence it" in outcome.reason
    assert PROMOTE not in wired.world.effects
    assert wired.promoter.calls == []


async def test_a_watchdog_that_tells_nothing_leaves_the_promoters_own_rules(wired: Rig) -> None:
    wired.hooks.peer_fence = peer_answers(PeerFence(None, "no watchdog of us-west-2 heard"), [])
    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None,
                                           old_primary_answering=True)
    assert isinstance(outcome, FailoverSucceeded), outcome
    assert [c["old_primary_answering"] for c in wired.promoter.extra_calls] == [True]


async def test_an_active_failback_run_is_left_to_its_command(wired: Rig) -> None:
    # A failback crashed; the cluster was resumed before ``agentaskit-dr failback`` ran again.
    await wired.journal.open("failback-1", lease=wired.lease, kind="failback",
                             plan=("check_recovered", "sync_primary"), reason="manual",
                             meta={"home_region": "us-west-2"})
    writes = wired.journal.writes

    assert await wired.runbook.resume() is None
    outcome = await wired.runbook.failover(wired.command(), primary_last_lsn=None)

    assert isinstance(outcome, FailoverRefused)
    assert "failback-1 (failback) is active" in outcome.reason
    assert wired.journal.writes == writes
    assert wired.world.effects == []
