"""The failback run's five steps (plan order), each an async function of a ``StepContext``.

A step returns ``Done(detail, data)`` or ``Skipped(reason, data)``, or raises
``StepFailed`` with a one-line reason for the operator. Host-bound steps (the resync in
``sync_primary``, the switchover in ``restore_standby``) run on this host when its config
has ``regions.<r>.database.control`` for the server they stop and start, else on the
watchdog of that region that has it (``runtime/host_step_client``); when neither can they
fail naming the key (docs/architecture.md "Where each step runs").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import Lease, RunJournal, StepStatus
from agentaskit_dr.runtime.host_step_client import HostStepDelegate

CHECK_RECOVERED = "check_recovered"
SYNC_PRIMARY = "sync_primary"
VERIFY_DATA_INTEGRITY = "verify_data_integrity"
SHIFT_TRAFFIC = "shift_traffic"
RESTORE_STANDBY = "restore_standby"
FAILBACK_PLAN = (CHECK_RECOVERED, SYNC_PRIMARY, VERIFY_DATA_INTEGRITY, SHIFT_TRAFFIC,
                 RESTORE_STANDBY)

#: The data of a ``restore_standby`` STARTED entry written once the switchover completed,
#: so a resumed run goes on with the scaling and never switches a second time.
SWITCHED = "switched"
#: The key of a ``shift_traffic`` STARTED entry's data: the split to roll back to.
ROLLBACK_TO = "rollback_to"


class StepFailed(Exception):
    """The step did not complete; the message is one line for the operator."""


@dataclass(frozen=True)
class Done:
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """What a step needs: the config, the run (as journaled so far) and the lease."""

    config: WatchdogConfig
    home: str
    """The region failed over from, whose server becomes the primary again."""
    away: str
    """The region that is the primary now."""
    run: RunJournal
    lease: Callable[[], Lease]
    still_leader: Callable[[], Awaitable[bool]]
    record_primary: Callable[[str], Awaitable[None]]
    acknowledge: Callable[[], Awaitable[int]]
    mark: Callable[[str, dict[str, Any]], Awaitable[None]]
    """Journals progress inside a step (a STARTED entry with this data)."""
    sync_timeout: float
    integrity_wait: float
    host_steps: HostStepDelegate | None = None
    """Runs the host-bound parts here or on a peer; None: one built from ``config``."""


def missing_control(config: WatchdogConfig, step: str, region: str) -> str | None:
    """Why ``step`` cannot run on this host (the missing key), or None."""
    if config.regions[region].database.control is not None:
        return None
    return (f"{step} needs regions.{region}.database.control on the host that runs failback "
            f"(it stops and starts {region}'s server)")


def _peer_watchdogs(config: WatchdogConfig) -> list[str]:
    """The peers' base URLs, where a host-bound step can be delegated."""
    return [url for label, url in config.vantage_urls.items() if label != "witness"]


async def check_recovered(ctx: StepContext) -> Done:
    """The home region answers again: its health URLs, and its database or, when it is
    down, its server on this host (``sync_primary`` starts it as a standby, never as a
    primary)."""
    from agentaskit_dr.probes.postgres import PostgresProbe
    from agentaskit_dr.probes.region_health import RegionHealthProbe

    config, region = ctx.config, ctx.config.regions[ctx.home]
    db = PostgresProbe("db:home", region.database.connect_dsn(), timeout=config.probe.timeout)
    health = RegionHealthProbe(ctx.home, region.health_urls, timeout=config.probe.timeout,
                               healthy_fraction=config.probe.healthy_fraction)
    try:
        seen, healthy = await asyncio.gather(db.observe(), health.observe())
    finally:
        await db.close()
        await health.close()
    data = {"database_reachable": seen.reachable, "in_recovery": seen.in_recovery,
            "writable": seen.writable, "database_error": seen.error,
            "health": healthy.detail, "healthy": healthy.healthy}
    if not healthy.healthy:
        raise StepFailed(f"{ctx.home}'s health URLs do not answer: {healthy.detail}")
    if seen.reachable and seen.status_read:
        return Done(f"{ctx.home} answers: health {healthy.detail}; database up", data)
    if config.regions[ctx.home].database.control is None and not _peer_watchdogs(config):
        raise StepFailed(f"{ctx.home}'s database does not answer ({seen.error}) and "
                         f"regions.{ctx.home}.database.control is not set on this host")
    where = ("on this host" if config.regions[ctx.home].database.control is not None
             else "(its watchdog starts it)")
    data["server_down_on_this_host"] = where == "on this host"
    return Done(f"{ctx.home} answers: health {healthy.detail}; its server is down {where} "
                "and sync_primary starts it as a standby", data)


async def sync_primary(ctx: StepContext) -> Done:
    result = await host_step(ctx, SYNC_PRIMARY, "sync-primary", region=ctx.home,
                             params={"timeout": ctx.sync_timeout},
                             within=ctx.sync_timeout + 30)
    how = "pg_rewind" if result.get("method") == "rewind" else (
        f"re-clone (pg_basebackup) because {result.get('reclone_reason')}")
    return Done(f"{ctx.home} streams from {ctx.away} at lag {result.get('lag_bytes')} bytes "
                f"(timeline {result.get('timeline')}) after {how}", result)


async def verify_data_integrity(ctx: StepContext) -> Done:
    from agentaskit_dr.integrity import IntegrityUnverified
    from agentaskit_dr.integrity import verify_data_integrity as verify

    try:
        report = await verify(ctx.config, max_wait=ctx.integrity_wait)
    except IntegrityUnverified as exc:
        raise StepFailed(f"integrity not verified: {exc}") from exc
    summary = {
        "same": report.same, "primary_region": report.primary_region,
        "standby_region": report.standby_region, "database": report.database,
        "relations_checked": report.relations_checked,
        "tables_compared": len(report.tables),
        "differing_tables": [t.table for t in report.tables if not t.same],
        "compared_at_lsn": report.compared_at_lsn, "bytes_compared": report.bytes_compared,
        "amcheck_seconds": report.amcheck_seconds, "compare_seconds": report.compare_seconds,
        "write_pause_ms": report.write_pause_ms, "problems": report.problems,
    }
    if report.problems:
        raise StepFailed("the copies differ: " + "; ".join(report.problems))
    if report.primary_region != ctx.away:
        raise StepFailed(f"expected {ctx.away} as the primary, found {report.primary_region}")
    return Done(f"same data on {report.primary_region} and {report.standby_region}: "
                f"{len(report.tables)} tables at {report.compared_at_lsn}, "
                f"{report.relations_checked} relations amchecked", summary)


async def shift_traffic(ctx: StepContext) -> Done | Skipped:
    from agentaskit_dr.runtime.traffic_shift import (
        ShiftRefused,
        Split,
        shift_traffic_from_config,
    )

    if ctx.config.dns.route53 is None:
        return Skipped("dns.route53 is not configured: no service record to shift")
    # The split before this step's first write, journaled by its first attempt: a resumed
    # attempt rolls back there, not to the weights the crashed attempt left.
    recorded = next((e.data[ROLLBACK_TO] for e in reversed(ctx.run.entries)
                     if e.step == SHIFT_TRAFFIC and e.status is StepStatus.STARTED
                     and isinstance(e.data.get(ROLLBACK_TO), dict)), None)
    rollback_to = (Split(str(recorded["serving"]), int(recorded["percent"]))
                   if recorded is not None else None)

    async def remember(before: Split) -> None:
        if rollback_to is None:
            await ctx.mark(f"before the first shift: {before.percent}% to {before.serving}",
                           {ROLLBACK_TO: {"serving": before.serving,
                                          "percent": before.percent}})

    lease = ctx.lease()
    try:
        shifted = await shift_traffic_from_config(
            ctx.config, target=ctx.home, epoch=lease.epoch, run_id=ctx.run.run_id,
            still_leader=ctx.still_leader, rollback_to=rollback_to, on_before=remember)
    except ShiftRefused as exc:
        raise StepFailed(str(exc)) from exc
    if not shifted.completed:
        raise StepFailed(f"traffic shift stopped ({shifted.outcome}): {shifted.reason}")
    weights = [step.weights for step in shifted.steps]
    return Done(f"traffic shifted to {ctx.home}: {weights}", shifted.to_json())


async def restore_standby(ctx: StepContext) -> Done:
    """The switchover back to ``home`` (unless a resumed run journaled it done), then the
    cluster record, the away region's deployments back to their original replicas, and
    the acknowledgement that re-arms automatic failover."""
    switched = next((e.data for e in reversed(ctx.run.entries)
                     if e.step == RESTORE_STANDBY and e.status is StepStatus.STARTED
                     and e.data.get("stage") == SWITCHED), None)
    if switched is None:
        switched = {"stage": SWITCHED, "switchover": await _switch(ctx)}
        await ctx.mark(f"{ctx.home} is the primary; {ctx.away} streams from it", switched)
    scaled = await _scale_back(ctx)
    generation = await ctx.acknowledge()
    data = {"switchover": switched["switchover"], "scale": scaled,
            "ack_generation": generation, "final_epoch": ctx.lease().epoch}
    switch = switched["switchover"]
    window = (f"write-unavailable {switch['write_unavailable_seconds']}s"
              if switch.get("write_unavailable_seconds") is not None
              else f"window not measured: resumed at {switch.get('resumed_at')}")
    return Done(f"{ctx.home} is the primary again ({window}); "
                f"scale: {scaled['detail']}; automatic failover re-armed", data)


async def _switch(ctx: StepContext) -> dict[str, Any]:
    """The switchover, run where ``away``'s server is controlled (here or its watchdog)."""
    config = ctx.config

    async def progress(stage: str) -> None:
        if stage == "promoted":
            await ctx.record_primary(ctx.home)

    # Bounded by the switchover's own waits: catch-up, promotion, the rejoin (60 s).
    within = config.promotion.catch_up_timeout + config.promotion.timeout + 90
    result = await host_step(ctx, RESTORE_STANDBY, "switchover", region=ctx.away,
                             params={"to": ctx.home}, within=within, progress=progress)
    if not result.get("rejoined"):
        raise StepFailed(f"{ctx.home} is the primary, but {ctx.away} did not rejoin as its "
                         f"standby: {result.get('rejoin_detail')}")
    return result


async def host_step(ctx: StepContext, step: str, host_step_name: str, *, region: str,
                    params: dict[str, Any], within: float,
                    progress: Callable[[str], Awaitable[None]] | None = None,
                    ) -> dict[str, Any]:
    """Run a host-bound part of ``step`` on ``region``'s server, here or on its watchdog."""
    from agentaskit_dr.runtime.host_step_client import HostStepUnavailable
    from agentaskit_dr.runtime.host_steps import HostStepFailed

    async def ignore(_: str) -> None:
        return None

    delegate = ctx.host_steps or HostStepDelegate(ctx.config)
    try:
        return await delegate.run(host_step_name, region=region, run_id=ctx.run.run_id,
                                  lease=ctx.lease(), params=params, within=within,
                                  still_leader=ctx.still_leader, progress=progress or ignore)
    except HostStepUnavailable as exc:
        raise StepFailed(f"{missing_control(ctx.config, step, region)}; {exc}") from exc
    except HostStepFailed as exc:
        raise StepFailed(str(exc)) from exc


async def _scale_back(ctx: StepContext) -> dict[str, Any]:
    from agentaskit_dr.ports import ActuationFailed
    from agentaskit_dr.runtime.runbook_hooks import scaler

    scale = scaler(ctx.config, ctx.home, ctx.away)
    if scale is None:
        return {"skipped": True, "detail": f"regions.{ctx.away}.kubernetes is not set: "
                "no deployments to scale back"}
    try:
        outcome = await scale.restore(epoch=ctx.lease().epoch, failover_id=ctx.run.run_id)
    except ActuationFailed as exc:
        raise StepFailed(f"scaling {ctx.away} back: {exc}") from exc
    finally:
        await scale.close()
    return {"skipped": False, "detail": outcome.detail, "deployments": outcome.data}


STEPS: dict[str, Callable[[StepContext], Awaitable[Done | Skipped]]] = {
    CHECK_RECOVERED: check_recovered,
    SYNC_PRIMARY: sync_primary,
    VERIFY_DATA_INTEGRITY: verify_data_integrity,
    SHIFT_TRAFFIC: shift_traffic,
    RESTORE_STANDBY: restore_standby,
}


def describe_plan(config: WatchdogConfig, home: str, away: str) -> list[str]:
    """For ``--dry-run``: each step, what it would do, and what this host is missing."""
    def needs(step: str, region: str) -> str:
        missing = missing_control(config, step, region)
        if missing and _peer_watchdogs(config):
            return (f" (on {region}'s watchdog: this host lacks regions.{region}.database."
                    "control; asked through POST /v1/host-steps)")
        return f"  MISSING: {missing}" if missing else ""

    dns = ("gated shift to " + "/".join(map(str, config.failback.shift_steps)) + f" % for "
           f"{home}, soak {config.failback.soak:g}s each"
           if config.dns.route53 is not None else "skipped: dns.route53 is not configured")
    scale = (f"scale {away}'s deployments back to their recorded original replicas"
             if config.regions[away].kubernetes is not None
             else f"scaling skipped: regions.{away}.kubernetes is not set")
    return [
        f"{CHECK_RECOVERED}: {home}'s health URLs and database answer again (a server down "
        "on this host counts: sync_primary starts it as a standby)",
        f"{SYNC_PRIMARY}: {home}'s server rejoins as a streaming standby of {away} "
        f"(pg_rewind, else re-clone), lag 0{needs(SYNC_PRIMARY, home)}",
        f"{VERIFY_DATA_INTEGRITY}: lineage, amcheck on {home}, per-table hashes at one WAL "
        "position",
        f"{SHIFT_TRAFFIC}: {dns}",
        f"{RESTORE_STANDBY}: switchover {away} -> {home} under the run's epoch (zero loss), "
        f"record {home} as the cluster's primary, {scale}, acknowledge the failover "
        f"(re-arms automatic failover){needs(RESTORE_STANDBY, away)}",
    ]
