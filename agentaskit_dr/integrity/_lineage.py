"""Step 1: the standby replays the primary's history, and has replayed all of it.

Same cluster (``system_identifier``), the primary writes, the standby is in recovery,
it replays the primary's WAL position taken at the start within the timeout ("replay lag
0 bytes" as a fact about a moment, since a primary under writes never stands still), and
then its WAL receiver streams the primary's current timeline (a standby left on an older
timeline, or one that follows some other server, streams another).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from agentaskit_dr.integrity._report import IntegrityUnverified, Lineage
from agentaskit_dr.integrity._session import PRIVILEGES_HINT

_SYSTEM = "SELECT system_identifier::text FROM pg_control_system()"
_IN_RECOVERY = "SELECT pg_is_in_recovery()"
_PRIMARY_POSITION = """
SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS timeline,
       pg_current_wal_lsn()::text AS lsn
"""
_RECEIVER = "SELECT status, received_tli FROM pg_stat_wal_receiver"
# A standby that replayed nothing yet is behind by all of it.
_REPLAYED = """
SELECT pg_last_wal_replay_lsn()::text AS lsn,
       pg_wal_lsn_diff($1::text::pg_lsn,
                       coalesce(pg_last_wal_replay_lsn(), '0/0'))::bigint AS behind
"""
_POLL_SECONDS = 0.05


async def roles(
    first: tuple[str, asyncpg.Connection], second: tuple[str, asyncpg.Connection]
) -> tuple[str, str]:
    """(primary region, standby region), asked of the servers themselves: after a
    failover the config file's primary_region is the standby."""
    recovering = {name: await conn.fetchval(_IN_RECOVERY) for name, conn in (first, second)}
    primaries = [name for name, in_recovery in recovering.items() if not in_recovery]
    if len(primaries) == 1:
        standby = next(name for name in recovering if name != primaries[0])
        return primaries[0], standby
    if primaries:
        raise IntegrityUnverified(
            f"both {first[0]} and {second[0]} run as primaries: they are not a primary and "
            "its standby (resync the stale one first: sync-primary)")
    raise IntegrityUnverified(f"both {first[0]} and {second[0]} are in recovery: no primary")


async def check_lineage(
    primary: asyncpg.Connection, standby: asyncpg.Connection, *, standby_region: str,
    max_wait: float, problems: list[str],
) -> Lineage | None:
    """The lineage figures; each fact that fails is appended to ``problems``."""
    system_p, system_s = await primary.fetchval(_SYSTEM), await standby.fetchval(_SYSTEM)
    if system_p != system_s:
        problems.append(
            f"{standby_region} is not a copy of the primary: system identifier {system_s}, "
            f"the primary's is {system_p}")
        return None
    position = await primary.fetchrow(_PRIMARY_POSITION)
    started = time.monotonic()
    replayed = await standby.fetchrow(_REPLAYED, position["lsn"])
    lag_at_start = max(int(replayed["behind"]), 0)
    deadline = started + max_wait
    while int(replayed["behind"]) > 0:
        if time.monotonic() >= deadline:
            problems.append(
                f"{standby_region} did not replay the primary's position {position['lsn']} "
                f"within {max_wait:g}s (replay lag {replayed['behind']} bytes, replayed up "
                f"to {replayed['lsn']})")
            break
        await asyncio.sleep(_POLL_SECONDS)
        replayed = await standby.fetchrow(_REPLAYED, position["lsn"])
    catch_up = time.monotonic() - started
    # Read after the catch-up: a standby just rewound streams its old timeline's WAL
    # from the new primary first, and switches to the new timeline at the fork.
    receiver = await standby.fetchrow(_RECEIVER)
    if receiver is not None and receiver["status"] is None:
        # The row is there, its columns hidden: a role without pg_read_all_stats.
        raise IntegrityUnverified(
            f"{standby_region}: permission denied: pg_stat_wal_receiver is hidden from the "
            f"checking role ({PRIVILEGES_HINT})")
    standby_timeline = receiver["received_tli"] if receiver else None
    if receiver is None or receiver["status"] != "streaming":
        problems.append(f"{standby_region} does not stream from the primary (WAL receiver: "
                        f"{receiver['status'] if receiver else 'none'})")
    elif standby_timeline != position["timeline"]:
        problems.append(
            f"{standby_region} streams timeline {standby_timeline}, the primary writes "
            f"timeline {position['timeline']}: it does not replay the primary's history")
    return Lineage(
        system_identifier=system_p,
        primary_timeline=position["timeline"],
        standby_timeline=standby_timeline,
        primary_lsn=position["lsn"],
        lag_bytes_at_start=lag_at_start,
        catch_up_seconds=round(catch_up, 3),
    )
