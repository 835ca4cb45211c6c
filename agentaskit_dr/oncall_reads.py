"""The read-only on-call commands: ``check-primary [--recovered]``, ``journal show``,
``evidence list|show`` (every run's evidence: failovers, failbacks, switchovers; ``show``
finds a run by its id alone). They take no lock."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import TYPE_CHECKING

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.exit_codes import EXIT_FAILURE, EXIT_OK
from agentaskit_dr.oncall_lock import Refused

if TYPE_CHECKING:
    from agentaskit_dr.runtime.evidence import EvidenceSummary


async def check_primary(config: WatchdogConfig, args: argparse.Namespace) -> int:
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


async def journal(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.builders import build_journal

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


async def evidence(config: WatchdogConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.runtime.evidence import read_evidence
    from agentaskit_dr.runtime.evidence_layout import find_run, list_runs, run_roots

    # The layout's run evidence, and what was written before it (``<evidence_dir>/<kind>``).
    roots = run_roots(config.evidence_dir, config.evidence_layout)
    if args.action == "list":
        summaries = list_runs(roots)
        if not summaries:
            print(f"no evidence files in {' or '.join(map(str, roots))}")
        for item in summaries:
            if item.note:
                print(f"{item.path}: {item.note}")
                continue
            print(f"{item.kind}/{item.run_id}  {item.outcome}  {_measured(item)}  "
                  f"RPO {item.rpo_lag_bytes} bytes  {item.created_at}")
        return EXIT_OK
    if args.run_id is None:
        raise ValueError("evidence show needs a run id (see: evidence list)")
    root, kind, run_id = find_run(roots, args.run_id)
    print(json.dumps(read_evidence(root, kind, run_id), indent=2))
    return EXIT_OK


def _measured(item: EvidenceSummary) -> str:
    """RTO for a failover or failback; for a switchover (and a failback, which ends with
    one) the measured write-unavailability window, "writes blocked"."""
    shown = [] if item.kind == "switchover" else [f"RTO {_secs(item.rto_seconds)}"]
    if item.kind in ("switchover", "failback"):
        shown.append(f"writes blocked {_secs(item.writes_blocked_seconds)}")
    return "  ".join(shown)


def _secs(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:g}s"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
