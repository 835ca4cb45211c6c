"""Runbook latency on local parts: how long the whole failover runbook takes after a decision.

Each run starts a real PostgreSQL primary with a streaming replica, a redis-server for the
lock and journal, two ``agentaskit-dr run`` processes with the full runbook configured
(Route 53 on a moto server, the east cluster on the Kubernetes API emulation with no
rollout delay, Slack, PagerDuty and generic webhooks on a local receiver), then SIGKILLs
the primary and waits until the run is done. Per-step durations come from the journal
(each ``done`` entry's ``data.seconds``), decision -> all steps done from the journal's
``decided_at`` and the last ``done`` entry. Prints a table with medians; exits 1 when a
run did not finish or the median decision -> all steps done misses its target.

    .venv/bin/python bench/runbook_latency.py --runs 5 [--threshold 3s] [--interval 0.5s]
        [--json runbook-results.json]

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The emulated servers and the watchdog fleet live with the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentaskit_dr.config import parse_duration
from agentaskit_dr.ports import StepStatus
from agentaskit_dr.runtime.runbook import FAILOVER_PLAN
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.daemon_harness import WatchdogFleet, is_event
from tests.integration.runbook_harness import (
    RunbookWorld,
    aws_environment,
    moto_endpoint,
)

#: Decision -> every step of the runbook done (median), on local parts.
DECISION_TO_DONE_TARGET = 5.0
#: Bound on one run after the kill: threshold, decision, ten steps.
RUN_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class RunFigures:
    """One run's figures in seconds; None where the run did not get that far.

    ``steps``: each plan step's duration (its ``done`` entry's ``data.seconds``).
    ``decision_to_done``: journal ``decided_at`` -> the last step's ``done`` entry.
    ``kill_to_done``: the kill -> the last step's ``done`` entry. ``rto``: the evidence
    file's ``rto_seconds`` (first failing observation -> recovered).
    """

    run: int
    steps: dict[str, float | None] = field(default_factory=dict)
    decision_to_done: float | None = None
    kill_to_done: float | None = None
    rto: float | None = None
    promotions: int = 0
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and self.promotions == 1 and self.decision_to_done is not None


def reset_moto(moto_url: str) -> None:
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        if answer.status != 200:
            raise RuntimeError(f"moto reset answered {answer.status}")


def failover_once(run: int, moto_url: str, workdir: Path, *, threshold: float,
                  interval: float) -> RunFigures:
    """Kill the primary under a fully configured pair of watchdogs; the run's figures."""
    reset_moto(moto_url)
    with contextlib.ExitStack() as stack:
        pair = stack.enter_context(PostgresPair(workdir / "pg"))
        redis = stack.enter_context(RedisServer())
        world = stack.enter_context(RunbookWorld.started(moto_url, workdir / "world",
                                                         rollout_delay=0.0))
        fleet = stack.enter_context(WatchdogFleet(pair, redis, workdir / "watchdogs",
                                                  threshold=threshold, interval=interval))
        fleet.start_pair(world.overrides())
        fleet.wait_ready()
        killed_at = time.time()  # before kill(): it also reaps and cleans up after itself
        pair.primary.kill()
        fleet.wait_for(is_event("run_done"), threshold + RUN_TIMEOUT, what="run_done")
        (journal,) = world.runs(redis.url)
        promotions = len(fleet.events(lambda e: e.get("event") == "promotion_done"
                                      and e.get("already_promoted") is False))
    done = {e.step: e for e in journal.entries if e.status is StepStatus.DONE}
    last = max(e.at for e in done.values())
    decided = _seconds(journal.meta.get("decided_at"))
    evidence = json.loads((workdir / "watchdogs" / "evidence" / "TEST" / "dr" / "failover" /
                           "failover" / f"{journal.run_id}.json").read_text())
    return RunFigures(
        run=run,
        steps={step: _seconds(done[step].data.get("seconds")) if step in done else None
               for step in FAILOVER_PLAN},
        decision_to_done=None if decided is None else round(last - decided, 3),
        kill_to_done=round(last - killed_at, 3),
        rto=evidence.get("rto_seconds"),
        promotions=promotions,
        error=None if journal.finished == "done" else f"run finished {journal.finished}",
    )


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def measure(run: int, moto_url: str, *, threshold: float, interval: float) -> RunFigures:
    """One run in a scratch folder, removed unless the run failed."""
    workdir = Path(tempfile.mkdtemp(prefix=f"agentaskit-runbook-bench-{run}-"))
    workdir.chmod(0o755)  # PostgreSQL runs as an unprivileged user below this folder
    try:
        result = failover_once(run, moto_url, workdir, threshold=threshold, interval=interval)
    except Exception as exc:
        print(f"  run {run} failed: {exc}; logs kept in {workdir}", file=sys.stderr)
        return RunFigures(run, error=str(exc))
    if result.complete:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  run {run} did not complete once ({result.error}, {result.promotions} "
              f"promotions); logs kept in {workdir}", file=sys.stderr)
    return result


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def medians(runs: list[RunFigures]) -> dict[str, float | None]:
    found = {step: _median([r.steps.get(step) for r in runs]) for step in FAILOVER_PLAN}
    for name in ("decision_to_done", "kill_to_done", "rto"):
        found[name] = _median([getattr(r, name) for r in runs])
    return found


def _cell(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:>8.3f}"


def print_table(runs: list[RunFigures], middle: dict[str, float | None]) -> None:
    """Steps and totals down, runs across, the median last."""
    rows: list[tuple[str, list[float | None]]] = [
        (step, [r.steps.get(step) for r in runs]) for step in FAILOVER_PLAN
    ]
    rows += [
        ("decision -> all done", [r.decision_to_done for r in runs]),
        ("kill -> all done", [r.kill_to_done for r in runs]),
        ("rto (evidence)", [r.rto for r in runs]),
    ]
    keys = [*FAILOVER_PLAN, "decision_to_done", "kill_to_done", "rto"]
    print(f"{'seconds':<22}" + "".join(f"{'run ' + str(r.run):>8}" for r in runs)
          + f"{'median':>8}")
    for (title, values), key in zip(rows, keys, strict=True):
        if title == "decision -> all done":
            print("-" * (22 + 8 * (len(runs) + 1)))
        print(f"{title:<22}" + "".join(_cell(v) for v in values) + _cell(middle[key]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the full failover runbook N times on local parts and report "
        "per-step and total latency.")
    parser.add_argument("--runs", type=int, default=5, help="failovers to run (default 5)")
    parser.add_argument("--threshold", type=parse_duration, default="3s",
                        help="db_unreachable threshold (default 3s)")
    parser.add_argument("--interval", type=parse_duration, default="0.5s",
                        help="probe interval (default 0.5s)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also save the runs, medians and target as JSON")
    args = parser.parse_args(argv)
    threshold: float = args.threshold
    interval: float = args.interval
    if args.runs < 1 or threshold <= interval:
        parser.error("--runs must be >= 1 and --threshold must exceed --interval")

    print(f"Runbook latency: {args.runs} failovers with the full runbook, db_unreachable "
          f"threshold {threshold:g}s, probe interval {interval:g}s, {os.cpu_count()} CPUs",
          flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="agentaskit-runbook-bench-"))
    runs = []
    try:
        with aws_environment(scratch), moto_endpoint(scratch) as moto_url:
            for run in range(1, args.runs + 1):
                runs.append(measure(run, moto_url, threshold=threshold, interval=interval))
                print(f"  run {run}/{args.runs} done", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    middle = medians(runs)
    print("\nSeconds per step (journal data.seconds) and in total:")
    print_table(runs, middle)
    value = middle["decision_to_done"]
    met = value is not None and value <= DECISION_TO_DONE_TARGET
    print(f"\nTarget (median): decision -> all steps done <= {DECISION_TO_DONE_TARGET:g}s: "
          f"{_cell(value).strip()}s, {'met' if met else 'MISSED'}")
    all_complete = all(r.complete for r in runs)
    if not all_complete:
        print("  some runs did not finish done with exactly one promotion: MISSED")

    if args.json is not None:
        args.json.write_text(json.dumps({
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "threshold": threshold,
            "interval": interval,
            "runs": [asdict(r) for r in runs],
            "medians": middle,
            "target": {"figure": "decision_to_done", "limit": DECISION_TO_DONE_TARGET,
                       "median": value, "met": met},
        }, indent=2))
        print(f"\nSaved {args.json}")
    return 0 if all_complete and met else 1


if __name__ == "__main__":
    sys.exit(main())
