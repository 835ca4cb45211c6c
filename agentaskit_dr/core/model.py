"""Data the decision core works on: conditions, events, commands and state.

Everything here is an immutable value. Time is a float of seconds on one monotonic
clock, passed in by the runtime; nothing in ``core`` reads a clock or does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from agentaskit_dr.core.assess import Assessment, Verdict
from agentaskit_dr.core.hold_types import HoldOwnPrimary, OwnPrimaryHoldFailed
from agentaskit_dr.core.lift_types import LiftSelfFence, SelfFenceFacts, SelfFenceLiftDone


class Condition(enum.StrEnum):
    """A failover trigger of the plan, each with its own threshold."""

    REGION_UNHEALTHY = "region_unhealthy"
    DB_UNREACHABLE = "db_unreachable"


class Phase(enum.StrEnum):
    """Where the watchdog is in the failover lifecycle."""

    WATCHING = "watching"
    FAILING_OVER = "failing_over"
    # Anti-flap: after a failover nothing fails over again until an operator acknowledges.
    FAILED_OVER = "failed_over"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How long each condition must hold before it fails over (seconds).

    ``recovery`` is the hysteresis on the way back: a condition that was failing is
    reported as recovering until it has been healthy this long. It never delays the
    debounce restart: one healthy observation restarts the failure clock.
    ``retry_backoff`` spaces out retries of a failover the executor refused.
    """

    region_unhealthy: float = 300.0
    db_unreachable: float = 120.0
    recovery: float = 30.0
    retry_backoff: float = 10.0
    # A primary-side watchdog that hears neither peer nor witness this long fences its own
    # primary; None never self-fences. Must be shorter than the other side's thresholds.
    fence_after: float | None = None
    # Lift a self-fence automatically once safe (docs/architecture.md); alert when one
    # stays in force longer than ``self_fence_stuck_after`` because a condition blocks it.
    self_fence_auto_lift: bool = True
    self_fence_stuck_after: float = 300.0
    # Control mode: the primary side stops and holds its own primary once the quorum saw
    # it unreachable this long (core/own_hold.py); None never.
    hold_after: float | None = None

    def for_condition(self, condition: Condition) -> float:
        if condition is Condition.REGION_UNHEALTHY:
            return self.region_unhealthy
        return self.db_unreachable


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Observed:
    """One probe outcome for a condition: ``failing`` is the probe's view at ``now``."""

    condition: Condition
    failing: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LeadershipChanged:
    """The leader lock was acquired (``epoch`` set) or lost/unknown (``epoch`` None)."""

    epoch: int | None
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class FailoverSucceeded:
    """The executor promoted the replica under ``epoch``."""

    epoch: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FailoverRefused:
    """The executor did not fail over; the core retries after ``retry_backoff``.

    ``retry`` False: a target or the journal refused our epoch as stale (a newer epoch
    acted); the retry then waits for the keeper to raise the epoch, never loops hot.
    """

    reason: str
    retry: bool = True


@dataclass(frozen=True, slots=True)
class StandbyObserved:
    """What a probe of the standby slot found.

    ``in_recovery`` False means the server there accepts the primary role: either a
    promotion happened (``marker_epoch`` newer than any failover we know of) or it is a
    fenced old primary left in the standby slot. ``writable`` is False when it is fenced.
    """

    in_recovery: bool
    marker_epoch: int | None = None
    writable: bool = False
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """An operator cleared the anti-flap block after a failover."""


@dataclass(frozen=True, slots=True)
class ThresholdsChanged:
    """A reload brought new thresholds; running clocks keep their start times."""

    thresholds: Thresholds


@dataclass(frozen=True, slots=True)
class Assessed:
    """The vantage points' verdict, made when this watchdog's own probe brought news.

    ``db_evidence`` / ``region_evidence`` say which condition the news was about: only that
    condition's clock moves, so a clock advances on evidence, never on mere time.
    ``primary_side``: this watchdog runs in the primary region (it may have to self-fence).
    """

    assessment: Assessment
    primary_side: bool
    db_evidence: bool = False
    region_evidence: bool = False


@dataclass(frozen=True, slots=True)
class Paused:
    """Maintenance: probes and verdicts go on, nothing is actuated."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Resumed:
    """Maintenance is over; automatic actions are armed again."""


@dataclass(frozen=True, slots=True)
class FailoverRequested:
    """An operator asked for a failover now (the debounce does not apply)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SelfFenceFailed:
    """A self-fence was not confirmed (the server refused, the stop did not complete...).

    It is tried again after ``retry_backoff`` while the isolation lasts, with an alert
    each time, until one is confirmed.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class PlannedRunActive:
    """A failback or switchover run is active in the journal (``run`` names it and its
    step), or none is any more (``run`` None).

    While one is active the automation does not fight the runbook: the server it fences
    or resyncs is not "primary down", nothing fails over and nothing is fenced. When it
    ends the failure clocks start afresh (the run may have stopped a server for a while).
    """

    run: str | None


@dataclass(frozen=True, slots=True)
class PlannedPrimary:
    """A failback or switchover run made ``region`` the primary under ``epoch`` (from the
    cluster record): watch it, armed, as the primary."""

    region: str
    epoch: int
    run_id: str


@dataclass(frozen=True, slots=True)
class RecordedPrimary:
    """The cluster record names ``region`` the primary, made so by failover ``run_id``
    under ``epoch``, which this watchdog did not see happen (it was paused, cut off or
    down through it). ``acknowledged``: an operator acknowledged it since. ``source``:
    who said so, when not the record itself (a peer's report while the record cannot be
    read)."""

    region: str
    epoch: int
    run_id: str
    acknowledged: bool
    source: str = "the cluster record"


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; re-evaluate the clocks."""


Event = (Observed | LeadershipChanged | FailoverSucceeded | FailoverRefused | StandbyObserved
         | Acknowledged | ThresholdsChanged | Assessed | Paused | Resumed | FailoverRequested
         | SelfFenceFailed | PlannedRunActive | PlannedPrimary | RecordedPrimary | SelfFenceFacts
         | SelfFenceLiftDone | OwnPrimaryHoldFailed | Tick)


# ---------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class StartFailover:
    """Promote the replica, fenced by ``epoch``. Issued once per failover.

    ``condition`` is None for a failover an operator requested.
    """

    condition: Condition | None
    epoch: int
    reason: str
    failing_since: float
    decided_at: float
    # When the first attempt of this incident was decided: retries after a refusal carry
    # the same value, so they notify as one incident, not one per attempt.
    incident_since: float | None = None


@dataclass(frozen=True, slots=True)
class FenceOldPrimary:
    """Make the server in the standby slot read-only and end its sessions."""

    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class FenceOwnPrimary:
    """A primary-side watchdog cut off from peer and witness fences its own primary.

    Needs no lock: the lock store may be on the other side of the partition, and making the
    primary read-only is always the safe direction. ``LiftSelfFence`` lifts it (core/self_fence).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class CloseIncident:
    """The failover incident ends without a failover (its condition cleared, or it can
    never succeed): resolve what its first attempt opened with the stakeholders."""

    reason: str


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must hear about.

    ``key`` names the condition the alert is about ("assessment", "self_fence", "fence",
    "pause"...): the runtime sends one notification per open key (deduplicated) and a
    resolve when an alert with ``resolve`` closes it. ``key`` None is said in the log only:
    the failover's own notifications come from the runbook's steps.
    """

    severity: Severity
    message: str
    key: str | None = None
    resolve: bool = False


Command = (StartFailover | FenceOldPrimary | FenceOwnPrimary | LiftSelfFence | HoldOwnPrimary
           | CloseIncident | Alert)


# ---------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Clock:
    """The debounce clock of one condition.

    ``failing_since``: first failing observation of the current unbroken streak.
    ``last_failing``: latest failing observation of that streak (the evidence).
    ``healthy_since``: first healthy observation after a streak (for hysteresis).
    """

    failing_since: float | None = None
    last_failing: float | None = None
    healthy_since: float | None = None
    detail: str = ""

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def held_for(self) -> float:
        """How long the failure has been observed without a healthy observation."""
        if self.failing_since is None or self.last_failing is None:
            return 0.0
        return self.last_failing - self.failing_since


@dataclass(frozen=True, slots=True)
class FailoverRecord:
    """What the core remembers of the failover in progress or done."""

    condition: Condition | None
    epoch: int | None
    decided_at: float
    reason: str
    completed_at: float | None = None


def fresh_clocks() -> dict[Condition, Clock]:
    return {condition: Clock() for condition in Condition}


@dataclass(frozen=True, slots=True)
class WatchState:
    """A frozen snapshot of what the watchdog believes; ``verdict`` explains the last step."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    phase: Phase = Phase.WATCHING
    clocks: dict[Condition, Clock] = field(default_factory=fresh_clocks)
    epoch: int | None = None
    lock_holder: str | None = None
    failover: FailoverRecord | None = None
    # None: not seen yet; False: the standby slot holds no standby (nothing to promote).
    standby_ready: bool | None = None
    retry_not_before: float | None = None
    verdict: str = "starting"
    paused: bool = False
    pause_reason: str = ""
    # The latest assessment of the vantage points and since when its verdict holds.
    assessed: Verdict | None = None
    assessed_since: float | None = None
    assessment_detail: str = ""
    # Self-fencing: when this primary-side watchdog last started hearing nobody, and
    # whether it fenced its primary (stays True until an operator acknowledges).
    isolated_since: float | None = None
    self_fenced: bool = False
    self_fence_deferred: bool = False  # paused when it was due; the alert went out once
    self_fence_retry_at: float | None = None  # the last self-fence failed: try again then
    # The lift (core/self_fence.py): when fenced, the newest epoch then in force, since
    # when every lift condition holds, a lift running, the stuck alert said once.
    self_fenced_at: float | None = None
    self_fence_epoch: int | None = None
    lift_ready_since: float | None = None
    lift_pending: bool = False
    lift_stuck_alerted: bool = False
    lift_status: str = ""  # why the fence is not lifted yet, or how far the lift is
    # Restored at start from the record: the fence may have been cut short by the restart;
    # fenced again once isolated for ``fence_after`` (core/self_fence.py ``restored``).
    self_fence_unconfirmed: bool = False
    # The failover incident open since this decision time (cleared by success or close).
    incident_since: float | None = None
    # The primary answers this watchdog with an error (its name): up, and an alert.
    primary_refusal: str | None = None
    # The failover's target region is unhealthy (who says so); a ripe failover holds.
    target_unhealthy: str | None = None
    target_hold_alerted: bool = False  # the hold was announced once
    # A failback or switchover run active in the journal (its description): no failover,
    # no fence of the standby slot while it runs.
    planned_run: str | None = None
    own_primary_held_at: float | None = None  # the hold issued (core/own_hold.py)
    own_hold_deferred: bool = False  # paused when it was due; the alert went out once
