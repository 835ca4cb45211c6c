"""``agentaskit-dr switchover --to REGION --config C [--dry-run] [--yes]``: the planned,
zero-loss switch of the database primary (``actuators/switchover.py``), by hand.

Runs on the host of the current primary's server, with that watchdog's config: the
switchover stops that server, so ``regions.<primary>.database.control`` must be set and
``region`` must be the primary's. It takes the leader lock like the other on-call commands
(``oncall_lock.held_lock``: while a watchdog holds it, pause the watchdogs first, or ask the
holder: ``POST /v1/switchover``), runs the switchover as a journaled run of kind
``switchover`` (``runtime/switchover_run.py``, the API's code) under the lock's epoch,
records the new primary region in the cluster record right after the promotion (so the
daemons and the start gate follow it) and prints the result as JSON. A run already active
in the journal refuses it (a crashed switchover run is resumed). Moving DNS and scaling
are separate steps (``update-dns``, ``scale``).

Exit codes: 0 switched (or the plan printed), 1 refused or failed (one line on stderr),
2 bad input.
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


def add_switchover_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``switchover`` to the CLI."""
    parser = sub.add_parser("switchover", help="planned, zero-loss switch of the database "
                            "primary to the other region's standby")
    parser.add_argument("--config", required=True, type=Path, help="watchdog YAML file")
    parser.add_argument("--to", required=True, help="the region whose standby becomes primary")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(switchover_command=True)


def run_switchover_command(args: argparse.Namespace) -> int:
    """Run ``switchover``; every expected failure is one line, never a traceback."""
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.actuators.fence import PromotionRefused
    from agentaskit_dr.actuators.pg_control import ServerControlFailed
    from agentaskit_dr.cluster_cli import following_cluster_primary
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.leadership.journal import JournalRefused
    from agentaskit_dr.oncall_lock import Refused
    from agentaskit_dr.ports import LockUnavailable, StaleEpoch

    logs.configure("warning", stream=sys.stderr)
    config = load_or_explain(args.config, load_config)
    if config is None:
        return EXIT_USAGE
    if args.to not in config.regions:
        print(f"agentaskit-dr switchover: --to: must be one of the regions: "
              f"{', '.join(sorted(config.regions))} (got {args.to!r})", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = asyncio.run(following_cluster_primary(config))
        source = _source_region(config, args.to)
        for line in _plan(config, source, args.to):
            print(line)
        if args.dry_run:
            return EXIT_OK
        if not args.yes:
            _confirm(args.to)
        return asyncio.run(_switch(config, source, args.to))
    except Refused as exc:
        hint = (" Or let the holder run it: POST /v1/switchover to its API."
                if "leader lock is held" in str(exc) else "")
        print(f"agentaskit-dr switchover: {exc}{hint}", file=sys.stderr)
    except (_Refused, JournalRefused) as exc:
        print(f"agentaskit-dr switchover: {exc}", file=sys.stderr)
    except PromotionRefused as exc:
        print(f"agentaskit-dr switchover: {type(exc).__name__}: {exc.reason}", file=sys.stderr)
    except (ServerControlFailed, StaleEpoch, LockUnavailable) as exc:
        print(f"agentaskit-dr switchover: {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_FAILURE


def _source_region(config: WatchdogConfig, target: str) -> str:
    source = config.primary_region
    if target == source:
        raise _Refused(f"--to {target} is already the primary region; nothing to do")
    if config.regions[source].database.control is None or config.region != source:
        raise _Refused(
            f"regions.{source}.database.control is not set, or this config is not the "
            f"watchdog of {source} (region: {config.region}): run the switchover on the host "
            f"of {source}'s server, with its watchdog's config")
    return source


def _plan(config: WatchdogConfig, source: str, target: str) -> list[str]:
    from agentaskit_dr.actuators.fence import describe_dsn

    old = describe_dsn(config.regions[source].database.dsn)
    new = describe_dsn(config.regions[target].database.dsn)
    return [
        f"switchover of the database primary from {source} ({old}) to {target} ({new}):",
        f"  1. take the leader lock; check {source} is the primary and {target} streams",
        f"  2. CHECKPOINT; standby.signal + primary_conninfo in {source}'s data directory; "
        "pg_ctl stop -m fast (writes refused from here)",
        f"  3. wait until {target} replayed {source}'s shutdown checkpoint "
        f"(promotion.catch_up_timeout {config.promotion.catch_up_timeout:g}s; else roll back)",
        f"  4. promote {target} under the lock's epoch; record {target} as the cluster's "
        "primary region",
        f"  5. start {source} as a standby of {target}; wait until it streams at lag 0",
    ]


def _confirm(target: str) -> None:
    if not sys.stdin.isatty():
        raise _Refused("not interactive: pass --yes to switch over without confirmation")
    answer = input(f"Switch the database primary to {target}? Type {target!r} to confirm: ")
    if answer.strip() != target:
        raise _Refused("not confirmed; nothing changed")


async def _switch(config: WatchdogConfig, source: str, target: str) -> int:
    from agentaskit_dr.oncall_lock import held_lock
    from agentaskit_dr.runtime.builders import build_cluster_store, build_journal
    from agentaskit_dr.runtime.switchover_run import SwitchoverRun, SwitchoverRunRefused

    async with held_lock(config) as held:
        # A journaled run (kind "switchover"), the same as POST /v1/switchover: the
        # watchdogs hold while it is active and follow the primary it records.
        journal = build_journal(config)
        store = build_cluster_store(config)

        async def still_leader() -> bool:
            return await held.verified_lease() is not None

        try:
            outcome = await SwitchoverRun(
                config, journal, store, target=target, lease=lambda: held.lease,
                still_leader=still_leader,
            ).run(f"manual switchover from {source} by {getpass.getuser()}")
        except SwitchoverRunRefused as exc:
            raise _Refused(str(exc)) from None
        finally:
            await journal.close()
            await store.close()
    if outcome.data:
        print(json.dumps({"run_id": outcome.run_id, **outcome.data,
                          "evidence": outcome.evidence}, indent=2))
    elif outcome.evidence:
        print(f"evidence: {outcome.evidence}", file=sys.stderr)
    if outcome.outcome != "done":
        print(f"agentaskit-dr switchover: run {outcome.run_id} {outcome.outcome}: "
              f"{outcome.detail}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
