"""The hold of this region's unreachable primary as data (the decision: ``own_hold``).

Kept apart from ``model`` (which unites them into ``Event`` and ``Command``) so that each
module stays small.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HoldOwnPrimary:
    """Stop this region's primary for good and keep it in recovery (control mode only).

    Issued by the primary-side watchdog once a quorum has seen the server unreachable for
    ``thresholds.hold_after``, before the other region may promote: a frozen server must
    not wake writable after a promotion it could not be told about. Needs no lock (stopping
    is the safe direction). Not lifted automatically: failback, resync or the start gate
    bring the server back. ``failing_since``/``held_for``: the quorum's clock, for the log.
    """

    reason: str
    failing_since: float
    held_for: float


@dataclass(frozen=True, slots=True)
class OwnPrimaryHoldFailed:
    """The hold could not be confirmed (the server still runs, or no ``standby.signal``):
    the core issues it again at the next assessment that still finds it due."""

    reason: str
