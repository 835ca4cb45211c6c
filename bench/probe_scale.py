"""The probe scheduler at scale: N HTTP health targets at a 1 s interval on one core.

Runs the daemon's own ``ProbeScheduler`` with N ``RegionHealthProbe``s (one URL each,
keep-alive connections as in production, or ``--new-connections``: one per check)
against an HTTP server in another process pinned to the other core, this process pinned
to one core. The scheduler starts probes in rounds ``interval`` +- ``jitter`` apart, at
most ``SLOT_SIZE`` together, the slots spread evenly over the interval (production
jitter 0.1 by default); the figures:

- probes/s: observations completed per second over the window;
- start lateness p50 / p99 / max: actual start - planned start (ms), over every start;
- CPU: this process's user+system time over the window, as % of one core;
- RSS: this process's peak.

Targets (issue 13): 1,000 probes/s, p99 lateness <= 100 ms.

    .venv/bin/python bench/probe_scale.py --targets 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from agentaskit_dr import logs
from agentaskit_dr.local_servers.tcp import free_port, wait_for_port
from agentaskit_dr.ports import Observation, Probe
from agentaskit_dr.probes.region_health import RegionHealthProbe
from agentaskit_dr.runtime.scheduler import ProbeReport, ProbeScheduler, ProbeTiming

SERVER = """
import sys
from aiohttp import web
async def ok(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_get("/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            backlog=4096)
"""


#: The start the scheduler planned last in each probe's task (loop time).
PLANNED: dict[asyncio.Task[object] | None, float] = {}


class RecordingScheduler(ProbeScheduler):
    """The daemon's scheduler, noting the start it plans for each probe."""

    async def sleep_until(self, at: float) -> None:
        PLANNED[asyncio.current_task()] = at
        await super().sleep_until(at)


class Timed:
    """A probe that records how late each start came after its planned time."""

    def __init__(self, probe: RegionHealthProbe, late: list[float]) -> None:
        self.probe = probe
        self.name = probe.name
        self.late = late

    async def observe(self) -> Observation:
        now = asyncio.get_running_loop().time()
        planned = PLANNED.get(asyncio.current_task())
        if planned is not None:
            self.late.append(now - planned)
        return await self.probe.observe()

    def failure(self, error: str, latency: float) -> Observation:
        return self.probe.failure(error, latency)

    async def close(self) -> None:
        await self.probe.close()


async def run(targets: int, seconds: float, interval: float, jitter: float,
              port: int, *, new_connections: bool) -> dict[str, float]:
    late: list[float] = []
    done: list[ProbeReport] = []
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=interval * 0.8),
        connector=aiohttp.TCPConnector(force_close=new_connections, limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    probes: list[Probe[Observation]] = [
        Timed(RegionHealthProbe(f"t{i}", [f"http://127.0.0.1:{port}/health/{i}"],
                                timeout=interval * 0.8, healthy_fraction=1.0, session=session),
              late)
        for i in range(targets)
    ]
    scheduler = RecordingScheduler(probes, ProbeTiming(interval, interval * 0.8, jitter=jitter),
                                   done.append, generation=1)
    scheduler.start()
    await asyncio.sleep(3 * interval)  # warm-up
    late.clear()
    done.clear()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    completed = len(done)
    failed = sum(1 for report in done if not getattr(report.observation, "healthy", True))
    await scheduler.stop()
    await session.close()
    ordered = sorted(late)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return {
        "targets": targets,
        "probes_per_s": round(completed / elapsed, 1),
        "failed": failed,
        "late_p50_ms": round(1000 * statistics.median(ordered), 1),
        "late_p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1),
        "late_max_ms": round(1000 * ordered[-1], 1),
        "cpu_percent_of_core": round(100 * cpu / elapsed, 1),
        "rss_peak_mib": round(after.ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--jitter", type=float, default=0.1, help="probe.jitter (0.1)")
    parser.add_argument("--new-connections", action="store_true",
                        help="a new connection per check (probe.session_max_age 0)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # The daemon's JSON lines at its production level (a probe's failure is debug): the
    # console renderer's tracebacks would cost more than the probes under overload.
    logs.configure("info", stream=sys.stderr)
    cores = sorted(os.sched_getaffinity(0))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        wait_for_port(port, proc=server)
        if len(cores) > 1:
            os.sched_setaffinity(server.pid, cores[1:])
            os.sched_setaffinity(0, cores[:1])
        figures = asyncio.run(run(args.targets, args.seconds, args.interval, args.jitter, port,
                                 new_connections=args.new_connections))
    finally:
        server.kill()
        server.wait()
    for key, value in figures.items():
        print(f"{key:<22}{value}")
    print(f"targets: probes/s >= {args.targets / args.interval:g}, p99 lateness <= 100 ms")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    met = (figures["probes_per_s"] >= 0.98 * args.targets / args.interval
           and figures["late_p99_ms"] <= 100)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
