"""Which probe failures are answers and which are silence: the tables behind ``reachable``.

A server that answers with an error is up (reachable, with a named refusal); only a
server that does not answer is unreachable. The real servers behind these rows are in
``tests/integration/test_probe_postgres_refusals.py``.
"""

from __future__ import annotations

import asyncpg
import pytest

from agentaskit_dr.pg_answers import refusal_of, server_answer
from agentaskit_dr.ports import (
    HttpAnswer,
    PostgresObservation,
    RegionHealthObservation,
    UrlCheck,
)


@pytest.mark.parametrize(
    ("sqlstate", "message", "refusal"),
    [
        ("28000", 'pg_hba.conf rejects connection for host "127.0.0.1", user "watchdog"',
         "auth_rejected"),
        ("28000", 'no pg_hba.conf entry for host "10.0.0.9", user "watchdog"', "auth_rejected"),
        ("28000", 'role "watchdog" is not permitted to log in', "auth_rejected"),
        ("28000", 'role "watchdog" does not exist', "role_missing"),
        ("28P01", 'password authentication failed for user "watchdog"', "auth_failed"),
        ("53300", "sorry, too many clients already", "too_many_connections"),
        ("53300", "remaining connection slots are reserved for non-replication superuser "
                  "connections", "too_many_connections"),
        ("53300", 'too many connections for role "watchdog"', "too_many_connections"),
        ("3D000", 'database "app" does not exist', "database_missing"),
        ("42501", 'permission denied for database "app"', "permission_denied"),
        ("57P03", "the database system is starting up", "starting_up"),
        ("57P03", "the database system is not yet accepting connections", "starting_up"),
        ("57P03", "the database system is in recovery mode", "starting_up"),
        ("57P03", "the database system is shutting down", "shutting_down"),
        ("57P03", "the database system is not accepting connections", "not_accepting_connections"),
        ("57P01", "terminating connection due to administrator command", "session_terminated"),
        ("57P02", "terminating connection because of crash of another server process",
         "crash_restart"),
        ("57014", "canceling statement due to statement timeout", "query_canceled"),
        ("XX000", "something new", "answered_with_error"),
    ],
)
def test_a_server_error_answer_has_a_name(sqlstate: str, message: str, refusal: str) -> None:
    assert refusal_of(sqlstate, message) == refusal


@pytest.mark.parametrize(
    ("exc", "answer"),
    [
        (asyncpg.InvalidAuthorizationSpecificationError("pg_hba.conf rejects connection"),
         ("28000", "auth_rejected")),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"),
         ("53300", "too_many_connections")),
        (asyncpg.InvalidCatalogNameError('database "app" does not exist'),
         ("3D000", "database_missing")),
        (asyncpg.CannotConnectNowError("the database system is starting up"),
         ("57P03", "starting_up")),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"),
         ("57P01", "session_terminated")),
        (asyncpg.ProtocolViolationError("invalid startup packet"),
         ("08P01", "protocol_violation")),
        # Silence: nothing answered, or the connection broke on the way.
        (TimeoutError(), None),
        (ConnectionRefusedError(111, "Connection refused"), None),
        (ConnectionResetError(104, "Connection reset by peer"), None),
        (OSError(113, "No route to host"), None),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
         None),
        (asyncpg.InterfaceError("connection is closed"), None),
        (asyncpg.PostgresError("no SQLSTATE"), None),
        (ValueError("bad DSN"), None),
    ],
)
def test_only_an_error_the_server_sent_is_an_answer(
    exc: BaseException, answer: tuple[str, str] | None
) -> None:
    assert server_answer(exc) == answer


def test_a_refusing_server_is_reachable_but_its_status_unknown() -> None:
    refused = PostgresObservation("db:5432", reachable=True, latency=0.01,
                                  error="53300: sorry", refusal="too_many_connections",
                                  sqlstate="53300")
    primary = PostgresObservation("db:5432", reachable=True, latency=0.01,
                                  in_recovery=False, read_only=False)
    silent = PostgresObservation("db:5432", reachable=False, latency=2.0, error="timeout")

    assert (refused.reachable, refused.status_read, refused.writable) == (True, False, False)
    assert (primary.reachable, primary.status_read, primary.writable) == (True, True, True)
    assert (silent.reachable, silent.status_read, silent.writable) == (False, False, False)


@pytest.mark.parametrize(
    ("ok", "status", "answer"),
    [
        (True, 200, HttpAnswer.OK),
        (False, 503, HttpAnswer.ANSWERED_BADLY),
        (False, 302, HttpAnswer.ANSWERED_BADLY),
        (False, None, HttpAnswer.NO_ANSWER),
    ],
)
def test_a_health_url_that_answers_badly_is_not_one_that_is_silent(
    ok: bool, status: int | None, answer: HttpAnswer
) -> None:
    assert UrlCheck("http://lb/healthz", ok=ok, status=status, latency=0.1).answer is answer


def test_region_health_detail_keeps_bad_answers_and_silence_apart() -> None:
    checks = (
        UrlCheck("http://a/healthz", ok=True, status=200, latency=0.1),
        UrlCheck("http://b/healthz", ok=False, status=503, latency=0.1, error="HTTP 503"),
        UrlCheck("http://c/healthz", ok=False, status=None, latency=2.0, error="timeout"),
    )
    seen = RegionHealthObservation("us-west-2", healthy=False, checks=checks)

    assert seen.count(HttpAnswer.ANSWERED_BADLY) == 1
    assert seen.count(HttpAnswer.NO_ANSWER) == 1
    assert seen.detail == ("1/3 health URLs of us-west-2 answered 2xx "
                           "(1 answered badly, 1 did not answer)")
