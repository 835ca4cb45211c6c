"""End to end: answers that are not outages, and a failover target that is no refuge.

A primary that answers the watchdog with an error is up, never failed over; a primary
that dies while the secondary region answers 503 holds until that region recovers.

Real ``agentaskit-dr run`` processes (thresholds scaled down to seconds, see
``daemon_harness``) over a real PostgreSQL pair and Redis. The watchdogs probe both
servers as their own role, as in production; the database team's change to pg_hba.conf
rejects that role on the primary while the application keeps writing.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import (
    REGIONS,
    THRESHOLD,
    Predicate,
    WatchdogFleet,
    is_event,
)

pytestmark = pytest.mark.integration

WATCHDOG_ROLE = "watchdog"


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        yield started


def watchdog_dsn(server: PostgresServer) -> str:
    return f"postgresql://{WATCHDOG_ROLE}@127.0.0.1:{server.port}/postgres"


def reject_in_pg_hba(server: PostgresServer, role: str) -> None:
    """Prepend a ``reject`` line for ``role`` and reload, as a database team would."""
    hba = server.datadir / "pg_hba.conf"
    hba.write_text(f"host all {role} 127.0.0.1/32 reject\n" + hba.read_text())
    server.sql("SELECT pg_reload_conf()")


def is_alert(containing: str, *, since: float | None = None) -> Predicate:
    alert = is_event("alert", since=since)
    return lambda e: alert(e) and containing in str(e.get("message"))


def test_primary_rejecting_the_watchdog_role_in_pg_hba_is_not_failed_over(
    fleet: WatchdogFleet, pg_pair: PostgresPair
) -> None:
    primary, replica = pg_pair.primary, pg_pair.replica
    # pg_monitor: what a monitoring role is granted to read the WAL receiver's status.
    primary.sql(f"CREATE ROLE {WATCHDOG_ROLE} LOGIN; GRANT pg_monitor TO {WATCHDOG_ROLE};"
                "CREATE TABLE orders (at timestamptz)")
    pg_pair.wait_replayed()
    databases = {
        region: {"database": {"dsn": watchdog_dsn(server)}}
        for region, server in zip(REGIONS, (primary, replica), strict=True)
    }
    # A kept probe session outlives a pg_hba change; it is reopened every session_max_age
    # (docs/architecture.md, "The probe's session"): scaled down like the thresholds.
    fleet.start_pair({"regions": databases, "probe": {"session_max_age": "0.5s"}})
    fleet.wait_ready()

    # Before the change, not after: the server applies the reload while psql is still
    # exiting, and a probe session reopened then is refused (one alert per watchdog).
    rejected_at = time.time()
    reject_in_pg_hba(primary, WATCHDOG_ROLE)

    fleet.wait_for(is_alert("primary refuses the watchdog", since=rejected_at),
                   THRESHOLD * 2, what="the alert 'primary refuses the watchdog'")
    fleet.assert_absent(lambda e: e.get("event") in {"failover_decided", "promotion_started"},
                        THRESHOLD * 4, what="failover of a primary that answers")

    assert replica.sql("SELECT pg_is_in_recovery()") == "t"
    assert primary.sql("INSERT INTO orders VALUES (now()) RETURNING 'written'") == "written"
    refusals = fleet.events(is_alert("primary refuses the watchdog"))
    assert {e["watchdog"] for e in refusals} == {f"drill-{r}" for r in REGIONS}
    assert len(refusals) == len(REGIONS), "one alert per watchdog, not one per probe"
    assert "auth_rejected" in refusals[0]["message"]


class SwitchableHealth:
    """A region's load balancer on loopback whose answer the test sets (200 or 503)."""

    def __init__(self, status: int) -> None:
        self.status = status
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(owner.status)
                    self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the per-request stderr line."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/healthz"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SwitchableHealth:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_primary_killed_while_the_secondary_region_answers_503_holds_until_it_recovers(
    fleet: WatchdogFleet, pg_pair: PostgresPair
) -> None:
    east = REGIONS[1]
    with SwitchableHealth(503) as east_lb:
        fleet.start_pair({"regions": {east: {"health_urls": [east_lb.url]}}})
        fleet.wait_ready()

        pg_pair.primary.kill()
        killed_at = time.time()
        fleet.wait_for(is_alert("holding the failover", since=killed_at), THRESHOLD * 3,
                       what="the alert 'holding the failover'")
        fleet.assert_absent(lambda e: e.get("event") in {"failover_decided",
                                                         "promotion_started"},
                            THRESHOLD * 2, what="failover into an unhealthy region")
        assert pg_pair.replica.sql("SELECT pg_is_in_recovery()") == "t"

        east_lb.status = 200
        done = fleet.wait_for(is_event("promotion_done"), THRESHOLD * 3 + 10,
                              what="promotion once the secondary region is healthy")
        # Counted while east's load balancer still answers: once this block closes it,
        # a watchdog not stopped yet may well see east unhealthy again (a real outage).
        holds = [alert for alert in fleet.events(is_alert("holding the failover"))
                 if alert["timestamp"] <= done["timestamp"]]

    assert pg_pair.replica.sql("SELECT pg_is_in_recovery()") == "f"
    assert len(holds) <= len(REGIONS), "at most one hold alert per watchdog"
    held = fleet.events(is_event("verdict", since=killed_at))
    assert any("holding the failover" in str(e["verdict"]) for e in held)
