"""When a primary-side watchdog in control mode holds its own unreachable primary.

docs/architecture.md, "Holding an unreachable own primary". The hold must be done before
the other region may promote, ``thresholds.db_unreachable`` after *its* clock started.
The two clocks run on the same evidence (the quorum's reports) but are read at different
moments, so the hold comes a margin earlier:

- the other region's clock may start up to one probe interval (with jitter) plus one
  probe timeout before this watchdog's (each finds the timeout at its own probe);
- the hold is issued at this watchdog's first probe past ``hold_after`` (one more
  interval, with jitter);
- stopping the server takes up to ``control.stop_timeout`` (a frozen postmaster is
  killed at once; one that is alive but stuck gets a ``pg_ctl`` stop first).
"""

from __future__ import annotations

from agentaskit_dr.config._connections import DatabaseConfig
from agentaskit_dr.durations import format_duration


def hold_margin(*, interval: float, jitter: float, timeout: float, stop_timeout: float) -> float:
    """How long before ``db_unreachable`` the hold is issued (see the module doc)."""
    return 2 * interval * (1 + jitter) + timeout + stop_timeout


def hold_after(*, role: str, own: DatabaseConfig | None, db_unreachable: float,
               interval: float, jitter: float, timeout: float) -> tuple[float | None, str]:
    """``thresholds.hold_after`` for the core, and a warning when control mode cannot hold.

    None (no hold) for a witness and without ``control``; None with a warning when the
    threshold is too short to leave the margin and one probe interval of evidence.
    """
    if role != "watchdog" or own is None or own.control is None:
        return None, ""
    margin = hold_margin(interval=interval, jitter=jitter, timeout=timeout,
                         stop_timeout=own.control.stop_timeout)
    after = round(db_unreachable - margin, 3)
    if after <= interval:
        return None, (
            f"{format_duration(db_unreachable)} is too short for "
            "this watchdog to stop its own unreachable primary before the other region may "
            f"promote: it must exceed {format_duration(round(margin + interval, 3))} (two "
            "probe intervals with jitter + one probe timeout + database.control.stop_timeout"
            " + one probe interval); a primary frozen while its watchdog runs may wake "
            "writable after the promotion")
    return after, ""
