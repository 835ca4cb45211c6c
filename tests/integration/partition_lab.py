"""The partition lab started for a test, and what the partition tests ask the databases.

A test module takes the fixture with ``lab = partition_lab.lab`` next to
``network = netcut.network`` (the lab needs the network fixture where the test is)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.netcut import Network
from tests.integration.partition_harness import WRITES_TABLE, PartitionLab, Timing, Writer

#: The daemons' timing in the lab; tests bound their waits with it.
T = Timing()


@pytest.fixture
def lab(pg_pair: PostgresPair, redis_server: RedisServer, network: Network,
        tmp_path: Path) -> Iterator[PartitionLab]:
    """The three daemons over ``pg_pair`` and ``redis_server``, started and healthy."""
    Writer.create_table(pg_pair)
    with PartitionLab(pg_pair, redis_server, network, tmp_path / "daemons", T) as started:
        started.start()
        started.wait_healthy()
        yield started


def takes_writes(server: PostgresServer) -> bool:
    return server.sql(
        f"INSERT INTO {WRITES_TABLE} (side) VALUES ('check') RETURNING 'written'"
    ) == "written"
