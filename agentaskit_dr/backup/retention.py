"""What ``backup prune`` deletes (pure: records, names and times in, a plan out).

- A full backup goes once older than ``full.retention``, except the newest good full,
  and except while a retained incremental or restore point builds on it.
- An incremental or restore point goes once older than ``incremental.retention``, or
  as soon as anything its chain needs is gone.
- WAL goes once older than ``wal.retention``, except what a retained backup needs: each
  backup's own start..stop range (to be consistent), and everything from the start of
  the backup a point-in-time recovery to ``now - wal.retention`` would start from.
- Leftovers of runs that never wrote their record go once older than a day.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentaskit_dr.backup.manifest import BackupRecord, parse_lsn
from agentaskit_dr.backup.walchain import SEGMENT, parse_segment, segment_number

LEFTOVER_AGE = 86400.0


@dataclass(frozen=True, slots=True)
class WalFile:
    """An archived WAL file (segment or ``.history``) and when it was stored."""

    name: str
    stored_at: float


@dataclass(slots=True)
class PrunePlan:
    """Backups and WAL to delete, and why each kept backup stays."""

    delete_backups: list[str] = field(default_factory=list)
    delete_leftovers: list[str] = field(default_factory=list)
    delete_wal: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def plan_prune(
    records: Sequence[BackupRecord],
    leftovers: Iterable[tuple[str, float]],
    wal: Iterable[WalFile],
    *,
    now: float,
    full_retention: float,
    incremental_retention: float,
    wal_retention: float,
) -> PrunePlan:
    """The plan; ``leftovers`` are (backup id, newest object time) of record-less runs."""
    plan = PrunePlan()
    ordered = sorted(records, key=lambda r: r.backup_id)
    fulls = [r for r in ordered if r.kind == "full"]
    keep: set[str] = set()
    for record in ordered:
        age = now - record.stopped_at
        if record.kind == "full":
            if age <= full_retention:
                keep.add(record.backup_id)
                plan.kept[record.backup_id] = "within full retention"
        elif age <= incremental_retention and all(
            link in {r.backup_id for r in ordered} for link in record.chain
        ):
            keep.add(record.backup_id)
            plan.kept[record.backup_id] = "within incremental retention"
    if fulls and fulls[-1].backup_id not in keep:
        keep.add(fulls[-1].backup_id)
        plan.kept[fulls[-1].backup_id] = "the newest full backup"
    for record in ordered:
        if record.backup_id in keep:
            for link in record.chain[:-1]:
                if link not in keep:
                    keep.add(link)
                    plan.kept[link] = f"needed by {record.backup_id}"
    plan.delete_backups = [r.backup_id for r in ordered if r.backup_id not in keep]
    plan.delete_leftovers = sorted(
        backup_id for backup_id, stored_at in leftovers if now - stored_at > LEFTOVER_AGE
    )
    kept = [r for r in ordered if r.backup_id in keep]
    plan.delete_wal = _wal_to_delete(kept, list(wal), now=now, wal_retention=wal_retention)
    return plan


def _wal_to_delete(
    kept: Sequence[BackupRecord], wal: Sequence[WalFile], *, now: float, wal_retention: float
) -> list[str]:
    if not kept:
        return []  # no backup: the archive is all there is; keep it
    segment_size = kept[0].wal_segment_size
    window_start = now - wal_retention
    before_window = [r for r in kept if r.started_at <= window_start]
    pitr_base = before_window[-1] if before_window else kept[0]
    protected = [(segment_number(parse_lsn(r.start_lsn), segment_size),
                  segment_number(parse_lsn(r.stop_lsn), segment_size)) for r in kept]
    keep_from = segment_number(parse_lsn(pitr_base.start_lsn), segment_size)
    doomed = []
    for item in wal:
        name = item.name.partition(".")[0]
        if not SEGMENT.fullmatch(name) or now - item.stored_at <= wal_retention:
            continue  # history files stay: tiny, and a timeline's ancestry needs them
        segno = parse_segment(name, segment_size)[1]
        if segno >= keep_from or any(low <= segno <= high for low, high in protected):
            continue
        doomed.append(item.name)
    return sorted(doomed)
