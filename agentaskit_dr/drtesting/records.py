"""Where the schedule's "Last test" comes from: a state file and the evidence files.

``<evidence_dir>/dr_testing/schedule.json`` holds the day the schedule started and the
last run of each test recorded by this package (drills, exercises, a test run by hand:
:func:`record_run`). Backup verification and the restore test are also read from the
backup jobs' evidence (``<evidence_dir>/backups/*.json``, kinds ``verify-backup`` and
``test-restore``): the newest of both counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agentaskit_dr.atomic_file import write_atomically
from agentaskit_dr.drtesting.schedule import PLAN_TESTS, RecordedRun, ScheduleRow, evaluate

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig

log = structlog.get_logger(__name__)

STATE_DIR = "dr_testing"
#: Drill evidence, in the plan's layout.
DRILLS_DIR = Path("operational_audit") / "dr_drills"
STATE_FILE = "schedule.json"
#: Backup job evidence kinds (``evidence/backups/``) and the row each one is a run of.
BACKUP_JOB_ROWS = {"verify-backup": "backup_verification", "test-restore": "restore_test"}
#: The plan's schedules, as in ``configs/backup.yaml``'s defaults.
DEFAULT_CRONS = {
    "backup_verification": "0 4 * * 0",
    "restore_test": "0 5 1 * *",
    "failover_drill": "0 10 1 1,4,7,10 *",
    "dr_exercise": "0 10 15 3 *",
}
TEST_KEYS = tuple(key for key, _, _ in PLAN_TESTS)


class ScheduleStateError(Exception):
    """The state file cannot be read or written; the message names it."""


def crons_from(config: BackupConfig | None) -> dict[str, str]:
    """Each test's cron: from the backup config when given, else the plan's defaults."""
    if config is None:
        return dict(DEFAULT_CRONS)
    return {
        "backup_verification": config.verification.verify_backup.schedule,
        "restore_test": config.verification.test_restore.schedule,
        "failover_drill": config.drills.failover.schedule,
        "dr_exercise": config.drills.exercise.schedule,
    }


def state_path(evidence_dir: Path) -> Path:
    """The schedule's state file under ``evidence_dir``."""
    return evidence_dir / STATE_DIR / STATE_FILE


def load_state(evidence_dir: Path, *, now: float) -> dict[str, Any]:
    """The state file's content; created (the schedule starts ``now``) when absent, or
    kept in memory only when it cannot be written."""
    path = state_path(evidence_dir)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        state = {"since": now, "runs": {}}
        try:
            _write(path, state)
        except ScheduleStateError as exc:
            # Showing the schedule must not need write access: it starts now, unsaved.
            log.warning("dr_testing_state_not_saved", reason=str(exc))
        return state
    except (OSError, ValueError) as exc:
        raise ScheduleStateError(f"{path}: cannot read the schedule state: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("since"), int | float):
        raise ScheduleStateError(f"{path}: not a schedule state file (no 'since')")
    state.setdefault("runs", {})
    return state


def record_run(evidence_dir: Path, key: str, run: RecordedRun, *, now: float,
               unless_since: float | None = None) -> Path:
    """Record ``run`` as test ``key``'s last run (unless a newer one is recorded, or,
    with ``unless_since``, one recorded at or after it: that run recorded itself)."""
    if key not in TEST_KEYS:
        raise ValueError(f"unknown test {key!r}: one of {', '.join(TEST_KEYS)}")
    state = load_state(evidence_dir, now=now)
    current = _run(state["runs"].get(key))
    if unless_since is not None and current is not None and current.at >= unless_since:
        return state_path(evidence_dir)
    if current is None or current.at <= run.at:
        state["runs"][key] = {"at": run.at, "passed": run.passed, "result": run.result,
                              "evidence": run.evidence}
    successes = state.setdefault("last_success", {})
    if run.passed and float(successes.get(key, 0.0)) < run.at:
        successes[key] = run.at
    _write(state_path(evidence_dir), state)
    return state_path(evidence_dir)


def last_runs(evidence_dir: Path, state: Mapping[str, Any]) -> dict[str, RecordedRun]:
    """Each test's newest run, from the state file and the backup jobs' evidence."""
    runs = {key: run for key in TEST_KEYS if (run := _run(state["runs"].get(key)))}
    for key, run in _backup_job_runs(evidence_dir)[0].items():
        if key not in runs or runs[key].at < run.at:
            runs[key] = run
    return runs


def last_successes(evidence_dir: Path, state: Mapping[str, Any]) -> dict[str, float]:
    """When each test last passed (a failed run after it does not hide it)."""
    found = {key: float(at) for key, at in state.get("last_success", {}).items()
             if key in TEST_KEYS}
    for key, at in _backup_job_runs(evidence_dir)[1].items():
        found[key] = max(found.get(key, 0.0), at)
    return found


def schedule_rows(evidence_dir: Path, crons: Mapping[str, str], *, now: float,
                  grace: float) -> list[ScheduleRow]:
    """The plan's table at ``now``."""
    state = load_state(evidence_dir, now=now)
    runs = last_runs(evidence_dir, state)
    return [evaluate(key, crons[key], runs.get(key), since=float(state["since"]), now=now,
                     grace=grace) for key in TEST_KEYS]


def _backup_job_runs(evidence_dir: Path) -> tuple[dict[str, RecordedRun], dict[str, float]]:
    """The newest run of each backup job row, and when each last passed."""
    found: dict[str, RecordedRun] = {}
    passed: dict[str, float] = {}
    for path in sorted((evidence_dir / "backups").glob("[!.]*.json")):
        try:
            document = json.loads(path.read_text())
            key = BACKUP_JOB_ROWS.get(str(document.get("kind")))
            if key is None:
                continue
            at = float(document["timeline"][-1]["at_unix"])
            outcome = str(document.get("outcome"))
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            log.warning("dr_test_evidence_unreadable", path=str(path))
            continue
        detail = str(document["timeline"][-1].get("detail") or "")
        result = "passed" if outcome == "ok" else f"failed: {detail or outcome}"
        run = RecordedRun(at, outcome == "ok", result, str(path))
        if key not in found or found[key].at < at:
            found[key] = run
        if run.passed:
            passed[key] = max(passed.get(key, 0.0), at)
    return found, passed


def _run(value: object) -> RecordedRun | None:
    if not isinstance(value, dict):
        return None
    try:
        return RecordedRun(float(value["at"]), bool(value["passed"]), str(value["result"]),
                       value.get("evidence"))
    except (KeyError, TypeError, ValueError):
        return None


def _write(path: Path, state: Mapping[str, Any]) -> None:
    try:
        write_atomically(path, json.dumps(state, indent=2) + "\n")
    except OSError as exc:
        raise ScheduleStateError(f"{path}: cannot write the schedule state: {exc}") from exc
