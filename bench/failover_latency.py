"""Failover latency on real parts: kill the primary N times and measure how fast we recover.

Each run is one sandbox drill (``agentaskit_dr.sandbox.drill.drill_once``): a real
PostgreSQL primary with a streaming replica, a real redis-server for the leader lock, two
``agentaskit-dr run`` processes, then SIGKILL of the primary. Prints each run and the
medians against the targets; exits 1 when a median misses its target or a run did not
promote exactly once.

    .venv/bin/python bench/failover_latency.py --runs 5 [--threshold 6s] [--interval 0.5s]
        [--json bench-results.json]

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentaskit_dr.config import parse_duration
from agentaskit_dr.sandbox.drill import drill_once

#: Detection may overshoot the threshold by one probe interval plus this much slack
#: (scheduling, log timestamps, two processes on a shared 2-core machine).
OVERSHOOT_SLACK = 0.5
#: The replica must take writes within this long of the decision.
DECISION_TO_WRITABLE_TARGET = 1.0


@dataclass(frozen=True, slots=True)
class RunFigures:
    """One drill's figures in seconds; None when the drill did not get that far.

    ``overshoot``: decided_at - failing_since - threshold, on the deciding watchdog's own
    clock (the ``failover_decided`` event). ``overshoot_from_kill``: decision time - kill -
    threshold, so it also counts the wait for the first failing probe.
    """

    run: int
    overshoot: float | None
    overshoot_from_kill: float | None
    decision_to_writable: float | None
    kill_to_writable: float | None
    promotions: int
    replica_writable: bool
    error: str | None = None

    @property
    def promoted_once(self) -> bool:
        return self.error is None and self.promotions == 1 and self.replica_writable


def measure(run: int, *, threshold: float, interval: float) -> RunFigures:
    """One kill-the-primary drill in a scratch folder, removed unless the run failed."""
    workdir = Path(tempfile.mkdtemp(prefix=f"agentaskit-bench-{run}-"))
    workdir.chmod(0o755)  # PostgreSQL runs as an unprivileged user below this folder
    try:
        figures = drill_once(threshold=threshold, interval=interval, workdir=workdir)["figures"]
    except Exception as exc:
        print(f"  run {run} failed: {exc}; logs kept in {workdir}", file=sys.stderr)
        return RunFigures(run, None, None, None, None, 0, False, error=str(exc))
    decided = figures["decision_after_kill"]
    result = RunFigures(
        run=run,
        overshoot=figures["detection_overshoot"],
        overshoot_from_kill=None if decided is None else round(decided - threshold, 3),
        decision_to_writable=figures["decision_to_writable"],
        kill_to_writable=figures["kill_to_writable"],
        promotions=figures["promotions"],
        replica_writable=figures["replica_writable"],
    )
    if result.promoted_once:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  run {run} did not promote exactly once; logs kept in {workdir}",
              file=sys.stderr)
    return result


def median(runs: list[RunFigures], name: str) -> float | None:
    values = [v for v in (getattr(r, name) for r in runs) if v is not None]
    return round(statistics.median(values), 3) if values else None


def targets(medians: dict[str, float | None], interval: float) -> list[dict[str, Any]]:
    """Each target with the median it applies to and whether that median meets it."""
    limits = [
        ("overshoot", interval + OVERSHOOT_SLACK, "detection overshoot <= interval + 0.5 s"),
        ("decision_to_writable", DECISION_TO_WRITABLE_TARGET, "decision -> writable <= 1 s"),
    ]
    verdicts = []
    for name, limit, text in limits:
        value = medians[name]
        verdicts.append({"figure": name, "target": text, "limit": round(limit, 3),
                         "median": value, "met": value is not None and value <= limit})
    return verdicts


COLUMNS = (
    ("run", "run", 4),
    ("overshoot", "overshoot", 10),
    ("overshoot_from_kill", "from kill", 10),
    ("decision_to_writable", "decide->rw", 11),
    ("kill_to_writable", "kill->rw", 9),
    ("promotions", "promoted", 9),
)


def _cell(value: object, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, float):
        return f"{value:>{width}.3f}"
    return f"{value!s:>{width}}"


def print_table(runs: list[RunFigures], medians: dict[str, float | None]) -> None:
    print("  ".join(f"{title:>{width}}" for _, title, width in COLUMNS))
    for run in runs:
        print("  ".join(_cell(getattr(run, name), width) for name, _, width in COLUMNS))
    row = {**medians, "run": "med", "promotions": None}
    print("  ".join(_cell(row.get(name), width) for name, _, width in COLUMNS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Kill a real primary N times and report failover latency against targets."
    )
    parser.add_argument("--runs", type=int, default=5, help="drills to run (default 5)")
    parser.add_argument("--threshold", type=parse_duration, default="6s",
                        help="db_unreachable threshold (default 6s, the drill's)")
    parser.add_argument("--interval", type=parse_duration, default="0.5s",
                        help="probe interval (default 0.5s)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also save the runs, medians and targets as JSON")
    args = parser.parse_args(argv)
    threshold: float = args.threshold
    interval: float = args.interval
    if args.runs < 1 or threshold <= interval:
        parser.error("--runs must be >= 1 and --threshold must exceed --interval")

    print(f"Failover latency: {args.runs} kill-the-primary drills, db_unreachable threshold "
          f"{threshold:g}s, probe interval {interval:g}s, {os.cpu_count()} CPUs", flush=True)
    runs = []
    for run in range(1, args.runs + 1):
        runs.append(measure(run, threshold=threshold, interval=interval))
        print(f"  run {run}/{args.runs} done", flush=True)

    names = ("overshoot", "overshoot_from_kill", "decision_to_writable", "kill_to_writable")
    medians = {name: median(runs, name) for name in names}
    print("\nSeconds per run (overshoot = decision - failing_since - threshold; from kill = "
          "decision - kill - threshold):")
    print_table(runs, medians)
    verdicts = targets(medians, interval)
    print("\nTargets (medians):")
    for target in verdicts:
        mark = "met" if target["met"] else "MISSED"
        print(f"  {target['target']:<42} median {_cell(target['median'], 6).strip():>6}s "
              f"(limit {target['limit']:g}s): {mark}")
    all_promoted = all(run.promoted_once for run in runs)
    if not all_promoted:
        print("  some runs did not promote the replica exactly once: MISSED")

    if args.json is not None:
        args.json.write_text(json.dumps({
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "threshold": threshold,
            "interval": interval,
            "runs": [asdict(run) for run in runs],
            "medians": medians,
            "targets": verdicts,
        }, indent=2))
        print(f"\nSaved {args.json}")
    return 0 if all_promoted and all(t["met"] for t in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
