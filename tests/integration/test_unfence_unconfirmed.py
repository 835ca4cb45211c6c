"""``unfence`` fails closed like the start gate: as the real CLI against a real pair, a real
redis-server (refusing, frozen with SIGSTOP, or recording a failover) and silent peers.

West's primary was fenced (roles locked out, ``standby.signal`` written); its host is cut
off. Before, ``unfence`` asked only the lock store and east's server and, hearing
nothing, lifted the fence while east might have been promoted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog

from agentaskit_dr.actuators.fence import fence_server
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.test_start_gate import EAST, WEST, cli
from tests.integration.test_start_gate_unconfirmed import (  # noqa: F401
    REFUSING,
    cut_off,
    hanging_port,
    record_failover_to_east,
    rewrite,
)

pytestmark = pytest.mark.integration

UNFENCE = ("unfence", "--region", WEST, "--yes", "--remove-standby-signal")


async def fenced(pair: PostgresPair) -> None:
    """West's primary fenced as a self-fence leaves it: role ``app`` locked out, read-only
    by default, ``standby.signal`` in its data directory."""
    pair.primary.sql("CREATE ROLE app LOGIN")
    result = await fence_server(pair.primary.dsn, epoch=None, io_timeout=2.0,
                                flog=structlog.get_logger())
    assert result.roles_locked_out == ("app",)
    (pair.primary.datadir / "standby.signal").touch()


def said(stream: str) -> list[str]:
    """The lines for the operator (the JSON log events on stderr left out)."""
    return [line for line in stream.strip().splitlines() if not line.startswith("{")]


def still_fenced(pair: PostgresPair) -> bool:
    return (
        (pair.primary.datadir / "standby.signal").is_file()
        and pair.primary.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == "f"
        and pair.primary.sql("SHOW default_transaction_read_only") == "on"
    )


async def test_unfence_that_hears_nothing_refuses_with_a_line_per_source(
    tmp_path: Path, pg_pair: PostgresPair, hanging_port: int,  # noqa: F811
) -> None:
    await fenced(pg_pair)
    config = cut_off(tmp_path, pg_pair, hanging_port)

    code, out, err = await cli(config, *UNFENCE)

    assert code == 1, out
    lines = said(err)
    assert lines[0] == ("agentaskit-dr unfence: refusing to lift us-west-2's fence: nothing "
                        "confirms the primary is not elsewhere, nothing answered; nothing "
                        "changed")
    silent = [line for line in lines if line.startswith("  silent: ")]
    assert len(silent) == 4
    assert f"lock store redis://{REFUSING}/0" in silent[0]
    assert f"127.0.0.1:{hanging_port}/postgres unreachable" in silent[1]
    assert any(f"peer1 http://{REFUSING}" in line for line in silent)
    assert any(f"witness http://127.0.0.1:{hanging_port}: no answer within 0.5s" in line
               for line in silent)
    assert lines[-1] == "to lift it on purpose: agentaskit-dr unfence --allow-unconfirmed"
    assert still_fenced(pg_pair)


async def test_a_frozen_lock_store_counts_as_silent(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
    hanging_port: int,  # noqa: F811
) -> None:
    await fenced(pg_pair)
    config = rewrite(cut_off(tmp_path, pg_pair, hanging_port),
                     lock={"url": redis_server.url, "ttl": "3s", "socket_timeout": "0.5s"})
    redis_server.pause()
    try:
        started = time.monotonic()
        code, out, err = await cli(config, *UNFENCE)
        took = time.monotonic() - started
    finally:
        redis_server.resume()

    assert code == 1, out
    assert f"  silent: lock store {redis_server.url}" in err
    assert still_fenced(pg_pair)
    # Bounded by the timeouts (0.5 s each, asked at once), not by the frozen store.
    assert took < 15, took


async def test_unfence_lifts_unconfirmed_on_purpose_and_says_so(
    tmp_path: Path, pg_pair: PostgresPair, hanging_port: int,  # noqa: F811
) -> None:
    await fenced(pg_pair)
    config = cut_off(tmp_path, pg_pair, hanging_port)

    code, out, err = await cli(config, *UNFENCE, "--allow-unconfirmed")

    assert code == 0, err
    lines = said(out)
    assert lines[0].startswith("lifting us-west-2's fence unconfirmed, on purpose "
                               "(--allow-unconfirmed): nothing answered: lock store")
    assert "LOGIN given back to: app" in lines[-1]
    assert not (pg_pair.primary.datadir / "standby.signal").exists()
    assert pg_pair.primary.sql("SHOW default_transaction_read_only") == "off"


async def test_a_recorded_failover_elsewhere_refuses_even_with_allow_unconfirmed(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer,
    hanging_port: int,  # noqa: F811
) -> None:
    # The lock store is the only source that answers, and it records east's failover.
    epoch = await record_failover_to_east(redis_server.url)
    await fenced(pg_pair)
    config = rewrite(cut_off(tmp_path, pg_pair, hanging_port),
                     lock={"url": redis_server.url, "ttl": "3s", "socket_timeout": "0.5s"})

    code, out, err = await cli(config, *UNFENCE, "--allow-unconfirmed")

    assert code == 1, out
    assert "refusing to lift us-west-2's fence: the cluster record in the lock store says " \
           f"the primary is in {EAST} since the failover of epoch {epoch}" in err
    assert still_fenced(pg_pair)
