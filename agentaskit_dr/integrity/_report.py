"""What ``verify-data-integrity`` found: per stage, per relation, as data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class IntegrityUnverified(Exception):
    """The check could not be carried out (a server unreachable, a privilege or the
    amcheck extension missing, no consistent point within the timeout). The message is
    one line for the operator; it never holds a password."""


@dataclass(frozen=True)
class Lineage:
    """Step 1: the standby replays the primary's history and has caught up."""

    system_identifier: str
    primary_timeline: int
    standby_timeline: int | None
    """The timeline the standby's WAL receiver streams (None: not streaming)."""
    primary_lsn: str
    """The primary's WAL position when the check started."""
    lag_bytes_at_start: int
    catch_up_seconds: float
    """How long the standby took to replay ``primary_lsn``."""


@dataclass(frozen=True)
class Corruption:
    """Step 2: one relation that amcheck (or reading it) found damaged on the standby."""

    relation: str
    kind: str  # "table" or "index"
    detail: str


@dataclass(frozen=True)
class TableComparison:
    """Step 3: one table's rows and order-independent hash on each server."""

    table: str
    primary_rows: int | None
    primary_hash: str | None
    standby_rows: int | None
    standby_hash: str | None
    error: str | None = None
    """Why a side could not be read (a corrupt page, a conflict with replay)."""

    @property
    def same(self) -> bool:
        return (self.error is None and self.primary_rows == self.standby_rows
                and self.primary_hash == self.standby_hash)


@dataclass
class IntegrityReport:
    """The whole answer. ``problems`` names every relation (or lineage fact) that is not
    the same on both copies; empty means the two copies hold the same data."""

    primary_region: str
    standby_region: str
    database: str
    lineage: Lineage | None = None
    relations_checked: int = 0
    amcheck_seconds: float = 0.0
    corruption: list[Corruption] = field(default_factory=list)
    compared_at_lsn: str | None = None
    standby_snapshot_lsn: str | None = None
    write_pause_ms: float | None = None
    """How long the compared tables refused writes on the primary (the consistent point)."""
    point_attempts: int = 0
    """Rounds it took to get the consistent point (a round gives up on a lock cycle with an
    application transaction, or a standby slow to replay)."""
    tables: list[TableComparison] = field(default_factory=list)
    compare_seconds: float = 0.0
    bytes_compared: int = 0
    """The compared tables' size on the primary (heap + TOAST), for the cost per GiB."""
    problems: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["same"] = self.same
        data["differing_tables"] = [t.table for t in self.tables if not t.same]
        return data
