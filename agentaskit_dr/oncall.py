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
line on stderr), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import (
    ActuationFailed,
    Actuator,
    Lease,
    LockUnavailable,
    StaleEpoch,
)
from agentaskit_dr.traffic_commands import add_shift_traffic, shift_traffic

if TYPE_CHECKING:
    from agentaskit_dr.runtime.runbook import Hooks

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMMANDS = ("check-primary", "promote", "update-dns", "scale", "verify-failover", "failover",
            "journal", "evidence", "shift-traffic")


class Refused(Exception):
    """The command cannot go on; the message is for the operator."""


def add_oncall_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=text)
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
    evidence = command("evidence", "failover evidence files")
    evidence.add_argument("action", choices=("list", "show"))
    evidence.add_argument("run_id", nargs="?", default=None)
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
    from agentaskit_dr import logs
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain

    # stdout carries the command's answer; what the actuators log goes to stderr as JSON.
    logs.configure("warning", stream=sys.stderr)
    config = load_or_explain(args.config, load_config)
    if config is None:
        return EXIT_USAGE
    handler = _HANDLERS[args.oncall]
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
    if not sys.stdin.isatty():
        raise Refused("not interactive: pass --yes to fail over without confirmation")
    answer = input(f"Fail over from {config.primary_region} to {config.secondary_region}? "
                   f"Type {config.secondary_region!r} to confirm: ")
    if answer.strip() != config.secondary_region:
        raise Refused("not confirmed; nothing changed")


# ---------------------------------------------------------------- the lock


class _HeldLock:
    """The leader lock taken by a command, renewed in the background until released."""

    def __init__(self, lease: Lease, verify: Callable[[Lease], Awaitable[bool]]) -> None:
        self.lease = lease
        self._verify = verify

    async def verified_lease(self) -> Lease | None:
        try:
            return self.lease if await self._verify(self.lease) else None
        except LockUnavailable:
            return None


@contextlib.asynccontextmanager
async def held_lock(config: WatchdogConfig) -> AsyncIterator[_HeldLock]:
    """Take the lock as ``<holder>/cli:<user>``; Refused naming the holder if it is taken."""
    from agentaskit_dr.runtime.supervisor import (
        build_cluster_store,
        build_journal,
        build_lock,
        epoch_floor_reader,
    )

    lock_cfg = config.lock
    holder = f"{config.holder}/cli:{getpass.getuser()}"
    lock = build_lock(config, holder=holder)
    try:
        lease = await lock.acquire()
        if lease is None:
            current = await lock.current()
            who = f"{current[0]} (epoch {current[1]})" if current else "someone (just now)"
            raise Refused(
                f"the leader lock is held by {who}. To act step by step while the watchdogs "
                "run: 'agentaskit-dr pause --reason ...' (every watchdog releases the lock "
                "and stops campaigning; 'agentaskit-dr resume' afterwards), then run this "
                "command again; or let the holder run the whole runbook: 'agentaskit-dr "
                "request-failover'. Never stop the watchdogs for this.")
        journal = build_journal(config, client=lock.client)
        cluster = build_cluster_store(config, client=lock.client)
        floor = await epoch_floor_reader(lambda: config, journal, cluster)()
        if floor >= lease.epoch:
            raised = await lock.raise_epoch_floor(lease, floor)
            if raised is None:
                raise Refused("the leader lock was taken from us while reading the epoch "
                              "floor; nothing changed")
            print(f"epoch raised above {floor}, the highest the targets recorded",
                  file=sys.stderr)
            lease = raised
        print(f"lock taken as {holder}, epoch {lease.epoch}", file=sys.stderr)
        held = _HeldLock(lease, lock.verify)

        async def renew() -> None:
            while True:
                await asyncio.sleep(lock_cfg.ttl / 3)
                with contextlib.suppress(LockUnavailable):
                    renewed = await lock.renew(held.lease)
                    if renewed is not None:
                        held.lease = renewed

        renewer = asyncio.create_task(renew())
        try:
            yield held
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await lock.release(held.lease)
    finally:
        await lock.close()


def _run_id(kind: str, epoch: int) -> str:
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-e{epoch}"


async def _apply(actuator: Actuator, epoch: int, run_id: str) -> int:
    try:
        outcome = await actuator.apply(epoch=epoch, failover_id=run_id)
    finally:
        await actuator.close()
    state = "changed" if outcome.changed else "already done"
    print(f"{actuator.name}: {state}: {outcome.detail}")
    return EXIT_OK


# ---------------------------------------------------------------- commands


async def _check_primary(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.probes.postgres import PostgresProbe
    from agentaskit_dr.probes.region_health import RegionHealthProbe

    region = config.regions[config.primary_region]
    db = PostgresProbe("db:primary", region.database.connect_dsn(), timeout=config.probe.timeout)
    health = RegionHealthProbe(config.primary_region, region.health_urls,
                               timeout=config.probe.timeout,
                               healthy_fraction=config.probe.healthy_fraction)
    try:
        seen, healthy = await asyncio.gather(db.observe(), health.observe())
    finally:
        await db.close()
        await health.close()
    # A server that answers with an error is up: not down, but not shown recovered either.
    up = seen.reachable and healthy.healthy
    recovered = up and seen.status_read
    report = {
        "primary_region": config.primary_region,
        "database": {"target": seen.target, "reachable": seen.reachable,
                     "refusal": seen.refusal, "sqlstate": seen.sqlstate,
                     "in_recovery": seen.in_recovery, "writable": seen.writable,
                     "error": seen.error},
        "region_health": {"healthy": healthy.healthy, "detail": healthy.detail},
    }
    if args.recovered:
        verdict = "recovered: ready for failback" if recovered else "not recovered"
        code = EXIT_OK if recovered else EXIT_FAILURE
    else:
        verdict = "up: do not fail over" if up else "down: failover is justified"
        code = EXIT_FAILURE if up else EXIT_OK
    report["verdict"] = verdict
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"primary region {config.primary_region}: {verdict}")
        state = "reachable" if seen.reachable else f"unreachable ({seen.error})"
        if seen.refusal is not None:
            state = f"answers, but refuses the watchdog: {seen.refusal} ({seen.error})"
        role = "" if seen.in_recovery is None else (
            ", standby" if seen.in_recovery else (", writable" if seen.writable else ", read-only"))
        print(f"  database {seen.target}: {state}{role}")
        print(f"  health: {healthy.detail}")
    return code


async def _promote(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.executor import FailoverExecutor
    from agentaskit_dr.runtime.runbook_hooks import promoter

    async with held_lock(config) as held:
        executor = FailoverExecutor(held, holder=held.lease.holder, force=args.force)
        run_id = _run_id("promote", held.lease.epoch)
        result = await executor.promote_for_run(
            promoter(config, config.primary_region, config.secondary_region),
            epoch=held.lease.epoch, run_id=run_id, primary_last_lsn=None, resuming=False)
    print(f"promote: {result.detail}")
    return EXIT_OK


async def _update_dns(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.runbook_hooks import dns

    serving, other = config.secondary_region, config.primary_region
    if args.target == "primary":
        serving, other = other, serving
    switch = dns(config, other, serving, weight=args.weight)
    if switch is None:
        raise Refused(f"dns.route53 and regions.{serving}.dns_target must be set in the config")
    async with held_lock(config) as held:
        return await _apply(switch, held.lease.epoch, _run_id("dns", held.lease.epoch))


async def _scale(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.runbook_hooks import scaler

    if args.region not in config.regions:
        raise Refused(f"--region {args.region!r}: expected one of {', '.join(config.regions)}")
    scale = scaler(config, config.primary_region, args.region, percent=args.percent)
    if scale is None:
        raise Refused(f"regions.{args.region}.kubernetes is not set in the config")
    async with held_lock(config) as held:
        return await _apply(scale, held.lease.epoch, _run_id("scale", held.lease.epoch))


async def _verify_failover(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.runbook_hooks import verifier

    region = args.region or config.secondary_region
    if region not in config.regions:
        raise Refused(f"--region {region!r}: expected one of {', '.join(config.regions)}")
    async with held_lock(config) as held:
        check = verifier(config, config.primary_region, region)
        assert check is not None  # every region has health URLs and a database
        return await _apply(check, held.lease.epoch, _run_id("verify", held.lease.epoch))


async def _failover(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.core import FailoverRefused, StartFailover
    from agentaskit_dr.runtime.executor import FailoverExecutor
    from agentaskit_dr.runtime.runbook import Runbook
    from agentaskit_dr.runtime.runbook_hooks import build_hooks
    from agentaskit_dr.runtime.supervisor import build_cluster_store, build_journal

    hooks = build_hooks()
    if args.dry_run:
        return await _dry_run(config, hooks)
    async with held_lock(config) as held:
        journal = build_journal(config)
        cluster = build_cluster_store(config)
        try:
            executor = FailoverExecutor(held, holder=held.lease.holder, force=args.force)
            runbook = Runbook(journal, executor, hooks, config=lambda: config,
                              clock=time.monotonic)
            runbook.cluster = cluster
            now = time.monotonic()
            command = StartFailover(condition=None, epoch=held.lease.epoch,
                                    reason=f"manual failover by {getpass.getuser()}",
                                    failing_since=now, decided_at=now)
            outcome = await runbook.failover(command)
        finally:
            await journal.close()
            await cluster.close()
    if isinstance(outcome, FailoverRefused):
        raise Refused(f"failover refused: {outcome.reason}")
    print(f"failover: {getattr(outcome, 'detail', outcome)}")
    return EXIT_FAILURE if runbook.incomplete else EXIT_OK


class _NoLease:
    async def verified_lease(self) -> Lease | None:
        return None


async def _dry_run(config: WatchdogConfig, hooks: Hooks) -> int:
    from agentaskit_dr.runtime.executor import FailoverExecutor
    from agentaskit_dr.runtime.runbook import Runbook
    from agentaskit_dr.runtime.supervisor import build_journal

    # Nothing is read from or written to the journal: it only completes the runbook.
    journal = build_journal(config)
    try:
        runbook = Runbook(journal, FailoverExecutor(_NoLease(), holder=config.holder),
                          hooks, config=lambda: config, clock=time.monotonic)
        plan = runbook.describe(config)
    finally:
        await journal.close()
    print(f"Plan: fail over from {config.primary_region} to {config.secondary_region} "
          "(dry run: nothing changes)")
    for index, line in enumerate(plan, 1):
        print(f"  {index:>2}. {line}")
    for make in (hooks.dns, hooks.scaler):
        actuator = make(config, config.primary_region, config.secondary_region)
        if actuator is None:
            continue
        try:
            print(f"  now: {actuator.name}: {await actuator.describe()}")
        except (ActuationFailed, OSError) as exc:
            print(f"  now: {actuator.name}: cannot read the current state: {exc}")
        finally:
            await actuator.close()
    return EXIT_OK


async def _journal(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.supervisor import build_journal

    journal = build_journal(config)
    try:
        if args.run_id is None:
            runs = await journal.recent()
            if not runs:
                print("no runs journaled")
            for run in runs:
                state = run.finished or "active"
                print(f"{run.run_id}  {run.kind:<9} {state:<7} epoch {run.created_epoch}  "
                      f"{_when(run.created_at)}  {run.reason}")
            return EXIT_OK
        found = await journal.get(args.run_id)
        if found is None:
            raise Refused(f"no run {args.run_id!r} in the journal")
        print(f"{found.run_id} ({found.kind}, {found.finished or 'active'}): {found.reason}")
        for entry in found.entries:
            print(f"  {_when(entry.at)}  e{entry.epoch:<3} {entry.step:<20} "
                  f"{entry.status.value:<8} {entry.detail}")
        return EXIT_OK
    finally:
        await journal.close()


async def _evidence(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.evidence import list_evidence, read_evidence

    if args.action == "list":
        summaries = list_evidence(config.evidence_dir)
        if not summaries:
            print(f"no evidence files in {config.evidence_dir}")
        for item in summaries:
            if item.note:
                print(f"{item.path}: {item.note}")
                continue
            print(f"{item.kind}/{item.run_id}  {item.outcome}  RTO {item.rto_seconds}s  "
                  f"RPO {item.rpo_lag_bytes} bytes  {item.created_at}")
        return EXIT_OK
    if args.run_id is None:
        raise ValueError("evidence show needs a run id (see: evidence list)")
    kind = args.run_id.split("/")[0] if "/" in args.run_id else "failover"
    run_id = args.run_id.split("/")[-1]
    print(json.dumps(read_evidence(config.evidence_dir, kind, run_id), indent=2))
    return EXIT_OK


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


_HANDLERS: dict[str, Callable[[WatchdogConfig, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "check-primary": _check_primary,
    "promote": _promote,
    "update-dns": _update_dns,
    "scale": _scale,
    "verify-failover": _verify_failover,
    "failover": _failover,
    "journal": _journal,
    "evidence": _evidence,
    "shift-traffic": shift_traffic,
}
