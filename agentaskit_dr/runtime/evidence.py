"""Evidence files for failovers, failbacks and switchovers: the timeline and the measured
RTO and RPO.

One JSON document per run at ``<directory>/<kind>/<run_id>.json``, built from the run's
journal (its draft incident review and timeline picture: ``incident_review``), and the
readers that list and show them. Files only: no store, no clock.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.atomic_file import write_atomically
from agentaskit_dr.ports import RunJournal, StepStatus

log = structlog.get_logger(__name__)

#: Bumped when a field changes meaning; readers refuse documents of another version.
EVIDENCE_SCHEMA_VERSION = 1

# Kinds and run ids become path components: no separators, no "..", no hidden files.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_COMPLETE = (StepStatus.DONE, StepStatus.SKIPPED)


@dataclass(frozen=True, slots=True)
class EvidenceSummary:
    """One evidence file as ``list_evidence`` shows it.

    ``note`` is set (and the measured fields are None) for a file that could not be read;
    it says why, so a listing never hides a broken file.
    """

    path: Path
    kind: str
    run_id: str
    created_at: str | None = None
    outcome: str | None = None
    #: Detected → recovered; None for a run that did not recover and for a switchover
    #: (planned: nothing was down; ``writes_blocked_seconds`` is its figure).
    rto_seconds: float | None = None
    rpo_lag_bytes: int | None = None
    rpo_lag_seconds: float | None = None
    note: str | None = None
    #: The ``rpo`` object as written (``basis``, ``lower_bound``, ``measured``: runtime.rpo).
    rpo: dict[str, Any] | None = None
    #: The measured write-unavailability window (:func:`writes_blocked`), when there is one.
    writes_blocked_seconds: float | None = None


def failover_evidence(
    journal: RunJournal,
    *,
    detected_at: float | None,
    decided_at: float | None,
    lag_bytes: int | None,
    lag_seconds: float | None,
    outcome: str,
    extra: Mapping[str, Any] | None = None,
    rpo_detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The evidence document of one run, from its journal and the engine's measurements.

    Times are wall-clock Unix seconds, like the journal's. ``detected_at`` is the first
    failing observation, ``decided_at`` the failover decision; ``lag_bytes`` and
    ``lag_seconds`` are the replication lag at promotion (the RPO estimate);
    ``rpo_detail`` says what that lag is measured against and whether it is only a lower
    bound (``runtime.rpo``), and gets ``measured`` once a resync read the real loss. The run
    counts as recovered at the last step it completed, and only once every step of its
    plan ended done or skipped: a failed run recovered nothing, so it has no RTO.
    """
    if not outcome.strip():
        raise ValueError("evidence outcome must not be blank")
    if lag_bytes is not None and lag_bytes < 0:
        raise ValueError(f"evidence lag_bytes must not be negative, got {lag_bytes}")
    if lag_seconds is not None and lag_seconds < 0:
        raise ValueError(f"evidence lag_seconds must not be negative, got {lag_seconds}")
    recovered_at = _recovered_at(journal)
    return {
        "schema_version": EVIDENCE_SCHEMA_VERSION,
        "run_id": journal.run_id,
        "kind": journal.kind,
        "reason": journal.reason,
        "plan": list(journal.plan),
        "meta": dict(journal.meta),
        "created_at": _iso(journal.created_at),
        "created_epoch": journal.created_epoch,
        "epochs": sorted({journal.created_epoch, *(e.epoch for e in journal.entries)}),
        "journal_finished": journal.finished,
        "outcome": outcome,
        "timeline": [
            {
                "at": _iso(e.at), "at_unix": e.at, "step": e.step, "status": e.status.value,
                "epoch": e.epoch, "detail": e.detail, "data": e.data,
            }
            for e in journal.entries
        ],
        "steps": _step_times(journal),
        "detected_at": _iso(detected_at),
        "decided_at": _iso(decided_at),
        "recovered_at": _iso(recovered_at),
        "detection_seconds": _between(detected_at, decided_at),
        "rto_seconds": _between(detected_at, recovered_at),
        "decision_to_recovery_seconds": _between(decided_at, recovered_at),
        "rpo": {"basis": None, "lower_bound": True, "rpo_lag_bytes_at_last_view": None,
                "last_view_age_seconds": None, "measured": None, **(rpo_detail or {}),
                "lag_bytes": lag_bytes, "lag_seconds": lag_seconds},
        "extra": dict(extra or {}),
    }


def write_evidence(directory: Path, kind: str, run_id: str, document: Mapping[str, Any]) -> Path:
    """Write ``document`` to ``<directory>/<kind>/<run_id>.json`` atomically; the path."""
    path = evidence_file(directory, kind, run_id, ".json")
    try:
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"evidence for {path} is not JSON-serialisable: {exc}") from exc
    write_atomically(path, text)
    log.info("evidence_written", path=str(path), kind=kind, run_id=run_id)
    return path


def read_evidence(directory: Path, kind: str, run_id: str) -> dict[str, Any]:
    """The evidence document of one run; errors name the file."""
    path = evidence_file(directory, kind, run_id, ".json")
    return _load(path)


def list_evidence(directory: Path, kind: str | None = None) -> list[EvidenceSummary]:
    """Evidence files under ``directory`` (of one ``kind``, or all), newest run first.

    Files that cannot be read come last, each with a ``note`` saying why.
    """
    if kind is not None:
        _check_name("kind", kind)
    kinds = [directory / kind] if kind is not None else sorted(
        p for p in directory.glob("*") if p.is_dir() and not p.name.startswith(".")
    )
    readable: list[tuple[dt.datetime, EvidenceSummary]] = []
    broken: list[EvidenceSummary] = []
    for folder in kinds:
        for path in sorted(folder.glob("[!.]*.json")):
            try:
                readable.append(_summarize(path))
            except (OSError, ValueError) as exc:
                log.warning("evidence_file_skipped", path=str(path), reason=str(exc))
                broken.append(EvidenceSummary(
                    path=path, kind=folder.name, run_id=path.stem, note=f"skipped: {exc}"
                ))
    readable.sort(key=lambda item: item[0], reverse=True)
    return [summary for _, summary in readable] + broken


def _step_times(journal: RunJournal) -> list[dict[str, Any]]:
    """Per step, plan order first: last status, attempts, and the time of the attempt that
    completed it (its last start before its first done).

    A ``started`` entry begins an attempt when it is the step's first, follows a failure,
    or comes under another epoch (a resumed run); otherwise it is a progress mark within
    the attempt (failback's ``restore_standby`` marks the switchover done that way).
    """
    steps: dict[str, dict[str, Any]] = {
        name: {"step": name, "status": None, "attempts": 0, "started": None, "done": None}
        for name in journal.plan
    }
    attempt_epoch: dict[str, int | None] = {}
    for entry in journal.entries:
        step = steps.setdefault(
            entry.step,
            {"step": entry.step, "status": None, "attempts": 0, "started": None, "done": None},
        )
        previous, step["status"] = step["status"], entry.status.value
        if entry.status is StepStatus.STARTED:
            if previous == StepStatus.STARTED.value and attempt_epoch.get(
                    entry.step) == entry.epoch:
                continue  # a progress mark, not a new attempt
            attempt_epoch[entry.step] = entry.epoch
            step["attempts"] += 1
            if step["done"] is None:
                step["started"] = entry.at
        elif entry.status is StepStatus.DONE and step["done"] is None:
            step["done"] = entry.at
    return [
        {
            "step": step["step"], "status": step["status"], "attempts": step["attempts"],
            "started_at": _iso(step["started"]), "done_at": _iso(step["done"]),
            "actuation_seconds": _between(step["started"], step["done"]),
        }
        for step in steps.values()
    ]


def _recovered_at(journal: RunJournal) -> float | None:
    steps = journal.plan or tuple(dict.fromkeys(e.step for e in journal.entries))
    if not steps or any(journal.last_status(step) not in _COMPLETE for step in steps):
        return None
    return max(e.at for e in journal.entries if e.status in _COMPLETE)


def _between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    stamp = dt.datetime.fromtimestamp(at, tz=dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def writes_blocked(document: Mapping[str, Any]) -> float | None:
    """A planned switch's measured write-unavailability window (the old primary's stop →
    the new primary's first write): a switchover's own ``extra``, a failback's
    ``extra.switchover``; None when the run measured none (a failover, a failed run)."""
    extra = document.get("extra")
    if not isinstance(extra, Mapping):
        return None
    nested = extra.get("switchover")
    value = (nested if isinstance(nested, Mapping) else extra).get("write_unavailable_seconds")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def plain_name(value: object) -> bool:
    """Whether ``value`` may name an evidence file (a kind or a run id)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _check_name(field: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"evidence {field} {value!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def evidence_file(directory: Path, kind: str, run_id: str, suffix: str) -> Path:
    """``<directory>/<kind>/<run_id><suffix>``; ValueError for a name that is not plain."""
    _check_name("kind", kind)
    _check_name("run_id", run_id)
    return directory / kind / f"{run_id}{suffix}"


def _load(path: Path) -> dict[str, Any]:
    """A JSON evidence document of the current schema; errors name ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no evidence file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"evidence file {path} cannot be read: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"evidence file {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        # The file's content is wrong, not a caller's argument: ValueError, not TypeError.
        raise ValueError(  # noqa: TRY004
            f"evidence file {path} holds a {type(document).__name__}, not an object"
        )
    version = document.get("schema_version")
    if version != EVIDENCE_SCHEMA_VERSION:
        raise ValueError(
            f"evidence file {path} has schema_version {version!r}, "
            f"this version reads {EVIDENCE_SCHEMA_VERSION}"
        )
    return document


def _summarize(path: Path) -> tuple[dt.datetime, EvidenceSummary]:
    """When the run started, and the summary of the evidence file at ``path``."""
    document = _load(path)
    try:
        created = dt.datetime.fromisoformat(document["created_at"])
        rto, rpo, kind = document["rto_seconds"], document["rpo"], str(document["kind"])
        summary = EvidenceSummary(
            path=path, kind=kind, run_id=str(document["run_id"]),
            created_at=document["created_at"], outcome=str(document["outcome"]),
            # A planned switchover recovers nothing: its "RTO" would be the run's length.
            rto_seconds=None if rto is None or kind == "switchover" else float(rto),
            rpo_lag_bytes=rpo["lag_bytes"], rpo_lag_seconds=rpo["lag_seconds"], rpo=dict(rpo),
            writes_blocked_seconds=writes_blocked(document),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"evidence file {path} is not a complete evidence document: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    # A hand-written stamp without a zone is read as UTC, so stamps stay comparable.
    return created if created.tzinfo else created.replace(tzinfo=dt.UTC), summary
