"""An in-memory ``Journal`` (``agentaskit_dr.ports``) that keeps the rules of ``RedisJournal``.

Every write is fenced by a ``LockStore``: it lands only while the writer's lease holds the
lock, else ``StaleEpoch``. A second active run is refused with ``ActiveRunExists``, a run
closed or unknown with ``JournalRefused``, a writer older than the run's newest writer with
``StaleEpoch``. Entries and headers go through JSON with ``allow_nan=False``, as in Redis,
so a value the real store would refuse is refused here too. ``down`` makes every call
raise ``LockUnavailable``, like a lock store that stopped answering.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.leadership.journal import ActiveRunExists, JournalRefused
from agentaskit_dr.ports import (
    JournalEntry,
    Lease,
    LockUnavailable,
    RunJournal,
    StaleEpoch,
    StepOutcome,
    StepStatus,
)
from agentaskit_dr.runtime.executor import FailoverExecutor, Promoter
from agentaskit_dr.runtime.runbook import Hooks, Runbook

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_OUTCOMES = ("done", "failed")


class LockStore:
    """The leader lock as the journal sees it: one token under one epoch, or free.

    ``take_over`` is another watchdog acquiring it: the epoch goes up and every older lease
    becomes stale at once.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.token: str | None = None
        self.holder: str | None = None

    def take_over(self, holder: str) -> Lease:
        """``holder`` acquires the lock under the next epoch; its lease."""
        self.epoch += 1
        self.token = f"{holder}-token-{self.epoch}"
        self.holder = holder
        return Lease(epoch=self.epoch, token=self.token, holder=holder, safe_until=math.inf)

    def expire(self) -> None:
        """The lease ran out and nobody took the lock."""
        self.token = None
        self.holder = None

    def holds(self, lease: Lease) -> bool:
        return self.token == lease.token and self.epoch == lease.epoch

    def fence(self, what: str, lease: Lease) -> None:
        """Raise ``StaleEpoch`` unless ``lease`` holds the lock (the check before a write)."""
        if self.holds(lease):
            return
        now = "the lock is free" if self.token is None else (
            f"the lock is held by {self.holder} under epoch {self.epoch}")
        raise StaleEpoch(f"{what} refused: lease epoch {lease.epoch} of {lease.holder} is "
                         f"stale; {now}")


class FakeLeases:
    """The executor's ``LeaseSource``: our lease while the lock store still holds it."""

    def __init__(self, lock: LockStore, lease: Lease | None) -> None:
        self.lock = lock
        self.lease = lease

    async def verified_lease(self) -> Lease | None:
        if self.lease is None or not self.lock.holds(self.lease):
            return None
        return self.lease


@dataclass
class _StoredRun:
    """A run as the store keeps it: JSON text, like the Redis hash and list."""

    header: str
    entries: list[str] = field(default_factory=list)
    finished: str | None = None
    last_epoch: int = 0


class FakeJournal:
    """``Journal`` in memory, fenced by ``lock``; ``writes`` counts the writes that landed."""

    def __init__(self, lock: LockStore, wall_clock: Callable[[], float] = time.time) -> None:
        self.lock = lock
        self.wall_clock = wall_clock
        self.down = False
        self.writes = 0
        self._runs: dict[str, _StoredRun] = {}
        self._order: list[str] = []
        self._active: str | None = None

    async def open(
        self, run_id: str, *, lease: Lease, kind: str, plan: Sequence[str], reason: str,
        meta: Mapping[str, Any] | None = None,
    ) -> RunJournal:
        self._reachable("open")
        _check_run_id(run_id)
        if not kind.strip():
            raise ValueError("journal run kind must not be blank")
        self.lock.fence(f"journal open of run {run_id}", lease)
        if run_id not in self._runs:
            if self._active is not None and self._active != run_id:
                raise ActiveRunExists(
                    f"journal open of run {run_id} refused: run {self._active} is active and "
                    "unfinished; resume or finish it first", self._active)
            header = _to_json({
                "kind": kind, "plan": list(plan), "created_at": self.wall_clock(),
                "created_epoch": lease.epoch, "reason": reason, "meta": dict(meta or {}),
            }, f"header of run {run_id}")
            self._runs[run_id] = _StoredRun(header, last_epoch=lease.epoch)
            self._order.append(run_id)
            self._active = run_id
            self.writes += 1
        return self.peek(run_id)

    async def record(self, run_id: str, entry: JournalEntry, *, lease: Lease) -> None:
        self._reachable("record")
        if entry.epoch != lease.epoch:
            raise ValueError(f"journal entry for step {entry.step!r} carries epoch "
                             f"{entry.epoch}, but is written under lease epoch {lease.epoch}")
        payload = _to_json(asdict(entry), f"entry for step {entry.step!r} of run {run_id}")
        run = self._writable(f"journal record of run {run_id}", run_id, lease)
        if run.finished is not None:
            raise JournalRefused(f"journal record of run {run_id} refused: the run already "
                                 f"finished as {run.finished}")
        run.entries.append(payload)
        run.last_epoch = lease.epoch
        self.writes += 1

    async def finish(self, run_id: str, outcome: str, *, lease: Lease) -> None:
        self._reachable("finish")
        if outcome not in _OUTCOMES:
            raise ValueError(f"journal outcome must be one of {_OUTCOMES}, got {outcome!r}")
        run = self._writable(f"journal finish of run {run_id}", run_id, lease)
        if run.finished not in (None, outcome):
            raise JournalRefused(f"journal finish of run {run_id} refused: the run already "
                                 f"finished as {run.finished}")
        if run.finished is None:
            run.finished = outcome
            run.last_epoch = lease.epoch
        if self._active == run_id:
            self._active = None
        self.writes += 1

    async def active(self) -> RunJournal | None:
        self._reachable("active")
        return None if self._active is None else self.peek(self._active)

    async def get(self, run_id: str) -> RunJournal | None:
        self._reachable("read")
        return self.peek(run_id) if run_id in self._runs else None

    async def recent(self, limit: int = 20) -> list[RunJournal]:
        self._reachable("recent")
        if limit < 1:
            raise ValueError(f"journal recent limit must be at least 1, got {limit}")
        return [self.peek(run_id) for run_id in reversed(self._order[-limit:])]

    async def close(self) -> None:
        return None

    def run_ids(self) -> list[str]:
        """Every run id, oldest first (for asserts)."""
        return list(self._order)

    def peek(self, run_id: str) -> RunJournal:
        """The run as stored, read back from its JSON, without a round trip (for asserts)."""
        stored = self._runs[run_id]
        header = json.loads(stored.header)
        entries = tuple(_entry(json.loads(raw)) for raw in stored.entries)
        return RunJournal(
            run_id=run_id, kind=header["kind"], plan=tuple(header["plan"]),
            created_at=header["created_at"], created_epoch=header["created_epoch"],
            reason=header["reason"], entries=entries, finished=stored.finished,
            meta=header["meta"],
        )

    def _reachable(self, what: str) -> None:
        if self.down:
            raise LockUnavailable(f"lock store 127.0.0.1:1 did not answer journal {what} "
                                  "within 1.0s")

    def _writable(self, what: str, run_id: str, lease: Lease) -> _StoredRun:
        self.lock.fence(what, lease)
        run = self._runs.get(run_id)
        if run is None:
            raise JournalRefused(f"{what} refused: no such run")
        if run.last_epoch > lease.epoch:
            raise StaleEpoch(f"{what} refused: the run was already written under epoch "
                             f"{run.last_epoch}")
        return run


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"journal run id {run_id!r} must be 1-128 letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")


def _entry(stored: dict[str, Any]) -> JournalEntry:
    return JournalEntry(**{**stored, "status": StepStatus(stored["status"])})


def _to_json(value: object, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"journal {what} is not JSON-serialisable: {exc}") from exc


class TrustingLockStore(LockStore):
    """A lock store that takes every lease as current: for engine tests, where the fake
    lease source already decides who leads and the journal's fencing is not under test."""

    def holds(self, lease: Lease) -> bool:
        return True


def engine_runbook(
    executor: FailoverExecutor,
    promoter: Callable[[WatchdogConfig], Promoter],
    config: Callable[[], WatchdogConfig],
    evidence_dir: Path,
    clock: Callable[[], float],
) -> Runbook:
    """The runbook an engine test runs failovers through: an in-memory journal, the test's
    promoter, checks that pass, nothing else configured, evidence under ``evidence_dir``."""

    async def checked(*_: object) -> StepOutcome:
        return StepOutcome(False, "checked")

    hooks = Hooks(promoter=lambda cfg, _from, _to: promoter(cfg), check_primary=checked,
                  verify_standby=checked, verifier=lambda *_: None)
    return Runbook(
        FakeJournal(TrustingLockStore()), executor, hooks,
        config=lambda: config().model_copy(update={"evidence_dir": evidence_dir}),
        clock=clock,
    )
