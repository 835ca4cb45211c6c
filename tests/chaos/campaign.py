"""Run chaos schedules: ``python -m tests.chaos.campaign --runs N --seed S --duration D``.

One run: start a fresh world, play the seed's schedule (inject and heal each fault at
its moment, overlapping ones included), heal everything, wait the quiet period, stop
the writers, read the end state, and hand the whole history to the checker. Prints one
line per run (seed, faults, verdict) and a summary table; each run's history, fault
log and verdict are kept under ``--workdir``. A failing seed replays from the seed alone.
By default each region's PostgreSQL is bound to its watchdog as the systemd units bind
them (``tests/chaos/binding.py``); ``--unbound`` measures the world without that.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import structlog

from tests.chaos.checker import Verdict, check
from tests.chaos.faults import FaultCatalog, Injected
from tests.chaos.history import History
from tests.chaos.schedule import PlannedFault, generate, parse_kinds
from tests.chaos.world import World

#: Quiet period after the last heal: a threshold to re-converge plus room to act.
DEFAULT_QUIET = 25.0


@dataclass(slots=True)
class RunResult:
    seed: int
    planned: list[PlannedFault]
    verdict: Verdict
    fault_seconds: float
    history_path: Path


def play(world: World, catalog: FaultCatalog, planned: list[PlannedFault]) -> None:
    """Inject and heal every planned fault at its moment after now."""
    begin = time.monotonic()
    moments = sorted([(f.at, 1, i) for i, f in enumerate(planned)]
                     + [(f.end, 0, i) for i, f in enumerate(planned)])
    active: dict[int, Injected] = {}
    for at, is_start, index in moments:
        delay = begin + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if is_start:
            active[index] = catalog.inject(planned[index])
        elif index in active:
            catalog.heal(active.pop(index))
    for fault in active.values():
        catalog.heal(fault)


def run_once(seed: int, duration: float, workdir: Path, *, quiet: float = DEFAULT_QUIET,
             control: bool = True, bound: bool = True, out: TextIO = sys.stdout,
             kinds: dict[str, int] | None = None, sentinel: bool = False) -> RunResult:
    """One schedule on a fresh world; its verdict. ``kinds``: the fault kinds drawn from
    (the default catalog when None); ``sentinel``: the lock store behind Sentinels;
    ``bound``: each PostgreSQL's life bound to its watchdog's (the systemd binding)."""
    planned = generate(seed, duration, kinds)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "schedule.json").write_text(json.dumps([asdict(f) for f in planned], indent=1))
    with World(workdir, control=control, bound=bound, sentinel=sentinel) as world:
        assert world.lab is not None
        history = History(seed, world.timing.db_unreachable, world.timing.region_unhealthy,
                          world.timing.fence_after, started=time.time())
        catalog = FaultCatalog(world)
        try:
            play(world, catalog, planned)
            history.quiet_from = time.time()
            time.sleep(quiet)
        finally:
            world.stop_writers()
            # A server the binding stopped was down, as surely as one a fault stopped.
            history.faults = sorted(
                catalog.log + (world.binding.fault_records() if world.binding else []),
                key=lambda f: f.start)
            history.starts = list(world.starts)
            history.commits = sorted((c for w in world.writers for c in w.commits),
                                     key=lambda c: c.acked)
        history.final = world.final_state()
        exited = world.lab.exited()
        if world.binding is not None:  # restarted by the binding, but they did exit
            exited = sorted({*exited, *world.binding.crashed})
        history.events = world.lab.events()
        history.non_json = non_json_lines(world)
        writers = [w.describe() for w in world.writers]
        binding = world.binding.notes if world.binding is not None else None
    verdict = check(history, exited)
    path = workdir / "history.json"
    history.save(path)
    (workdir / "verdict.json").write_text(json.dumps({
        "seed": seed, "summary": verdict.summary(), "writers": writers, "binding": binding,
        "violations": [asdict(v) for v in verdict.violations],
        "data_loss": [{"commit": asdict(loss.commit), "cause": loss.cause}
                      for loss in verdict.losses],
    }, indent=1))
    seconds = sum(f.end - f.start for f in history.faults if f.end is not None)
    return RunResult(seed, planned, verdict, seconds, path)


def non_json_lines(world: World) -> list[tuple[str, str]]:
    assert world.lab is not None
    found = []
    for node, log in world.lab.logs.items():
        torn = world.lab.torn.get(node, [])
        for line in log.path.read_bytes().decode(errors="replace").splitlines():
            if not line.strip() or line in torn:
                continue
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                found.append((node, line))
    return found


def print_run(result: RunResult, out: TextIO) -> None:
    faults = " ".join(f.describe() for f in result.planned)
    print(f"seed {result.seed}: {result.verdict.summary()} | faults: {faults}", file=out)
    for violation in result.verdict.violations:
        print(f"    {violation.rule}: {violation.detail}", file=out)
    for loss in result.verdict.losses[:5]:
        print(f"    data loss: {loss.commit.id}: {loss.cause}", file=out)
    print(f"    history: {result.history_path}", file=out, flush=True)


def print_summary(results: list[RunResult], out: TextIO) -> None:
    print(f"\n{'seed':>8} {'faults':>6} {'fault-s':>8} {'commits':>8} {'promo':>5} "
          f"{'loss':>5}  verdict", file=out)
    for r in results:
        v = r.verdict
        print(f"{r.seed:>8} {len(r.planned):>6} {r.fault_seconds:>8.1f} {v.commits:>8} "
              f"{v.promotions:>5} {len(v.losses):>5}  "
              f"{'PASS' if v.ok else 'FAIL ' + ','.join(sorted({x.rule for x in v.violations}))}",
              file=out)
    failed = [r.seed for r in results if not r.verdict.ok]
    hours = sum(r.fault_seconds for r in results) / 3600
    print(f"\n{len(results)} schedules, {hours:.3f} fault-hours, "
          f"{len(failed)} failed{': seeds ' + ' '.join(map(str, failed)) if failed else ''}",
          file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chaos", description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run; run i "
                        "uses seed + i")
    parser.add_argument("--duration", type=float, default=60.0, help="fault phase (s)")
    parser.add_argument("--quiet", type=float, default=DEFAULT_QUIET, help="quiet period (s)")
    parser.add_argument("--no-control", action="store_true",
                        help="the watchdogs do not control their servers (SQL fence only)")
    parser.add_argument("--unbound", action="store_true",
                        help="no service-manager binding: a dead or hung watchdog leaves its "
                        "PostgreSQL running (the world before issue 13's fix)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--faults", default="default",
                        help="fault kinds to draw from, comma-separated: default (the first "
                        "catalog; seeds keep their schedules), all, or kinds such as "
                        "slow_link,sentinel_failover")
    parser.add_argument("--sentinel", action="store_true",
                        help="the lock store behind Redis Sentinel (implied by "
                        "sentinel_failover)")
    args = parser.parse_args(argv)
    try:
        kinds = parse_kinds(args.faults)
    except ValueError as exc:
        parser.error(str(exc))
    sentinel = args.sentinel or "sentinel_failover" in kinds
    # The harness's own debug lines (forwarders, cuts) would drown the run lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.runs < 1:
        parser.error(f"--runs: must be at least 1 (got {args.runs})")
    if args.duration < 2:
        parser.error(f"--duration: must be at least 2 s (got {args.duration})")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    print(f"chaos: {args.runs} runs from seed {args.seed}, {args.duration:g}s faults + "
          f"{args.quiet:g}s quiet, control {'off' if args.no_control else 'on'}, "
          f"binding {'off' if args.unbound else 'on'}, faults "
          f"{args.faults}{', lock store behind Sentinel' if sentinel else ''}; "
          f"histories under {root}", flush=True)
    results = []
    for seed in range(args.seed, args.seed + args.runs):
        result = run_once(seed, args.duration, root / f"seed-{seed}", quiet=args.quiet,
                          control=not args.no_control, bound=not args.unbound,
                          kinds=None if args.faults == "default" else kinds,
                          sentinel=sentinel)
        print_run(result, sys.stdout)
        results.append(result)
    print_summary(results, sys.stdout)
    return 0 if all(r.verdict.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
