"""The epoch marker on the promoted server, and a promotion that landed without it.

The marker row (``agentaskit_dr.failover_epoch``) is written in the first read-write
transaction on the new primary: it proves the server takes writes and records which
epoch and run promoted it, compare-and-set so a newer epoch's marker is never
overwritten. A promoted server without the marker of the run that promoted it is
*in doubt*: pg_promote timed out, or the marker write failed after it. Such a promotion
is adopted by the run's next attempt (or by a new run of the same incident) instead of
being refused as "not a standby".
"""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from agentaskit_dr.actuators.fence import PromotionRefused
from agentaskit_dr.ports import MARKER_SCHEMA, MARKER_TABLE, StaleEpoch

_CREATE_MARKER = f"""
CREATE SCHEMA IF NOT EXISTS {MARKER_SCHEMA};
CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (
    id int PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text NOT NULL,
    failover_id text NOT NULL,
    promoted_at timestamptz NOT NULL DEFAULT now()
)
"""
# The WHERE makes the write compare-and-set: a newer epoch's marker is never overwritten.
_RECORD_MARKER = f"""
INSERT INTO {MARKER_TABLE} AS marker (id, epoch, holder, failover_id) VALUES (1, $1, $2, $3)
ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, holder = EXCLUDED.holder,
    failover_id = EXCLUDED.failover_id, promoted_at = now()
WHERE marker.epoch <= EXCLUDED.epoch
RETURNING epoch
"""  # noqa: S608 -- constant identifiers, values are bound parameters
# On resume: a real write (so it proves the server takes writes and locks the marker
# against a concurrent newer epoch) that changes nothing, so promoted_at stays the original.
_TOUCH_MARKER = f"""
UPDATE {MARKER_TABLE} SET epoch = epoch WHERE id = 1 AND epoch = $1 RETURNING epoch
"""  # noqa: S608 -- constant identifiers, values are bound parameters
_MARKER_ROW = f"SELECT epoch, failover_id FROM {MARKER_TABLE} WHERE id = 1"  # noqa: S608


class PromotionInDoubt(PromotionRefused):
    """``pg_promote`` was sent, but the promotion did not finish as one piece.

    ``promoted``: True when pg_promote returned and only the epoch marker is missing,
    False when its outcome is unknown (a timeout, a lost connection: the standby may still
    complete it). The run stays open; its next attempt adopts a standby seen promoted.
    """

    def __init__(self, reason: str, *, promoted: bool) -> None:
        super().__init__(reason)
        self.promoted = promoted


async def record_marker(
    conn: asyncpg.Connection, *, epoch: int, holder: str, failover_id: str
) -> bool:
    """Record ``epoch`` on the promoted server; whether it defaults to read-only.

    Raises StaleEpoch when a newer epoch's marker is there, PromotionInDoubt when the
    write fails (the server is promoted, the marker is not: the next attempt adopts it).
    """
    try:
        async with conn.transaction():
            # Explicitly read-write: a server cloned from a fenced primary carries
            # default_transaction_read_only = on in postgresql.auto.conf.
            await conn.execute("SET TRANSACTION READ WRITE")
            await conn.execute(_CREATE_MARKER)
            recorded = await conn.fetchval(_RECORD_MARKER, epoch, holder, failover_id)
            read_only_default = await conn.fetchval(
                "SELECT current_setting('default_transaction_read_only')"
            )
    except (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
        if not isinstance(exc, asyncpg.PostgresError) or isinstance(
            exc, asyncpg.PostgresConnectionError
        ):
            conn.terminate()  # unusable after a timeout or a lost link
        raise PromotionInDoubt(
            f"the standby was promoted but its epoch marker was not recorded (write check "
            f"failed: {str(exc) or type(exc).__name__}); the next attempt adopts it",
            promoted=True,
        ) from exc
    if recorded is None:
        raise StaleEpoch(f"a newer epoch recorded its marker on the new primary than {epoch}")
    return bool(read_only_default == "on")


async def touch_marker(conn: asyncpg.Connection, epoch: int) -> None:
    """Prove the server promoted under ``epoch`` takes writes, changing nothing."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION READ WRITE")
        touched = await conn.fetchval(_TOUCH_MARKER, epoch)
    if touched is None:
        raise StaleEpoch("a newer epoch recorded its marker while resuming")


async def adoptable(
    conn: asyncpg.Connection,
    failover_id: str,
    epoch: int,
    *,
    resuming: bool,
    adopt_from: Collection[str],
) -> bool:
    """A promoted target that this run (``resuming``), or an earlier attempt of the same
    incident (``adopt_from``), promoted without recording its marker under ``epoch``."""
    if not (resuming or adopt_from):
        return False
    if await conn.fetchval("SELECT to_regclass($1::text) IS NULL", MARKER_TABLE):
        return True
    row = await conn.fetchrow(_MARKER_ROW)
    if row is None:
        return True
    if row["epoch"] > epoch:
        return False  # a newer epoch acted: the caller finds itself stale
    own = row["failover_id"] == failover_id and row["epoch"] < epoch
    return bool(own or row["failover_id"] in adopt_from)
