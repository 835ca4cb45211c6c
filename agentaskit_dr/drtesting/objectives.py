"""The plan's recovery objectives, measured from the evidence instead of claimed.

- **RPO**: the worst of the replication lag at the last failover (its evidence's
  ``rpo.lag_seconds``; a lower bound when the promoter did not reach the old primary,
  ``rpo.lower_bound``), the data loss measured when that failover's old primary was
  resynced (``rpo.measured``: bytes of WAL and commits beyond the fork, and the span of
  the lost commits in seconds), the WAL archive lag now (a watchdog's probe), and the age
  of the newest backup the backup jobs recorded as good
  (``backups/*.json``, kinds ``backup-full|incremental|restore-point``).
- **RTO**: the worst of the last failover's detected → recovered (``rto_seconds``) and the
  last N drills (``operational_audit/dr_drills/*-drill-*.json``, ``evidence_layout.drills``;
  also read from ``drills/``): a sandbox drill's kill → writable, a drill environment's
  slowest switchover.
- **MTTR**: the mean of every recorded failover's detected → recovered: the incident is
  resolved for the service once the promoted region serves (incidents themselves are
  kept in memory only, so the evidence is what lasts).

Planned switchovers (``switchover/``, and the switch back that ends a failback) are no
failover: their old primary was up and stopped on purpose, so they never count toward
RTO or MTTR. What they measured, the write-unavailability window (the old primary's stop
→ the new primary's first write), is its own line: the latest and the worst
(:class:`SwitchoverWindows`, key ``switchover_writes_blocked`` beside the objectives).

Each figure names the file it came from. Pure but for reading the evidence directory.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.runtime.evidence import EvidenceSummary
from agentaskit_dr.runtime.evidence_layout import drill_dirs, list_runs, run_root, run_roots

if TYPE_CHECKING:
    from agentaskit_dr.config import EvidenceLayout

BACKUP_KINDS = ("backup-full", "backup-incremental", "backup-restore-point")
#: The runs whose evidence holds a switchover's write-unavailability window.
SWITCH_KINDS = ("switchover", "failback")
#: The objectives JSON's key for :class:`SwitchoverWindows` (not an objective: no target).
SWITCHOVER_WRITES = "switchover_writes_blocked"
#: The plan's "current" column: what it claims, shown beside what was measured.
PLAN_CLAIMS = {"rpo": 15 * 60.0, "rto": 2 * 3600.0, "mttr": 3600.0}


@dataclass(frozen=True, slots=True)
class Measure:
    """One measured figure (``seconds`` None: not measured, ``note`` says why)."""

    what: str
    seconds: float | None
    source: str | None
    note: str = ""
    bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Objective:
    """An objective, its target, and the worst (RPO, RTO) or mean (MTTR) measured."""

    name: str
    target_seconds: float
    measures: tuple[Measure, ...]
    measured_seconds: float | None
    source: str | None

    @property
    def met(self) -> bool | None:
        """Within the target; None when nothing was measured."""
        if self.measured_seconds is None:
            return None
        return self.measured_seconds <= self.target_seconds

    def as_dict(self) -> dict[str, Any]:
        """For ``objectives --json`` and ``/v1/status`` ``objectives``."""
        return {
            "target_seconds": self.target_seconds,
            "plan_claims_seconds": PLAN_CLAIMS.get(self.name),
            "measured_seconds": self.measured_seconds,
            "met": self.met,
            "evidence": self.source,
            "measures": [{"what": m.what, "seconds": m.seconds, "evidence": m.source,
                          "note": m.note, "bytes": m.bytes} for m in self.measures],
        }


@dataclass(frozen=True, slots=True)
class SwitchoverWindows:
    """The write-unavailability windows planned switches measured: the latest and the
    worst, each naming its evidence file. No target and no part of RTO (module doc)."""

    runs: int  # switchover and failback evidence files read
    latest: Measure
    worst: Measure

    def as_dict(self) -> dict[str, Any]:
        """``objectives --json`` and ``/v1/status`` ``objectives.switchover_writes_blocked``."""
        return {
            "what": "write-unavailability window of planned switchovers (old primary "
                    "stopped → first write on the new one); not counted as RTO",
            "runs": self.runs,
            "latest_seconds": self.latest.seconds, "latest_evidence": self.latest.source,
            "worst_seconds": self.worst.seconds, "worst_evidence": self.worst.source,
            "note": self.latest.note,
        }


def measure_switchovers(evidence_dir: Path,
                        layout: EvidenceLayout | None = None) -> SwitchoverWindows:
    """The windows measured by the switchovers and failbacks under ``evidence_dir``."""
    roots = _roots(evidence_dir, layout)
    runs = [s for kind in SWITCH_KINDS for s in list_runs(roots, kind) if s.note is None]
    # Newest first; the writers stamp created_at in UTC ISO form, which sorts as text.
    measured = sorted((s for s in runs if s.writes_blocked_seconds is not None),
                      key=lambda s: s.created_at or "", reverse=True)
    if not measured:
        note = (f"none of {len(runs)} switchover(s) measured one (failed, or resumed after "
                "the promotion)" if runs else "no switchover or failback evidence")
        nothing = Measure("switchover writes blocked", None, None, note)
        return SwitchoverWindows(len(runs), nothing, nothing)
    newest, worst = measured[0], max(measured, key=lambda s: s.writes_blocked_seconds or 0.0)
    skipped = len(runs) - len(measured)
    note = (f"{skipped} more run(s) measured none (failed, or resumed after the promotion)"
            if skipped else "")
    return SwitchoverWindows(
        len(runs),
        Measure(f"latest: {newest.kind} {newest.run_id}", newest.writes_blocked_seconds,
                str(newest.path), note),
        Measure(f"worst of {len(measured)}: {worst.kind} {worst.run_id}",
                worst.writes_blocked_seconds, str(worst.path)))


def _worst(name: str, target: float, measures: list[Measure]) -> Objective:
    measured = [m for m in measures if m.seconds is not None]
    worst = max(measured, key=lambda m: m.seconds or 0.0) if measured else None
    return Objective(name, target, tuple(measures),
                     None if worst is None else worst.seconds,
                     None if worst is None else worst.source)


def _failovers(evidence_dir: Path, layout: EvidenceLayout | None) -> list[EvidenceSummary]:
    """Failover evidence, newest first: the layout's ``failover/`` (default, under
    ``TEST/dr/failover/``), the default layout's, ``failover/`` of the layout before it,
    and files placed by hand as ``TEST/dr/failover/*.json``."""
    return [s for s in list_runs(_roots(evidence_dir, layout), "failover") if s.note is None]


def _roots(evidence_dir: Path, layout: EvidenceLayout | None) -> list[Path]:
    return list(dict.fromkeys([*run_roots(evidence_dir, layout), run_root(evidence_dir),
                               evidence_dir / "TEST" / "dr"]))


def _newest_backup_age(evidence_dir: Path, now: float) -> Measure:
    newest: tuple[float, str] | None = None
    for path in (evidence_dir / "backups").glob("[!.]*.json"):
        try:
            document = json.loads(path.read_text())
            if document.get("kind") not in BACKUP_KINDS or document.get("outcome") != "ok":
                continue
            at = float(document["timeline"][-1]["at_unix"])
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue
        if newest is None or at > newest[0]:
            newest = (at, str(path))
    what = "age of the newest good backup"
    if newest is None:
        return Measure(what, None, None, "no backup recorded as good in backups/")
    return Measure(what, round(max(now - newest[0], 0.0), 3), newest[1])


def _lag_note(last: EvidenceSummary) -> str:
    rpo = last.rpo or {}
    if last.rpo_lag_seconds is None:
        return "lag unknown at promotion"
    if rpo.get("lower_bound", True):
        return (f"lower bound ({rpo.get('basis') or 'basis not recorded'}): what the old "
                "primary committed after the promoter's last view is not counted")
    return ""


def _measured_loss(last: EvidenceSummary | None) -> Measure:
    """The loss read from the last failover's old primary at its resync, if it was."""
    what = "data lost at the last failover, measured at its resync (span of lost commits)"
    measured = (last.rpo or {}).get("measured") if last is not None else None
    if last is None:
        return Measure(what, None, None, "no failover evidence in failover/")
    if not isinstance(measured, dict):
        return Measure(what, None, str(last.path),
                       "not measured yet: its old primary was not resynced (sync-primary)")
    lost = measured.get("lost_wal_bytes")
    if lost is None:
        return Measure(what, None, str(last.path), f"not measured: {measured.get('note')}")
    span = _span(measured.get("first_lost_commit_at"), measured.get("last_lost_commit_at"))
    return Measure(what, span, str(last.path),
                   f"{lost} bytes of WAL and {measured.get('lost_commits')} committed "
                   f"transaction(s) beyond the fork at {measured.get('fork_lsn')}", lost)


def _span(first: object, last: object) -> float:
    """Seconds between two PostgreSQL commit stamps (``2026-11-29 14:38:43.349837 UTC``);
    0 when there are none."""
    if not isinstance(first, str) or not isinstance(last, str):
        return 0.0
    try:
        start, end = (dt.datetime.fromisoformat(s.removesuffix(" UTC")) for s in (first, last))
    except ValueError:
        return 0.0
    return round(max(0.0, (end - start).total_seconds()), 6)


def _drill_rtos(evidence_dir: Path, count: int, layout: EvidenceLayout | None) -> list[Measure]:
    found = []
    # The layout's, the plan's, and ``drills/`` where earlier versions kept them.
    paths = sorted({path for directory in drill_dirs(evidence_dir, layout)
                    for path in directory.glob("*-drill-*.json")},
                   key=lambda path: path.stem.rpartition("-drill-")[2])
    for path in paths[-count:]:
        try:
            figures = json.loads(path.read_text())["figures"]
            seconds = figures.get("kill_to_writable", figures.get("switchover_seconds"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        what = "kill → writable" if "kill_to_writable" in figures else "slowest switchover"
        found.append(Measure(f"drill {path.stem}: {what}",
                             None if seconds is None else float(seconds), str(path),
                             "" if seconds is not None else "the drill never became writable"))
    return found


def measure_objectives(evidence_dir: Path, *, rpo: float, rto: float, mttr: float,
                       drills: int, now: float,
                       archive_lag: float | None = None,
                       layout: EvidenceLayout | None = None) -> list[Objective]:
    """RPO, RTO and MTTR from ``evidence_dir`` at ``now``, against their targets.

    ``archive_lag``: the primary's WAL archive lag now, as a watchdog's probe reads it
    from ``pg_stat_archiver`` (None where no watchdog measured it: the CLI). ``layout``:
    where failovers and drills are (the plan's by default; older places are read too)."""
    failovers = _failovers(evidence_dir, layout)
    last = failovers[0] if failovers else None
    no_failover = "no failover evidence in failover/"
    rpo_parts = [
        Measure("replication lag at the last failover",
                None if last is None else last.rpo_lag_seconds,
                None if last is None else str(last.path),
                no_failover if last is None else _lag_note(last),
                None if last is None else last.rpo_lag_bytes),
        _measured_loss(last),
        Measure("WAL archive lag now", archive_lag,
                None if archive_lag is None else "the primary's pg_stat_archiver (probe)",
                "" if archive_lag is not None else
                "not measured here: a watchdog's /v1/status has it while the primary "
                "archives (archive_mode on, one segment archived)"),
        _newest_backup_age(evidence_dir, now),
    ]
    rto_parts = [
        Measure("last failover: detected → recovered",
                None if last is None else last.rto_seconds,
                None if last is None else str(last.path),
                no_failover if last is None else
                ("" if last.rto_seconds is not None else f"run {last.outcome}: no RTO")),
        *_drill_rtos(evidence_dir, drills, layout),
    ]
    recovered = [f.rto_seconds for f in failovers if f.rto_seconds is not None]
    mean = round(sum(recovered) / len(recovered), 3) if recovered else None
    mttr_measure = Measure(
        f"mean detected → recovered of {len(recovered)} failover(s)", mean,
        str(run_root(evidence_dir, layout) / "failover") if recovered else None,
        "" if recovered else "no recovered failover in failover/")
    return [
        _worst("rpo", rpo, rpo_parts),
        _worst("rto", rto, rto_parts),
        Objective("mttr", mttr, (mttr_measure,), mean, mttr_measure.source),
    ]
