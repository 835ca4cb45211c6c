"""The ``appstate`` command group: application state besides PostgreSQL.

``appstate backup|list|verify|prune|fetch REDIS|VAULT|CONFIGS`` and ``appstate test-restore
redis`` live in :mod:`agentaskit_dr.appstate.command` (docs/appstate.md).

``appstate check-s3 --config BACKUP.yaml [--json]``: the plan's "S3 objects" row.

Exit 0: versioning, replication rule, lifecycle rule and canary all fine; 1: something
is missing or the canary stalled (each problem named on stderr); 2: bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from agentaskit_dr.config_cli import positive_seconds

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def add_check_s3(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``check-s3`` to the ``appstate`` command group."""
    check = actions.add_parser(
        "check-s3", help="S3 objects: versioning on both buckets, a replication rule primary "
        "-> replica, the 90-day noncurrent-version lifecycle, and a canary within the SLO")
    check.add_argument("--config", required=True, type=Path, help="backup YAML file")
    check.add_argument("--slo", type=positive_seconds, default=None,
                       help="override application_state.s3_objects.replication_slo")
    check.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    check.add_argument("--evidence-dir", type=Path, default=None,
                       help="also write the report to <DIR>/appstate/s3-replication-<time>.json")
    check.set_defaults(appstate_command="check-s3")


def add_appstate_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``appstate`` group (application state besides PostgreSQL)."""
    group = sub.add_parser("appstate", help="application state besides PostgreSQL")
    actions = group.add_subparsers(dest="appstate_action", required=True, metavar="ACTION")
    from agentaskit_dr.appstate.command import add_backup_actions

    add_check_s3(actions)
    add_backup_actions(actions)


def run_appstate_command(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    if getattr(args, "appstate_command", None) == "check-s3":
        return _run_check_s3(args)
    from agentaskit_dr.appstate.command import run_backup_action

    return run_backup_action(args)


def _run_check_s3(args: argparse.Namespace) -> int:
    """Run ``check-s3``; problems are named, one line each."""
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.backup.s3_replication import buckets_from, check_s3_replication
    from agentaskit_dr.config import load_backup_config
    from agentaskit_dr.config_cli import load_or_explain

    logs.configure("warning", stream=sys.stderr)  # stdout is the table or the JSON

    config = load_or_explain(args.config, load_backup_config)
    if config is None:
        return EXIT_USAGE
    s3 = config.application_state.s3_objects
    slo = args.slo if args.slo is not None else s3.replication_slo
    report = asyncio.run(check_s3_replication(
        buckets_from(config), retention=s3.retention, slo=slo,
        poll_interval=min(s3.poll_interval, slo), canary_prefix=s3.canary_prefix))
    if args.evidence_dir is not None:
        _keep(args.evidence_dir, report.as_dict())
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"S3 objects: s3://{report.buckets.primary} -> s3://{report.buckets.replica}")
        for name, value in report.checks.items():
            print(f"  {name}: {value}")
        print("Result: OK" if report.ok else "Result: PROBLEMS")
    for problem in report.problems:
        print(f"agentaskit-dr appstate check-s3: {problem}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _keep(evidence_dir: Path, report: dict[str, object]) -> None:
    """The report as an evidence file (the plan's "S3 objects" row, checked)."""
    now = dt.datetime.now(dt.UTC)
    path = evidence_dir / "appstate" / f"s3-replication-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"kind": "s3-replication-check", "checked_at": now.isoformat(),
                "outcome": "ok" if report["ok"] else "failed", **report}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"Evidence: {path}", file=sys.stderr)
