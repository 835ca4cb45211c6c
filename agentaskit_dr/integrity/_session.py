"""A session for the integrity check: output formats pinned, errors as one line.

Row hashes are taken over each row's text form, so every setting that changes how a
value prints is pinned for the session (the same on both servers, whatever the roles'
or databases' defaults), and no role's ``statement_timeout`` may cut a long table scan.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg

from agentaskit_dr.integrity._report import IntegrityUnverified

#: Settings that change a value's text form, pinned; plus no timeouts on long scans.
_PINNED_SETTINGS = {
    "application_name": "agentaskit-dr/verify-data-integrity",
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "statement_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
}

#: What the checking role needs, said when a privilege is missing.
PRIVILEGES_HINT = (
    "the checking role needs pg_monitor, SELECT on every table (pg_read_all_data), "
    "UPDATE on every table for the SHARE lock (pg_write_all_data, or pg_maintain on "
    "PostgreSQL 17+) and "
    "EXECUTE on amcheck's verify_heapam and bt_index_check; see docs/postgres-privileges.md"
)


def describe(region: str, dsn: str) -> str:
    """``region (host:port/dbname)``: no user or password, fit to print."""
    parts = urlsplit(dsn)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{region} ({parts.hostname or '?'}{port}{parts.path})"


@contextlib.asynccontextmanager
async def integrity_session(
    region: str, dsn: str, *, connect_timeout: float
) -> AsyncIterator[asyncpg.Connection]:
    """A connection to ``region``'s server; failures to reach it or to be let in come out
    as IntegrityUnverified naming the region (errors later: :func:`translated`)."""
    where = describe(region, dsn)
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout,
                                     server_settings=_PINNED_SETTINGS)
    except TimeoutError as exc:
        raise IntegrityUnverified(
            f"cannot reach {where}: no answer within {connect_timeout:g}s") from exc
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
        raise IntegrityUnverified(f"cannot reach {where}: {_one_line(exc)}") from exc
    except asyncpg.PostgresError as exc:
        raise IntegrityUnverified(f"{where} refused the session: {_one_line(exc)}") from exc
    try:
        yield conn
    finally:
        await _close(conn)


def translated(stage: str, exc: BaseException) -> IntegrityUnverified:
    """A driver error met during ``stage`` as one line for the operator."""
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return IntegrityUnverified(
            f"{stage}: permission denied: {_one_line(exc)} ({PRIVILEGES_HINT})")
    if isinstance(exc, TimeoutError):
        return IntegrityUnverified(f"{stage}: no answer in time")
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(
            exc, asyncpg.PostgresConnectionError):
        return IntegrityUnverified(f"{stage}: {_one_line(exc)}")
    return IntegrityUnverified(f"{stage}: connection lost: {_one_line(exc)}")


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=5)
    except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError):
        conn.terminate()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
