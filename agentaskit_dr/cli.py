"""``agentaskit-dr``: the daemon and the on-call commands.

Bad input is answered with a message naming the field or value and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agentaskit_dr import __version__
from agentaskit_dr._entry import load_structlog_without_rich
from agentaskit_dr.config_cli import load_or_explain, positive_seconds, print_problems
from agentaskit_dr.exit_codes import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from agentaskit_dr.api.credentials import DaemonCredentials
    from agentaskit_dr.config import WatchdogConfig

T = TypeVar("T")


def _duration(text: str) -> str:
    """argparse type: a duration longer than zero ('3s', '500ms'), kept as written."""
    positive_seconds(text)
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentaskit-dr",
        description="Cross-region disaster-recovery watchdog.",
    )
    parser.add_argument("--version", action="version", version=f"agentaskit-dr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the watchdog in the foreground (JSON logs on stdout)")
    run.add_argument("--config", required=True, type=Path, help="watchdog YAML file")

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", required=True, type=Path, help="YAML file to validate")
    check.add_argument(
        "--kind", choices=("auto", "watchdog", "backup"), default="auto",
        help="which schema; auto picks backup for a file with backup sections and no regions",
    )
    check.add_argument(
        "--syntax-only", action="store_true",
        help="check the file alone, not the TLS and peer token files it names (for a "
        "machine other than the one it runs on)",
    )

    drill = sub.add_parser(
        "drill",
        help="sandbox drill: real PostgreSQL primary + replica, Redis and two watchdogs; "
        "kill the primary and show the failover timeline",
    )
    drill.add_argument("--threshold", default="6s", type=_duration,
                       help="db_unreachable threshold (default 6s: long enough for the "
                            "primary side's self-fence budget at a 0.5s interval)")
    drill.add_argument("--interval", default="0.5s", type=_duration,
                       help="probe interval (default 0.5s)")
    drill.add_argument("--workdir", type=Path, default=None,
                       help="keep configs, logs and evidence here (default: a temp dir)")
    drill.add_argument("--failback", action="store_true",
                       help="after the failover, run the failback back home (full circle) "
                            "and print both evidence files' figures")
    drill.add_argument("--evidence-dir", type=Path, default=None,
                       help="record the drill in this evidence directory's DR testing "
                            "schedule (the failover drill row) and keep its evidence there")
    from agentaskit_dr.api.commands import add_api_commands
    from agentaskit_dr.appstate_command import add_appstate_commands
    from agentaskit_dr.backup.wal_client import add_wal_commands
    from agentaskit_dr.backup_command import add_backup_commands
    from agentaskit_dr.drtesting_command import add_drtesting_commands
    from agentaskit_dr.failback_command import add_failback_command
    from agentaskit_dr.fence_commands import add_fence_commands
    from agentaskit_dr.integrity_command import add_integrity_command
    from agentaskit_dr.oncall import add_oncall_commands
    from agentaskit_dr.resync_command import add_resync_command
    from agentaskit_dr.switchover_command import add_switchover_command

    add_api_commands(sub)
    add_oncall_commands(sub)
    add_fence_commands(sub)
    add_switchover_command(sub)
    add_integrity_command(sub)
    add_resync_command(sub)
    add_failback_command(sub)
    add_backup_commands(sub)
    add_wal_commands(sub)
    add_drtesting_commands(sub)
    add_appstate_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status (argparse exits 2 on bad arguments)."""
    if argv and argv[0] in ("wal-push", "wal-fetch"):
        from agentaskit_dr.backup.wal_client import main as wal_main

        return wal_main(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    # Only now: parsing (and --help, and a usage error) loads no logging at all.
    load_structlog_without_rich()
    try:
        if getattr(args, "api_action", None):
            from agentaskit_dr.api.commands import run_api_command

            return run_api_command(args)
        if getattr(args, "fence_command", None):
            from agentaskit_dr.fence_commands import run_fence_command

            return run_fence_command(args)
        if getattr(args, "switchover_command", False):
            from agentaskit_dr.switchover_command import run_switchover_command

            return run_switchover_command(args)
        if getattr(args, "integrity_command", None):
            from agentaskit_dr.integrity_command import run_integrity_command

            return run_integrity_command(args)
        if getattr(args, "failback_command", None):
            from agentaskit_dr.failback_command import run_failback_command

            return run_failback_command(args)
        if getattr(args, "resync_command", None):
            from agentaskit_dr.resync_command import run_resync_command

            return run_resync_command(args)
        if getattr(args, "appstate_command", None):
            from agentaskit_dr.appstate_command import run_appstate_command

            return run_appstate_command(args)
        if getattr(args, "drtesting_command", None):
            from agentaskit_dr.drtesting_command import run_drtesting_command

            return run_drtesting_command(args)
        if getattr(args, "backup_command", None):
            from agentaskit_dr.backup_command import run_backup_command

            return run_backup_command(args)
        if getattr(args, "oncall", None):
            from agentaskit_dr.oncall import run_oncall_command

            return run_oncall_command(args)
        if args.command == "run":
            return _run(args.config)
        if args.command == "check-config":
            return _check_config(args.config, args.kind, syntax_only=args.syntax_only)
        if args.command == "drill":
            return _drill(parser, args.threshold, args.interval, args.workdir,
                          failback=args.failback, evidence_dir=args.evidence_dir)
    except KeyboardInterrupt:
        # Ctrl-C before the daemon's own handler is installed (while loading, say).
        print("agentaskit-dr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    raise AssertionError(args.command)  # argparse rejects unknown commands first


def _drill(
    parser: argparse.ArgumentParser, threshold: str, interval: str, workdir: Path | None,
    *, failback: bool = False, evidence_dir: Path | None = None,
) -> int:
    from agentaskit_dr.durations import parse_duration

    seconds, every = parse_duration(threshold), parse_duration(interval)
    if seconds <= every:
        # A single probe round would decide: refuse before starting any server.
        parser.error(f"--threshold ({threshold}) must exceed --interval ({interval})")
    # The drill runs peers and a witness: the primary side's self-fence must fit before the
    # other side's promotion (probe timeout 0.8 x interval, jitter 0.1: 5.8 intervals).
    if seconds <= 6 * every:
        parser.error(f"--threshold ({threshold}) must exceed 6 x --interval ({interval}) so "
                     "the primary side can self-fence before the other side may promote")
    if workdir is not None:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--workdir ({workdir}): {exc.strerror or type(exc).__name__}")
    if evidence_dir is not None:
        from agentaskit_dr.drtesting.drill_record import run_sandbox_and_record

        return run_sandbox_and_record(evidence_dir, workdir, threshold=threshold,
                                      interval=interval, failback=failback)
    from agentaskit_dr.sandbox.drill import run_drill

    return run_drill(threshold=threshold, interval=interval, workdir=workdir,
                     failback=failback)


def _check_config(path: Path, kind: str, *, syntax_only: bool) -> int:
    """Exit 2 on errors (one line each on stderr), else 0; warnings are advice on stderr
    (``path: warning: field: message``) that leave the file usable."""
    from agentaskit_dr.config import (
        load_backup_config,
        load_config,
        looks_like_backup,
    )

    def validate(path: Path) -> tuple[str, WatchdogConfig | None]:
        """The kind of config ``path`` holds, once it validated as that kind."""
        chosen = kind
        if chosen == "auto":
            chosen = "backup" if looks_like_backup(path) else "watchdog"
        if chosen == "backup":
            load_backup_config(path)
            return chosen, None
        return chosen, load_config(path)

    loaded = load_or_explain(path, validate)
    if loaded is None:
        return EXIT_USAGE
    valid_kind, config = loaded
    if config is not None:
        if not syntax_only and _credentials(path, config) is None:
            return EXIT_USAGE
        for warning in config.warnings():
            print(f"{path}: warning: {warning}", file=sys.stderr)
    print(f"{path}: valid {valid_kind} configuration")
    return EXIT_OK


def _credentials(path: Path, config: WatchdogConfig) -> DaemonCredentials | None:
    """The TLS contexts and peer token the config names, or None after printing why not."""
    from agentaskit_dr.api.credentials import CredentialError, load_credentials

    try:
        return load_credentials(config)
    except CredentialError as exc:
        print_problems(path, exc.problems)
    return None


def _run(path: Path) -> int:
    # Until run_daemon installs its handler, SIGHUP's default action would kill the
    # daemon during start-up (a `systemctl reload` right after start); ignore it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from agentaskit_dr.config import load_config

    config = load_or_explain(path, load_config)
    if config is None:
        return EXIT_USAGE
    credentials = _credentials(path, config)
    if credentials is None:
        return EXIT_USAGE
    # The daemon's modules load once the config is known good: a bad file is
    # answered without paying for them.
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.runtime.supervisor import run_daemon

    logs.configure(config.logging.level)
    logs.route_uncaught()
    return asyncio.run(run_daemon(config, path, credentials))


if __name__ == "__main__":
    sys.exit(main())
