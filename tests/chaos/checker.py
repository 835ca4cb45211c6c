"""The checker: pure functions over one run's :class:`~tests.chaos.history.History`.

Four rules, each returning the violations it found (empty: the rule holds):

- :func:`split_brain`: no two servers accepted writes in overlapping windows;
- :func:`lost_writes`: no acknowledged write is missing from the final primary, except
  writes the old primary acknowledged before the promotion and never replicated (data
  loss by design of asynchronous replication: counted and reported with its cause);
- :func:`false_failovers`: every promotion had its condition, judged from the fault log;
- :func:`convergence`: one writable primary, daemons that agree, every line JSON.

:func:`check` runs them all and gives one :class:`Verdict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentaskit_dr.sandbox.drill import event_time
from tests.chaos.convergence import convergence
from tests.chaos.downtime import ServerUp, daemon_faults, up_proofs
from tests.chaos.history import (
    DB_REGION,
    REGION_DB,
    REGION_HEALTH,
    SERVERS,
    VANTAGES,
    Commit,
    FaultRecord,
    FinalState,
    History,
    Violation,
)

#: A probe that started just before a fault may be stamped failing from its start.
START_TOLERANCE = 1.0
#: How long a daemon may still see a healed fault: a stale peer report, a probe, a timeout.
HEAL_TOLERANCE = 3.0
#: Vantage points (of three) that must not reach the primary for its condition to hold.
QUORUM = 2
INITIAL_PRIMARY = "us-west-2"


@dataclass(frozen=True, slots=True)
class Loss:
    """An acknowledged write missing from the final primary by design, with its cause."""

    commit: Commit
    cause: str


@dataclass(slots=True)
class Verdict:
    """The checker's answer for one run."""

    seed: int
    violations: list[Violation] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    commits: int = 0
    promotions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        rules = sorted({v.rule for v in self.violations})
        head = "PASS" if self.ok else "FAIL " + ",".join(rules)
        return (f"{head} (commits {self.commits}, promotions {self.promotions}, "
                f"data loss {len(self.losses)})")


@dataclass(frozen=True, slots=True)
class Promotion:
    """A promotion that changed a standby into a primary."""

    at: float
    watchdog: str
    epoch: int | None
    server: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Window:
    """When ``server`` on ``timeline`` certainly took writes: from the first ack to the
    last send (a commit lies between its send and its ack)."""

    server: str
    timeline: int
    start: float
    end: float
    writes: int


# ------------------------------------------------------------------ split brain


def write_windows(commits: Iterable[Commit]) -> list[Window]:
    """One window per (server, timeline) that acknowledged writes."""
    groups: dict[tuple[str, int], list[Commit]] = {}
    for commit in commits:
        groups.setdefault((commit.server, commit.timeline), []).append(commit)
    return [Window(server, timeline, min(c.acked for c in group), max(c.sent for c in group),
                   len(group))
            for (server, timeline), group in sorted(groups.items())]


def split_brain(commits: Sequence[Commit]) -> list[Violation]:
    """Two different servers whose certain write windows overlap."""
    windows = write_windows(commits)
    found = []
    for i, a in enumerate(windows):
        for b in windows[i + 1:]:
            if a.server != b.server and a.start < b.end and b.start < a.end:
                found.append(Violation(
                    "split_brain",
                    f"{a.server} (timeline {a.timeline}, {a.writes} writes) took writes "
                    f"{a.start:.3f}..{a.end:.3f} while {b.server} (timeline {b.timeline}, "
                    f"{b.writes} writes) took writes {b.start:.3f}..{b.end:.3f}: both around "
                    f"{_around(a, b)}",
                    max(a.start, b.start)))
    return found


def _around(a: Window, b: Window) -> str:
    """Where two overlapping windows meet (a one-write window has its ack after its
    send: the commit lies between the two)."""
    low, high = sorted((max(a.start, b.start), min(a.end, b.end)))
    return f"{low:.3f}..{high:.3f}"


# ------------------------------------------------------------------ promotions


def promotions(events: Sequence[dict[str, Any]]) -> list[Promotion]:
    """Every promotion that changed a standby (not a resumed one), in time order; the
    promoted server is the standby of the promoter's primary region at the time."""
    ordered = sorted(events, key=event_time)
    region_of: dict[str, str] = {}
    found = []
    for event in ordered:
        name = event.get("event")
        if name == "verdict" and event.get("primary_region") in REGION_DB:
            region_of[event["watchdog"]] = event["primary_region"]
        elif name == "promotion_done" and event.get("already_promoted") is False:
            primary = region_of.get(event["watchdog"], INITIAL_PRIMARY)
            (standby,) = (db for db in SERVERS if db != REGION_DB[primary])
            found.append(Promotion(event_time(event), event["watchdog"], event.get("epoch"),
                                   standby, event))
    return found


# ------------------------------------------------------------------ lost writes


def final_primary(final: FinalState) -> str | None:
    """The server to hold every acknowledged write: the one writable server, else the
    one that is not in recovery."""
    if len(final.writable) == 1:
        return final.writable[0]
    primaries = [s for s, recovering in final.in_recovery.items() if recovering is False]
    return primaries[0] if len(primaries) == 1 else None


def lost_writes(commits: Sequence[Commit], final: FinalState,
                promoted: Sequence[Promotion]) -> tuple[list[Violation], list[Loss]]:
    """Acknowledged writes missing from the final primary: violations, and losses by
    design (acknowledged by the old primary before the promotion, never replicated,
    with no fence that read the old primary's final position)."""
    primary = final_primary(final)
    if primary is None or primary not in final.rows:
        if not commits:
            return [], []
        return [Violation("lost_write", "no single final primary answered to read the "
                          f"writes from (writable {final.writable}, in recovery "
                          f"{final.in_recovery})")], []
    rows = final.rows[primary]
    violations: list[Violation] = []
    losses: list[Loss] = []
    for commit in commits:
        if commit.id in rows:
            continue
        where = (f"{commit.id} by {commit.writer} on {commit.server} timeline "
                 f"{commit.timeline}, acknowledged at {commit.acked:.3f}")
        if commit.server == primary:
            violations.append(Violation(
                "lost_write", f"{where}: missing from that same server, the final primary",
                commit.acked))
            continue
        promotion = next((p for p in promoted if p.server == primary), None)
        if promotion is None:
            violations.append(Violation(
                "lost_write", f"{where}: missing from the final primary {primary}, which "
                "no daemon promoted", commit.acked))
        elif commit.sent >= promotion.at:
            violations.append(Violation(
                "lost_write", f"{where}: sent {commit.sent - promotion.at:.3f}s after "
                f"{primary} was promoted (epoch {promotion.epoch}); the old primary took it",
                commit.acked))
        elif (promotion.event.get("old_primary_fenced") is True
              and promotion.event.get("final_lsn") is not None):
            violations.append(Violation(
                "lost_write", f"{where}: missing although the promotion at "
                f"{promotion.at:.3f} fenced the old primary and read its final position "
                f"{promotion.event.get('final_lsn')} (the zero-loss catch-up gate)",
                commit.acked))
        else:
            losses.append(Loss(commit, (
                f"acknowledged by the old primary {commit.server} "
                f"{promotion.at - commit.acked:.3f}s before {primary} was promoted "
                f"(epoch {promotion.epoch}, lag {promotion.event.get('lag_bytes')} bytes "
                f"{_lag_basis(promotion.event)}); "
                "not replicated in time (asynchronous replication; the old primary "
                "could not be read at the promotion)")))
    return violations, losses


def _lag_basis(event: dict[str, Any]) -> str:
    """What the promotion's lag was measured against (runtime/rpo.py)."""
    if event.get("rpo_lower_bound") is False:
        return "exact"
    age = event.get("last_view_age_seconds")
    return ("a lower bound" if age is None
            else f"a lower bound: at the last view, {age}s before the promotion")


# ------------------------------------------------------------------ false failovers


Active = Sequence[FaultRecord]
Condition = Callable[[Active], bool]


def unreachable(target: str, *, down_counts: bool) -> Condition:
    """``target`` (a database or health node) unreachable from a quorum of vantage
    points; ``down_counts``: a stopped process (a database) is unreachable from
    everywhere."""

    def holds(active: Active) -> bool:
        if down_counts and any(target in f.down for f in active):
            return True
        blind = {v for f in active for (v, t) in f.cut if t == target and v in VANTAGES}
        return len(blind) >= QUORUM

    return holds


def isolated(node: str) -> Condition:
    """``node`` hears neither of the other two daemons (each cut off from it or down)."""

    def holds(active: Active) -> bool:
        others = [v for v in VANTAGES if v != node]
        return all(any((node, other) in f.cut or other in f.down for f in active)
                   for other in others)

    return holds


def held_throughout(faults: Sequence[FaultRecord], condition: Condition, start: float,
                    end: float) -> bool:
    """Whether ``condition`` held at every moment of ``[start, end]`` per the fault log,
    each fault's heal pushed back by :data:`HEAL_TOLERANCE` (daemons see a heal late)."""
    late = [FaultRecord(f.kind, f.target, f.start,
                        None if f.end is None else f.end + HEAL_TOLERANCE, f.down, f.cut)
            for f in faults if not f.error]
    # The condition only changes at a fault's start or (late) end: test each segment.
    points = sorted({start, *(t for f in late for t in (f.start, f.end)
                              if t is not None and start < t < end)})
    return all(condition([f for f in late if f.active_at(point)]) for point in points)


def false_self_fences(events: Sequence[dict[str, Any]], faults: Sequence[FaultRecord], *,
                      fence_after: float) -> list[Violation]:
    """Each self-fence must rest on its watchdog hearing neither peer nor witness for
    ``fence_after``, per the fault log."""
    found = []
    ordered = sorted(events, key=event_time)
    for event in ordered:
        if event.get("event") != "self_fenced":
            continue
        node = event["watchdog"]
        # Judged when it was decided (its alert): stopping the server may take seconds,
        # and an isolation healed meanwhile does not undo the decision.
        decided = [e for e in ordered if e["watchdog"] == node and e.get("event") == "alert"
                   and e.get("key") == "self_fence" and not e.get("resolve")
                   and event_time(e) <= event_time(event)]
        at = event_time(decided[-1] if decided else event)
        start = at - fence_after + START_TOLERANCE
        if not held_throughout(faults, isolated(node), start, at):
            found.append(Violation(
                "false_failover", f"{node} self-fenced its primary at {at:.3f} "
                f"({event.get('reason')}), but the fault log does not show it cut off from "
                f"both other daemons throughout {start:.3f}..{at:.3f}", at))
    return found


def false_failovers(events: Sequence[dict[str, Any]], faults: Sequence[FaultRecord], *,
                    threshold: float, region_threshold: float,
                    proofs: Sequence[ServerUp]) -> list[Violation]:
    """Each real promotion's decision must rest on its condition: the primary's database
    (or region health) unreachable from a quorum for the threshold, per the fault log and
    the servers the daemons stopped, each down until ``proofs`` show it up again
    (:mod:`tests.chaos.downtime`)."""
    ordered = sorted(events, key=event_time)
    faults = [*faults, *daemon_faults(ordered, proofs)]
    found = []
    for promotion in promotions(ordered):
        decision = _decision_for(ordered, promotion)
        if decision is None:
            found.append(Violation("false_failover", f"promotion of {promotion.server} by "
                                   f"{promotion.watchdog} (epoch {promotion.epoch}) has no "
                                   "failover_decided event", promotion.at))
            continue
        condition = decision.get("condition")
        decided = event_time(decision)
        primary_db = next(db for db in SERVERS if db != promotion.server)
        if condition == "manual":
            if any(f.kind == "manual_failover" and f.start <= decided for f in faults):
                continue
            found.append(Violation("false_failover", f"manual failover at {decided:.3f} "
                                   "that no one asked for", decided))
            continue
        if condition == "region_unhealthy":
            target, limit, down = REGION_HEALTH[DB_REGION[primary_db]], region_threshold, False
        else:
            target, limit, down = primary_db, threshold, True
        start = decided - limit + START_TOLERANCE
        if not held_throughout(faults, unreachable(target, down_counts=down), start, decided):
            found.append(Violation(
                "false_failover",
                f"{decision['watchdog']} decided {condition} at {decided:.3f} (epoch "
                f"{decision.get('epoch')}) and promoted {promotion.server} at "
                f"{promotion.at:.3f}, but the fault log does not show {target} "
                f"unreachable from {QUORUM} of {len(VANTAGES)} vantage points (or down) "
                f"throughout {start:.3f}..{decided:.3f}",
                decided))
    return found


def _decision_for(ordered: Sequence[dict[str, Any]],
                  promotion: Promotion) -> dict[str, Any] | None:
    """The latest failover_decided at or before the promotion with its epoch (any
    daemon: a successor may resume another's run), else the latest of its promoter."""
    decisions = [e for e in ordered
                 if e.get("event") == "failover_decided" and event_time(e) <= promotion.at]
    same_epoch = [e for e in decisions if e.get("epoch") == promotion.epoch]
    mine = [e for e in decisions if e["watchdog"] == promotion.watchdog]
    chosen = same_epoch or mine
    return chosen[-1] if chosen else None


def check(history: History, exited: Sequence[str] = ()) -> Verdict:
    """Every rule over ``history``: one verdict with every violation and loss."""
    promoted = promotions(history.events)
    verdict = Verdict(history.seed, commits=len(history.commits), promotions=len(promoted))
    verdict.violations += split_brain(history.commits)
    violations, losses = lost_writes(history.commits, history.final, promoted)
    verdict.violations += violations
    verdict.losses = losses
    proofs = up_proofs(history.commits, history.starts, history.events)
    verdict.violations += false_failovers(history.events, history.faults,
                                          threshold=history.threshold,
                                          region_threshold=history.region_threshold,
                                          proofs=proofs)
    verdict.violations += false_self_fences(history.events, history.faults,
                                            fence_after=history.fence_after)
    verdict.violations += convergence(history.final, history.non_json, exited)
    verdict.violations += epoch_order(promoted)
    return verdict


def epoch_order(promoted: Sequence[Promotion]) -> list[Violation]:
    """Each promotion under a newer epoch than every earlier one: a lock store that lost
    its last increment (restarted empty, or a Sentinel failover) must not hand out an
    epoch again (the epoch floor)."""
    found = []
    highest: Promotion | None = None
    for promotion in promoted:
        if promotion.epoch is None:
            continue
        if highest is not None and highest.epoch is not None and (
                promotion.epoch <= highest.epoch):
            found.append(Violation(
                "epoch_order", f"{promotion.watchdog} promoted {promotion.server} under epoch "
                f"{promotion.epoch} at {promotion.at:.3f}, not newer than epoch "
                f"{highest.epoch} of {highest.watchdog}'s promotion at {highest.at:.3f}",
                promotion.at))
        if highest is None or (highest.epoch or 0) < promotion.epoch:
            highest = promotion
    return found
