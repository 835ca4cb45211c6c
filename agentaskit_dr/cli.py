"""``agentaskit-dr``: the daemon and the on-call commands.

Bad input is answered with a message naming the field or value and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from agentaskit_dr import __version__, logs

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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

    drill = sub.add_parser(
        "drill",
        help="sandbox drill: real PostgreSQL primary + replica, Redis and two watchdogs; "
        "kill the primary and show the failover timeline",
    )
    drill.add_argument("--threshold", default="3s", help="db_unreachable threshold (default 3s)")
    drill.add_argument("--interval", default="0.5s", help="probe interval (default 0.5s)")
    drill.add_argument("--workdir", type=Path, default=None,
                       help="keep configs, logs and evidence here (default: a temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.command == "check-config":
        return _check_config(args.config, args.kind)
    if args.command == "drill":
        from agentaskit_dr.sandbox.drill import run_drill

        return run_drill(threshold=args.threshold, interval=args.interval, workdir=args.workdir)
    raise AssertionError(args.command)  # argparse rejects unknown commands first


def _print_problems(path: Path, problems: Sequence[str]) -> None:
    print(f"{path}: invalid configuration", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def _check_config(path: Path, kind: str) -> int:
    from agentaskit_dr.config import ConfigError, load_backup_config, load_config, looks_like_backup

    if kind == "auto":
        kind = "backup" if looks_like_backup(path) else "watchdog"
    try:
        if kind == "backup":
            load_backup_config(path)
        else:
            load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return EXIT_USAGE
    print(f"{path}: valid {kind} configuration")
    return EXIT_OK


def _run(path: Path) -> int:
    from agentaskit_dr.config import ConfigError, load_config
    from agentaskit_dr.runtime.supervisor import run_daemon

    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return EXIT_USAGE
    logs.configure(config.logging.level)
    return asyncio.run(run_daemon(config, path))


if __name__ == "__main__":
    sys.exit(main())
