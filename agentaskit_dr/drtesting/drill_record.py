"""The failover drill row: run the sandbox drill (failover, then failback home) and
record its result in the schedule.

A planned switchover to the secondary and back in the drill environment of
``drills.failover.config`` is not driven from here yet: the sandbox drill runs instead,
and the recorded result says so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.drtesting.records import record_run
from agentaskit_dr.drtesting.schedule import RecordedRun

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig

DRILLS_KIND = "drills"


def drill_result(figures: dict[str, Any], failback: dict[str, Any], *, exit_code: int,
                 staging: Path | None) -> tuple[bool, str]:
    """Whether the drill passed, and the schedule's one-line result for it."""
    passed = exit_code == 0
    rto = figures.get("kill_to_writable")
    parts = [f"sandbox drill {'passed' if passed else 'FAILED'}: promoted "
             f"{figures.get('promotions')} time(s), writable {rto}s after the kill",
             f"failback {failback.get('outcome', 'not run')}"]
    if staging is not None:
        parts.append(f"the drill environment {staging} is not driven yet: sandbox instead")
    return passed, "; ".join(parts)


def run_and_record(config: BackupConfig | None, evidence_dir: Path,
                   workdir: Path | None) -> int:
    """Run the sandbox drill with failback, keep its evidence, record it; its exit code."""
    from agentaskit_dr.sandbox.drill import run_drill

    staging = config.drills.failover.config if config is not None else None
    base = workdir or Path(tempfile.mkdtemp(prefix="agentaskit-drill-"))
    try:
        code = run_drill(threshold="6s", interval="0.5s", workdir=base, failback=True)
        found = sorted((base / "evidence" / DRILLS_KIND).glob("sandbox-drill-*.json"))
        now = time.time()
        if not found:
            record_run(evidence_dir, "failover_drill", RecordedRun(
                now, False, "sandbox drill failed before writing its evidence"), now=now)
            return code or 1
        target = evidence_dir / DRILLS_KIND / found[-1].name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found[-1], target)
        document = json.loads(target.read_text())
        passed, result = drill_result(document.get("figures", {}),
                                      document.get("failback") or {}, exit_code=code,
                                      staging=staging)
        record_run(evidence_dir, "failover_drill", RecordedRun(now, passed, result, str(target)),
                   now=now)
        print(f"Recorded in the DR testing schedule: {result}\nDrill evidence kept: {target}")
        return code
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
