"""PostgresProbe keeps one session for ``session_max_age``, and still judges like a new client.

Every look asks the server again; a kept session that breaks is replaced within the same
look (a restarted server is seen at once); a hung server still times out; a standby
promoted under a kept session is seen promoted at the next look.
"""

from __future__ import annotations

import asyncio

import pytest

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.probes import PostgresProbe
from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration


def probe_pids(server: PostgresServer, name: str) -> list[int]:
    """Backend pids of the probe ``name``'s sessions on ``server``."""
    found = server.sql("SELECT pid FROM pg_stat_activity "
                       f"WHERE application_name = 'agentaskit-dr probe {name}' ORDER BY pid")
    return [int(pid) for pid in found.split()]


async def test_consecutive_looks_share_one_session(pg_pair: PostgresPair) -> None:
    probe = PostgresProbe("kept", pg_pair.primary.dsn, timeout=2.0, session_max_age=60.0)
    try:
        first = await probe.observe()
        pids = probe_pids(pg_pair.primary, "kept")
        second = await probe.observe()
        assert probe_pids(pg_pair.primary, "kept") == pids
    finally:
        await probe.close()

    assert first.reachable, first.error
    assert second.reachable, second.error
    assert second.writable
    assert len(pids) == 1
    assert probe_pids(pg_pair.primary, "kept") == [], "close ends the session"


async def test_a_session_older_than_its_max_age_is_replaced(pg_pair: PostgresPair) -> None:
    probe = PostgresProbe("aging", pg_pair.primary.dsn, timeout=2.0, session_max_age=0.3)
    try:
        await probe.observe()
        before = probe_pids(pg_pair.primary, "aging")
        await asyncio.sleep(0.4)
        seen = await probe.observe()
        after = probe_pids(pg_pair.primary, "aging")
    finally:
        await probe.close()

    assert seen.reachable, seen.error
    assert len(before) == 1
    assert len(after) == 1
    assert after != before, "a new session after max age (the old one said goodbye)"


async def test_max_age_zero_keeps_no_session(pg_pair: PostgresPair) -> None:
    probe = PostgresProbe("fresh", pg_pair.primary.dsn, timeout=2.0, session_max_age=0)
    try:
        seen = await probe.observe()
        assert probe_pids(pg_pair.primary, "fresh") == []
    finally:
        await probe.close()

    assert seen.reachable, seen.error


async def test_a_restarted_server_is_seen_up_in_the_first_look_after(
    pg_pair: PostgresPair,
) -> None:
    probe = PostgresProbe("restart", pg_pair.primary.dsn, timeout=2.0, session_max_age=60.0)
    try:
        assert (await probe.observe()).reachable
        old = probe_pids(pg_pair.primary, "restart")
        pg_pair.primary.kill()
        pg_pair.primary.start()

        seen = await probe.observe()
        new = probe_pids(pg_pair.primary, "restart")
    finally:
        await probe.close()

    assert seen.reachable, seen.error
    assert seen.writable
    assert len(new) == 1
    assert new != old


async def test_a_killed_server_under_a_kept_session_is_unreachable(
    pg_pair: PostgresPair,
) -> None:
    probe = PostgresProbe("killed", pg_pair.primary.dsn, timeout=2.0, session_max_age=60.0)
    try:
        assert (await probe.observe()).reachable
        pg_pair.primary.kill()
        seen = await probe.observe()
    finally:
        await probe.close()

    assert not seen.reachable
    assert seen.error == "connection refused", "judged like a new client: nothing listens"
    assert seen.refusal is None
    assert seen.latency < 1.0


async def test_a_frozen_server_under_a_kept_session_times_out_then_is_seen_again(
    pg_pair: PostgresPair,
) -> None:
    probe = PostgresProbe("frozen", pg_pair.primary.dsn, timeout=0.5, session_max_age=60.0)
    try:
        assert (await probe.observe()).reachable
        pg_pair.primary.pause()
        try:
            frozen = await probe.observe()
        finally:
            pg_pair.primary.resume()
        back = await probe.observe()
    finally:
        await probe.close()

    assert not frozen.reachable
    assert frozen.error == "timeout after 0.5s"
    assert 0.4 < frozen.latency < 1.5
    assert back.reachable, back.error


async def test_a_terminated_session_is_replaced_within_the_look(pg_pair: PostgresPair) -> None:
    probe = PostgresProbe("ended", pg_pair.primary.dsn, timeout=2.0, session_max_age=60.0)
    try:
        assert (await probe.observe()).reachable
        [old] = probe_pids(pg_pair.primary, "ended")
        pg_pair.primary.sql(f"SELECT pg_terminate_backend({old})")
        seen = await probe.observe()
        new = probe_pids(pg_pair.primary, "ended")
    finally:
        await probe.close()

    assert seen.reachable, seen.error
    assert seen.refusal is None, "a new session answered: no error to report"
    assert seen.writable
    assert len(new) == 1
    assert old not in new


async def test_a_standby_promoted_under_a_kept_session_is_seen_promoted(
    pg_pair: PostgresPair,
) -> None:
    probe = PostgresProbe("standby", pg_pair.replica.dsn, timeout=2.0, session_max_age=60.0)
    try:
        standby = await probe.observe()
        pids = probe_pids(pg_pair.replica, "standby")
        pg_pair.replica.sql("SELECT pg_promote(wait => true)")
        promoted = await probe.observe()
        assert probe_pids(pg_pair.replica, "standby") == pids, "still the same session"
    finally:
        await probe.close()

    assert standby.in_recovery is True
    assert promoted.reachable, promoted.error
    assert promoted.in_recovery is False
    assert promoted.writable
    assert promoted.current_lsn is not None
