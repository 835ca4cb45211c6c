"""The full DR exercise: people lead it, this keeps its checklist and its evidence.

``start`` opens ``<evidence_dir>/dr_testing/exercise.json`` with the plan's runbook
checklist (pre-failover, during, post-failover); ``check ITEM`` timestamps an item with
who checked it; ``finish`` writes ``<evidence_dir>/dr_exercises/<id>.json`` and records
the run as the schedule's "Full DR exercise" row: passed when every item was checked.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from agentaskit_dr.atomic_file import write_atomically
from agentaskit_dr.drtesting.records import STATE_DIR, record_run
from agentaskit_dr.drtesting.schedule import RecordedRun, iso

#: The plan's runbook checklist: (item, phase, what it means).
CHECKLIST: tuple[tuple[str, str, str], ...] = (
    ("not-transient", "pre-failover", "Confirm the failure is not transient"),
    ("notify-stakeholders", "pre-failover", "Notify stakeholders"),
    ("incident-ticket", "pre-failover", "Create an incident ticket"),
    ("secondary-health", "pre-failover", "Verify the secondary region's health"),
    ("execute-failover", "during", "Execute the failover"),
    ("replication-lag", "during", "Monitor replication lag"),
    ("service-health", "during", "Verify service health"),
    ("status-page", "during", "Update the status page"),
    ("incident-review", "post-failover", "Hold the incident review"),
    ("update-docs", "post-failover", "Update the documentation"),
    ("plan-failback", "post-failover", "Plan the failback"),
    ("review-automation", "post-failover", "Review the automation"),
)
ITEMS = tuple(item for item, _, _ in CHECKLIST)
EVIDENCE_KIND = "dr_exercises"


class ExerciseError(Exception):
    """A refused exercise action; the message says why and what to do."""


def _current(evidence_dir: Path) -> Path:
    return evidence_dir / STATE_DIR / "exercise.json"


def _load(evidence_dir: Path) -> dict[str, Any]:
    path = _current(evidence_dir)
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExerciseError("no exercise in progress: run 'agentaskit-dr exercise start'"
                            ) from None
    except (OSError, ValueError) as exc:
        raise ExerciseError(f"{path}: cannot read the exercise: {exc}") from exc
    return document


def _save(path: Path, document: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(document, indent=2) + "\n")


def start(evidence_dir: Path, *, by: str, now: float, note: str = "") -> dict[str, Any]:
    """Open an exercise; refused while another is in progress."""
    path = _current(evidence_dir)
    if path.exists():
        running = _load(evidence_dir)
        raise ExerciseError(f"exercise {running['exercise_id']} is in progress (started "
                            f"{running['started_at']} by {running['started_by']}): finish it "
                            "first")
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "exercise_id": f"exercise-{stamp}", "kind": "dr-exercise", "started_at": iso(now),
        "started_at_unix": now, "started_by": by, "note": note,
        "checklist": [{"item": item, "phase": phase, "text": text, "checked_at": None,
                       "checked_by": None, "note": None}
                      for item, phase, text in CHECKLIST],
    }
    _save(path, document)
    return document


def check(evidence_dir: Path, item: str, *, by: str, now: float,
          note: str | None = None) -> dict[str, Any]:
    """Timestamp ``item`` (checked once: checking it again is refused)."""
    if item not in ITEMS:
        raise ExerciseError(f"unknown checklist item {item!r}: one of {', '.join(ITEMS)}")
    document = _load(evidence_dir)
    entry = next(e for e in document["checklist"] if e["item"] == item)
    if entry["checked_at"] is not None:
        raise ExerciseError(f"{item} was already checked at {entry['checked_at']} by "
                            f"{entry['checked_by']}")
    entry.update(checked_at=iso(now), checked_at_unix=now, checked_by=by, note=note)
    _save(_current(evidence_dir), document)
    return document


def finish(evidence_dir: Path, *, by: str, now: float) -> tuple[dict[str, Any], Path]:
    """Close the exercise: its evidence file, and the schedule's row updated."""
    document = _load(evidence_dir)
    missing = [e["item"] for e in document["checklist"] if e["checked_at"] is None]
    document.update(finished_at=iso(now), finished_at_unix=now, finished_by=by,
                    duration_seconds=round(now - float(document["started_at_unix"]), 3),
                    unchecked=missing, outcome="complete" if not missing else "incomplete")
    path = evidence_dir / EVIDENCE_KIND / f"{document['exercise_id']}.json"
    _save(path, document)
    _current(evidence_dir).unlink()
    result = ("passed: every checklist item done" if not missing
              else f"failed: {len(missing)} of {len(ITEMS)} checklist items not done")
    record_run(evidence_dir, "dr_exercise", RecordedRun(now, not missing, result, str(path)),
               now=now)
    return document, path


def progress(evidence_dir: Path) -> dict[str, Any]:
    """The exercise in progress (raises :class:`ExerciseError` when none is)."""
    return _load(evidence_dir)
