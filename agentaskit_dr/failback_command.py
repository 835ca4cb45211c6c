"""``agentaskit-dr failback --config C [--dry-run] [--yes]``: the whole failback run.

The plan's five steps as one journaled, crash-resumable run (``runtime/failback.py``):
check_recovered, sync_primary, verify_data_integrity, shift_traffic, restore_standby.
It takes the leader lock like the other on-call commands (pause the watchdogs first),
resumes a crashed or failed failback at its first step not done, and prints the result.
The home region is the config file's ``primary_region`` (the one failed over from).

Exit codes: 0 done (or the plan printed), 1 refused or a step failed (one line on stderr
naming the step), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path

from agentaskit_dr.config import WatchdogConfig

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Refused(Exception):
    """The command cannot go on; the message is for the operator."""


def add_failback_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``failback`` to the CLI."""
    from agentaskit_dr.config_cli import positive_seconds

    parser = sub.add_parser("failback", help="run the whole failback back to the primary "
                            "region (journaled, resumes where it stopped)")
    parser.add_argument("--config", required=True, type=Path, help="watchdog YAML file")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--sync-timeout", type=positive_seconds, default=600.0,
                        help="bound on sync_primary (default 10m)")
    parser.add_argument("--integrity-wait", type=positive_seconds, default=60.0,
                        help="bound on each wait of verify_data_integrity (default 1m)")
    parser.set_defaults(failback_command=True)


def run_failback_command(args: argparse.Namespace) -> int:
    """Run ``failback``; every expected failure is one line, never a traceback."""
    from agentaskit_dr import logs
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.leadership.journal import JournalRefused
    from agentaskit_dr.oncall import Refused
    from agentaskit_dr.ports import LockUnavailable, StaleEpoch
    from agentaskit_dr.runtime.failback import FailbackRefused
    from agentaskit_dr.runtime.failback_steps import describe_plan

    logs.configure("warning", stream=sys.stderr)
    config = load_or_explain(args.config, load_config)
    if config is None:
        return EXIT_USAGE
    home, away = config.primary_region, config.secondary_region
    print(f"failback from {away} to {home}:")
    for index, line in enumerate(describe_plan(config, home, away), 1):
        print(f"  {index}. {line}")
    if args.dry_run:
        return EXIT_OK
    try:
        if not args.yes:
            _confirm(home)
        return asyncio.run(_failback(config, args))
    except Refused as exc:
        print(f"agentaskit-dr failback: {exc}{_api_hint(str(exc))}", file=sys.stderr)
    except (_Refused, FailbackRefused, JournalRefused) as exc:
        print(f"agentaskit-dr failback: {exc}", file=sys.stderr)
    except (StaleEpoch, LockUnavailable) as exc:
        print(f"agentaskit-dr failback: {type(exc).__name__}: {exc} (run failback again to "
              "resume)", file=sys.stderr)
    return EXIT_FAILURE


def _api_hint(refusal: str) -> str:
    """While a watchdog holds the lock, the whole run can be asked of it instead."""
    if "leader lock is held" not in refusal:
        return ""
    return " Or let the holder run it: POST /v1/failback to its API."


def _confirm(home: str) -> None:
    if not sys.stdin.isatty():
        raise _Refused("not interactive: pass --yes to fail back without confirmation")
    answer = input(f"Fail back to {home}? Type {home!r} to confirm: ")
    if answer.strip() != home:
        raise _Refused("not confirmed; nothing changed")


async def _failback(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.oncall import held_lock
    from agentaskit_dr.runtime.failback import FailbackRun
    from agentaskit_dr.runtime.supervisor import build_cluster_store, build_journal

    async with held_lock(config) as held:
        journal = build_journal(config)
        cluster = build_cluster_store(config)

        async def still_leader() -> bool:
            return await held.verified_lease() is not None

        try:
            outcome = await FailbackRun(
                config, journal, cluster, lease=lambda: held.lease, still_leader=still_leader,
                sync_timeout=args.sync_timeout, integrity_wait=args.integrity_wait,
            ).run(f"manual failback by {getpass.getuser()}")
        finally:
            await journal.close()
            await cluster.close()
    print(json.dumps({"run_id": outcome.run_id, "outcome": outcome.outcome,
                      "detail": outcome.detail, "resumed_at": outcome.resumed_at,
                      "evidence": outcome.evidence}, indent=2))
    if outcome.outcome != "done":
        print(f"agentaskit-dr failback: {outcome.detail} (fix it and run failback again: it "
              "resumes at this step)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
