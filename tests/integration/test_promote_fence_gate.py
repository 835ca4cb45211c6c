"""The fence gates the promotion, and the standby catches up before it (issue 8), on real
PostgreSQL pairs: an old primary that answers is never promoted past unless its fence is
confirmed, and the fenced old primary's final WAL position is replayed before pg_promote."""

from __future__ import annotations

import asyncio
import signal

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.actuators.promote import (
    PostgresPromoter,
    PromotionRefused,
    PromotionResult,
)
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration.pg_roles import (
    APP,
    WATCHDOG,
    Writer,
    create_roles,
    dsn_as,
    reject_in_pg_hba,
    signal_process,
    walreceiver_pid,
)
from tests.integration.pg_state import in_recovery

pytestmark = pytest.mark.integration

CONNECT_TIMEOUT = 1.0


def promoter(pair: PostgresPair, *, catch_up_timeout: float = 10.0) -> PostgresPromoter:
    return PostgresPromoter(
        standby_dsn=dsn_as(pair.replica, WATCHDOG),
        old_primary_dsn=dsn_as(pair.primary, WATCHDOG),
        max_lag_bytes=16 * 2**20,
        connect_timeout=CONNECT_TIMEOUT,
        promote_timeout=10.0,
        catch_up_timeout=catch_up_timeout,
    )


async def promote(target: PostgresPromoter, *, force: bool = False,
                  old_primary_answering: bool = False) -> PromotionResult:
    async def still_leader() -> bool:
        return True

    return await target.promote(
        epoch=7, holder="watchdog-east", failover_id="fo-7", primary_last_lsn=None,
        still_leader=still_leader, force=force, old_primary_answering=old_primary_answering,
    )


def rows(server: PostgresServer) -> set[int]:
    return {int(v) for v in server.sql("SELECT id FROM orders").split()}


async def test_primary_rejecting_the_watchdog_in_pg_hba_is_not_promoted_past(
    pg_pair: PostgresPair,
) -> None:
    # Today's split brain: the fence fails for the same reason the probe did, and
    # pg_promote went ahead while the application kept committing on the old primary.
    create_roles(pg_pair.primary, watchdog_superuser=True)
    reject_in_pg_hba(pg_pair.primary, WATCHDOG)
    async with Writer(dsn_as(pg_pair.primary, APP)) as app:
        with capture_logs() as events, pytest.raises(PromotionRefused) as refused:
            await promote(promoter(pg_pair))
        before = len(app.acknowledged)
        await app.wrote(before + 5)  # the application still commits on the old primary

    assert "fence not confirmed" in refused.value.reason
    assert "pg_hba.conf rejects connection" in refused.value.reason
    assert app.stopped_by is None
    assert in_recovery(pg_pair.replica)  # nothing promoted: one writable primary
    names = [e["event"] for e in events]
    assert "pg_promote_done" not in names
    assert "promotion_refused" in names


async def test_fence_that_cannot_be_confirmed_refuses_the_promotion(
    pg_pair: PostgresPair,
) -> None:
    # The watchdog may promote, but lacks the privilege the fence needs (ALTER SYSTEM).
    create_roles(pg_pair.primary, watchdog_superuser=False)
    pg_pair.wait_replayed()

    with pytest.raises(PromotionRefused, match="fence not confirmed") as refused:
        await promote(promoter(pg_pair))

    assert "permission denied" in refused.value.reason
    assert in_recovery(pg_pair.replica)
    pg_pair.primary.sql("INSERT INTO orders VALUES (1, 'still the only primary')")


async def test_old_primary_killed_is_promoted_past_on_its_self_fence(
    pg_pair: PostgresPair,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=True)
    pg_pair.wait_replayed()
    pg_pair.primary.kill()  # connection refused: nobody can reach it

    with capture_logs() as events:
        result = await promote(promoter(pg_pair))

    assert result.old_primary_fenced is None
    assert "self-fence" in result.detail
    assert not in_recovery(pg_pair.replica)
    assert "old_primary_not_fenced" in [e["event"] for e in events]


async def test_old_primary_unreachable_here_but_answering_elsewhere_is_not_promoted_past(
    pg_pair: PostgresPair,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=True)
    pg_pair.wait_replayed()
    pg_pair.primary.kill()

    with pytest.raises(PromotionRefused, match="answers another vantage"):
        await promote(promoter(pg_pair), old_primary_answering=True)

    assert in_recovery(pg_pair.replica)


async def test_every_write_the_old_primary_acknowledged_is_on_the_new_primary(
    pg_pair: PostgresPair,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=True)
    pg_pair.wait_replayed()
    # Replication falls behind (a slow link): the standby receives nothing for a while
    # during which the application keeps committing on the old primary.
    receiver = walreceiver_pid(pg_pair.replica)
    async with Writer(dsn_as(pg_pair.primary, APP), pad=2000) as app:
        await app.wrote(50)
        signal_process(receiver, signal.SIGSTOP)
        try:
            await app.wrote(len(app.acknowledged) + 300)
            asyncio.get_running_loop().call_later(
                1.0, signal_process, receiver, signal.SIGCONT)
            with capture_logs() as events:
                result = await promote(promoter(pg_pair))
        finally:
            signal_process(receiver, signal.SIGCONT)
        await app.wrote(10**9)  # until the fence ends its session

    assert app.stopped_by is not None
    assert result.old_primary_fenced is True
    assert result.lag_bytes == 0  # RPO measured: nothing lost
    assert result.final_lsn is not None
    assert result.replay_lsn is not None
    assert result.replay_lsn >= result.final_lsn
    assert result.catch_up_seconds is not None
    assert not in_recovery(pg_pair.replica)
    assert set(app.acknowledged) <= rows(pg_pair.replica)  # zero acknowledged writes lost
    names = [e["event"] for e in events]
    assert names.index("old_primary_fence_confirmed") < names.index("promotion_caught_up")
    assert names.index("promotion_caught_up") < names.index("pg_promote_done")


async def test_standby_that_cannot_catch_up_is_refused_within_the_timeout_and_force_promotes(
    pg_pair: PostgresPair,
) -> None:
    create_roles(pg_pair.primary, watchdog_superuser=True)
    pg_pair.wait_replayed()
    pg_pair.replica.sql("SELECT pg_wal_replay_pause()")
    pg_pair.primary.sql("INSERT INTO orders SELECT g, repeat('x', 1000) "
                        "FROM generate_series(1, 500) g")
    target = promoter(pg_pair, catch_up_timeout=1.0)

    with pytest.raises(PromotionRefused, match="catch_up_timeout 1s") as refused:
        await promote(target)

    assert "replay is paused" in refused.value.reason
    assert in_recovery(pg_pair.replica)
    assert pg_pair.primary.sql("SHOW default_transaction_read_only") == "on"  # fenced

    with capture_logs() as events:
        forced = await promote(target, force=True)

    assert "catch_up_overridden" in [e["event"] for e in events]
    assert forced.final_lsn is not None
    assert forced.replay_lsn is not None
    assert forced.lag_bytes == forced.final_lsn - forced.replay_lsn
    assert forced.lag_bytes > 400_000
    assert not in_recovery(pg_pair.replica)
