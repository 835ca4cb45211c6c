"""Probe of one PostgreSQL server: role, WAL positions, replication and the fencing marker.

Each observation runs one status query (plus one read of the fencing marker when its
table exists and is readable) under one deadline, on a session the probe keeps for at
most ``session_max_age`` seconds (docs/architecture.md, "The probe's session"):

- every observation asks the server again (``pg_is_in_recovery()`` and the rest), so a
  standby promoted on a kept session, or a new timeline, is seen at the next look;
- a kept session that fails in any way but a timeout (a restarted server, a terminated
  backend, an error answer) is dropped and the same observation judges the server
  through a fresh connection, within what is left of the deadline: what a new client
  sees, as before;
- a timeout drops the session (an asyncpg connection is often unusable after one,
  docs/operations-notes.md) and is ``reachable=False``, as before;
- the session is reopened every ``session_max_age``, so what only a new client meets (a
  pg_hba change, connection saturation, a postmaster that accepts no new connections)
  shows within that age. ``session_max_age=0`` opens a fresh connection for every look.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import structlog

from agentaskit_dr.pg_answers import server_answer
from agentaskit_dr.ports import MARKER_SCHEMA, MARKER_TABLE, PostgresObservation
from agentaskit_dr.redaction import mask_secrets

log = structlog.get_logger(__name__)

DEFAULT_PORT = 5432
#: How long a probe keeps its session by default (``probe.session_max_age``).
DEFAULT_SESSION_MAX_AGE = 10.0
# An aged-out session that does not say goodbye this fast is dropped instead.
_CLOSE_WITHIN = 0.1
# Errors are shown in status pages and logs; keep them to one readable line.
MAX_ERROR_LENGTH = 200

# One statement, valid on both roles: the CASE arms keep primary-only and standby-only
# functions from running on the other role (they are volatile, so never constant-folded).
def _segment_number(name: str) -> str:
    """SQL: the segment number of the WAL file name ``name`` (timeline ignored)."""
    per_log = ("(4294967296 / (SELECT setting::bigint FROM pg_settings "
               "WHERE name = 'wal_segment_size'))")
    return (f"(('x' || substr({name}, 9, 8))::bit(32)::bigint * {per_log}"
            f" + ('x' || substr({name}, 17, 8))::bit(32)::bigint)")


_STATUS_TEMPLATE = """
SELECT
    pg_is_in_recovery() AS in_recovery,
    current_setting('default_transaction_read_only') = 'on' AS read_only,
    CASE WHEN NOT pg_is_in_recovery()
         THEN pg_current_wal_lsn() - '0/0' END AS current_lsn,
    CASE WHEN pg_is_in_recovery()
         THEN pg_last_wal_receive_lsn() - '0/0' END AS receive_lsn,
    CASE WHEN pg_is_in_recovery()
         THEN pg_last_wal_replay_lsn() - '0/0' END AS replay_lsn,
    -- After a promotion the last replay timestamp stays frozen: only meaningful on a standby.
    CASE WHEN pg_is_in_recovery()
         THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END
         AS replay_lag_seconds,
    -- A role without pg_read_all_stats (pg_monitor) sees the receiver's row, not its status.
    (SELECT coalesce(status, CASE WHEN pid IS NOT NULL THEN 'unreadable' END)
     FROM pg_stat_wal_receiver LIMIT 1) AS receiver_status,
    -- The WAL archive on a primary with archive_mode on: completed segments not yet
    -- archived (the segment being written is not counted), from pg_stat_archiver.
    CASE WHEN NOT pg_is_in_recovery() AND current_setting('archive_mode') <> 'off'
         THEN (SELECT greatest(0, {current} - {archived} - 1)
               FROM pg_stat_archiver a
               WHERE a.last_archived_wal ~ '^[0-9A-F]{{24}}$') END AS archive_pending,
    (SELECT a.last_archived_time FROM pg_stat_archiver a) AS last_archived_time,
    now() AS server_now,
    -- The catalog, not to_regclass(): to_regclass raises when we lack USAGE on the schema.
    EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1 AND c.relname = $2) AS marker_exists,
    coalesce((SELECT has_schema_privilege(n.oid, 'USAGE')
                     AND has_table_privilege(c.oid, 'SELECT')
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2), false) AS marker_readable
"""
STATUS_QUERY = _STATUS_TEMPLATE.format(
    current=_segment_number("pg_walfile_name(pg_current_wal_lsn())"),
    archived=_segment_number("a.last_archived_wal"),
)

_MARKER_RELATION = MARKER_TABLE.removeprefix(f"{MARKER_SCHEMA}.")
MARKER_QUERY = f"SELECT epoch FROM {MARKER_TABLE} WHERE id = 1"  # noqa: S608 (constant)


def dsn_target(dsn: str) -> str:
    """``host:port`` of a PostgreSQL URI, without user or password."""
    parts = urlsplit(dsn)
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        # ``postgresql:///db?host=...&port=...`` puts the address in the query string.
        query = parse_qs(parts.query)
        hosts = query.get("host", ["localhost"])[0]
        if "port" in query:
            hosts = f"{hosts}:{query['port'][0]}"
    if "," in hosts:
        return hosts
    has_port = ":" in hosts.rpartition("]")[2]
    return hosts if has_port else f"{hosts}:{DEFAULT_PORT}"


def _dsn_password_forms(dsn: str) -> tuple[str, ...]:
    """The DSN's password as written and percent-decoded, to scrub from error texts."""
    try:
        password = urlsplit(dsn).password
    except ValueError:
        return ()
    if not password:
        return ()
    return tuple({password, unquote(password)})


def _as_int(value: Decimal | int | None) -> int | None:
    return None if value is None else int(value)


def _as_float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def replication_lag_bytes(primary_lsn: int | None, standby: PostgresObservation) -> int | None:
    """WAL bytes the standby has still to replay: the primary's LSN minus the standby's
    replay LSN, floored at 0 (the two are read at different moments). None if unknown."""
    if primary_lsn is None or standby.replay_lsn is None:
        return None
    return max(0, primary_lsn - standby.replay_lsn)


class PostgresProbe:
    """Looks at one PostgreSQL server; a failure is data, never an exception.

    A server that does not answer is ``reachable=False``; one that answers with an error
    is ``reachable=True`` with a named ``refusal`` (see ``pg_answers.server_answer``).

    ``timeout`` bounds the whole observation: the queries, and a (re)connect when one is
    needed. ``session_max_age`` is how long one session is kept (0: a fresh connection
    for every observation).
    ``clock`` gives monotonic seconds for ``latency``; it defaults to the event loop's
    clock, the same one ``asyncio.timeout`` uses.
    """

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        timeout: float,
        session_max_age: float = DEFAULT_SESSION_MAX_AGE,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if session_max_age < 0:
            raise ValueError(f"session_max_age must not be negative, got {session_max_age}")
        self.name = name
        self.target = dsn_target(dsn)
        self.timeout = timeout
        self.session_max_age = session_max_age
        self._dsn = dsn
        self._secrets = _dsn_password_forms(dsn)
        self._clock = clock
        # The kept session and the loop time it was opened; None between sessions.
        self._session: asyncpg.Connection | None = None
        self._opened_at = 0.0

    async def observe(self) -> PostgresObservation:
        """Read the server's role and positions within ``timeout`` (see the module doc)."""
        clock = self._clock or asyncio.get_running_loop().time
        started = clock()
        try:
            fields = await self._read()
        except Exception as exc:  # noqa: BLE001 (a probe never raises; the error is the data)
            error = self._describe(exc)
            answer = server_answer(exc)
            if answer is None:
                log.debug("postgres_unreachable", probe=self.name, target=self.target,
                          error=error)
                return self.failure(error, clock() - started)
            sqlstate, refusal = answer
            log.debug("postgres_refused", probe=self.name, target=self.target,
                      refusal=refusal, sqlstate=sqlstate, error=error)
            return PostgresObservation(target=self.target, reachable=True,
                                       latency=clock() - started, error=error,
                                       refusal=refusal, sqlstate=sqlstate)
        return PostgresObservation(
            target=self.target, reachable=True, latency=clock() - started, **fields
        )

    def failure(self, error: str, latency: float) -> PostgresObservation:
        """This server seen as unreachable with ``error``."""
        return PostgresObservation(
            target=self.target, reachable=False, latency=latency, error=error
        )

    async def close(self) -> None:
        """End the kept session, if any (bounded by ``timeout``)."""
        session, self._session = self._session, None
        if session is None or session.is_closed():
            return
        try:
            async with asyncio.timeout(self.timeout):
                await session.close()
        except (Exception, asyncio.CancelledError):
            session.terminate()
            raise

    async def _read(self) -> dict[str, Any]:
        async with asyncio.timeout(self.timeout):
            row, marker = await self._status()
        if row["marker_exists"] and not row["marker_readable"]:
            # The server is up; a missing grant must not look like an outage.
            log.warning("fencing_marker_unreadable", probe=self.name, target=self.target)
        return {
            "in_recovery": row["in_recovery"],
            "read_only": row["read_only"],
            "current_lsn": _as_int(row["current_lsn"]),
            "receive_lsn": _as_int(row["receive_lsn"]),
            "replay_lsn": _as_int(row["replay_lsn"]),
            "replay_lag_seconds": _as_float(row["replay_lag_seconds"]),
            "receiver_status": row["receiver_status"],
            "marker_epoch": _as_int(marker),
            **_archive_lag(row),
        }

    async def _status(self) -> tuple[Any, Any]:
        """The status row and marker: on the kept session when it is young enough and
        answers; otherwise (or after any failure of it) on a fresh connection."""
        loop = asyncio.get_running_loop()
        session, self._session = self._session, None  # put back only after a clean read
        if session is not None and not session.is_closed() and (
                loop.time() - self._opened_at < self.session_max_age):
            try:
                result = await _status_on(session)
            except Exception as exc:  # noqa: BLE001 (judged again on a fresh connection)
                session.terminate()
                log.debug("postgres_session_dropped", probe=self.name, target=self.target,
                          error=self._describe(exc))
            except asyncio.CancelledError:
                # A timeout (or a stop): a hung server stays hung for a new connection too.
                session.terminate()
                raise
            else:
                self._session = session
                return result
        elif session is not None:
            await _end(session)
        opened_at = loop.time()
        conn = await self._connect()
        try:
            result = await _status_on(conn)
        except BaseException:
            # After a timeout or error the connection may be half-open: drop it at once.
            conn.terminate()
            raise
        if self.session_max_age > 0:
            self._session, self._opened_at = conn, opened_at
        else:
            await conn.close()
        return result

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._dsn,
            timeout=self.timeout,
            command_timeout=self.timeout,
            # A session kept for a while reuses the status statement; a fresh connection
            # per look (session_max_age 0) would never reuse it.
            statement_cache_size=100 if self.session_max_age > 0 else 0,
            server_settings={"application_name": f"agentaskit-dr probe {self.name}"},
        )

    def _describe(self, exc: Exception) -> str:
        """A short, password-free line for an observation's ``error``."""
        if isinstance(exc, TimeoutError):
            return f"timeout after {self.timeout}s"
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        elif server_answer(exc) is not None:
            text = f"{getattr(exc, 'sqlstate', '')}: {exc}"
        elif isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            text = f"{type(exc).__name__}: {exc}"
        else:
            log.warning(
                "postgres_probe_unexpected_error",
                probe=self.name,
                target=self.target,
                error_type=type(exc).__name__,
            )
            text = f"{type(exc).__name__}: {exc}"
        return " ".join(mask_secrets(text, self._secrets).split())[:MAX_ERROR_LENGTH]


async def _status_on(conn: asyncpg.Connection) -> tuple[Any, Any]:
    row = await conn.fetchrow(STATUS_QUERY, MARKER_SCHEMA, _MARKER_RELATION)
    marker = await conn.fetchval(MARKER_QUERY) if row["marker_readable"] else None
    return row, marker


async def _end(session: asyncpg.Connection) -> None:
    """Close a session that aged out (a clean goodbye, no "unexpected EOF" in the server's
    log); one that does not close at once is dropped."""
    try:
        async with asyncio.timeout(_CLOSE_WITHIN):
            await session.close()
    except Exception:  # noqa: BLE001 (it is being replaced either way)
        session.terminate()
    except asyncio.CancelledError:
        session.terminate()
        raise


def _archive_lag(row: Any) -> dict[str, Any]:
    """``archive_pending_segments`` and ``archive_lag_seconds`` (None: no archive here).

    The lag is 0 with nothing pending; otherwise the time since the last segment was
    archived: an upper bound of the oldest pending segment's age (it was completed after
    that), which is what the RPO of the archive must count.
    """
    pending = _as_int(row["archive_pending"])
    if pending is None:
        return {"archive_pending_segments": None, "archive_lag_seconds": None}
    last = row["last_archived_time"]
    lag = 0.0 if pending == 0 or last is None else max(
        0.0, (row["server_now"] - last).total_seconds())
    return {"archive_pending_segments": pending, "archive_lag_seconds": lag}
