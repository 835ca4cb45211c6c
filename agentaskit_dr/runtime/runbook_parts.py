"""The runbook's vocabulary: a run's context, a planned step, the effects it needs, and
how step data becomes journal data. Split from ``runbook.py``, which drives the runs."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import Actuator, Lease, Notification, PeerFence, RunJournal, StepOutcome
from agentaskit_dr.runtime.executor import Promoter


@dataclass(frozen=True, slots=True)
class RunContext:
    """What every step of one run knows; ``meta`` is the run's journal header."""

    run_id: str
    epoch: int
    lease: Lease
    meta: dict[str, Any]
    journal: RunJournal

    @property
    def from_region(self) -> str:
        return str(self.meta["from_region"])

    @property
    def to_region(self) -> str:
        return str(self.meta["to_region"])


StepFn = Callable[[RunContext], Awaitable[StepOutcome]]


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One step as planned: ``run`` None means skipped, for ``skip_reason``."""

    name: str
    target: str
    run: StepFn | None
    skip_reason: str = ""


@dataclass
class Hooks:
    """The effects a run needs, built from the config by the supervisor (tests pass fakes).

    Each factory takes (config, from_region, to_region) and returns an Actuator or None
    when that part is not configured.
    """

    promoter: Callable[[WatchdogConfig, str, str], Promoter]
    check_primary: Callable[[WatchdogConfig, str, str], Awaitable[StepOutcome]]
    verify_standby: Callable[[WatchdogConfig, str, str, RunJournal], Awaitable[StepOutcome]]
    dns: Callable[[WatchdogConfig, str, str], Actuator | None] = lambda *_: None
    scaler: Callable[[WatchdogConfig, str, str], Actuator | None] = lambda *_: None
    verifier: Callable[[WatchdogConfig, str, str], Actuator | None] = lambda *_: None
    notify: Callable[[WatchdogConfig, Notification, Sequence[str]], Awaitable[dict[str, bool]]] = (
        field(default=lambda *_: _nothing_sent())
    )
    # Ask the old primary's own watchdog to fence its server before the promotion:
    # (config, from_region, epoch, run_id). Wired to the peer poller by the supervisor.
    peer_fence: Callable[[WatchdogConfig, str, int, str], Awaitable[PeerFence]] = field(
        default=lambda *_: _no_peer())


async def _nothing_sent() -> dict[str, bool]:
    return {}


async def _no_peer() -> PeerFence:
    return PeerFence(None, "no peer asked")



def as_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def as_int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """Only JSON-able values reach the journal; anything else becomes its text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[str(key)] = str(value)
        elif value is None or isinstance(value, bool | int | float | str):
            out[str(key)] = value
        elif isinstance(value, dict):
            out[str(key)] = jsonable(value)
        elif isinstance(value, list | tuple):
            out[str(key)] = [v if (isinstance(v, bool | int | str) or v is None or (
                isinstance(v, float) and math.isfinite(v))) else str(v) for v in value]
        else:
            out[str(key)] = str(value)
    return out
