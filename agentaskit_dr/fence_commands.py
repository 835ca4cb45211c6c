"""``start-gate`` and ``unfence``: the fence's two commands for the server's host and the operator.

``start-gate --config C [--region R]``: for PostgreSQL's systemd unit (``ExecStartPre=``)
or a pod's init container. Exit 0: the server may start (as primary, or it starts in
recovery anyway); exit 1 with one line: it must not start as primary (in control mode
``standby.signal`` was written first, so a start anyway comes up read-only); exit 2: bad
input. ``unfence --config C --region R [--yes] [--remove-standby-signal]
[--allow-unconfirmed]`` lifts a fence by hand, and like the gate refuses (exit 1, one
line per silent source) when no source answers. It asks the sources before the operator
(a refusal asks nothing), and again once confirmed, right before lifting; see
docs/postgres-privileges.md, "Lifting a fence by hand".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from agentaskit_dr.config import WatchdogConfig


def add_fence_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``start-gate`` and ``unfence`` to the CLI."""
    gate = sub.add_parser(
        "start-gate", help="exit 0 if this region's PostgreSQL may start as primary, else 1 "
        "(ExecStartPre= / init container)",
    )
    gate.add_argument("--config", required=True, type=Path, help="watchdog YAML file")
    gate.add_argument("--region", default=None, help="default: the config's region")
    gate.add_argument(
        "--allow-unconfirmed", action="store_true",
        help="start as primary even when neither the lock store, the other region's server "
        "nor any peer answers (start_gate.when_unconfirmed: allow)",
    )
    gate.set_defaults(fence_command="start-gate")
    unfence = sub.add_parser("unfence", help="lift a region's fence by hand")
    unfence.add_argument("--config", required=True, type=Path, help="watchdog YAML file")
    unfence.add_argument("--region", required=True)
    unfence.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    unfence.add_argument(
        "--remove-standby-signal", action="store_true",
        help="control mode: also remove standby.signal, so the next start is as primary",
    )
    unfence.add_argument(
        "--allow-unconfirmed", action="store_true",
        help="lift even when neither the lock store, the other region's server nor any peer "
        "answers (never when one says the primary is elsewhere)",
    )
    unfence.set_defaults(fence_command="unfence")


def run_fence_command(args: argparse.Namespace) -> int:
    """Run ``start-gate`` or ``unfence``; every expected failure is one line, no traceback."""
    from agentaskit_dr import logs
    from agentaskit_dr.actuators.fence import PromotionRefused
    from agentaskit_dr.actuators.pg_control import ServerControlFailed
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain

    name = args.fence_command
    config = load_or_explain(args.config, load_config)
    if config is None:
        return EXIT_USAGE
    region = args.region or config.region
    if region not in config.regions:
        print(f"agentaskit-dr {name}: --region: must be one of the regions: "
              f"{', '.join(sorted(config.regions))} (got {region!r})", file=sys.stderr)
        return EXIT_USAGE
    # Only now: the answer goes to stdout/stderr as lines, what the actuators log to
    # stderr as JSON.
    logs.configure("warning", stream=sys.stderr)
    try:
        if name == "start-gate":
            return _start_gate(config, region, allow_unconfirmed=args.allow_unconfirmed)
        return _unfence(config, region, args)
    except (PromotionRefused, ServerControlFailed) as exc:
        print(f"agentaskit-dr {name}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _start_gate(config: WatchdogConfig, region: str, *, allow_unconfirmed: bool) -> int:
    import asyncio

    from agentaskit_dr.start_gate import start_gate

    answer = asyncio.run(start_gate(config, region, allow_unconfirmed=allow_unconfirmed))
    print(answer.reason, file=sys.stdout if answer.allowed else sys.stderr)
    return EXIT_OK if answer.allowed else EXIT_FAILURE


def _confirmed(region: str) -> bool:
    if not sys.stdin.isatty():
        print("agentaskit-dr unfence: not interactive: pass --yes", file=sys.stderr)
        return False
    try:
        answer = input(f"Lift the fence of {region}'s server? Type {region!r} to confirm: ")
    except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: no answer, no traceback
        answer = ""
        print(file=sys.stderr)
    if answer.strip() != region:
        print("agentaskit-dr unfence: not confirmed; nothing changed", file=sys.stderr)
        return False
    return True


def _unfence(config: WatchdogConfig, region: str, args: argparse.Namespace) -> int:
    import asyncio

    from agentaskit_dr.fence_lift import LiftUnconfirmed, check_lift, lift_fence

    allow = args.allow_unconfirmed
    shown: list[str] = []
    try:
        if not args.yes:
            # The sources before the operator: a refusal needs no confirmation, and an
            # operator never confirms a lift that what is already known refuses.
            shown = asyncio.run(check_lift(config, region, allow_unconfirmed=allow))
            for line in shown:
                print(line, flush=True)
            if not _confirmed(region):
                return EXIT_FAILURE
        # Asked (again) right before lifting: the answer may have changed while the
        # prompt waited.
        said = asyncio.run(lift_fence(config, region, remove_signal=args.remove_standby_signal,
                                      allow_unconfirmed=allow))
    except LiftUnconfirmed as exc:
        print(f"agentaskit-dr unfence: {exc}; nothing changed", file=sys.stderr)
        for silent in exc.silent:
            print(f"  silent: {silent}", file=sys.stderr)
        print("to lift it on purpose: agentaskit-dr unfence --allow-unconfirmed", file=sys.stderr)
        return EXIT_FAILURE
    for line in said:
        if line not in shown:
            print(line)
    return EXIT_OK
