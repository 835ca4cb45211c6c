"""``backup run|list|prune``, ``verify-backup`` and ``test-restore`` (``--config`` is the
backup YAML). Exit 0: done and good; 1: a backup, check or restore failed (named on
stderr); 2: bad input or a refused target; 3: a server or bucket could not be reached.
Progress (bytes and rate) on a terminal; JSON logs on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
_JOBS = {"run": "run", "list": "list_backups", "prune": "prune",
         "verify-backup": "verify_backup", "test-restore": "restore_test"}


def add_backup_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backup``, ``verify-backup`` and ``test-restore`` to the CLI."""
    backup = sub.add_parser("backup", help="PostgreSQL base backups: run, list, prune")
    actions = backup.add_subparsers(dest="backup_action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="take a base backup now (encrypted, both buckets)")
    run.add_argument("--kind", choices=("full", "incremental"), required=True)
    listing = actions.add_parser("list", help="the backups in the primary bucket")
    prune = actions.add_parser("prune", help="delete what the retention allows")
    prune.add_argument("--dry-run", action="store_true", help="show it, delete nothing")
    verify = sub.add_parser(
        "verify-backup", help="check every object of every backup in both buckets and the "
        "WAL chain; exit 1 naming the first bad object or missing segments")
    restore = sub.add_parser(
        "test-restore", help="restore the latest (or --to) backup into a restore target, "
        "start it, check it, record RTO/RPO figures, remove it")
    restore.add_argument("--target", required=True, help="a name under restore_targets")
    restore.add_argument("--to", default=None, metavar="TIME|LSN",
                         help="recovery target: ISO time (UTC unless it says) or LSN 0/3000028")
    for command in (listing, restore):
        command.add_argument("--bucket", choices=("primary", "replica"), default="primary",
                             help="read backups from this bucket (replica: after losing the "
                             "primary's region)")
    restore.add_argument("--keep", action="store_true", help="leave the restored copy running "
                         "stopped in its workdir")
    for command in (run, listing, prune, verify, restore):
        command.add_argument("--config", required=True, type=Path, help="backup YAML file")
        command.add_argument("--json", action="store_true", help="the result as JSON")
    for command, name in ((run, "run"), (listing, "list"), (prune, "prune"),
                          (verify, "verify-backup"), (restore, "test-restore")):
        command.set_defaults(backup_command=name)


def parse_target(text: str) -> tuple[float | None, str | None]:
    """``--to``: (time, None) or (None, LSN); ValueError with a message otherwise."""
    import datetime as dt
    import re

    if re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", text):
        return None, text.upper()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--to {text!r}: not an ISO time (2026-11-29T12:00:00Z) or an LSN "
                         "(0/3000028)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp(), None


def run_backup_command(args: argparse.Namespace) -> int:
    """Run one of the commands; expected failures are one line on stderr."""
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.backup.crypto import BackupKeyError
    from agentaskit_dr.backup.fetch import BackupDamaged
    from agentaskit_dr.backup.pgtools import BackupSourceError
    from agentaskit_dr.backup.restore import RestoreFailed
    from agentaskit_dr.backup.restore_target import RestoreRefused
    from agentaskit_dr.backup.store import StoreError, StoreUnavailable
    from agentaskit_dr.config import load_backup_config
    from agentaskit_dr.config_cli import load_or_explain

    name = "backup " + args.backup_command if args.backup_command in (
        "run", "list", "prune") else args.backup_command
    logs.configure("info" if not sys.stderr.isatty() else "warning", stream=sys.stderr)
    config = load_or_explain(args.config, load_backup_config)
    if config is None:
        return EXIT_USAGE
    try:
        from agentaskit_dr.backup import cli_jobs

        job: Coroutine[Any, Any, int] = getattr(cli_jobs, _JOBS[args.backup_command])(
            config, args)
        return asyncio.run(job)
    except (RestoreRefused, BackupKeyError, ValueError) as exc:
        print(f"agentaskit-dr {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailable as exc:
        print(f"agentaskit-dr {name}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (StoreError, RestoreFailed, BackupDamaged, BackupSourceError) as exc:
        print(f"agentaskit-dr {name}: {exc}", file=sys.stderr)
        return EXIT_FAILED

