"""What a switchover reports: each phase's time, the write-unavailability window, where it
resumed, and whether the old primary rejoined; JSON-able for the evidence file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SwitchoverPhases:
    """Seconds spent in each phase (see ``actuators/switchover.py``); 0 for a phase a
    resumed run found done."""

    preflight: float
    checkpoint: float
    stop: float
    catch_up: float
    promote: float
    rejoin: float


def phases_from_marks(marks: dict[str, float]) -> SwitchoverPhases:
    """Each phase's duration from the clock readings taken when phases ended."""
    seconds: dict[str, float] = {}
    previous = marks["started"]
    for name in ("preflight", "checkpoint", "stop", "catch_up", "promote", "rejoin"):
        if name in marks:
            seconds[name] = round(marks[name] - previous, 4)
            previous = marks[name]
        else:
            seconds[name] = 0.0
    return SwitchoverPhases(**seconds)


@dataclass(frozen=True)
class SwitchoverResult:
    """What a switchover did, JSON-able with :meth:`as_dict`.

    ``resumed_at``: None for a run from the start, else the stage a run that found a
    crashed run's work resumed at (``catch_up``, ``promote``, ``rejoin``).
    ``write_unavailable_seconds``: from the start of the stop (the old primary refuses
    writes from then on) to the new primary's first write (the epoch marker); None on a
    resumed run. ``final_lsn``: the old primary's shutdown checkpoint (None when the run
    resumed after it restarted); ``old_timeline`` / ``new_timeline``: before and after.
    ``rejoined``: the old primary streams from the new one with lag 0 (``rejoin_detail``
    says why not otherwise). ``promoted_replay_lsn``: the standby's replay position at
    pg_promote; ``lag_bytes_at_promotion``: what it had not replayed of the old primary's
    WAL then (the measured RPO, 0 by design); both None when this attempt did not promote.
    """

    switchover_id: str
    epoch: int
    old_primary: str
    new_primary: str
    resumed_at: str | None
    final_lsn: str | None
    old_timeline: int
    new_timeline: int
    stopped: str
    phases: SwitchoverPhases
    write_unavailable_seconds: float | None
    total_seconds: float
    rejoined: bool
    rejoin_detail: str
    promoted_replay_lsn: str | None = None
    lag_bytes_at_promotion: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
