"""``agentaskit-dr failback --config C [--dry-run] [--yes]``: the whole failback run, and
``agentaskit-dr restore-standby --config C [--dry-run] [--yes]``: its step 5 alone.

The plan's five steps as one journaled, crash-resumable run (``runtime/failback.py``):
check_recovered, sync_primary, verify_data_integrity, shift_traffic, restore_standby.
It takes the leader lock like the other on-call commands (pause the watchdogs first),
resumes a crashed or failed failback at its first step not done, and prints the result.
The home region is the config file's ``primary_region`` (the one failed over from).

``restore-standby`` runs the same step code (``failback_steps.restore_standby``) as a
journaled run of its own kind (``RestoreStandbyRun``): the switchover back to the home
region, the away region's deployments scaled back, automatic failover re-armed; a crashed
or failed one resumes when run again.

Exit codes: 0 done (or the plan printed), 1 refused or a step failed (one line on stderr
naming the step), 2 bad input.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from agentaskit_dr.config import WatchdogConfig


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
    parser.set_defaults(failback_command=True, only_restore_standby=False)

    restore = sub.add_parser("restore-standby", help="failback step 5 alone: switch the "
                             "database back to the primary region with zero loss, the "
                             "secondary becomes its standby, scale back, re-arm failover")
    restore.add_argument("--config", required=True, type=Path, help="watchdog YAML file")
    restore.add_argument("--dry-run", action="store_true",
                         help="print what it would do, change nothing")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.set_defaults(failback_command=True, only_restore_standby=True,
                         sync_timeout=600.0, integrity_wait=60.0)


def run_failback_command(args: argparse.Namespace) -> int:
    """Run ``failback``; every expected failure is one line, never a traceback."""
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.leadership.journal import JournalRefused
    from agentaskit_dr.oncall_lock import Refused
    from agentaskit_dr.ports import LockUnavailable, StaleEpoch
    from agentaskit_dr.runtime.failback import FailbackRefused
    from agentaskit_dr.runtime.failback_steps import FAILBACK_PLAN, describe_plan

    logs.configure("warning", stream=sys.stderr)
    config = load_or_explain(args.config, load_config)
    if config is None:
        return EXIT_USAGE
    home, away = config.primary_region, config.secondary_region
    name = "restore-standby" if args.only_restore_standby else "failback"
    print(f"{name} from {away} to {home}:")
    for index, line in enumerate(describe_plan(config, home, away), 1):
        if not args.only_restore_standby or index == len(FAILBACK_PLAN):
            print(f"  {index}. {line}")
    if args.dry_run:
        return EXIT_OK
    try:
        if not args.yes:
            _confirm(home)
        return asyncio.run(_failback(config, args))
    except Refused as exc:
        print(f"agentaskit-dr {name}: {exc}{_api_hint(str(exc))}", file=sys.stderr)
    except (_Refused, FailbackRefused, JournalRefused) as exc:
        print(f"agentaskit-dr {name}: {exc}", file=sys.stderr)
    except (StaleEpoch, LockUnavailable) as exc:
        print(f"agentaskit-dr {name}: {type(exc).__name__}: {exc} (run {name} again to "
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
    from agentaskit_dr.oncall_lock import held_lock
    from agentaskit_dr.runtime.builders import build_cluster_store, build_journal
    from agentaskit_dr.runtime.failback import FailbackRun, RestoreStandbyRun

    async with held_lock(config) as held:
        journal = build_journal(config)
        cluster = build_cluster_store(config)

        async def still_leader() -> bool:
            return await held.verified_lease() is not None

        try:
            kind = RestoreStandbyRun if args.only_restore_standby else FailbackRun
            outcome = await kind(
                config, journal, cluster, lease=lambda: held.lease, still_leader=still_leader,
                sync_timeout=args.sync_timeout, integrity_wait=args.integrity_wait,
            ).run(f"manual {kind.kind} by {getpass.getuser()}")
        finally:
            await journal.close()
            await cluster.close()
    print(json.dumps({"run_id": outcome.run_id, "outcome": outcome.outcome,
                      "detail": outcome.detail, "resumed_at": outcome.resumed_at,
                      "evidence": outcome.evidence}, indent=2))
    if outcome.outcome != "done":
        print(f"agentaskit-dr {kind.kind}: {outcome.detail} (fix it and run {kind.kind} "
              "again: it resumes at this step)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
