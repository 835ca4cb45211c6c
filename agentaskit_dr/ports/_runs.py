"""The runbook's actuators and their crash-safe journal, and the fencing marker in
PostgreSQL."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentaskit_dr.ports._leadership import Lease

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
