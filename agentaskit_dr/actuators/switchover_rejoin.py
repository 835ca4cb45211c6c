"""Is a restarted server streaming from the new primary, at lag 0? The switchover's last step.

Asked of the standby itself, on new sessions: it is in recovery, its WAL receiver streams
on the new primary's timeline, and it replayed the new primary's WAL position read after
the standby answered (lag 0 at that moment; writes continue meanwhile). A server still
starting up refuses sessions: that is retried until the deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agentaskit_dr.actuators.fence import PromotionRefused, session

_POLL = 0.05
_PRIMARY_POSITION = """
SELECT (pg_current_wal_lsn() - '0/0')::bigint AS lsn,
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS timeline
"""
_STANDBY_STATE = """
SELECT pg_is_in_recovery() AS in_recovery,
       (pg_last_wal_replay_lsn() - '0/0')::bigint AS replay_lsn,
       r.status, r.received_tli
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true
"""


@dataclass(frozen=True)
class Rejoin:
    """``streaming``: in recovery, streaming on ``timeline`` (the new primary's), and
    replayed the new primary's position; ``detail`` says what was seen last."""

    streaming: bool
    detail: str
    timeline: int


async def wait_streaming(
    *, standby_dsn: str, primary_dsn: str, io_timeout: float, within: float
) -> Rejoin:
    """Poll until the server at ``standby_dsn`` streams from ``primary_dsn`` at lag 0, or
    ``within`` seconds passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    seen = "no answer yet"
    target: tuple[int, int] | None = None
    while loop.time() < deadline:
        try:
            async with session(standby_dsn, role="rejoining server",
                               io_timeout=io_timeout) as conn:
                if target is None:
                    target = await _primary_position(primary_dsn, io_timeout)
                state = await conn.fetchrow(_STANDBY_STATE)
        except PromotionRefused as exc:
            seen = exc.reason
        else:
            lsn, timeline = target
            seen = (f"in recovery {state['in_recovery']}, WAL receiver {state['status']} "
                    f"on timeline {state['received_tli']}, replayed {state['replay_lsn']} "
                    f"of {lsn} (new primary on timeline {timeline})")
            if not state["in_recovery"]:
                return Rejoin(False, f"the rejoined server is not in recovery: {seen}", timeline)
            if (state["status"] == "streaming" and state["received_tli"] == timeline
                    and state["replay_lsn"] is not None and state["replay_lsn"] >= lsn):
                return Rejoin(True, f"streaming at lag 0: {seen}", timeline)
        await asyncio.sleep(_POLL)
    return Rejoin(False, f"not streaming at lag 0 within {within:g}s: {seen}",
                  0 if target is None else target[1])


async def _primary_position(primary_dsn: str, io_timeout: float) -> tuple[int, int]:
    async with session(primary_dsn, role="new primary", io_timeout=io_timeout) as conn:
        row = await conn.fetchrow(_PRIMARY_POSITION)
    return int(row["lsn"]), int(row["timeline"])


async def replayed_short_of(standby_dsn: str, checkpoint_lsn: int, *, io_timeout: float) -> int:
    """Bytes by which the promoted server's recovery stopped short of the old primary's
    shutdown checkpoint record (0: it replayed it, the old primary can follow; also 0 when
    it cannot be told). Past the checkpoint's start means the record itself, its last."""
    try:
        async with session(standby_dsn, role="new primary", io_timeout=io_timeout) as conn:
            replayed = await conn.fetchval(
                "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint")
    except PromotionRefused:
        return 0
    if replayed is None or replayed > checkpoint_lsn:
        return 0
    return checkpoint_lsn + 1 - int(replayed)
