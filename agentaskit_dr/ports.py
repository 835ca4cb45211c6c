"""The seams between the runtime and its plug-ins, as Protocols, plus the values they exchange.

Plug-ins (``probes/``, ``actuators/``, ``leadership/``) import this module and nothing of
each other. The runtime composes them. Unit tests of the runtime may put fakes behind
these Protocols; every real plug-in also has an integration test against the real part.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

# ---------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True)
class PostgresObservation:
    """One look at a PostgreSQL server; failures are data, never exceptions.

    LSNs are integers (bytes since the start of WAL), as ``pg_lsn - '0/0'`` gives them.
    ``current_lsn`` is ``pg_current_wal_lsn()`` on a primary and None on a standby.
    ``replay_lag_seconds`` is now minus ``pg_last_xact_replay_timestamp()`` on a standby.
    ``receiver_status`` is ``pg_stat_wal_receiver.status`` ('streaming', ...) or None (no
    WAL receiver); 'unreadable' when the role may not read it (grant ``pg_monitor``).
    ``marker_epoch`` is the fencing epoch recorded by the last promotion, if any.

    ``reachable`` means the server answered. One that answered with an error (pg_hba
    rejection, too many connections, database missing, starting up...) is reachable with
    ``refusal`` naming the kind of answer (see ``pg_answers``) and
    ``sqlstate`` the server's code; its role and positions are then unknown (None).
    Only a server that did not answer (refused, reset, timeout) is ``reachable=False``.
    """

    target: str
    reachable: bool
    latency: float
    error: str | None = None
    refusal: str | None = None
    sqlstate: str | None = None
    in_recovery: bool | None = None
    read_only: bool | None = None
    current_lsn: int | None = None
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    replay_lag_seconds: float | None = None
    receiver_status: str | None = None
    marker_epoch: int | None = None

    @property
    def writable(self) -> bool:
        return bool(self.reachable and self.in_recovery is False and self.read_only is False)

    @property
    def status_read(self) -> bool:
        """The server answered and its status was read (role and positions are known)."""
        return self.reachable and self.refusal is None and self.in_recovery is not None


class HttpAnswer(enum.StrEnum):
    """How one health URL answered: the load balancer's "no" is not its silence."""

    OK = "ok"  # 2xx
    ANSWERED_BADLY = "answered_badly"  # an HTTP status other than 2xx (5xx, 4xx, 3xx)
    NO_ANSWER = "no_answer"  # connection refused or reset, timeout: no status line


@dataclass(frozen=True, slots=True)
class UrlCheck:
    """One health URL's check; ``status`` is None when no status line came back."""

    url: str
    ok: bool
    status: int | None
    latency: float
    error: str | None = None

    @property
    def answer(self) -> HttpAnswer:
        if self.ok:
            return HttpAnswer.OK
        return HttpAnswer.NO_ANSWER if self.status is None else HttpAnswer.ANSWERED_BADLY


@dataclass(frozen=True, slots=True)
class RegionHealthObservation:
    """Health of one region's HTTP endpoints; ``healthy`` applies the quorum fraction."""

    region: str
    healthy: bool
    checks: tuple[UrlCheck, ...] = field(default_factory=tuple)

    def count(self, answer: HttpAnswer) -> int:
        """How many of the URLs answered this way."""
        return sum(1 for c in self.checks if c.answer is answer)

    @property
    def detail(self) -> str:
        good = self.count(HttpAnswer.OK)
        text = f"{good}/{len(self.checks)} health URLs of {self.region} answered 2xx"
        bad, silent = self.count(HttpAnswer.ANSWERED_BADLY), self.count(HttpAnswer.NO_ANSWER)
        apart = [f"{bad} answered badly"] if bad else []
        apart += [f"{silent} did not answer"] if silent else []
        return f"{text} ({', '.join(apart)})" if apart else text


Observation = PostgresObservation | RegionHealthObservation
ObservationT_co = TypeVar("ObservationT_co", bound=Observation, covariant=True)


@runtime_checkable
class Probe(Protocol[ObservationT_co]):
    """Looks at one target. Never raises: a failure is an observation.

    Must finish within its own timeout (the scheduler also bounds it, as a backstop).
    """

    name: str

    async def observe(self) -> ObservationT_co: ...

    def failure(self, error: str, latency: float) -> ObservationT_co:
        """The observation that reports this probe's target as failing with ``error``."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- leadership


class LockUnavailable(Exception):
    """The lock store cannot be reached or answered wrongly; nothing may be actuated."""


class StaleEpoch(Exception):
    """A newer fencing epoch has acted on the target; this holder must not act."""


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


class Clock(Protocol):
    """Monotonic seconds; the runtime passes ``loop.time`` so tests can run on virtual time."""

    def __call__(self) -> float: ...


# ---------------------------------------------------------------- fencing marker in PostgreSQL

#: Schema and table where a promotion records its fencing epoch on the new primary.
#: One row (id = 1): epoch bigint, holder text, failover_id text, promoted_at timestamptz.
MARKER_SCHEMA = "agentaskit_dr"
MARKER_TABLE = "agentaskit_dr.failover_epoch"


# ---------------------------------------------------------------- runbook actuators


class ActuationFailed(Exception):
    """A step could not be carried out for a reason retrying will not fix (403, bad target).

    The message names the target and the reason, ready for the operator.
    """


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one runbook step did.

    ``changed`` is False when the step found its work already done (a resumed run): the
    proof that re-running a step is harmless. ``data`` holds JSON-able facts for the
    journal and the evidence file (old and new values, counts, timings).
    """

    changed: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


class Actuator(Protocol):
    """One runbook step's effect on the world (DNS, Kubernetes, PostgreSQL, webhooks).

    ``apply`` is idempotent: applying the same ``epoch`` twice changes nothing the second
    time. It records ``epoch`` where the target can keep it and raises ``StaleEpoch`` when
    the target already carries a newer one. Transient errors are retried inside (tenacity);
    permanent ones raise ``ActuationFailed``.
    """

    name: str

    async def describe(self) -> str:
        """What ``apply`` would change, read from the target, for ``--dry-run``; no writes."""
        ...

    async def apply(self, *, epoch: int, failover_id: str) -> StepOutcome: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PeerFence:
    """What the old primary's own watchdog answered when asked to fence its server before
    a promotion (``POST /v1/fence-primary``).

    ``confirmed``: True, its server is fenced (stopped for good in control mode); False,
    its server answers but could not be fenced (no promotion then); None, it tells
    nothing (no such watchdog configured or heard, it did not answer or refused our
    credential, or its server is silent to it too).
    """

    confirmed: bool | None
    detail: str
    peer: str | None = None


# ---------------------------------------------------------------- journal


class StepStatus(enum.StrEnum):
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One record of a step; ``at`` is wall-clock Unix seconds (journals outlive processes)."""

    step: str
    status: StepStatus
    epoch: int
    at: float
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunJournal:
    """A failover or failback run as stored: its plan and every entry, oldest first."""

    run_id: str
    kind: str
    plan: tuple[str, ...]
    created_at: float
    created_epoch: int
    reason: str
    entries: tuple[JournalEntry, ...] = ()
    finished: str | None = None  # None while running; "done" or "failed" when closed
    meta: dict[str, Any] = field(default_factory=dict)

    def last_status(self, step: str) -> StepStatus | None:
        """The latest recorded status of ``step``; None if never started."""
        for entry in reversed(self.entries):
            if entry.step == step:
                return entry.status
        return None


class Journal(Protocol):
    """Runs of the runbook, stored next to the leader lock.

    Compare-and-set: every write carries the writer's ``Lease`` and lands only while that
    lease's token holds the lock under that epoch (else ``StaleEpoch``); the check and the
    write are one atomic operation on the store. Raises ``LockUnavailable`` when the store
    cannot be reached. Reads never need a lease.
    """

    async def open(
        self, run_id: str, *, lease: Lease, kind: str, plan: Sequence[str], reason: str,
        meta: Mapping[str, Any] | None = None,
    ) -> RunJournal:
        """Create the run (or return it unchanged if it exists) and mark it the active run."""
        ...

    async def record(self, run_id: str, entry: JournalEntry, *, lease: Lease) -> None: ...

    async def finish(self, run_id: str, outcome: str, *, lease: Lease) -> None:
        """Close the run with ``outcome`` ("done"/"failed") and clear the active mark."""
        ...

    async def active(self) -> RunJournal | None:
        """The run that was opened and not finished, if any (what a successor resumes)."""
        ...

    async def get(self, run_id: str) -> RunJournal | None: ...

    async def recent(self, limit: int = 20) -> list[RunJournal]:
        """Runs newest first."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- notifications


@dataclass(frozen=True, slots=True)
class Notification:
    """A message to stakeholders about a run.

    ``event`` is one of "failover_started", "failover_done", "failover_failed",
    "incident_opened", "status_page", "failback_planned" (free text is allowed).
    ``dedup_key`` groups trigger and resolve of one incident (``incident``, else the run id).
    """

    event: str
    run_id: str
    epoch: int
    summary: str
    severity: str = "critical"
    resolve: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    # The incident the run belongs to: a failover retried after a refusal is one incident.
    incident: str | None = None

    @property
    def dedup_key(self) -> str:
        return self.incident or self.run_id


class Notifier(Protocol):
    """Delivers notifications; never raises and never blocks a failover."""

    name: str

    async def send(self, notification: Notification) -> bool:
        """Deliver once with bounded retries; True when the receiver accepted it."""
        ...

    async def close(self) -> None: ...
