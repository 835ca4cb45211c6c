"""The failover drill row: run the drill and record its result in the schedule.

With ``drills.failover.config`` (a drill environment's watchdog config), the drill is a
planned switchover to the other region and back through the running watchdogs' API
(``staging_drill``). Without it, the sandbox drill runs (failover, then failback home)
and the recorded result says it was the sandbox.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.drtesting.records import DRILLS_DIR, record_run
from agentaskit_dr.drtesting.schedule import RecordedRun

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig

#: Where the sandbox drill itself writes it, under its workdir's ``evidence/``.
SANDBOX_DRILLS = "drills"


def drill_result(figures: dict[str, Any], failback: dict[str, Any], *,
                 exit_code: int) -> tuple[bool, str]:
    """Whether the sandbox drill passed, and the schedule's one-line result for it."""
    passed = exit_code == 0
    rto = figures.get("kill_to_writable")
    return passed, (f"sandbox drill {'passed' if passed else 'FAILED'}: promoted "
                    f"{figures.get('promotions')} time(s), writable {rto}s after the kill; "
                    f"failback {failback.get('outcome', 'not run')}")


def run_and_record(config: BackupConfig | None, evidence_dir: Path,
                   workdir: Path | None) -> int:
    """The drill in ``drills.failover.config``'s environment, else the sandbox drill with
    failback; recorded in the schedule; its exit code."""
    if config is not None and config.drills.failover.config is not None:
        return _staging(config, evidence_dir)
    return run_sandbox_and_record(evidence_dir, workdir)


def run_sandbox_and_record(evidence_dir: Path, workdir: Path | None, *,
                           threshold: str = "6s", interval: str = "0.5s",
                           failback: bool = True) -> int:
    """Run the sandbox drill, keep its evidence, record it; its exit code."""
    from agentaskit_dr.sandbox.drill import run_drill

    base = workdir or Path(tempfile.mkdtemp(prefix="agentaskit-drill-"))
    try:
        code = run_drill(threshold=threshold, interval=interval, workdir=base,
                         failback=failback)
        found = sorted((base / "evidence" / SANDBOX_DRILLS).glob("sandbox-drill-*.json"))
        now = time.time()
        if not found:
            record_run(evidence_dir, "failover_drill", RecordedRun(
                now, False, "sandbox drill failed before writing its evidence"), now=now)
            return code or 1
        target = evidence_dir / DRILLS_DIR / found[-1].name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found[-1], target)
        document = json.loads(target.read_text())
        passed, result = drill_result(document.get("figures", {}),
                                      document.get("failback") or {}, exit_code=code)
        record_run(evidence_dir, "failover_drill", RecordedRun(now, passed, result, str(target)),
                   now=now)
        print(f"Recorded in the DR testing schedule: {result}\nDrill evidence kept: {target}")
        return code
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def _staging(config: BackupConfig, evidence_dir: Path) -> int:
    """The switchover drill in ``drills.failover.config``'s environment, recorded."""
    import asyncio

    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.drtesting.staging_drill import api_urls, run_staging_drill

    drill_config = config.drills.failover
    assert drill_config.config is not None
    watchdog = load_or_explain(drill_config.config, load_config)
    if watchdog is None:
        return 2
    if watchdog.api.token_file is None:
        print(f"agentaskit-dr drill-failover: {drill_config.config}: api.token_file is not "
              "set: the drill needs the operator token", file=sys.stderr)
        return 2
    token = watchdog.api.token_file.read_text().strip()
    started = time.time()
    drill = asyncio.run(run_staging_drill(api_urls(watchdog), token, list(watchdog.regions),
                                          leg_timeout=drill_config.timeout))
    now = time.time()
    passed = drill.error is None
    figures = drill.as_dict()
    legs = ", ".join(f"to {leg.to} in {leg.seconds}s" for leg in drill.legs if leg.seconds)
    result = (f"switchover drill passed in {drill_config.config}: {legs}" if passed
              else f"switchover drill FAILED in {drill_config.config}: {drill.error}")
    stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = evidence_dir / DRILLS_DIR / f"failover-drill-{stamp}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({
        "kind": "failover-drill", "environment": str(drill_config.config),
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "finished_at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
        "outcome": "passed" if passed else "failed", "figures": figures,
    }, indent=2) + "\n")
    record_run(evidence_dir, "failover_drill", RecordedRun(now, passed, result, str(target)),
               now=now)
    print(json.dumps(figures, indent=2))
    print(f"Recorded in the DR testing schedule: {result}\nDrill evidence: {target}")
    return 0 if passed else 1
