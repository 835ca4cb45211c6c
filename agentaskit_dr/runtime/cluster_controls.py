"""The cluster's controls as one watchdog follows them: read every interval, applied once.

Pause, resume and acknowledge live in the lock store (``ports.ClusterStore``), so they
apply to every watchdog and survive restarts. Each watchdog reads the record every probe
interval (each read bounded by the store's socket timeout; in the daemon the planned-run
follower reads it in the same round trip as the journal's active run and hands it here,
``read``/``unreadable``) and, when it changed, feeds
``Paused`` / ``Resumed`` / ``Acknowledged`` to its engine (an acknowledgement once per
generation) and tells its leadership keeper to stand aside or campaign again. A record
that cannot be read leaves the last known controls in force, and the status says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from agentaskit_dr.core import Acknowledged, Event, Paused, Resumed
from agentaskit_dr.ports import ClusterRecord, ClusterStore, LockUnavailable

log = structlog.get_logger(__name__)


class PauseFollower(Protocol):
    """The leadership keeper as the controls see it."""

    def set_paused(self, paused: bool) -> None: ...


class ClusterControlsWatch:
    """Follows the cluster record for one watchdog; ``post`` queues events to its engine."""

    def __init__(
        self,
        store: ClusterStore,
        *,
        post: Callable[[Event], Any],
        keeper: PauseFollower | None,
        interval: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._post = post
        self._keeper = keeper
        self._interval = interval
        self._wall_clock = wall_clock
        self.record: ClusterRecord | None = None  # the last record read or written
        self.read_at: float | None = None  # wall time of the last successful read
        self.error: str | None = None  # why the last read failed; None after a good one
        self._applied_paused = False
        self._applied_ack: int | None = None  # None until the first read: old acks stay old

    async def run(self) -> None:
        """Read and apply every interval until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)

    async def refresh(self) -> None:
        """Read the record and apply what changed; on failure keep the last known one."""
        try:
            record = await self.store.read()
        except LockUnavailable as exc:
            self.unreadable(exc)
            return
        self.read(record)

    def read(self, record: ClusterRecord) -> None:
        """A record just read (here, or by the planned-run follower's one round trip)."""
        if self.error is not None:
            log.info("cluster_record_readable_again")
        self.error = None
        self.read_at = self._wall_clock()
        self.apply(record)

    def unreadable(self, exc: LockUnavailable) -> None:
        """The record could not be read: the last known controls stay in force."""
        if self.error is None:
            log.warning("cluster_record_unreadable", error=str(exc),
                        keeping="the last known controls", paused=self._applied_paused)
        self.error = str(exc)

    def apply(self, record: ClusterRecord) -> list[Event]:
        """Feed what changed since the last record to the engine and the keeper."""
        self.record = record
        controls = record.controls
        events: list[Event] = []
        if controls.paused != self._applied_paused:
            self._applied_paused = controls.paused
            if controls.paused:
                by = f" (by {controls.paused_by})" if controls.paused_by else ""
                events.append(Paused(f"cluster paused: {controls.pause_reason or 'maintenance'}"
                                     f"{by}"))
            else:
                events.append(Resumed())
            if self._keeper is not None:
                self._keeper.set_paused(controls.paused)
        if self._applied_ack is None:
            self._applied_ack = controls.ack_generation
        elif controls.ack_generation > self._applied_ack:
            self._applied_ack = controls.ack_generation
            events.append(Acknowledged())
        for event in events:
            log.warning("cluster_control_applied", control=type(event).__name__,
                        ack_generation=controls.ack_generation)
            self._post(event)
        return events

    def status(self) -> dict[str, Any]:
        """The cluster controls and primary for ``/v1/status``; times are seconds ago."""
        now = self._wall_clock()

        def ago(at: float | None) -> float | None:
            return None if at is None else round(now - at, 3)

        record = self.record
        if record is None:
            body: dict[str, Any] = {"known": False}
        else:
            controls, primary = record.controls, record.primary
            body = {
                "known": True,
                "paused": controls.paused,
                "pause_reason": controls.pause_reason or None,
                "paused_by": controls.paused_by or None,
                "paused_ago": ago(controls.paused_at),
                "ack_generation": controls.ack_generation,
                "acked_by": controls.acked_by or None,
                "acked_ago": ago(controls.acked_at),
                "primary_region": primary.region if primary else None,
                "primary_epoch": primary.epoch if primary else None,
                "primary_run_id": primary.run_id if primary else None,
            }
        body["read_ago"] = ago(self.read_at)
        body["read_error"] = self.error
        if self.error is not None:
            body["note"] = "the lock store cannot be read: showing the last known controls"
        return body
