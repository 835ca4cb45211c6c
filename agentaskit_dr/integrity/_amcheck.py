"""Step 2: corruption checks on the standby with amcheck's functions.

``verify_heapam`` on every table and materialized view (with their TOAST) and
``bt_index_check`` on every B-tree index, catalogs included, one relation at a time so
that a damaged one is named and the others are still checked. A page whose checksum
fails (initdb ``--data-checksums``) cannot even be read: that error names the relation
too. This is what ``pg_amcheck`` runs; calling the functions ourselves names relations
rather than file paths and needs no client binary beside the watchdog.

A standby cannot ``CREATE EXTENSION``: amcheck is created on the primary and arrives by
replication. Unlogged and temporary relations are skipped (a standby cannot read them).
"""

from __future__ import annotations

import time

import asyncpg

from agentaskit_dr.integrity._report import Corruption, IntegrityUnverified

_INSTALLED = """
SELECT to_regprocedure('verify_heapam(regclass,boolean,boolean,text,bigint,bigint)')
       IS NOT NULL
   AND to_regprocedure('bt_index_check(regclass,boolean)') IS NOT NULL
"""
_HEAPS = """
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' AND (c.relkind <> 'm' OR c.relispopulated)
ORDER BY c.oid
"""
_INDEXES = """
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_am am ON am.oid = c.relam
WHERE c.relkind = 'i' AND am.amname = 'btree' AND c.relpersistence = 'p'
  AND i.indisvalid AND i.indisready
ORDER BY c.oid
"""
_VERIFY_HEAP = """
SELECT blkno, offnum, attnum, msg
FROM verify_heapam($1::oid::regclass, on_error_stop => true, check_toast => true)
LIMIT 1
"""
_VERIFY_INDEX = "SELECT bt_index_check($1::oid::regclass, false)"


async def check_corruption(
    standby: asyncpg.Connection, *, standby_region: str, database: str
) -> tuple[int, float, list[Corruption]]:
    """(relations checked, seconds, what is damaged)."""
    if not await standby.fetchval(_INSTALLED):
        raise IntegrityUnverified(
            f"amcheck is not installed in database {database!r} on {standby_region}: run "
            "'CREATE EXTENSION amcheck' on the primary (a standby cannot; it replicates) and "
            "grant EXECUTE on verify_heapam and bt_index_check to the checking role")
    started = time.monotonic()
    found: list[Corruption] = []
    heaps = await standby.fetch(_HEAPS)
    for heap in heaps:
        try:
            damage = await standby.fetchrow(_VERIFY_HEAP, heap["oid"])
        except asyncpg.InsufficientPrivilegeError:
            raise
        except asyncpg.PostgresError as exc:
            if _vanished(exc):
                continue
            found.append(Corruption(heap["name"], "table", _one_line(exc)))
            continue
        if damage is not None:
            where = f"block {damage['blkno']}, offset {damage['offnum']}"
            if damage["attnum"] is not None:
                where += f", attribute {damage['attnum']}"
            found.append(Corruption(heap["name"], "table", f"{where}: {damage['msg']}"))
    indexes = await standby.fetch(_INDEXES)
    for index in indexes:
        try:
            await standby.execute(_VERIFY_INDEX, index["oid"])
        except asyncpg.InsufficientPrivilegeError:
            raise
        except asyncpg.PostgresError as exc:
            if _vanished(exc):
                continue
            found.append(Corruption(index["name"], "index", _one_line(exc)))
    return len(heaps) + len(indexes), round(time.monotonic() - started, 3), found


def _vanished(exc: asyncpg.PostgresError) -> bool:
    # A relation dropped on the primary between our listing and its check: not damage.
    return getattr(exc, "sqlstate", None) == "42P01"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
