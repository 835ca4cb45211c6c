"""Step 3: every table compared on the two servers at one WAL position.

The consistent point (docs/architecture.md, "Failback: verify-data-integrity"):

1. on the primary, in a REPEATABLE READ transaction, ``LOCK TABLE ... IN SHARE MODE``
   every compared table. SHARE waits for the transactions that are writing them to end and
   keeps new writes out, so from here on nothing commits a change to them. The LOCK
   statement's ``statement_timeout`` is half the server's ``deadlock_timeout``, so that in a
   lock cycle with an application transaction it is always this check that gives up (and
   retries), never the application's transaction that is aborted;
2. ``pg_export_snapshot()`` and ``pg_current_wal_insert_lsn()`` (L) in one statement:
   every change to the tables that the snapshot sees was written to WAL before L;
3. a second primary session imports that snapshot (the hashes run there);
4. the standby replays up to L, then opens its own REPEATABLE READ snapshot: it sees
   exactly the changes committed before L, and none to these tables came after it;
5. the lock transaction ends: writes go on. They were held up for steps 1-4 only
   (``write_pause_ms``; bounded by ``MAX_WRITE_PAUSE``, else the round is retried);
6. each table is hashed in both snapshots, at leisure.

The hash of a table is order-independent: ``count(*)`` and the sums (numeric, no
overflow) of two 64-bit hashes of each row's text form (``hashtextextended`` with two
seeds: 128 bits). No sort, no primary key needed, nothing kept in memory, duplicates
counted, and no dependence on the rows' physical place (``ctid``) or on the plan. A
changed row changes both sums unless other changes cancel it exactly (odds about
2^-128). ``hashtextextended`` (what hash partitioning uses) is 2-3 times cheaper than
``md5`` here; its values are the same on servers of one major version and architecture,
which physical replication requires anyway. The text forms are made comparable by the
session settings pinned in ``_session``. The two servers scan at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import asyncpg

from agentaskit_dr.integrity._report import IntegrityReport, IntegrityUnverified, TableComparison

#: The longest the compared tables may refuse writes while the standby catches up to L.
MAX_WRITE_PAUSE = 2.0
_RETRY_AFTER = 0.2
_POLL_SECONDS = 0.005

# Permanent tables of the application (catalogs are covered by amcheck; a standby cannot
# read unlogged ones).
_TABLES = """
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, pg_table_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
ORDER BY n.nspname, c.relname
"""
_DEADLOCK_TIMEOUT_MS = "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'"
_POINT = "SELECT pg_export_snapshot() AS snapshot, pg_current_wal_insert_lsn()::text AS lsn"
_REPLAYED = "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn"
_STANDBY_SNAPSHOT = "SELECT pg_last_wal_replay_lsn()::text"
_HASH = """
SELECT count(*) AS rows,
       coalesce(sum(hashtextextended(row_text, 1)), 0)::text AS high,
       coalesce(sum(hashtextextended(row_text, 2)), 0)::text AS low
FROM (SELECT ROW(r.*)::text AS row_text FROM ONLY {table} AS r) AS hashed
"""


async def compare_tables(
    locker: asyncpg.Connection, hasher: asyncpg.Connection, standby: asyncpg.Connection,
    *, report: IntegrityReport, max_wait: float,
) -> None:
    """Fill ``report``'s comparison figures and problems (one per differing table)."""
    started = time.monotonic()
    deadline = started + max_wait
    while True:
        tables = await locker.fetch(_TABLES)
        if not tables:
            return
        report.point_attempts += 1
        if await _consistent_point(locker, hasher, standby, tables=tables, report=report,
                                   deadline=deadline):
            break
        # Jittered, so that a retry does not meet the same application transaction again.
        await asyncio.sleep(_RETRY_AFTER * (0.5 + random.random()))  # noqa: S311
    try:
        for table in tables:
            figures = await _compare_one(hasher, standby, table["name"], report.standby_region)
            report.tables.append(figures)
            report.bytes_compared += int(table["bytes"])
            if figures.error is not None:
                report.problems.append(f"table {figures.table}: {figures.error}")
            elif not figures.same:
                report.problems.append(
                    f"table {figures.table} differs: {report.primary_region} "
                    f"{figures.primary_rows} rows hash {figures.primary_hash}, "
                    f"{report.standby_region} {figures.standby_rows} rows hash "
                    f"{figures.standby_hash}")
    finally:
        for conn in (hasher, standby):
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
    report.compare_seconds = round(time.monotonic() - started, 3)


async def _consistent_point(
    locker: asyncpg.Connection, hasher: asyncpg.Connection, standby: asyncpg.Connection,
    *, tables: list[asyncpg.Record], report: IntegrityReport, deadline: float,
) -> bool:
    """One try at steps 1-5; True when both snapshots stand at one point, False to
    retry; IntegrityUnverified once ``deadline`` has passed."""
    lock_ms = max(int(await locker.fetchval(_DEADLOCK_TIMEOUT_MS)) // 2, 10)
    names = ", ".join(table["name"] for table in tables)
    await locker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    paused = time.monotonic()
    try:
        # A bound on the whole statement, not on each lock (lock_timeout): an application
        # transaction waiting on a table locked early in the list started waiting after
        # the statement did, so the statement always ends before its deadlock check.
        await locker.execute(f"SET LOCAL statement_timeout = '{lock_ms}ms'")
        try:
            await locker.execute(f"LOCK TABLE {names} IN SHARE MODE")
        except (asyncpg.QueryCanceledError, asyncpg.UndefinedTableError) as exc:
            return _retry_or_give_up(deadline, f"could not lock the tables: {exc}")
        await locker.execute("SET LOCAL statement_timeout = 0")
        point = await locker.fetchrow(_POINT)
        await hasher.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = point["snapshot"].replace("'", "''")
        await hasher.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        pause_deadline = min(paused + MAX_WRITE_PAUSE, deadline)
        while not await standby.fetchval(_REPLAYED, point["lsn"]):
            if time.monotonic() >= pause_deadline:
                await hasher.execute("ROLLBACK")
                return _retry_or_give_up(
                    deadline, f"{report.standby_region} did not replay {point['lsn']} "
                    f"within {MAX_WRITE_PAUSE:g}s of locking the tables")
            await asyncio.sleep(_POLL_SECONDS)
        await standby.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        report.standby_snapshot_lsn = await standby.fetchval(_STANDBY_SNAPSHOT)
    finally:
        # Ends the lock (steps 1-4 done, or this round given up): writes go on.
        await locker.execute("ROLLBACK")
    report.write_pause_ms = round((time.monotonic() - paused) * 1000, 1)
    report.compared_at_lsn = point["lsn"]
    return True


def _retry_or_give_up(deadline: float, reason: str) -> bool:
    if time.monotonic() + _RETRY_AFTER >= deadline:
        raise IntegrityUnverified(f"no consistent point for the comparison: {reason}")
    return False


async def _compare_one(
    hasher: asyncpg.Connection, standby: asyncpg.Connection, table: str, standby_region: str
) -> TableComparison:
    query = _HASH.format(table=table)
    # A savepoint: a damaged page fails this table, not the snapshot of the others.
    await standby.execute("SAVEPOINT table_hash")
    primary_side = asyncio.ensure_future(hasher.fetchrow(query))
    try:
        copy = await standby.fetchrow(query)
    except asyncpg.InsufficientPrivilegeError:
        await _settle(primary_side)
        raise
    except asyncpg.PostgresError as exc:
        primary = await primary_side
        await standby.execute("ROLLBACK TO SAVEPOINT table_hash")
        return TableComparison(table, primary["rows"], _hex(primary), None, None,
                               error=f"cannot be read on {standby_region}: "
                               f"{' '.join(str(exc).split())}")
    except BaseException:
        await _settle(primary_side)
        raise
    primary = await primary_side
    await standby.execute("RELEASE SAVEPOINT table_hash")
    return TableComparison(table, primary["rows"], _hex(primary), copy["rows"], _hex(copy))


async def _settle(task: asyncio.Future[asyncpg.Record]) -> None:
    # The primary's scan must not outlive a failed comparison (its connection is reused).
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError, OSError):
        await task


def _hex(row: asyncpg.Record) -> str:
    return f"{int(row['high']) % 2**64:016x}{int(row['low']) % 2**64:016x}"
