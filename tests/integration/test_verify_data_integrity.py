"""``verify-data-integrity`` (failback step 3) on a real primary + streaming standby.

Each failing case damages the standby's files the way a disk or a bad copy would: the
server is stopped, bytes of a table's relation file are overwritten, and it is started
again. With data checksums the page cannot be read (amcheck names the table); without
them a changed value reads fine and only the comparison of the two copies catches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml

from agentaskit_dr.config import load_config
from agentaskit_dr.integrity import verify_data_integrity
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration

WEST, EAST = "us-west-2", "us-east-1"
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "dr" / "verify-data-integrity.sh"
MARKER = b"integrity-marker-AAAAAAAA"

SCHEMA = """
CREATE EXTENSION amcheck;
CREATE TABLE orders (id int PRIMARY KEY, customer int, amount numeric(12, 2),
                     note text, at timestamptz DEFAULT now());
CREATE INDEX orders_customer ON orders (customer);
CREATE TABLE events (kind text, payload jsonb, raw bytea);
CREATE SCHEMA "Billing";
CREATE TABLE "Billing"."Invoice Lines" (invoice int, line int, price float8,
                                        PRIMARY KEY (invoice, line));
INSERT INTO orders (id, customer, amount, note)
  SELECT i, i % 97, i * 1.25, 'order ' || i FROM generate_series(1, 5000) AS i;
INSERT INTO orders (id, customer, amount, note) VALUES (0, 0, 0, 'integrity-marker-AAAAAAAA');
INSERT INTO events SELECT 'tick', jsonb_build_object('n', i), sha256(i::text::bytea)
  FROM generate_series(1, 2000) AS i;
-- rows with no key and duplicates: the hash counts each copy
INSERT INTO events SELECT 'dup', '{}', '\\x00' FROM generate_series(1, 3);
INSERT INTO "Billing"."Invoice Lines"
  SELECT i / 10, i % 10, i / 3.0 FROM generate_series(1, 3000) AS i;
"""


def documented_grants() -> str:
    """The SQL block of docs/postgres-privileges.md's section "verify-data-integrity"."""
    text = (ROOT / "docs" / "postgres-privileges.md").read_text()
    section = text.split("\n## verify-data-integrity\n", 1)[1]
    return section.split("```sql\n", 1)[1].split("```", 1)[0]


def write_config(path: Path, primary_dsn: str, standby_dsn: str) -> Path:
    regions = {
        WEST: {"health_urls": ["http://127.0.0.1:9/health"], "database": {"dsn": primary_dsn}},
        EAST: {"health_urls": ["http://127.0.0.1:9/health"], "database": {"dsn": standby_dsn}},
    }
    # The standby region first: the command asks the servers who is primary.
    config = {"region": EAST, "primary_region": EAST, "regions": dict(reversed(regions.items())),
              "api": {"listen": None}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def seeded(pair: PostgresPair) -> PostgresPair:
    """The schema and rows on the primary, frozen and checkpointed on both servers, so that
    no later hint-bit write or WAL replay rewrites the pages a test damages."""
    pair.primary.sql(SCHEMA)
    for table in ("orders", "events", '"Billing"."Invoice Lines"'):
        pair.primary.sql(f"VACUUM (FREEZE) {table}")
    pair.primary.sql("CHECKPOINT")
    pair.wait_replayed()
    pair.replica.sql("CHECKPOINT")  # a restartpoint: the replica's files hold every page
    return pair


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    # No page checksums (PostgreSQL 18's initdb turns them on by default): a changed value
    # then reads fine, as a bad copy or a faulty disk would leave it.
    with PostgresPair(data_checksums=False) as started:
        yield seeded(started)


@pytest.fixture
def checksummed_pair() -> Iterator[PostgresPair]:
    with PostgresPair(data_checksums=True) as started:
        yield seeded(started)


def damage(server: PostgresServer, table: str, edit: bytes, *, at: int | None = None) -> None:
    """Stop ``server``, overwrite bytes of ``table``'s first segment (``edit`` at offset
    ``at``, or in place of MARKER), start it again."""
    relative = server.sql(f"SELECT pg_relation_filepath('{table}')")
    server.stop()
    path = server.datadir / relative
    data = bytearray(path.read_bytes())
    if at is None:
        at = data.index(MARKER)
    data[at:at + len(edit)] = edit
    path.write_bytes(bytes(data))
    server.start()


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentaskit_dr", "verify-data-integrity", "--config", str(config),
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def writer(dsn: str) -> AsyncIterator[list[int]]:
    """An application writing all along: one-row commits, and transactions that touch
    two tables (the lock order the check must not deadlock with). Yields the ids it got
    a COMMIT for."""
    committed: list[int] = []
    stop = asyncio.Event()

    async def write() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            next_id = 100_000
            while not stop.is_set():
                next_id += 1
                await conn.execute("INSERT INTO orders (id, customer, amount, note) "
                                   "VALUES ($1, 1, 1, 'live')", next_id)
                # orders, then "Billing": the reverse of the check's lock order, so a
                # lock cycle can form; the check must be the one that gives up.
                async with conn.transaction():
                    await conn.execute("UPDATE orders SET amount = amount + 1 WHERE id = 1")
                    await conn.execute('UPDATE "Billing"."Invoice Lines" SET price = price + 1 '
                                       "WHERE invoice = $1 % 300", next_id)
                committed.append(next_id)
        finally:
            await conn.close()

    task = asyncio.create_task(write())
    try:
        await asyncio.sleep(0.2)
        yield committed
    finally:
        stop.set()
        await task


async def test_a_streaming_copy_under_writes_holds_the_same_data(
    pair: PostgresPair, tmp_path: Path
) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", pair.primary.dsn, pair.replica.dsn))
    async with writer(pair.primary.dsn) as committed:
        report = await verify_data_integrity(config, max_wait=30)
        written_during = len(committed)
    assert report.problems == []
    assert report.same
    assert (report.primary_region, report.standby_region) == (WEST, EAST)
    assert report.lineage is not None
    assert report.lineage.primary_timeline == report.lineage.standby_timeline == 1
    assert report.relations_checked > 10  # catalogs, the three tables, their indexes
    assert report.corruption == []
    rows = {table.table: table.primary_rows for table in report.tables}
    assert rows['"Billing"."Invoice Lines"'] == 3000
    assert rows["public.events"] == 2003
    assert rows["public.orders"] is not None
    assert rows["public.orders"] >= 5001
    assert all(table.same and table.primary_hash for table in report.tables)
    assert report.write_pause_ms is not None
    assert report.compared_at_lsn is not None
    assert written_during > 0  # the writer did run through the check
    print(f"write pause {report.write_pause_ms} ms after {report.point_attempts} round(s); "
          f"{written_during} writer transactions committed during the check")


LOCKS = """
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.relation = $1::regclass AND l.mode = $2 AND l.granted = $3 AND a.application_name = $4
"""


async def until_lock(monitor: asyncpg.Connection, table: str, mode: str, *, granted: bool,
                     application: str) -> None:
    for _ in range(1000):
        if await monitor.fetchval(LOCKS, table, mode, granted, application):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"no {mode} on {table} (granted={granted}) by {application!r}")


async def test_in_a_lock_cycle_the_check_gives_up_never_the_application(
    pair: PostgresPair, tmp_path: Path
) -> None:
    """The check locks "Billing", then events (held by a slow writer), then orders. An
    application transaction holds orders and then wants "Billing": a cycle. The check's
    LOCK must end before the application's deadlock check (1 s) aborts the application."""
    config = load_config(write_config(tmp_path / "c.yaml", pair.primary.dsn, pair.replica.dsn))
    billing = '"Billing"."Invoice Lines"'
    slow, app, monitor = [await asyncpg.connect(pair.primary.dsn,
                                                server_settings={"application_name": name})
                          for name in ("slow", "app", "monitor")]
    check = asyncio.create_task(asyncio.sleep(0))
    try:
        await slow.execute("BEGIN; INSERT INTO events VALUES ('slow', '{}', '')")
        await app.execute("BEGIN; UPDATE orders SET amount = amount + 1 WHERE id = 1")
        check = asyncio.create_task(verify_data_integrity(config, max_wait=30))
        await until_lock(monitor, billing, "ShareLock", granted=True,
                         application="agentaskit-dr/verify-data-integrity")
        app_update = asyncio.create_task(
            app.execute(f"UPDATE {billing} SET price = 0 WHERE invoice = 1"))
        await until_lock(monitor, billing, "RowExclusiveLock", granted=False, application="app")
        await asyncio.sleep(0.3)
        await slow.execute("COMMIT")  # the check now waits on orders: the cycle is closed
        await app_update  # no DeadlockDetectedError: the application's transaction lives
        await app.execute("COMMIT")
        report = await check
    finally:
        check.cancel()
        await asyncio.gather(check, return_exceptions=True)
        for conn in (slow, app, monitor):
            await conn.close()
    assert report.problems == []
    assert report.point_attempts >= 2  # the first round gave up


async def test_after_a_switchover_the_old_primary_is_checked_as_the_standby_on_timeline_2(
    pair: PostgresPair, tmp_path: Path
) -> None:
    # A clean switch: stop the primary (its final WAL reaches the replica), promote the
    # replica (timeline 2), write, then start the old primary as its standby.
    west, east = pair.primary, pair.replica
    west.stop()
    east.sql("SELECT pg_promote()")
    east.sql("CHECKPOINT")
    east.sql("UPDATE orders SET note = 'after the switch' WHERE id = 7")
    with (west.datadir / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"primary_conninfo = 'host=127.0.0.1 port={east.port} user=postgres'\n")
    (west.datadir / "standby.signal").touch()
    west.start()
    config = load_config(write_config(tmp_path / "c.yaml", west.dsn, east.dsn))
    report = await verify_data_integrity(config, max_wait=30)
    assert report.problems == []
    assert (report.primary_region, report.standby_region) == (EAST, WEST)
    assert report.lineage is not None
    assert report.lineage.primary_timeline == report.lineage.standby_timeline == 2


async def test_the_command_and_the_plans_script_report_each_table(
    pair: PostgresPair, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", pair.primary.dsn, pair.replica.dsn)
    code, out, err = await cli(config)
    assert (code, err) == (0, "")
    assert "public.orders: us-west-2 5001 rows" in out
    assert "us-west-2 and us-east-1 hold the same data" in out
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SCRIPT), "--json", stdout=asyncio.subprocess.PIPE,
        # The installed console script, as on a host: the venv's bin on PATH.
        env={**os.environ, "AGENTASKIT_DR_CONFIG": str(config),
             "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"})
    out_bytes, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0
    assert b'"same": true' in out_bytes
    assert b'"differing_tables": []' in out_bytes


async def test_b_a_corrupt_heap_page_on_the_standby_fails_naming_the_table(
    checksummed_pair: PostgresPair, tmp_path: Path
) -> None:
    pair = checksummed_pair
    # In the middle of block 0 (its checksum covers every byte).
    damage(pair.replica, "public.events", b"\x7f" * 16, at=4000)
    config = write_config(tmp_path / "c.yaml", pair.primary.dsn, pair.replica.dsn)
    code, out, err = await cli(config)
    assert code == 1, (out, err)
    assert "agentaskit-dr verify-data-integrity: table public.events is corrupt on us-east-1" in err
    assert "invalid page in block 0" in err
    assert "Traceback" not in err
    assert "public.orders" not in err  # the other tables are checked and the same


async def test_c_a_row_that_differs_on_the_standby_fails_naming_the_table(
    pair: PostgresPair, tmp_path: Path
) -> None:
    # No data checksums: the changed value reads fine and amcheck finds nothing wrong
    # with the page's structure; only the comparison can see it.
    damage(pair.replica, "public.orders", b"integrity-marker-AAAABBBB")
    assert pair.replica.sql("SELECT note FROM orders WHERE id = 0").endswith("AAAABBBB")
    config = write_config(tmp_path / "c.yaml", pair.primary.dsn, pair.replica.dsn)
    code, out, err = await cli(config, "--json")
    assert code == 1, (out, err)
    assert "agentaskit-dr verify-data-integrity: table public.orders differs: " \
        "us-west-2 5001 rows hash" in err
    assert err.count("\n") == 1  # only that table
    assert '"differing_tables": [\n    "public.orders"\n  ]' in out
    assert '"corruption": []' in out


async def test_an_unreachable_server_or_a_missing_privilege_is_one_line(
    pair: PostgresPair, tmp_path: Path
) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, out, err = await cli(write_config(tmp_path / "c.yaml", pair.primary.dsn, nowhere))
    assert (code, out) == (3, "")
    assert err.startswith("agentaskit-dr verify-data-integrity: cannot verify: cannot reach "
                          f"us-east-1 (127.0.0.1:{nowhere.rsplit(':', 1)[1]})")
    assert err.count("\n") == 1

    pair.primary.sql("CREATE ROLE agentaskit_dr LOGIN")
    pair.wait_replayed()
    as_watchdog = [dsn.replace("postgres@", "agentaskit_dr@")
                   for dsn in (pair.primary.dsn, pair.replica.dsn)]
    code, out, err = await cli(write_config(tmp_path / "d.yaml", *as_watchdog))
    assert (code, out) == (3, "")
    assert "permission denied" in err
    assert "the checking role needs" in err
    assert err.count("\n") == 1

    # The grants docs/postgres-privileges.md gives, as written there, are enough.
    pair.primary.sql(documented_grants())
    pair.wait_replayed()
    code, out, err = await cli(tmp_path / "d.yaml")
    assert (code, err) == (0, ""), out


async def test_a_promoted_standby_is_not_compared_as_a_copy(
    pair: PostgresPair, tmp_path: Path
) -> None:
    pair.replica.sql("SELECT pg_promote()")
    code, _, err = await cli(write_config(tmp_path / "c.yaml", pair.primary.dsn,
                                          pair.replica.dsn))
    assert code == 3
    assert "both us-east-1 and us-west-2 run as primaries" in err


async def test_a_standby_that_does_not_catch_up_fails_within_the_timeout(
    pair: PostgresPair, tmp_path: Path
) -> None:
    pair.replica.sql("SELECT pg_wal_replay_pause()")
    pair.primary.sql("INSERT INTO orders (id, customer, amount, note) VALUES (-1, 1, 1, 'late')")
    try:
        code, out, err = await cli(
            write_config(tmp_path / "c.yaml", pair.primary.dsn, pair.replica.dsn),
            "--timeout", "1s")
    finally:
        pair.replica.sql("SELECT pg_wal_replay_resume()")
    assert code == 1, (out, err)
    assert "us-east-1 did not replay the primary's position" in err
    assert "within 1s (replay lag" in err
    assert "compared" not in out  # no comparison against a copy that is behind


async def test_a_bad_timeout_is_named(tmp_path: Path) -> None:
    code, _, err = await cli(tmp_path / "missing.yaml", "--timeout", "soon")
    assert code == 2
    assert "--timeout" in err
    assert "Traceback" not in err
