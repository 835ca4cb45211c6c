"""A promotion that does not finish as one piece does not strand the run (issue 8), and a
refused fence is a retried refusal, on real PostgreSQL pairs driven through the runbook
(in-memory journal with the real one's fence): pg_promote that lands after it timed out,
a marker write that fails after pg_promote, then the next attempt adopts the promotion
and the run goes on."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.actuators.promote import (
    PostgresPromoter,
    PromotionInDoubt,
    PromotionRefused,
    PromotionResult,
)
from agentaskit_dr.config import WatchdogConfig, load_config
from agentaskit_dr.core import Condition, FailoverRefused, FailoverSucceeded, StartFailover
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.ports import JournalEntry, StepStatus
from agentaskit_dr.runtime import runbook_hooks
from agentaskit_dr.runtime.evidence import read_evidence
from agentaskit_dr.runtime.evidence_layout import run_root
from agentaskit_dr.runtime.executor import FailoverExecutor
from agentaskit_dr.runtime.runbook import FAILOVER_KIND, FAILOVER_PLAN, PROMOTE, Hooks, Runbook
from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration.pg_roles import WATCHDOG, create_roles, dsn_as, reject_in_pg_hba
from tests.integration.pg_state import in_recovery
from tests.unit.fake_journal import FakeJournal, FakeLeases, LockStore

pytestmark = pytest.mark.integration

WEST, EAST = "us-west-2", "us-east-1"


def marker(server: PostgresServer) -> str:
    return server.sql("SELECT epoch, failover_id FROM agentaskit_dr.failover_epoch")


def wait_promoted(server: PostgresServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while in_recovery(server):
        assert time.monotonic() < deadline, "the standby never finished its promotion"
        time.sleep(0.02)


def startup_process(server: PostgresServer) -> int:
    """The standby's startup process: the one that replays WAL and carries out promotion."""
    assert server.proc is not None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) != server.proc.pid:
                continue
            if b"startup" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
    raise AssertionError("no startup process under the standby's postmaster")


def promoter(pair: PostgresPair, *, promote_timeout: float = 10.0) -> PostgresPromoter:
    return PostgresPromoter(
        standby_dsn=dsn_as(pair.replica, WATCHDOG), old_primary_dsn=dsn_as(pair.primary, WATCHDOG),
        max_lag_bytes=16 * 2**20, connect_timeout=1.0, promote_timeout=promote_timeout,
    )


async def promote(target: PostgresPromoter, epoch: int, failover_id: str, *,
                  resuming: bool = False, adopt_from: tuple[str, ...] = ()) -> PromotionResult:
    async def still_leader() -> bool:
        return True

    return await target.promote(
        epoch=epoch, holder="watchdog-east", failover_id=failover_id, primary_last_lsn=None,
        still_leader=still_leader, resuming=resuming, adopt_from=adopt_from,
    )


# ---------------------------------------------------------------- the promoter


async def test_marker_write_failing_after_pg_promote_is_adopted_by_the_next_attempt(
    pg_pair: PostgresPair,
) -> None:
    # The watchdog may promote but not create the marker schema (no CREATE on the database).
    create_roles(pg_pair.primary, watchdog_superuser=False)
    pg_pair.wait_replayed()
    pg_pair.primary.kill()
    target = promoter(pg_pair)

    with pytest.raises(PromotionInDoubt, match="marker was not recorded") as doubt:
        await promote(target, 7, "fo-7")

    assert doubt.value.promoted is True
    assert not in_recovery(pg_pair.replica)
    pg_pair.replica.sql(f"GRANT CREATE ON DATABASE postgres TO {WATCHDOG}")

    adopted = await promote(target, 7, "fo-7", resuming=True)

    assert adopted.already_promoted
    assert marker(pg_pair.replica) == "7|fo-7"


async def test_pg_promote_that_timed_out_and_landed_later_is_adopted_by_a_new_run(
    pg_pair: PostgresPair,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=True)
    pg_pair.wait_replayed()
    pg_pair.primary.kill()
    startup = startup_process(pg_pair.replica)
    os.kill(startup, signal.SIGSTOP)  # a slow promotion: it lands after pg_promote gave up
    try:
        with pytest.raises(PromotionInDoubt, match="did not finish within 1s") as doubt:
            await promote(promoter(pg_pair, promote_timeout=1.0), 7, "fo-7")
    finally:
        os.kill(startup, signal.SIGCONT)
    assert doubt.value.promoted is False
    wait_promoted(pg_pair.replica)
    target = promoter(pg_pair)

    # A run that knows nothing of it still refuses a primary in the standby slot...
    with pytest.raises(PromotionRefused, match="target is not a standby"):
        await promote(target, 8, "fo-8")
    # ...the next attempt of the same incident adopts it under its own epoch.
    adopted = await promote(target, 8, "fo-8", adopt_from=("fo-7",))

    assert adopted.already_promoted
    assert marker(pg_pair.replica) == "8|fo-8"


# ---------------------------------------------------------------- through the runbook


class Rig:
    """The real runbook hooks on a real pair, an in-memory journal, one lock holder."""

    def __init__(self, pair: PostgresPair, tmp_path: Path) -> None:
        self.config = _config(pair, tmp_path)
        self.lock = LockStore()
        self.lease = self.lock.take_over("watchdog-east")
        self.journal = FakeJournal(self.lock)
        hooks = Hooks(promoter=runbook_hooks.promoter,
                      check_primary=runbook_hooks.check_primary,
                      verify_standby=runbook_hooks.verify_standby)
        self.runbook = Runbook(self.journal, FailoverExecutor(FakeLeases(self.lock, self.lease),
                                                              holder="watchdog-east"),
                               hooks, config=lambda: self.config, clock=time.monotonic)

    def command(self) -> StartFailover:
        now = time.monotonic()
        return StartFailover(condition=Condition.DB_UNREACHABLE, epoch=self.lease.epoch,
                             reason="primary database unreachable for 121s",
                             failing_since=now - 121.0, decided_at=now - 1.0)


def _config(pair: PostgresPair, tmp_path: Path) -> WatchdogConfig:
    data: dict[str, Any] = {
        "region": EAST, "primary_region": WEST, "node_name": "watchdog-east",
        "regions": {
            WEST: {"health_urls": ["http://127.0.0.1:9/west"],
                   "database": {"dsn": dsn_as(pair.primary, WATCHDOG)}},
            EAST: {"health_urls": ["http://127.0.0.1:9/east"],
                   "database": {"dsn": dsn_as(pair.replica, WATCHDOG)}},
        },
        "probe": {"timeout": "1s"},
        "promotion": {"catch_up_timeout": "5s", "timeout": "1s"},
        "evidence_dir": str(tmp_path / "evidence"),
    }
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


async def test_refused_fence_refuses_the_failover_for_a_retry_and_promotes_nothing(
    pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=True)
    reject_in_pg_hba(pg_pair.primary, WATCHDOG)
    rig = Rig(pg_pair, tmp_path)

    outcome = await rig.runbook.failover(rig.command())

    assert isinstance(outcome, FailoverRefused), outcome
    assert outcome.retry  # the core retries after retry_backoff, with an alert
    assert "fence not confirmed" in outcome.reason
    assert in_recovery(pg_pair.replica)
    [run] = await rig.journal.recent()
    assert run.finished == "failed"
    assert run.last_status(PROMOTE) is StepStatus.FAILED
    assert not rig.runbook.incomplete


async def test_marker_failure_keeps_the_run_open_and_the_resume_adopts_and_finishes(
    pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=False)
    pg_pair.wait_replayed()
    pg_pair.primary.kill()
    rig = Rig(pg_pair, tmp_path)

    first = await rig.runbook.failover(rig.command())

    # Promoted: the database serves from the new region, the core must know it.
    assert isinstance(first, FailoverSucceeded), first
    assert "marker was not recorded" in first.detail
    assert rig.runbook.incomplete
    active = await rig.journal.active()
    assert active is not None
    assert active.last_status(PROMOTE) is StepStatus.FAILED
    pg_pair.replica.sql(f"GRANT CREATE ON DATABASE postgres TO {WATCHDOG}")

    resumed = await rig.runbook.resume()

    assert isinstance(resumed, FailoverSucceeded), resumed
    assert not rig.runbook.incomplete
    assert await rig.journal.active() is None
    [run] = await rig.journal.recent()
    assert run.finished == "done"
    assert marker(pg_pair.replica) == f"{rig.lease.epoch}|{run.run_id}"
    assert [e.step for e in run.entries if e.status is StepStatus.DONE][-1] == FAILOVER_PLAN[-1]


async def test_new_run_after_a_closed_attempt_adopts_its_promotion_and_finishes(
    pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    # An earlier attempt of this incident sent pg_promote and was closed as refused before
    # its marker was written (a journal that lost it, an older watchdog...).
    create_roles(pg_pair.primary, watchdog_superuser=True)
    pg_pair.wait_replayed()
    pg_pair.primary.kill()
    rig = Rig(pg_pair, tmp_path)
    earlier = "fo-earlier-attempt"
    await rig.journal.open(earlier, lease=rig.lease, kind=FAILOVER_KIND, plan=FAILOVER_PLAN,
                           reason="primary database unreachable for 121s",
                           meta={"from_region": WEST, "to_region": EAST})
    await rig.journal.record(earlier, JournalEntry(PROMOTE, StepStatus.STARTED,
                                                   rig.lease.epoch, time.time()),
                             lease=rig.lease)
    await rig.journal.finish(earlier, "failed", lease=rig.lease)
    pg_pair.replica.sql("SELECT pg_promote()")

    outcome = await rig.runbook.failover(rig.command())

    assert isinstance(outcome, FailoverSucceeded), outcome
    run = next(r for r in await rig.journal.recent() if r.run_id != earlier)
    assert run.finished == "done"
    assert run.meta["adopts_promotion_of"] == [earlier]
    assert marker(pg_pair.replica) == f"{rig.lease.epoch}|{run.run_id}"


async def test_pg_promote_timing_out_keeps_the_run_open_and_the_resume_adopts_it(
    pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=True)
    pg_pair.wait_replayed()
    pg_pair.primary.kill()
    rig = Rig(pg_pair, tmp_path)
    startup = startup_process(pg_pair.replica)
    os.kill(startup, signal.SIGSTOP)
    try:
        first = await rig.runbook.failover(rig.command())
    finally:
        os.kill(startup, signal.SIGCONT)

    # Not known to be promoted: refused for a retry, but the run stays open.
    assert isinstance(first, FailoverRefused), first
    assert first.retry
    assert rig.runbook.incomplete
    assert await rig.journal.active() is not None
    wait_promoted(pg_pair.replica)  # it landed after all

    resumed = await rig.runbook.resume()

    assert isinstance(resumed, FailoverSucceeded), resumed
    [run] = await rig.journal.recent()
    assert run.finished == "done"
    assert marker(pg_pair.replica) == f"{rig.lease.epoch}|{run.run_id}"


async def test_failover_with_the_old_primary_answering_fences_it_and_records_zero_loss(
    pg_pair: PostgresPair, tmp_path: Path,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=True)
    pg_pair.primary.sql("INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 100) g")
    rig = Rig(pg_pair, tmp_path)

    outcome = await rig.runbook.failover(rig.command(), old_primary_answering=True)

    assert isinstance(outcome, FailoverSucceeded), outcome
    [run] = await rig.journal.recent()
    assert run.meta["old_primary_answering"] is True
    assert pg_pair.primary.sql("SHOW default_transaction_read_only") == "on"
    assert pg_pair.replica.sql("SELECT count(*) FROM orders") == "100"
    evidence = read_evidence(run_root(rig.config.evidence_dir), FAILOVER_KIND, run.run_id)
    assert evidence["rpo"]["lag_bytes"] == 0
    promotion = evidence["extra"]["promotion"]
    assert promotion["standby_replay_lsn"] >= promotion["old_primary_final_lsn"] > 0
    assert promotion["catch_up_seconds"] is not None
