"""What a PostgreSQL server's answers mean to the watchdog: only silence is an outage.

Shared by every PostgreSQL client of the watchdog (the probe; the fence and the promoter
may use it too), so it depends on no driver: an error carrying a SQLSTATE is what the
server sent. Standard library only.
"""

from __future__ import annotations

#: SQLSTATEs a server answers a probe with, by the name the watchdog gives them. A server
#: that answers is up: none of these may count as "unreachable" (docs/architecture.md,
#: "Which answers count as what"). ``PostgresObservation.refusal`` holds these names.
_REFUSALS: dict[str, str] = {
    "28000": "auth_rejected",  # invalid_authorization_specification: pg_hba reject, NOLOGIN
    "28P01": "auth_failed",  # invalid_password
    "53300": "too_many_connections",  # max_connections or the role's CONNECTION LIMIT
    "53200": "out_of_memory",
    "3D000": "database_missing",  # invalid_catalog_name
    "42501": "permission_denied",  # insufficient_privilege, e.g. no CONNECT on the database
    "57P03": "not_accepting_connections",  # cannot_connect_now (refined by its message)
    "57P01": "session_terminated",  # admin_shutdown: pg_terminate_backend or a fast stop
    "57P02": "crash_restart",  # crash_shutdown: another backend crashed, server resets
    "57014": "query_canceled",  # statement_timeout of the watchdog's role
    "08P01": "protocol_violation",
}

#: Message texts that say more than their SQLSTATE (the server's English wording).
_REFINED: tuple[tuple[str, str, str], ...] = (
    ("28000", "does not exist", "role_missing"),
    ("57P03", "starting up", "starting_up"),
    ("57P03", "not yet accepting connections", "starting_up"),
    ("57P03", "in recovery mode", "starting_up"),  # crash recovery after a restart
    ("57P03", "shutting down", "shutting_down"),
)


def refusal_of(sqlstate: str, message: str) -> str:
    """The name of a server's error answer to a probe, from its SQLSTATE and message.

    Unknown codes are still answers: ``answered_with_error``.
    """
    for code, words, name in _REFINED:
        if sqlstate == code and words in message:
            return name
    return _REFUSALS.get(sqlstate, "answered_with_error")


def server_answer(exc: BaseException) -> tuple[str, str] | None:
    """``(sqlstate, refusal)`` when ``exc`` is the server's own error answer; None when the
    server did not answer (refused, reset, timeout, a connection that broke mid-way).

    For any PostgreSQL client of the watchdog (probe, fence, promoter): a driver's error
    carrying a SQLSTATE (asyncpg's ``PostgresError.sqlstate``) is what the server sent.
    """
    sqlstate = getattr(exc, "sqlstate", None)
    # Class 08 (connection exception) is raised by the client when the connection broke:
    # nothing answered. The one code of that class a server sends is a protocol violation.
    if not isinstance(sqlstate, str) or (sqlstate.startswith("08") and sqlstate != "08P01"):
        return None
    return sqlstate, refusal_of(sqlstate, str(exc))
