"""``binding``: this region's PostgreSQL server lives only while its watchdog does.

The promoter in the other region cannot tell a frozen primary from a dead region: after
``db_unreachable`` (or ``region_unhealthy``) it promotes, counting on the primary side to
have fenced itself. Where the primary's own watchdog is dead or hung, only its service
manager can stop the server: systemd's ``BindsTo=`` (the watchdog unit's ``WatchdogSec=``
kills a hung daemon) or, on Kubernetes, the server container's ``livenessProbe`` on the
watchdog sidecar's ``/healthz`` (docs/deploy.md). That stop must come well before the
other region may promote; this module holds the arithmetic, so ``check-config`` and the
daemon under systemd can say when it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentaskit_dr.config._base import ConfigModel, PositiveDuration
from agentaskit_dr.durations import format_duration

#: The engine loop counts as stalled after this many probe intervals without a cycle:
#: ``/healthz`` answers 503 and ``WATCHDOG=1`` is withheld from then on.
STALL_INTERVALS = 5
#: The bound server should be stopped within this share of the shortest threshold; past
#: it ``check-config`` warns, past the whole threshold the config is refused.
COMFORTABLE_SHARE = 0.75


class BindingConfig(ConfigModel):
    """This watchdog's region server is bound to it by its service manager; the timing
    that binding runs with, checked against the thresholds (docs/deploy.md)."""

    liveness_timeout: PositiveDuration = 35.0
    """How long the watchdog may be frozen or stalled before its supervisor has killed
    it: the unit's ``WatchdogSec=`` + ``TimeoutAbortSec=`` (30s + 5s as shipped), or the
    server container's livenessProbe ``periodSeconds`` x ``failureThreshold`` +
    ``timeoutSeconds`` on Kubernetes."""
    postgres_stop_timeout: PositiveDuration = 15.0
    """How long stopping the server may take before it is killed: the PostgreSQL unit's
    ``TimeoutStopSec=`` (the drop-in sets 15s), or the pod's
    ``terminationGracePeriodSeconds``."""


@dataclass(frozen=True, slots=True)
class BindingBudget:
    """The worst time from a hung watchdog to its server stopped, against the earliest
    moment the other region may promote."""

    stall: float
    liveness: float
    stop: float
    threshold_name: str
    threshold: float

    @property
    def worst(self) -> float:
        return self.stall + self.liveness + self.stop

    def explain(self) -> str:
        return (f"a hung watchdog's server stops up to {format_duration(self.worst)} after "
                f"the hang ({STALL_INTERVALS} probe intervals {format_duration(self.stall)} "
                f"+ liveness {format_duration(self.liveness)} + PostgreSQL stop "
                f"{format_duration(self.stop)})")

    def problem(self) -> str | None:
        """Why the binding cannot work, or None: the other region may promote first."""
        if self.worst < self.threshold:
            return None
        return (f"{self.explain()}, not before the other region may promote "
                f"(thresholds.{self.threshold_name} {format_duration(self.threshold)}): "
                "shorten WatchdogSec (or the livenessProbe) or the PostgreSQL stop "
                "timeout, or lengthen the threshold")

    def warning(self) -> str | None:
        """Advice when it fits with little room: past 3/4 of the threshold."""
        if self.problem() is not None or self.worst <= COMFORTABLE_SHARE * self.threshold:
            return None
        return (f"{self.explain()}, more than {COMFORTABLE_SHARE:.0%} of "
                f"thresholds.{self.threshold_name} ({format_duration(self.threshold)}): "
                "little room before the other region may promote")


def binding_budget(*, interval: float, db_unreachable: float, region_unhealthy: float,
                   liveness: float, stop: float) -> BindingBudget:
    """The budget of a binding with ``liveness`` and ``stop`` seconds under these
    thresholds; the shorter threshold is the one the other region promotes at first."""
    name, threshold = min((("db_unreachable", db_unreachable),
                           ("region_unhealthy", region_unhealthy)), key=lambda kv: kv[1])
    return BindingBudget(STALL_INTERVALS * interval, liveness, stop, name, threshold)
