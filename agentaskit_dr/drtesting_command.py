"""``schedule``, ``exercise start|check|status|finish`` and ``drill-failover``: the plan's
testing schedule on the command line.

Each reads the backup config (``--config``, optional: the plan's schedules otherwise) and
the evidence directory (``--evidence-dir``). Exit 0: fine; 1: a test is overdue or failed
(``schedule``), an exercise finished incomplete or a drill failed; 2: bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig
    from agentaskit_dr.drtesting.schedule import ScheduleRow

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE = 0, 1, 2
DEFAULT_EVIDENCE_DIR = Path("/var/lib/agentaskit-dr/evidence")


def add_common(command: argparse.ArgumentParser) -> None:
    """``--config`` (the backup config) and ``--evidence-dir``."""
    command.add_argument("--config", type=Path, default=None,
                         help="backup YAML file (schedules; default: the plan's)")
    command.add_argument("--evidence-dir", type=Path, default=None,
                         help=f"evidence directory (default: the config's evidence_dir, "
                              f"else {DEFAULT_EVIDENCE_DIR})")


def add_drtesting_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``schedule``, ``exercise`` and ``drill-failover`` to the CLI."""
    schedule = sub.add_parser("schedule", help="the DR testing schedule: last test, next "
                              "test and result of each test the plan schedules")
    add_common(schedule)
    schedule.add_argument("--json", action="store_true", help="the table as JSON on stdout")
    schedule.set_defaults(drtesting_command="schedule")

    exercise = sub.add_parser("exercise", help="the full DR exercise: walk the runbook "
                              "checklist (start, check ITEM, status, finish)")
    actions = exercise.add_subparsers(dest="exercise_action", required=True, metavar="ACTION")
    for name, text in (("start", "open an exercise"), ("check", "timestamp a checklist item"),
                       ("status", "the checklist so far"),
                       ("finish", "write the evidence and update the schedule")):
        action = actions.add_parser(name, help=text)
        add_common(action)
        if name == "check":
            action.add_argument("item", help="checklist item (see 'exercise status')")
            action.add_argument("--note", default=None, help="what was seen or decided")
        if name == "start":
            action.add_argument("--note", default="", help="scope of the exercise")
        action.add_argument("--by", default=None,
                            help="who does it (default: the OS user)")
        action.add_argument("--json", action="store_true", help="the exercise as JSON")
    exercise.set_defaults(drtesting_command="exercise")

    objectives = sub.add_parser("objectives", help="the plan's RPO, RTO and MTTR targets "
                                "beside the values measured from the evidence")
    add_common(objectives)
    objectives.add_argument("--json", action="store_true", help="the table as JSON on stdout")
    objectives.set_defaults(drtesting_command="objectives")

    drill = sub.add_parser("drill-failover", help="the quarterly failover drill: a switchover "
                           "to the other region and back in drills.failover.config's "
                           "environment (else the sandbox drill), recorded in the schedule")
    add_common(drill)
    drill.add_argument("--workdir", type=Path, default=None,
                       help="keep the sandbox's configs and logs here")
    drill.add_argument("--json", action="store_true",
                       help="one JSON answer on stdout (outcome, result, evidence)")
    drill.set_defaults(drtesting_command="drill-failover")


def load_context(args: argparse.Namespace) -> tuple[BackupConfig | None, Path] | None:
    """The backup config (if given) and the evidence directory; None after explaining."""
    config = None
    if args.config is not None:
        from agentaskit_dr.config import load_backup_config
        from agentaskit_dr.config_cli import load_or_explain

        config = load_or_explain(args.config, load_backup_config)
        if config is None:
            return None
    evidence_dir = (args.evidence_dir or getattr(config, "evidence_dir", None)
                    or DEFAULT_EVIDENCE_DIR)
    return config, Path(evidence_dir)


def run_drtesting_command(args: argparse.Namespace) -> int:
    """Run the command; expected failures are one line on stderr."""
    from agentaskit_dr import logs
    from agentaskit_dr.drtesting.exercise import ExerciseError
    from agentaskit_dr.drtesting.records import ScheduleStateError

    logs.configure("warning", stream=sys.stderr)  # stdout is the table or the JSON

    context = load_context(args)
    if context is None:
        return EXIT_USAGE
    config, evidence_dir = context
    try:
        if args.drtesting_command == "schedule":
            return _schedule(config, evidence_dir, as_json=args.json)
        if args.drtesting_command == "exercise":
            return _exercise(args, evidence_dir)
        if args.drtesting_command == "objectives":
            from agentaskit_dr.drtesting.objectives_view import print_objectives

            return print_objectives(config, evidence_dir, as_json=args.json)
        return _drill(config, evidence_dir, args.workdir, as_json=args.json)
    except (ExerciseError, ScheduleStateError, OSError) as exc:
        print(f"agentaskit-dr {args.drtesting_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def current_rows(config: BackupConfig | None, evidence_dir: Path,
                 now: float) -> list[ScheduleRow]:
    """The schedule's rows at ``now``."""
    from agentaskit_dr.drtesting.records import crons_from, schedule_rows

    grace = config.drills.grace if config is not None else 86400.0
    return schedule_rows(evidence_dir, crons_from(config), now=now, grace=grace)


def _schedule(config: BackupConfig | None, evidence_dir: Path, *, as_json: bool) -> int:
    rows = current_rows(config, evidence_dir, time.time())
    if as_json:
        print(json.dumps({row.key: row.as_dict() for row in rows}, indent=2))
    else:
        _print_table(rows)
    return EXIT_ATTENTION if any(r.status in ("overdue", "failed") for r in rows) else EXIT_OK


def _print_table(rows: list[ScheduleRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="DR testing schedule")
    for column in ("Test type", "Frequency", "Last test", "Next test", "Result"):
        table.add_column(column)
    styles = {"overdue": "bold yellow", "failed": "bold red", "due": "yellow"}
    for row in rows:
        shown = row.as_dict()
        result = shown["result"]
        if row.status in ("due", "overdue"):
            result = f"{row.status.upper()}; last: {result}"
        last = "never" if row.last is None else _short(row.last.at)
        table.add_row(row.test_type, row.frequency, last, _short(row.next_due), result,
                      style=styles.get(row.status))
    Console(highlight=False).print(table)


def _short(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _exercise(args: argparse.Namespace, evidence_dir: Path) -> int:
    from agentaskit_dr.drtesting import exercise

    by = args.by or getpass.getuser()
    now = time.time()
    action = args.exercise_action
    path: Path | None = None
    if action == "start":
        document = exercise.start(evidence_dir, by=by, now=now, note=args.note)
    elif action == "check":
        document = exercise.check(evidence_dir, args.item, by=by, now=now, note=args.note)
    elif action == "status":
        document = exercise.progress(evidence_dir)
    else:
        document, path = exercise.finish(evidence_dir, by=by, now=now)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        _print_checklist(document, path)
    if action == "finish" and document["outcome"] != "complete":
        return EXIT_ATTENTION
    return EXIT_OK


def _print_checklist(document: dict[str, Any], evidence: Path | None) -> None:
    print(f"Exercise {document['exercise_id']}, started {document['started_at']} by "
          f"{document['started_by']}")
    for entry in document["checklist"]:
        mark = "x" if entry["checked_at"] else " "
        when = f"  {entry['checked_at']} by {entry['checked_by']}" if entry["checked_at"] else ""
        print(f"  [{mark}] {entry['phase']:<13} {entry['item']:<20} {entry['text']}{when}")
    if evidence is not None:
        print(f"Finished {document['finished_at']} by {document['finished_by']}: "
              f"{document['outcome']}")
        print(f"Evidence: {evidence}")


def _drill(config: BackupConfig | None, evidence_dir: Path, workdir: Path | None, *,
           as_json: bool) -> int:
    from agentaskit_dr.drtesting.drill_record import run_and_record

    return run_and_record(config, evidence_dir, workdir, as_json=as_json)
