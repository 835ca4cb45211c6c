"""What one chaos run records, as plain data the checker reads (and a run saves as JSON).

Every time is wall-clock seconds (``time.time()``), the clock the daemons stamp their
JSON log events with, so commits, faults and daemon events share one time line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The two PostgreSQL servers by node name; ``west-db`` is the primary at the start.
SERVERS = ("west-db", "east-db")
#: The vantage points that vote on the primary's state.
VANTAGES = ("west", "east", "witness")
#: Which database and health endpoint each region name stands for.
REGION_DB = {"us-west-2": "west-db", "us-east-1": "east-db"}
REGION_HEALTH = {"us-west-2": "west-health", "us-east-1": "east-health"}
DB_REGION = {db: region for region, db in REGION_DB.items()}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: ``rule`` (split_brain, lost_write, false_failover, convergence,
    non_json), what happened, and when (wall clock) if it has a time."""

    rule: str
    detail: str
    at: float | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """One acknowledged INSERT: ``server`` and ``timeline`` came back in the same
    statement (``RETURNING``); ``sent`` and ``acked`` bracket the commit."""

    id: str
    writer: str
    server: str
    timeline: int
    sent: float
    acked: float


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One injected fault as it happened: ``start`` when it was in place, ``end`` when it
    was healed (None: never healed). ``down``: the processes it stopped or killed (node
    names); ``cut``: the links (observer, target) it cut; ``error``: why the injection or
    the heal failed, if it did; ``note``: what it found that the plan did not say (a
    kill or a pause that found nothing running, so stopped nothing)."""

    kind: str
    target: str
    start: float
    end: float | None
    down: tuple[str, ...] = ()
    cut: tuple[tuple[str, str], ...] = ()
    error: str = ""
    note: str = ""

    def active_at(self, at: float) -> bool:
        return self.start <= at and (self.end is None or at < self.end)


@dataclass(frozen=True, slots=True)
class ServerStart:
    """A PostgreSQL server the world started (a ``kill_db`` heal, the binding), behind its
    start gate: ``at``, when it answered (wall clock); ``by``, what started it. A daemon's
    own starts are in its events."""

    server: str
    at: float
    by: str


@dataclass(slots=True)
class FinalState:
    """What the world found after the quiet period.

    ``writable``: the servers that committed a probe write as the application's role;
    ``in_recovery``: each server's ``pg_is_in_recovery()`` (None: it did not answer);
    ``rows``: the ids in the writes table of each server that answered;
    ``status``: each live daemon's ``/v1/status`` (None: no answer); ``streaming``:
    whether a standby streams from the final primary."""

    writable: list[str] = field(default_factory=list)
    in_recovery: dict[str, bool | None] = field(default_factory=dict)
    rows: dict[str, set[str]] = field(default_factory=dict)
    status: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    streaming: bool | None = None


@dataclass(slots=True)
class History:
    """One run: commits, the fault log, the servers the world started, every daemon
    event (``watchdog`` names the daemon), every daemon line that was not a JSON object,
    and the final state."""

    seed: int
    threshold: float
    region_threshold: float
    fence_after: float = 2.0
    commits: list[Commit] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    starts: list[ServerStart] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    non_json: list[tuple[str, str]] = field(default_factory=list)
    final: FinalState = field(default_factory=FinalState)
    started: float = 0.0
    quiet_from: float = 0.0

    def save(self, path: Path) -> None:
        """Write the history as one JSON document (sets as sorted lists)."""
        data = dataclasses.asdict(self)
        data["final"]["rows"] = {k: sorted(v) for k, v in self.final.rows.items()}
        path.write_text(json.dumps(data, default=str))

    @classmethod
    def load(cls, path: Path) -> History:
        data = json.loads(path.read_text())
        final = data.pop("final")
        final["rows"] = {k: set(v) for k, v in final["rows"].items()}
        history = cls(**{k: v for k, v in data.items()
                         if k not in {"commits", "faults", "starts", "non_json"}})
        history.commits = [Commit(**c) for c in data["commits"]]
        history.faults = [FaultRecord(**{**f, "down": tuple(f["down"]),
                                         "cut": tuple(tuple(c) for c in f["cut"])})
                          for f in data["faults"]]
        # A history saved before starts were recorded has none.
        history.starts = [ServerStart(**s) for s in data.get("starts", [])]
        history.non_json = [(str(x[0]), str(x[1])) for x in data["non_json"]]
        history.final = FinalState(**final)
        return history
