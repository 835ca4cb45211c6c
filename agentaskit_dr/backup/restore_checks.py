"""What a test restore checks on the restored server: amcheck, row counts, how far it got."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from agentaskit_dr.integrity._amcheck import check_corruption
from agentaskit_dr.integrity._report import IntegrityUnverified

LARGEST_TABLES = 5
_DATABASES = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
_LARGEST = """
SELECT format('%I.%I', n.nspname, c.relname) AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY pg_total_relation_size(c.oid) DESC, 1 LIMIT $1
"""


@dataclass(slots=True)
class RestoredChecks:
    """Per database: relations amcheck checked, what it found damaged, row counts."""

    relations_checked: int = 0
    corruption: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recovered_to_lsn: str | None = None
    recovered_to_time: float | None = None


async def check_restored(port: int, user: str) -> RestoredChecks:
    """Connect to every database of the restored server on ``port`` and check it."""
    checks = RestoredChecks()
    first = await asyncpg.connect(host="127.0.0.1", port=port, user=user, database="postgres",
                                  timeout=30)
    try:
        superuser = await first.fetchval("SELECT rolname FROM pg_roles WHERE oid = 10")
        row = await first.fetchrow(
            "SELECT pg_last_wal_replay_lsn()::text AS lsn,"
            " extract(epoch FROM pg_last_xact_replay_timestamp())::float8 AS at")
        assert row is not None
        checks.recovered_to_lsn = row["lsn"]
        checks.recovered_to_time = row["at"]
        databases = [r["datname"] for r in await first.fetch(_DATABASES)]
    finally:
        await first.close()
    for database in sorted(databases):
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=superuser,
                                     database=database, timeout=30)
        try:
            await _check_database(conn, database, checks)
        finally:
            await conn.close()
    return checks


async def _check_database(conn: asyncpg.Connection, database: str,
                          checks: RestoredChecks) -> None:
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        count, _, damaged = await check_corruption(
            conn, standby_region="restored copy", database=database)
        checks.relations_checked += count
        checks.corruption.extend(
            f"{database}: {item.kind} {item.relation}: {item.detail}" for item in damaged)
    except (asyncpg.PostgresError, IntegrityUnverified) as exc:
        checks.problems.append(f"amcheck in database {database!r}: {exc}")
    for row in await conn.fetch(_LARGEST, LARGEST_TABLES):
        rows = await conn.fetchval(f"SELECT count(*) FROM {row['name']}")  # noqa: S608 - %I-quoted
        checks.tables.append({"database": database, "table": row["name"], "rows": rows})
