"""The SQL-only fence's lock-out: no role but the watchdog's may log in to a fenced primary.

``default_transaction_read_only`` alone is a soft fence (``SET ... = off`` or ``BEGIN READ
WRITE`` undoes it), so where the watchdog cannot stop the server it also takes LOGIN
away from every other login role it may alter, and records each one it changed in
``agentaskit_dr.fenced_roles`` in the same transaction: lifting the fence restores
exactly those, never a role that was NOLOGIN before.

Left able to log in, by design: superusers (only a superuser may alter them, and they
can undo any fence anyway), roles with REPLICATION (the standby's walreceiver must keep
streaming to catch up), and the watchdog's own role (it confirms and lifts the fence).

Role attributes live in the catalog, so the lock-out replicates to the standby. Each row
records the timeline it was written on: after a promotion, rows from an older timeline
were inherited from the fenced predecessor, and :func:`restore_locked_roles` with
``inherited_only`` gives those roles their LOGIN back on the new primary.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from agentaskit_dr.ports import MARKER_SCHEMA

FENCED_ROLES_TABLE = f"{MARKER_SCHEMA}.fenced_roles"

_CREATE_SCHEMA = f"CREATE SCHEMA {MARKER_SCHEMA}"
_CREATE_TABLE = f"""
CREATE TABLE {FENCED_ROLES_TABLE} (
    role_oid oid PRIMARY KEY,
    role_name name NOT NULL,
    timeline int NOT NULL,
    epoch bigint,
    fenced_at timestamptz NOT NULL DEFAULT now()
)
"""
_SERIALIZE = "SELECT pg_advisory_xact_lock(hashtext('agentaskit_dr.fence'))"
_TIMELINE = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
_LOGIN_ROLES = """
SELECT oid, rolname FROM pg_roles
WHERE rolcanlogin AND NOT rolsuper AND NOT rolreplication AND rolname <> session_user
ORDER BY rolname
"""
_RECORD = f"""
INSERT INTO {FENCED_ROLES_TABLE} (role_oid, role_name, timeline, epoch) VALUES ($1, $2, $3, $4)
ON CONFLICT (role_oid) DO NOTHING
"""  # noqa: S608 -- constant identifiers, values are bound parameters
_LOCKED_OIDS = f"SELECT coalesce(array_agg(role_oid), '{{}}') FROM {FENCED_ROLES_TABLE}"  # noqa: S608
_TAKE_ROWS = f"""
DELETE FROM {FENCED_ROLES_TABLE} AS fenced
WHERE NOT $1 OR fenced.timeline <> ({_TIMELINE})
RETURNING (SELECT rolname FROM pg_roles WHERE oid = fenced.role_oid) AS current_name
"""  # noqa: S608


@dataclass(frozen=True)
class RoleLockout:
    """What one lock-out did: ``locked`` now, and ``skipped`` (the watchdog may not alter
    them: PostgreSQL 16+ needs ADMIN OPTION on each, see docs/postgres-privileges.md)."""

    locked: tuple[str, ...]
    skipped: tuple[str, ...]


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


async def lock_out_roles(conn: asyncpg.Connection, *, epoch: int | None) -> RoleLockout:
    """Take LOGIN from every login role but the exempt ones, recording each, in one
    transaction. Idempotent: roles locked earlier are already NOLOGIN and stay recorded."""
    locked: list[str] = []
    skipped: list[str] = []
    async with conn.transaction():
        # A fenced server defaults to read-only: this transaction asks for read-write.
        await conn.execute("SET TRANSACTION READ WRITE")
        # Two fencers of one server at once (its own watchdog and the lock holder) are
        # normal: one waits for the other, then finds the table and the roles done.
        await conn.execute(_SERIALIZE)
        await _ensure_table(conn)
        timeline = await conn.fetchval(_TIMELINE)
        for row in await conn.fetch(_LOGIN_ROLES):
            name = row["rolname"]
            try:
                async with conn.transaction():  # a savepoint: one refusal spoils nothing
                    await conn.execute(f"ALTER ROLE {quote_ident(name)} NOLOGIN")
            except asyncpg.InsufficientPrivilegeError:
                skipped.append(name)
                continue
            await conn.execute(_RECORD, row["oid"], name, timeline, epoch)
            locked.append(name)
    return RoleLockout(locked=tuple(locked), skipped=tuple(skipped))


async def locked_role_oids(conn: asyncpg.Connection) -> list[int]:
    """Every role the fence recorded as locked out (empty when there is no table)."""
    if await conn.fetchval("SELECT to_regclass($1::text) IS NULL", FENCED_ROLES_TABLE):
        return []
    return list(await conn.fetchval(_LOCKED_OIDS))


async def restore_locked_roles(conn: asyncpg.Connection, *, inherited_only: bool) -> list[str]:
    """Give LOGIN back to the roles the fence recorded, and forget them; their names.

    ``inherited_only``: only rows written on an older timeline, i.e. by the fence of the
    primary this server was promoted from (call it on a new primary after pg_promote).
    A recorded role dropped since is skipped.
    """
    if await conn.fetchval("SELECT to_regclass($1::text) IS NULL", FENCED_ROLES_TABLE):
        return []
    restored: list[str] = []
    async with conn.transaction():
        await conn.execute("SET TRANSACTION READ WRITE")
        for row in await conn.fetch(_TAKE_ROWS, inherited_only):
            name = row["current_name"]
            if name is not None:
                await conn.execute(f"ALTER ROLE {quote_ident(name)} LOGIN")
                restored.append(name)
    return sorted(restored)


async def _ensure_table(conn: asyncpg.Connection) -> None:
    # CREATE SCHEMA IF NOT EXISTS checks the database's CREATE privilege even when the
    # schema exists; look first, so a role granted only the schema can run the fence.
    if await conn.fetchval("SELECT to_regclass($1::text) IS NOT NULL", FENCED_ROLES_TABLE):
        return
    # The advisory lock makes a second fencer wait for the first, but CI once saw the
    # waiter still fail with "relation already exists" (a backend that woke from SIGSTOP
    # with the other's transaction just committed): a creation that lost a race finds the
    # object made by the winner, which is all this function promises.
    try:
        async with conn.transaction():  # a savepoint: the loser's error spoils nothing
            if await conn.fetchval("SELECT to_regnamespace($1::text) IS NULL", MARKER_SCHEMA):
                await conn.execute(_CREATE_SCHEMA)
            await conn.execute(_CREATE_TABLE)
    except (asyncpg.DuplicateTableError, asyncpg.DuplicateSchemaError,
            asyncpg.UniqueViolationError):
        if await conn.fetchval("SELECT to_regclass($1::text) IS NULL", FENCED_ROLES_TABLE):
            raise
