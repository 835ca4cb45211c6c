"""A failover learnt from the peers while the cluster record cannot be read.

Chaos seed 1000: the old primary's watchdog was cut off from the lock store (and from the
other region) while the other region promoted; it could still reach the witness, which
had followed the failover, but it only learnt failovers from the record, so it never
fenced its server. Every daemon's ``GET /v1/observations`` now says which region it
watches as the primary and under the epoch of which failover (``failover_epoch``). While
this daemon's last read of the cluster record failed, a fresh peer report naming another
region the primary under a newer epoch than the failover this daemon knows of is offered
to the core as a :class:`RecordedPrimary` -- adopted exactly like a record read there
(``core.planned.recorded_primary``): ``failed_over``, topology swapped and, beside the
old primary, its fence armed (``old_primary``). A record that can be read is believed
over the peers (the planned-runs follower offers it). Fencing is the safe direction: a
report believed wrongly costs availability, never a second primary.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import structlog

from agentaskit_dr.core import RecordedPrimary
from agentaskit_dr.runtime.engine import Engine
from agentaskit_dr.runtime.peers import WireReport

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PeerFailover:
    """A peer's report of a failover to ``region`` under ``epoch``."""

    label: str
    node: str
    region: str
    epoch: int


def failover_reported(reports: Mapping[str, WireReport], *, watching: str,
                      regions: Collection[str], known: int | None) -> PeerFailover | None:
    """The newest failover away from ``watching`` that a report names, under an epoch newer
    than ``known`` (the failover this daemon knows of); None when none does."""
    found = [
        PeerFailover(label, report.node, report.primary_region, report.failover_epoch)
        for label, report in sorted(reports.items())
        if report.failover_epoch is not None and report.primary_region != watching
        and report.primary_region in regions
        and (known is None or report.failover_epoch > known)
    ]
    return max(found, key=lambda failover: failover.epoch, default=None)


class PeerFailoverRelay:
    """Offers the engine a failover its peers report, while the record cannot be read.

    ``heard`` is the peer poller's ``on_report``; ``record_unreadable`` says whether the
    last read of the cluster record failed (the planned-runs follower's ``error``).
    """

    def __init__(self, engine: Engine, reports: Callable[[], Mapping[str, WireReport]],
                 record_unreadable: Callable[[], bool]) -> None:
        self._engine = engine
        self._reports = reports
        self._record_unreadable = record_unreadable
        self._offered: PeerFailover | None = None

    def heard(self) -> None:
        """A peer report arrived: offer its failover if it names one this daemon missed."""
        if not self._record_unreadable():
            return
        engine = self._engine
        known = engine.state.failover.epoch if engine.state.failover is not None else None
        found = failover_reported(self._reports(), watching=engine.config.primary_region,
                                  regions=engine.config.regions, known=known)
        if found is None:
            return
        if found != self._offered:
            self._offered = found
            log.warning("peer_failover_followed", region=found.region, epoch=found.epoch,
                        peer=found.label, node=found.node,
                        watching=engine.config.primary_region,
                        detail="the cluster record cannot be read; a peer reports a "
                        "failover this daemon missed")
        # Through the engine's queue, as the record's follower does: adopted in a cycle of
        # its own (never while this daemon runs a failover or a planned run holds).
        engine.post(RecordedPrimary(found.region, found.epoch,
                                    run_id=f"epoch-{found.epoch}", acknowledged=False,
                                    source=f"{found.label} ({found.node})'s report"))
