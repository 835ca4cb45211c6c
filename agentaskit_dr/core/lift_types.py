"""The self-fence lift as data: the facts the runtime gathers, the command, its outcome.

Kept apart from ``model`` (which unites them into ``Event`` and ``Command``) so that each
module stays small; the decision itself is in ``self_fence``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SelfFenceFacts:
    """What the runtime found while this watchdog's self-fence is in force.

    ``region``: the fenced primary's region (this watchdog's). ``recorded_region``: the
    region the cluster record names as primary (the config file's primary when nothing
    was ever recorded); None when the record could not be read. ``recorded_epoch``: the
    epoch of the failover that record names (None: none recorded). ``other_in_recovery``:
    the other region's server answered and is a standby (True), answered as a primary
    (False), or could not be asked (None). ``other_detail`` says what it answered.
    """

    region: str
    recorded_region: str | None
    recorded_epoch: int | None
    other_in_recovery: bool | None
    other_detail: str = ""


@dataclass(frozen=True, slots=True)
class SelfFenceLiftDone:
    """The lift ran: ``lifted`` (the server takes writes again) or not, and why."""

    lifted: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LiftSelfFence:
    """Lift this watchdog's self-fence of its own primary, under the lock's ``epoch``.

    ``fence_epoch``: the newest epoch known in force when the fence was applied; the
    runtime checks again, under a verified lease, that no newer one promoted anything.
    ``conditions``: each lift condition and its value, for the log.
    """

    epoch: int
    fence_epoch: int | None
    reason: str
    conditions: tuple[tuple[str, str], ...]
