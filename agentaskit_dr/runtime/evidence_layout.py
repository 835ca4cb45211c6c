"""The evidence layout on disk: where writers put each kind of evidence, and the places
readers look (the configured layout first, then where evidence went before it).

Run evidence (failover, failback, switchover) is ``<root>/<kind>/<run_id>.json``; the
root is ``<evidence_dir>/<evidence_layout.failover_tests>`` (``TEST/dr/failover``) and,
for files written before the layout, ``<evidence_dir>`` itself. Nothing is moved: every
reader looks in both (:func:`run_roots`), so old evidence keeps counting. Backup jobs
also append one JSON line per run to ``<evidence_dir>/<backup_logs>/<job>.log``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agentaskit_dr.runtime.evidence import EvidenceSummary, list_evidence, plain_name

if TYPE_CHECKING:
    from agentaskit_dr.config import EvidenceLayout

log = structlog.get_logger(__name__)

#: Where drills went before the plan's layout (and where the sandbox drill writes its own).
OLD_DRILLS = "drills"
#: Keys of a job's figures that count its bytes, first found wins (as ``job_process``).
_BYTES_KEYS = ("stored_bytes", "bytes_downloaded", "bytes_checked")
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _layout(layout: EvidenceLayout | None) -> EvidenceLayout:
    if layout is not None:
        return layout
    from agentaskit_dr.config import EvidenceLayout

    return EvidenceLayout()


def run_root(evidence_dir: Path, layout: EvidenceLayout | None = None) -> Path:
    """Where new failover, failback and switchover evidence is written."""
    return evidence_dir / _layout(layout).failover_tests


def run_roots(evidence_dir: Path, layout: EvidenceLayout | None = None) -> list[Path]:
    """Where run evidence is read from: the layout's root, then ``evidence_dir`` (the
    layout before this one)."""
    return _unique([run_root(evidence_dir, layout), evidence_dir])


def drill_root(evidence_dir: Path, layout: EvidenceLayout | None = None) -> Path:
    """Where new drill evidence is written (``operational_audit/dr_drills`` by default)."""
    return evidence_dir / _layout(layout).drills


def drill_dirs(evidence_dir: Path, layout: EvidenceLayout | None = None) -> list[Path]:
    """Where drill evidence is read from: the layout's, the default's, the old ``drills/``."""
    from agentaskit_dr.config import EvidenceLayout

    return _unique([evidence_dir / _layout(layout).drills,
                    evidence_dir / EvidenceLayout().drills, evidence_dir / OLD_DRILLS])


def find_root(roots: Sequence[Path], kind: str, run_id: str) -> Path:
    """The first root holding ``<kind>/<run_id>.json``, else the first root (so a
    "no evidence file" error names where new evidence would be)."""
    for root in roots:
        if (root / kind / f"{run_id}.json").is_file():
            return root
    return roots[0]


def find_run(roots: Sequence[Path], name: str) -> tuple[Path, str, str]:
    """The root, kind and run id of ``name``: ``<kind>/<run_id>`` as ``evidence list``
    prints it, or a run id alone, looked for under every kind of every root (a failover,
    failback or switchover). ValueError when two kinds hold that run id or it is not a plain
    name, FileNotFoundError when none does; both name the run."""
    kind, _, run_id = name.rpartition("/")
    if kind:
        return find_root(roots, kind, run_id), kind, run_id
    if not plain_name(run_id):
        raise ValueError(f"run id {run_id!r} must be 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    found: dict[str, Path] = {}  # kind → the first root holding it, as list_runs shows it
    for root in roots:
        for path in sorted(root.glob(f"[!.]*/{run_id}.json")):
            found.setdefault(path.parent.name, root)
    if not found:
        raise FileNotFoundError(f"no evidence file for run {run_id} in "
                                f"{' or '.join(map(str, roots))} (see: evidence list)")
    if len(found) > 1:
        raise ValueError(f"run id {run_id} is in more than one kind of evidence: name one of "
                         f"{', '.join(f'{kind}/{run_id}' for kind in sorted(found))}")
    [(kind, root)] = found.items()
    return root, kind, run_id


def list_runs(roots: Sequence[Path], kind: str | None = None) -> list[EvidenceSummary]:
    """``list_evidence`` over every root, newest run first, unreadable files last; a run
    found in two roots is shown once (the first root's)."""
    seen: set[tuple[str, str]] = set()
    readable: list[EvidenceSummary] = []
    broken: list[EvidenceSummary] = []
    for root in roots:
        for summary in list_evidence(root, kind):
            key = (summary.path.parent.name, summary.path.stem)
            if key in seen:
                continue
            seen.add(key)
            (broken if summary.note is not None else readable).append(summary)
    readable.sort(key=lambda s: _started(s.created_at), reverse=True)
    return readable + broken


def append_backup_log(evidence_dir: Path, document: Mapping[str, Any], evidence: Path,
                      layout: EvidenceLayout | None = None) -> Path | None:
    """Append the job's run to ``<backup_logs>/<job>.log`` (one JSON line); its path, or
    None when it cannot be written (logged: the JSON evidence is already written)."""
    job = str(document.get("kind") or "job")
    timeline = document.get("timeline") or [{}]
    extra = document.get("extra") or {}
    line = {
        "job": job, "run_id": document.get("run_id"),
        "started_at": timeline[0].get("at"), "finished_at": timeline[-1].get("at"),
        "outcome": document.get("outcome"),
        "bytes": next((extra[key] for key in _BYTES_KEYS if isinstance(extra.get(key), int)),
                      None),
        "detail": timeline[-1].get("detail") or "", "evidence": str(evidence),
    }
    name = job if _SAFE.fullmatch(job) else "job"
    path = evidence_dir / _layout(layout).backup_logs / f"{name}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One write of one line in append mode: concurrent runs never interleave a line.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line, default=str) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("backup_log_not_written", path=str(path), reason=exc.strerror or str(exc))
        return None
    return path


def _started(stamp: str | None) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(stamp or "")
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))
