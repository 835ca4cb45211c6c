"""``agentaskit-dr switchover --to REGION --config C [--dry-run] [--yes]``: the planned,
zero-loss switch of the database primary (``actuators/switchover.py``), by hand.

Runs on the host of the current primary's server, with that watchdog's config: the
switchover stops that server, so ``regions.<primary>.database.control`` must be set and
``region`` must be the primary's. It takes the leader lock like the other on-call commands
(``oncall.held_lock``: while a watchdog holds it, pause the watchdogs first), runs the
switchover under the lock's epoch, records the new primary region in the cluster record
right after the promotion (so the daemons and the start gate follow it) and prints the
result as JSON. Moving DNS
and scaling are separate steps (``update-dns``, ``scale``).

Exit codes: 0 switched (or the plan printed), 1 refused or failed (one line on stderr),
2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from agentaskit_dr.config import WatchdogConfig

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


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
    from agentaskit_dr import logs
    from agentaskit_dr.actuators.fence import PromotionRefused
    from agentaskit_dr.actuators.pg_control import ServerControlFailed
    from agentaskit_dr.cluster_cli import following_cluster_primary
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.oncall import Refused
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
    except (_Refused, Refused) as exc:
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
    from agentaskit_dr.actuators.switchover import PostgresSwitchover
    from agentaskit_dr.fencing import primary_conninfo_for, server_control
    from agentaskit_dr.oncall import held_lock
    from agentaskit_dr.runtime.supervisor import build_cluster_store

    control = server_control(config, source)
    if control is None:  # checked by _source_region; kept for the type checker
        raise _Refused(f"regions.{source}.database.control is not set")
    async with held_lock(config) as held:
        epoch = held.lease.epoch
        run_id = f"switchover-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-e{epoch}"

        async def still_leader() -> bool:
            return await held.verified_lease() is not None

        store = build_cluster_store(config)

        async def record_primary() -> None:
            await store.record_primary(target, epoch=epoch, run_id=run_id, lease=held.lease)

        try:
            result = await PostgresSwitchover(
                primary_dsn=config.regions[source].database.connect_dsn(),
                primary_control=control,
                standby_dsn=config.regions[target].database.connect_dsn(),
                primary_conninfo=primary_conninfo_for(config, target),
                io_timeout=config.probe.timeout,
                catch_up_timeout=config.promotion.catch_up_timeout,
                promote_timeout=config.promotion.timeout,
            ).switch(epoch=epoch, holder=held.lease.holder, switchover_id=run_id,
                     still_leader=still_leader, on_promoted=record_primary)
        finally:
            await store.close()
    print(json.dumps(result.as_dict(), indent=2))
    if not result.rejoined:
        print(f"agentaskit-dr switchover: {target} is the primary, but {source} did not "
              f"rejoin as its standby: {result.rejoin_detail}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
