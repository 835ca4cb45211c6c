"""The start gate fails closed when nothing can confirm where the primary is (chaos seed
1000), as the real CLI against a real pair, a real Redis and a real witness daemon.

The old primary's host is cut off from the lock store and from the other region; its
server was killed and its service manager starts it again. Before, the gate had nothing
to ask and let it start as primary while the other region promoted.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.leadership.redis_lock import RedisLeaderLock
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import WatchdogFleet, is_event
from tests.integration.test_start_gate import EAST, WEST, cli, write_config

pytestmark = pytest.mark.integration

#: Nothing listens there: connections are refused at once.
REFUSING = "127.0.0.1:9"


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port that completes the TCP handshake (the kernel's backlog) and never answers,
    like a peer behind a one-way drop or a frozen process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def rewrite(path: Path, **changes: object) -> Path:
    """Change top-level keys of the gate's config (and ``east_dsn``: the other server)."""
    config = yaml.safe_load(path.read_text())
    east_dsn = changes.pop("east_dsn", None)
    if east_dsn is not None:
        config["regions"][EAST]["database"]["dsn"] = east_dsn
    config.update(changes)
    path.write_text(yaml.safe_dump(config))
    return path


def cut_off(tmp_path: Path, pair: PostgresPair, hanging: int) -> Path:
    """West's gate with its lock store refusing, the other region's server and the
    witness hanging, a peer watchdog refusing: nothing answers."""
    config = write_config(tmp_path, pair, lock_url=f"redis://{REFUSING}/0")
    return rewrite(config, east_dsn=f"postgresql://postgres@127.0.0.1:{hanging}/postgres",
                   witness=f"http://127.0.0.1:{hanging}", peers=[f"http://{REFUSING}"])



async def record_failover_to_east(redis_url: str) -> int:
    """The lock store records east as primary under the epoch of a lock east took;
    that epoch."""
    store = RedisClusterStore(redis_url)
    lock = RedisLeaderLock(redis_url, holder="east", ttl=3.0)
    lease = await lock.acquire()
    assert lease is not None
    await store.record_primary(EAST, epoch=lease.epoch, run_id="fo-east", lease=lease)
    await lock.close()
    await store.close()
    return lease.epoch


async def test_a_gate_that_hears_nothing_refuses_the_start_and_says_why(
    tmp_path: Path, pg_pair: PostgresPair, hanging_port: int,
) -> None:
    config = cut_off(tmp_path, pg_pair, hanging_port)
    pg_pair.primary.kill()

    code, out, err = await cli(config, "start-gate")

    assert code == 1, out
    line = err.strip().splitlines()[-1]
    assert line.startswith("refusing to start us-west-2 as primary: nothing confirms")
    # It names each source that did not answer, and how to start anyway on purpose.
    assert f"lock store redis://{REFUSING}/0" in line
    assert f"127.0.0.1:{hanging_port}/postgres unreachable" in line
    assert f"witness http://127.0.0.1:{hanging_port}: no answer within 0.5s" in line
    assert f"peer1 http://{REFUSING}" in line
    assert "--allow-unconfirmed" in line
    assert "start_gate.when_unconfirmed: allow" in line
    # Nothing says the primary is elsewhere: no standby.signal (a later start decides).
    assert not (pg_pair.primary.datadir / "standby.signal").exists()


async def test_a_hanging_lock_store_counts_as_silent_too(
    tmp_path: Path, pg_pair: PostgresPair, hanging_port: int,
) -> None:
    config = rewrite(cut_off(tmp_path, pg_pair, hanging_port),
                     lock={"url": f"redis://127.0.0.1:{hanging_port}/0", "ttl": "3s",
                           "socket_timeout": "0.5s"})
    pg_pair.primary.kill()

    code, _, err = await cli(config, "start-gate")

    assert code == 1
    assert f"lock store redis://127.0.0.1:{hanging_port}/0" in err


async def test_starting_unconfirmed_on_purpose_is_allowed_and_said(
    tmp_path: Path, pg_pair: PostgresPair, hanging_port: int,
) -> None:
    config = cut_off(tmp_path, pg_pair, hanging_port)
    pg_pair.primary.kill()

    code, out, err = await cli(config, "start-gate", "--allow-unconfirmed")
    assert code == 0, err
    assert "may start as primary, unconfirmed (allowed on purpose)" in out

    rewrite(config, start_gate={"when_unconfirmed": "allow"})
    code, out, err = await cli(config, "start-gate")
    assert code == 0, err
    assert "unconfirmed" in out


async def test_a_bad_when_unconfirmed_is_one_line_naming_the_key(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = rewrite(write_config(tmp_path, pg_pair), start_gate={"when_unconfirmed": "maybe"})

    code, _, err = await cli(config, "start-gate")

    assert code == 2
    assert "start_gate.when_unconfirmed" in err
    assert "Traceback" not in err


async def test_the_witness_reporting_a_failover_elsewhere_refuses_the_start(
    tmp_path: Path, pg_pair: PostgresPair, redis_server: RedisServer, hanging_port: int,
) -> None:
    # East was promoted under epoch 3 and recorded so; a real witness daemon follows the
    # record. West's gate reaches neither the lock store nor east's server: only the
    # witness.
    epoch = await record_failover_to_east(redis_server.url)
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "fleet") as fleet:
        witness = fleet.start(EAST, name="witness", overrides={"role": "witness"})
        listen = yaml.safe_load(witness.config.read_text())["api"]["listen"]
        fleet.wait_for(is_event("daemon_started"), 30, what="the witness started")
        report = _observations(f"http://{listen}")
        assert report["primary_region"] == EAST
        assert report["failover_epoch"] == epoch
        pg_pair.primary.kill()
        config = cut_off(tmp_path, pg_pair, hanging_port)
        rewrite(config, witness=f"http://{listen}", peers=[])

        code, out, err = await cli(config, "start-gate")

    assert code == 1, out
    assert (f"witness (witness, witness in {EAST}) reports the primary in {EAST} since "
            f"epoch {epoch}") in err
    # The primary is elsewhere: in control mode the gate made a start anyway read-only.
    assert (pg_pair.primary.datadir / "standby.signal").is_file()
    assert WEST in err


def _observations(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/v1/observations", timeout=5) as response:
        body = json.loads(response.read())
    assert isinstance(body, dict)
    return body
