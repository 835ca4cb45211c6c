"""The runbook's steps as on-call commands, each under the same lock and epoch as the daemon.

``check-primary [--recovered]``, ``promote``, ``update-dns --target``, ``scale``,
``verify-failover``, ``failover [--dry-run] [--yes]``, ``journal show``, ``evidence
list|show``, and failback's ``shift-traffic`` (``traffic_commands``). A command that
changes something takes the leader lock first: while a watchdog (or another operator)
holds it, the command refuses, names the holder and says how to proceed (``agentaskit-dr
pause``: every watchdog leaves the lock to operators, or ``request-failover``). Having
taken the lock, it lifts the epoch above every epoch the targets recorded, as the daemon's
keeper does. After a failover the commands act on the cluster's current primary region,
as the lock store records it, not the file's (``shift-traffic`` names the file's regions).

Exit codes: 0 done (for ``check-primary``: the answer is "yes"), 1 refused or failed (one
line on stderr), 2 bad input. The lock is taken in ``oncall_lock``; the commands that
change something are in ``oncall_changes``, the read-only ones in ``oncall_reads``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.exit_codes import EXIT_FAILURE, EXIT_USAGE
from agentaskit_dr.traffic_commands import add_shift_traffic

if TYPE_CHECKING:
    from agentaskit_dr.config import WatchdogConfig

#: What a command runs once its arguments parsed.
Handler = Callable[["WatchdogConfig", argparse.Namespace], Coroutine[Any, Any, int]]

COMMANDS = ("check-primary", "promote", "update-dns", "scale", "verify-failover", "failover",
            "journal", "evidence", "shift-traffic")


def add_oncall_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=text, description=text)
        parser.add_argument("--config", required=True, type=Path, help="watchdog YAML file")
        parser.set_defaults(oncall=name)
        return parser

    check = command("check-primary", "is the primary down (exit 0) or up (exit 1)?")
    check.add_argument("--recovered", action="store_true",
                       help="failback check: exit 0 when the primary region is back")
    check.add_argument("--json", action="store_true")
    promote = command("promote", "fence the old primary and promote the standby")
    promote.add_argument("--force", action="store_true",
                         help="pass the replication lag and catch-up gates (never the fence)")
    dns = command("update-dns", "point the service record at a region")
    dns.add_argument("--target", required=True, choices=("secondary", "primary"))
    dns.add_argument("--weight", type=int, default=100,
                     help="percent of traffic to the target (weighted records; default 100)")
    scale = command("scale", "scale every deployment of a region's cluster up")
    scale.add_argument("--region", required=True)
    scale.add_argument("--percent", required=True, type=_percent,
                       help="growth, e.g. +50 (ceil(replicas x 1.5))")
    verify = command("verify-failover", "check the new primary region's services and a write")
    verify.add_argument("--region", default=None, help="default: the secondary region")
    failover = command("failover", "run the whole failover runbook once")
    failover.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    failover.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    failover.add_argument("--force", action="store_true", help="pass the replication lag gate")
    journal = command("journal", "the runs journaled in the lock store")
    journal.add_argument("action", choices=("show",))
    journal.add_argument("run_id", nargs="?", default=None)
    evidence = command("evidence", "the evidence files of failovers, failbacks and "
                       "switchovers: list them, or show one")
    evidence.add_argument("action", choices=("list", "show"))
    evidence.add_argument("run_id", nargs="?", default=None,
                          help="show: the run's id (or KIND/RUN_ID, as list prints it)")
    add_shift_traffic(command)


def _percent(text: str) -> int:
    try:
        value = int(text.strip().lstrip("+").rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like +50 (got {text!r})") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between +1 and +1000 (got {text!r})")
    return value


def run_oncall_command(args: argparse.Namespace) -> int:
    """Dispatch one on-call command; every expected failure is one line, never a traceback."""
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.oncall_lock import Refused
    from agentaskit_dr.ports import ActuationFailed, LockUnavailable, StaleEpoch

    # stdout carries the command's answer; what the actuators log goes to stderr as JSON.
    logs.configure("warning", stream=sys.stderr)
    config = load_or_explain(args.config, load_config)
    if config is None:
        return EXIT_USAGE
    handler = _handler(args.oncall)
    try:
        # ``check-primary --recovered`` asks about the region failed over from (failback):
        # that stays the file's primary.
        if args.oncall in _FOLLOW_CLUSTER_PRIMARY and not getattr(args, "recovered", False):
            from agentaskit_dr.cluster_cli import following_cluster_primary

            config = asyncio.run(following_cluster_primary(config))
        if args.oncall == "failover" and not args.dry_run and not args.yes:
            _confirm(config)
        return asyncio.run(handler(config, args))
    except Refused as exc:
        print(f"agentaskit-dr {args.oncall}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (ActuationFailed, StaleEpoch, LockUnavailable) as exc:
        print(f"agentaskit-dr {args.oncall}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (ValueError, OSError) as exc:
        print(f"agentaskit-dr {args.oncall}: {exc}", file=sys.stderr)
        return EXIT_USAGE


#: The commands that act on (or check) the primary region: they follow the cluster record.
_FOLLOW_CLUSTER_PRIMARY = frozenset({"check-primary", "promote", "update-dns", "scale",
                                     "verify-failover", "failover"})


def _confirm(config: WatchdogConfig) -> None:
    from agentaskit_dr.oncall_lock import Refused

    if not sys.stdin.isatty():
        raise Refused("not interactive: pass --yes to fail over without confirmation")
    answer = input(f"Fail over from {config.primary_region} to {config.secondary_region}? "
                   f"Type {config.secondary_region!r} to confirm: ")
    if answer.strip() != config.secondary_region:
        raise Refused("not confirmed; nothing changed")


def _handler(command: str) -> Handler:
    """The coroutine function that runs ``command``, imported only when it runs."""
    from agentaskit_dr import oncall_changes, oncall_reads
    from agentaskit_dr.traffic_commands import shift_traffic

    handlers: dict[str, Handler] = {
        "check-primary": oncall_reads.check_primary,
        "promote": oncall_changes.promote,
        "update-dns": oncall_changes.update_dns,
        "scale": oncall_changes.scale,
        "verify-failover": oncall_changes.verify_failover,
        "failover": oncall_changes.failover,
        "journal": oncall_reads.journal,
        "evidence": oncall_reads.evidence,
        "shift-traffic": shift_traffic,
    }
    return handlers[command]
