"""The leader lock with its fencing epoch, and the cluster record kept beside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# ---------------------------------------------------------------- leadership


class LockUnavailable(Exception):
    """The lock store cannot be reached or answered wrongly; nothing may be actuated."""


class StaleEpoch(Exception):
    """A newer fencing epoch has acted on the target; this holder must not act."""


def refuse_newer_epoch(recorded: int | None, epoch: int, reason: str, *,
                       on_refusal: Callable[[str], None] | None = None) -> None:
    """Safety invariant 4: a target that recorded an epoch newer than ``epoch`` refuses
    this caller with ``StaleEpoch(reason)`` (after ``on_refusal(reason)``, to log it)."""
    if recorded is not None and recorded > epoch:
        if on_refusal is not None:
            on_refusal(reason)
        raise StaleEpoch(reason)


@dataclass(frozen=True, slots=True)
class Lease:
    """A held leadership: the fencing epoch and until when (local monotonic time) it is safe.

    ``safe_until`` is computed from the time the acquiring request was *sent*, minus a
    safety margin, so that clock drift and latency make it shorter, never longer.
    """

    epoch: int
    token: str
    holder: str
    safe_until: float


class LeaderLock(Protocol):
    """The leader lock with a fencing epoch.

    Timing-critical: ``acquire`` and ``renew`` must finish well within the TTL; each is
    bounded by the store's socket timeout and never retried internally past it.
    Compare-and-set: ``renew`` and ``release`` act only while the stored token is ours;
    the epoch is an atomic INCR issued at each successful acquisition.
    """

    holder: str

    async def acquire(self) -> Lease | None:
        """Take the lock if free; a new epoch on success, None if someone else holds it.

        Raises LockUnavailable if the store cannot be reached.
        """
        ...

    async def renew(self, lease: Lease) -> Lease | None:
        """Extend our lease; None if it is no longer ours. Raises LockUnavailable."""
        ...

    async def release(self, lease: Lease) -> bool:
        """Give the lock up if it is still ours; True when it was. Best effort; never raises."""
        ...

    async def current(self) -> tuple[str, int] | None:
        """Who holds the lock now and under which epoch; None if free. Raises LockUnavailable."""
        ...

    async def verify(self, lease: Lease) -> bool:
        """Ask the store whether ``lease`` is still ours (the check before each actuation)."""
        ...

    async def raise_epoch_floor(self, lease: Lease, floor: int) -> Lease | None:
        """Compare-and-set: while ``lease``'s token holds the lock, set the epoch counter to
        ``max(counter, floor) + 1``, renew the TTL, and return the lease under that new
        epoch; None if the lock is no longer ours. Raises LockUnavailable.

        How a holder gets above every epoch the targets recorded after the store lost
        its counter (a Redis restarted empty starts again at 1).
        """
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- the cluster record


@dataclass(frozen=True, slots=True)
class ClusterControls:
    """The operators' controls, shared by every watchdog of the cluster.

    ``paused_at`` and the times below are wall-clock Unix seconds (they outlive processes).
    ``ack_generation`` counts acknowledgements: each watchdog applies each one once.
    """

    paused: bool = False
    pause_reason: str = ""
    paused_by: str = ""
    paused_at: float | None = None
    ack_generation: int = 0
    acked_by: str = ""
    acked_at: float | None = None


@dataclass(frozen=True, slots=True)
class ClusterPrimary:
    """Which region serves as primary now, and the failover (epoch, run) that made it so."""

    region: str
    epoch: int
    run_id: str
    at: float


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """The cluster as the lock store keeps it; ``primary`` None until a failover records it."""

    controls: ClusterControls = field(default_factory=ClusterControls)
    primary: ClusterPrimary | None = None


class ClusterStore(Protocol):
    """The cluster record next to the leader lock: the controls and the current primary.

    Reads never need a lease and are bounded by the store's socket timeout. Controls are
    written by operators (through any watchdog's API or the CLI) without a lease: each
    write is one atomic operation, and ``acknowledge`` increments the generation on the
    server. ``record_primary`` is compare-and-set: it lands only while ``lease`` holds the
    lock under its epoch (else ``StaleEpoch``) and never replaces a newer epoch's record.
    Every call raises ``LockUnavailable`` when the store cannot be reached.
    """

    async def read(self) -> ClusterRecord: ...

    async def pause(self, *, reason: str, by: str) -> ClusterRecord: ...

    async def resume(self, *, by: str) -> ClusterRecord: ...

    async def acknowledge(self, *, by: str) -> ClusterRecord: ...

    async def record_primary(self, region: str, *, epoch: int, run_id: str,
                             lease: Lease) -> None: ...

    async def close(self) -> None: ...
