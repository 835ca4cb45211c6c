"""Failback step 4: move traffic back to the recovered region, a step at a time.

``shift_traffic_gated`` sets the weighted records to each step's split (10 % is weights
10/90, then 50/50, then 100/0; both records and the epoch marker in one change batch), then
soaks: the target region's health URLs are checked every probe interval, and the share of
them answering 2xx must stay at ``failback.gate_healthy_fraction``. A failed check (or a
failed write) puts the records back to the split they had before the run and stops with
the reason. The run returns a JSON-able record of every step for the evidence.

DNS moves the stateless tier only: while the database primary is still in the other
region, shifted traffic writes across regions (docs/architecture.md, "Failback:
shift-traffic").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from agentaskit_dr.actuators.dns_route53 import Route53Switch
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import ActuationFailed, HttpAnswer, StepOutcome
from agentaskit_dr.probes.region_health import RegionHealthProbe
from agentaskit_dr.runtime.runbook_hooks import dns

log = structlog.get_logger(__name__)

#: (serving region, percent to it) -> the switch that sets that split.
SwitchFor = Callable[[str, int], Route53Switch]
#: True while this holder still has the lease it runs under.
StillLeader = Callable[[], Awaitable[bool]]
ShiftOutcome = Literal["done", "rolled back", "stopped", "rollback failed"]


class ShiftRefused(Exception):
    """The shift cannot start; nothing was changed. The message is for the operator."""


@dataclass(frozen=True, slots=True)
class Split:
    """Where the record sends traffic: ``percent`` to ``serving``, the rest to the other."""

    serving: str
    percent: int

    def weights(self, other: str) -> dict[str, int]:
        return {self.serving: self.percent, other: 100 - self.percent}


@dataclass(frozen=True, slots=True)
class GateSample:
    """One check of the target region's health URLs during a soak."""

    at: str
    healthy: bool
    fraction: float
    detail: str


class HealthGate(Protocol):
    """The soak's health check of the region traffic moves to."""

    async def sample(self) -> GateSample:
        """Check every health URL once; never raises (failures are the sample)."""
        ...

    async def close(self) -> None: ...


class RegionHealthGate:
    """A region's health URLs, healthy when at least ``healthy_fraction`` answer 2xx."""

    def __init__(self, region: str, urls: Sequence[str], *, timeout: float,
                 healthy_fraction: float) -> None:
        self.healthy_fraction = healthy_fraction
        self._probe = RegionHealthProbe(region, urls, timeout=timeout,
                                        healthy_fraction=healthy_fraction)

    async def sample(self) -> GateSample:
        seen = await self._probe.observe()
        good = seen.count(HttpAnswer.OK)
        return GateSample(at=_now(), healthy=seen.healthy,
                          fraction=round(good / len(seen.checks), 4), detail=seen.detail)

    async def close(self) -> None:
        await self._probe.close()


@dataclass(slots=True)
class ShiftStep:
    """One step of the run: the split set, the change, and the gate's samples."""

    percent: int
    weights: dict[str, int]
    started_at: str
    change: dict[str, Any] | None = None
    set_at: str | None = None
    soak_ended_at: str | None = None
    gate: list[GateSample] = field(default_factory=list)
    outcome: Literal["held", "gate failed", "write failed", "lease lost", "set"] = "set"


@dataclass(slots=True)
class ShiftRun:
    """The whole run, as the evidence records it (``to_json``)."""

    target: str
    other: str
    steps_planned: tuple[int, ...]
    before: Split
    started_at: str
    steps: list[ShiftStep] = field(default_factory=list)
    preflight: GateSample | None = None
    outcome: ShiftOutcome = "done"
    reason: str | None = None
    rollback: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    ended_at: str | None = None

    @property
    def completed(self) -> bool:
        return self.outcome == "done"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["before"] = {"serving": self.before.serving, "percent": self.before.percent,
                          "weights": self.before.weights(self._other_of(self.before))}
        return data

    def _other_of(self, split: Split) -> str:
        return self.other if split.serving == self.target else self.target


def refuse_partial_shift(style: str, percent: int) -> None:
    """Only weighted records split traffic; ShiftRefused (saying so) for less than 100."""
    if percent != 100 and style != "weighted":
        raise ShiftRefused(
            f"dns.route53.style is {style!r}: a {style} record is switched at 100 only "
            f"(it cannot split traffic), so {percent}% is refused and nothing changed. "
            "Shift with --percent 100, or use style 'weighted' (one record per region)")


async def shift_traffic_gated(
    switch_for: SwitchFor, gate: HealthGate, *, target: str, other: str, weighted: bool,
    steps: Sequence[int], soak: float, interval: float, epoch: int, run_id: str,
    rollback_to: Split | None = None, still_leader: StillLeader | None = None,
    on_before: Callable[[Split], Awaitable[None]] | None = None,
) -> ShiftRun:
    """Move traffic to ``target`` through ``steps`` (percent), soaking ``soak`` seconds
    after each with ``gate`` checked every ``interval``; see the module docstring.

    Every write is fenced by ``epoch`` (StaleEpoch passes through: a newer leader owns
    the record, and nothing is rolled back over it). ``rollback_to`` is the split to
    restore on a failure; by default the one read before the first step (a resumed run
    passes the split its first attempt started from). Steps below the target's current
    share are skipped: a resumed run never moves traffic away again. A record that is not
    weighted is switched at 100 only; the smaller steps are skipped and noted.
    ``still_leader`` is asked before every write (the rollback too): a lost lease stops
    the run where it is, outcome "stopped", and writes nothing more. ``on_before`` gets the
    split read before any write, and is awaited before the first one: where a journaled
    caller records it, so a resumed run rolls back to it (its ``rollback_to``).
    """
    before = await _read_split(switch_for(target, 100))
    if on_before is not None:
        await on_before(before)
    run = ShiftRun(target=target, other=other, steps_planned=tuple(steps), before=before,
                   started_at=_now())
    restore = rollback_to or before
    rlog = log.bind(run_id=run_id, epoch=epoch, target=target)
    share = before.percent if before.serving == target else 100 - before.percent
    possible = [p for p in steps if weighted or p == 100]
    todo = [p for p in possible if p >= share]
    if len(possible) < len(steps):
        run.notes.append("the record is not weighted: switched at 100 only, steps "
                         + ", ".join(f"{p}%" for p in steps if p != 100) + " skipped")
    if len(todo) < len(possible):
        run.notes.append(f"{target} already had {share}%: smaller steps skipped")
    run.preflight = await gate.sample()
    if not run.preflight.healthy:
        return _finish(run, "stopped", f"health gate failed before the first step "
                       f"({run.preflight.detail}); nothing changed", rlog)
    for percent in todo:
        step = ShiftStep(percent=percent, weights=Split(target, percent).weights(other),
                         started_at=_now())
        run.steps.append(step)
        if still_leader is not None and not await still_leader():
            step.outcome = "lease lost"
            return _finish(run, "stopped", f"the leader lease was lost before setting "
                           f"{percent}% to {target}; nothing more was written", rlog)
        try:
            outcome = await _apply(switch_for(target, percent), epoch, run_id)
        except ActuationFailed as exc:
            step.outcome = "write failed"
            reason = f"setting {percent}% to {target} failed: {exc}"
            return await _roll_back(run, switch_for, restore, reason=reason, epoch=epoch,
                                    run_id=run_id, rlog=rlog, still_leader=still_leader)
        step.change, step.set_at = _change_record(outcome), _now()
        rlog.info("traffic_shift_step", percent=percent, weights=step.weights,
                  changed=outcome.changed)
        failed = await _soak(gate, step, soak=soak, interval=interval)
        step.soak_ended_at = _now()
        if failed is not None:
            step.outcome = "gate failed"
            reason = (f"health gate failed {len(step.gate)} check(s) into the soak at "
                      f"{percent}% to {target}: {failed.detail}")
            return await _roll_back(run, switch_for, restore, reason=reason, epoch=epoch,
                                    run_id=run_id, rlog=rlog, still_leader=still_leader)
        step.outcome = "held"
    return _finish(run, "done", None, rlog)


async def _soak(gate: HealthGate, step: ShiftStep, *, soak: float,
                interval: float) -> GateSample | None:
    """Check ``gate`` every ``interval`` until ``soak`` has passed; the first failed sample."""
    loop = asyncio.get_running_loop()
    end = loop.time() + soak
    while True:
        await asyncio.sleep(max(0.0, min(interval, end - loop.time())))
        sample = await gate.sample()
        step.gate.append(sample)
        if not sample.healthy:
            return sample
        if loop.time() >= end:
            return None


async def _roll_back(run: ShiftRun, switch_for: SwitchFor, restore: Split, *, reason: str,
                     epoch: int, run_id: str, rlog: structlog.typing.FilteringBoundLogger,
                     still_leader: StillLeader | None) -> ShiftRun:
    rlog.warning("traffic_shift_failed", reason=reason)
    back = {"serving": restore.serving, "percent": restore.percent,
            "weights": restore.weights(run.other if restore.serving == run.target
                                       else run.target)}
    if still_leader is not None and not await still_leader():
        return _finish(run, "stopped", f"{reason}; the leader lease was lost before rolling "
                       f"back to {back['weights']}: not rolled back (the new leader decides)",
                       rlog)
    try:
        outcome = await _apply(switch_for(restore.serving, restore.percent), epoch, run_id)
    except ActuationFailed as exc:
        run.rollback = back | {"error": str(exc)}
        return _finish(run, "rollback failed", f"{reason}; rolling back to {back['weights']} "
                       f"failed too: {exc}", rlog)
    run.rollback = back | {"change": _change_record(outcome), "at": _now()}
    return _finish(run, "rolled back", f"{reason}; weights rolled back to {back['weights']}",
                   rlog)


def _finish(run: ShiftRun, outcome: ShiftOutcome, reason: str | None,
            rlog: structlog.typing.FilteringBoundLogger) -> ShiftRun:
    run.outcome, run.reason, run.ended_at = outcome, reason, _now()
    if outcome == "done":
        rlog.info("traffic_shift_done", steps=[s.percent for s in run.steps])
    else:
        rlog.error("traffic_shift_stopped", outcome=outcome, reason=reason)
    return run


async def _read_split(switch: Route53Switch) -> Split:
    try:
        found = await switch.split()
        if found is None:
            now = await switch.current()
            raise ShiftRefused(
                f"cannot tell how {now['record']} ({now['style']}) splits traffic now: "
                f"{json.dumps(now['records'], sort_keys=True)} match no split between the "
                "regions' dns_target values with weights adding up to 100, so a rollback "
                "would not know where to go back to; fix the records by hand, then shift again")
    finally:
        await switch.close()
    return Split(*found)


async def _apply(switch: Route53Switch, epoch: int, run_id: str) -> StepOutcome:
    try:
        return await switch.apply(epoch=epoch, failover_id=run_id)
    finally:
        await switch.close()


def _change_record(outcome: StepOutcome) -> dict[str, Any]:
    return {"changed": outcome.changed, "detail": outcome.detail,
            "change_id": outcome.data.get("change_id"), "insync": outcome.data.get("insync")}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- from the config


def other_region(config: WatchdogConfig, region: str) -> str:
    return next(name for name in config.regions if name != region)


def switches(config: WatchdogConfig) -> SwitchFor:
    """The Route 53 switch for each split; ShiftRefused naming the keys that are missing."""
    missing = [] if config.dns.route53 is not None else ["dns.route53"]
    missing += [f"regions.{name}.dns_target" for name, region in config.regions.items()
                if region.dns_target is None]
    if missing:
        raise ShiftRefused(f"shifting traffic needs {' and '.join(missing)} in the config")

    def switch_for(serving: str, percent: int) -> Route53Switch:
        switch = dns(config, other_region(config, serving), serving, weight=percent)
        assert switch is not None  # every key it needs was checked above
        return switch

    return switch_for


def health_gate(config: WatchdogConfig, region: str) -> RegionHealthGate:
    fraction = config.failback.gate_healthy_fraction or config.probe.healthy_fraction
    return RegionHealthGate(region, config.regions[region].health_urls,
                            timeout=config.probe.timeout, healthy_fraction=fraction)


async def shift_traffic_from_config(
    config: WatchdogConfig, *, target: str, epoch: int, run_id: str,
    rollback_to: Split | None = None, still_leader: StillLeader | None = None,
    on_before: Callable[[Split], Awaitable[None]] | None = None,
) -> ShiftRun:
    """The failback's gated shift to ``target`` with the config's steps, soak and gate."""
    route53 = config.dns.route53
    switch_for = switches(config)
    gate = health_gate(config, target)
    try:
        return await shift_traffic_gated(
            switch_for, gate, target=target, other=other_region(config, target),
            weighted=route53 is not None and route53.style == "weighted",
            steps=config.failback.shift_steps, soak=config.failback.soak,
            interval=config.probe.interval, epoch=epoch, run_id=run_id,
            rollback_to=rollback_to, still_leader=still_leader, on_before=on_before)
    finally:
        await gate.close()
