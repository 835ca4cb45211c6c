"""The self-fence survives a restart of its watchdog (chaos seed 9103).

The record (``runtime/self_fence_record.py``) is written when the core fences, removed
when ``self_fenced`` goes False, and read back at start: only a record of this
watchdog's region, while that region is the primary's, makes the initial state
self-fenced again. A record that cannot be written never stops the fence.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from structlog.testing import capture_logs

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import (
    Acknowledged,
    Assessed,
    FenceOwnPrimary,
    SelfFenceFailed,
    SelfFenceLiftDone,
    WatchState,
    transition,
)
from agentaskit_dr.core.self_fence import restored
from agentaskit_dr.runtime.engine import Engine
from agentaskit_dr.runtime.executor import FailoverExecutor
from agentaskit_dr.runtime.self_fence_record import persist, record_path, restore
from tests.unit.fake_journal import engine_runbook
from tests.unit.test_engine_virtual_time import EAST, WEST, FakeLeases, World, watchdog_config
from tests.unit.test_machine_vantage import HEALTHY, SELF_ISOLATED, THRESHOLDS, leader_state, run

ISOLATED = Assessed(SELF_ISOLATED, primary_side=True, db_evidence=True, region_evidence=False)


def config_in(evidence_dir: Path, *, region: str = WEST) -> WatchdogConfig:
    return watchdog_config(jitter=0.0, region=region).model_copy(
        update={"evidence_dir": evidence_dir})


def self_fenced(epoch: int = 3) -> tuple[WatchState, WatchState, list[FenceOwnPrimary]]:
    """(the state just before, the state once fenced at 95 s, the fence command)."""
    before, _ = run([(5.0 * i, ISOLATED) for i in range(19)])
    assert not before.self_fenced
    assert before.epoch == epoch
    after, commands = transition(before, ISOLATED, 95.0)
    assert after.self_fenced
    return before, after, [c for c in commands if isinstance(c, FenceOwnPrimary)]


def test_a_self_fence_is_recorded_and_restored_with_its_fence_epoch(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    before, after, fence = self_fenced()

    persist(config, before, after, fence)

    record = json.loads(record_path(tmp_path).read_text())
    assert record_path(tmp_path) == tmp_path / "state" / "self-fence.json"
    assert record["region"] == WEST
    assert record["fence_epoch"] == after.self_fence_epoch == 3
    assert "isolated from peer and witness" in record["reason"]
    assert isinstance(record["fenced_at"], float)
    with capture_logs() as logs:
        state = restore(config, WatchState(thresholds=THRESHOLDS), 500.0)
    assert state.self_fenced
    assert state.self_fence_epoch == 3
    assert state.self_fenced_at == 500.0  # thresholds.recovery is waited again
    assert state.lift_ready_since is None
    assert not state.lift_pending
    restored = [e for e in logs if e["event"] == "self_fence_restored"]
    assert len(restored) == 1
    assert restored[0]["log_level"] == "critical"
    assert restored[0]["record"]["fence_epoch"] == 3
    assert record_path(tmp_path).is_file()  # kept until the fence goes


def test_no_record_starts_unfenced(tmp_path: Path) -> None:
    state = restore(config_in(tmp_path), WatchState(), 1.0)
    assert not state.self_fenced


def test_a_record_of_another_region_is_removed_not_restored(tmp_path: Path) -> None:
    before, after, fence = self_fenced()
    persist(config_in(tmp_path), before, after, fence)

    with capture_logs() as logs:
        state = restore(config_in(tmp_path, region=EAST), WatchState(), 1.0)

    assert not state.self_fenced
    assert not record_path(tmp_path).exists()
    removed = [e for e in logs if e["event"] == "self_fence_record_removed"]
    assert "names us-west-2" in removed[0]["why"]


def test_a_record_of_a_region_no_longer_the_primary_is_removed_not_restored(
    tmp_path: Path,
) -> None:
    before, after, fence = self_fenced()
    persist(config_in(tmp_path), before, after, fence)

    with capture_logs() as logs:
        state = restore(config_in(tmp_path).with_primary(EAST), WatchState(), 1.0)

    assert not state.self_fenced
    assert not record_path(tmp_path).exists()
    removed = [e for e in logs if e["event"] == "self_fence_record_removed"]
    assert "no longer the primary's region" in removed[0]["why"]


def test_an_unreadable_record_is_said_and_restores_nothing(tmp_path: Path) -> None:
    record_path(tmp_path).parent.mkdir(parents=True)
    record_path(tmp_path).write_text("{half")
    with capture_logs() as logs:
        state = restore(config_in(tmp_path), WatchState(), 1.0)
    assert not state.self_fenced
    assert [e["event"] for e in logs] == ["self_fence_record_unreadable"]


def test_the_record_goes_when_the_fence_is_lifted(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    before, fenced, fence = self_fenced()
    persist(config, before, fenced, fence)
    pending = replace(fenced, lift_pending=True)

    lifted, _ = transition(pending, SelfFenceLiftDone(True, "lifted"), 200.0)
    persist(config, pending, lifted, [])

    assert not lifted.self_fenced
    assert not record_path(tmp_path).exists()


def test_a_refused_lift_keeps_the_record(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    before, fenced, fence = self_fenced()
    persist(config, before, fenced, fence)
    pending = replace(fenced, lift_pending=True)

    refused, _ = transition(pending, SelfFenceLiftDone(False, "no"), 200.0)
    persist(config, pending, refused, [])

    assert refused.self_fenced
    assert record_path(tmp_path).is_file()


def test_the_record_goes_when_the_fence_is_acknowledged_or_failed(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    before, fenced, fence = self_fenced()
    for event in (Acknowledged(), SelfFenceFailed("server did not stop")):
        persist(config, before, fenced, fence)
        assert record_path(tmp_path).is_file()
        cleared, _ = transition(fenced, event, 200.0)
        persist(config, fenced, cleared, [])
        assert not cleared.self_fenced
        assert not record_path(tmp_path).exists(), event


def engine_of(config: WatchdogConfig, evidence: Path) -> Engine:
    world = World()
    executor = FailoverExecutor(FakeLeases(), holder=config.holder)
    loop = asyncio.get_running_loop()
    runbook = engine_runbook(executor, world.promoter, lambda: config, evidence, loop.time)
    return Engine(config, config_path=None, probes=world.probes, promoters=world.promoter,
                  executor=executor, runbook=runbook)


async def test_the_engine_records_the_fence_before_it_runs_and_restores_it_at_start(
    tmp_path: Path,
) -> None:
    config = config_in(tmp_path / "evidence")
    engine = engine_of(config, tmp_path / "runs")
    now = asyncio.get_running_loop().time()
    engine.state = replace(engine.state, thresholds=THRESHOLDS, isolated_since=now - 100.0)

    commands = engine._apply(ISOLATED)

    assert [c for c in commands if isinstance(c, FenceOwnPrimary)]
    assert record_path(config.evidence_dir).is_file()  # before the fence ran
    again = engine_of(config, tmp_path / "runs")
    assert not again.state.self_fenced  # restored once the cluster record was followed
    again.restore_self_fence()
    assert again.state.self_fenced
    assert again.state.self_fence_epoch == engine.state.self_fence_epoch


async def test_a_record_that_cannot_be_written_does_not_stop_the_fence(tmp_path: Path) -> None:
    blocker = tmp_path / "evidence"
    blocker.write_text("a file where the state directory would go")
    engine = engine_of(config_in(blocker), tmp_path / "runs")
    now = asyncio.get_running_loop().time()
    engine.state = replace(engine.state, thresholds=THRESHOLDS, isolated_since=now - 100.0)

    with capture_logs() as logs:
        commands = engine._apply(ISOLATED)

    assert engine.state.self_fenced
    assert [c for c in commands if isinstance(c, FenceOwnPrimary)]
    failed = [e for e in logs if e["event"] == "self_fence_record_not_saved"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"


HEALTHY_VIEW = Assessed(HEALTHY, primary_side=True, db_evidence=True, region_evidence=False)


def test_a_restored_fence_is_applied_again_once_isolated_for_fence_after() -> None:
    """The restart may have cut the fence short (the record is written before it runs):
    isolated for ``fence_after`` after the restart, the watchdog fences again, once."""
    state = restored(leader_state(), 3, 500.0)

    state, commands = run([(505.0 + 5 * i, ISOLATED) for i in range(40)], state)

    fences = [(t, c) for t, c in commands if isinstance(c, FenceOwnPrimary)]
    assert [t for t, _ in fences] == [600.0]  # the first evidence past 90 s, like the first
    assert "restored self-fence" in fences[0][1].reason
    assert state.self_fenced
    assert state.self_fence_epoch == 3


def test_a_restored_fence_that_hears_its_peers_is_not_applied_again() -> None:
    state = restored(leader_state(), 3, 500.0)

    state, commands = run([(505.0 + 5 * i, HEALTHY_VIEW) for i in range(5)], state)

    assert [c for _, c in commands if isinstance(c, FenceOwnPrimary)] == []
    assert state.self_fenced


def test_a_paused_watchdog_does_not_apply_a_restored_fence_again() -> None:
    state = restored(replace(leader_state(), paused=True), 3, 500.0)

    _, commands = run([(505.0 + 5 * i, ISOLATED) for i in range(40)], state)

    assert [c for _, c in commands if isinstance(c, FenceOwnPrimary)] == []
