"""The on-call commands that change something, each under the leader lock:
``promote``, ``update-dns``, ``scale``, ``verify-failover`` (it writes on the new primary)
and ``failover`` (``--dry-run`` only prints the plan)."""

from __future__ import annotations

import argparse
import getpass
import time
from typing import TYPE_CHECKING

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.exit_codes import EXIT_FAILURE, EXIT_OK
from agentaskit_dr.oncall_lock import Refused, apply_step, held_lock, new_run_id
from agentaskit_dr.ports import ActuationFailed, Lease

if TYPE_CHECKING:
    from agentaskit_dr.runtime.runbook import Hooks


async def promote(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.executor import FailoverExecutor
    from agentaskit_dr.runtime.runbook_hooks import promoter

    async with held_lock(config) as held:
        executor = FailoverExecutor(held, holder=held.lease.holder, force=args.force)
        run_id = new_run_id("promote", held.lease.epoch)
        result = await executor.promote_for_run(
            promoter(config, config.primary_region, config.secondary_region),
            epoch=held.lease.epoch, run_id=run_id, primary_last_lsn=None, resuming=False)
    print(f"promote: {result.detail}")
    return EXIT_OK


async def update_dns(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.runbook_hooks import dns

    serving, other = config.secondary_region, config.primary_region
    if args.target == "primary":
        serving, other = other, serving
    switch = dns(config, other, serving, weight=args.weight)
    if switch is None:
        raise Refused(f"dns.route53 and regions.{serving}.dns_target must be set in the config")
    async with held_lock(config) as held:
        return await apply_step(switch, held.lease.epoch, new_run_id("dns", held.lease.epoch))


async def scale(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.runbook_hooks import scaler

    if args.region not in config.regions:
        raise Refused(f"--region {args.region!r}: expected one of {', '.join(config.regions)}")
    scale = scaler(config, config.primary_region, args.region, percent=args.percent)
    if scale is None:
        raise Refused(f"regions.{args.region}.kubernetes is not set in the config")
    async with held_lock(config) as held:
        return await apply_step(scale, held.lease.epoch, new_run_id("scale", held.lease.epoch))


async def verify_failover(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.runbook_hooks import verifier

    region = args.region or config.secondary_region
    if region not in config.regions:
        raise Refused(f"--region {region!r}: expected one of {', '.join(config.regions)}")
    async with held_lock(config) as held:
        check = verifier(config, config.primary_region, region)
        assert check is not None  # every region has health URLs and a database
        return await apply_step(check, held.lease.epoch, new_run_id("verify", held.lease.epoch))


async def failover(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.core import FailoverRefused, StartFailover
    from agentaskit_dr.runtime.builders import build_cluster_store, build_journal
    from agentaskit_dr.runtime.executor import FailoverExecutor
    from agentaskit_dr.runtime.runbook import Runbook
    from agentaskit_dr.runtime.runbook_hooks import build_hooks

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
    from agentaskit_dr.runtime.builders import build_journal
    from agentaskit_dr.runtime.executor import FailoverExecutor
    from agentaskit_dr.runtime.runbook import Runbook

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
