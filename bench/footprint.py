"""Idle footprint of a watchdog trio: RSS and CPU of each daemon, sampled while nothing fails.

Starts what the sandbox drill starts (a PostgreSQL primary with a streaming replica, a
redis-server for the lock, a health endpoint per region) and three ``agentaskit-dr run``
processes: the west and east watchdogs and a witness, everything configured (peers,
witness, API with /metrics), probing every ``--interval`` (1 s by default, production
thresholds so nothing fails over). After a warm-up it samples each daemon's RSS
(``/proc/<pid>/status`` VmRSS) every second for ``--seconds`` and its CPU time
(``/proc/<pid>/stat`` utime + stime) at both ends, and prints:

    node       role      rss MiB (mean / max)   cpu % of a core
    west       watchdog  ...

Targets (issue 13): <= 48 MiB RSS and <= 0.5 % of a core per watchdog at 1 s probes.

    .venv/bin/python bench/footprint.py --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.drill import (
    REGIONS,
    WITNESS_SITE,
    Watchdog,
    health_endpoint,
    wait_for_event,
    watchdog_config,
)
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer

TARGET_RSS_MIB = 48.0
TARGET_CPU_PERCENT = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    # Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def trio_configs(pair: PostgresPair, redis: RedisServer, health: dict[str, str],
                 interval: float, workdir: Path) -> dict[str, dict[str, Any]]:
    sites = (WITNESS_SITE, *REGIONS[::-1])
    api = {site: f"http://127.0.0.1:{free_port()}" for site in sites}
    configs = {}
    for site in sites:
        config = watchdog_config(region=REGIONS[0], pair=pair, redis=redis, health=health,
                                 threshold=120.0, interval=interval,
                                 evidence_dir=workdir / "evidence")
        # Production thresholds: an idle trio must not fail over while it is measured.
        config["thresholds"] = {"region_unhealthy": "5m", "db_unreachable": "2m",
                                "recovery": "30s", "retry_backoff": "30s"}
        config["probe"] = {"interval": f"{interval}s", "timeout": f"{interval * 0.8}s",
                           "jitter": 0.1}
        config["lock"] = {"url": redis.url, "ttl": "15s", "socket_timeout": "1s"}
        config["api"] = {"listen": api[site].removeprefix("http://")}
        if site == WITNESS_SITE:
            config.update(region=site, role="witness", node_name="bench-witness",
                          peers=[api[region] for region in REGIONS])
        else:
            config.update(region=site, node_name=f"bench-{site}", witness=api[WITNESS_SITE],
                          peers=[api[other] for other in REGIONS if other != site])
        configs[site] = config
    return configs


def measure(seconds: float, interval: float, warmup: float, workdir: Path,
            profile: Path | None = None) -> list[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        pair = stack.enter_context(PostgresPair())
        redis = stack.enter_context(RedisServer())
        health = {name: stack.enter_context(health_endpoint()) for name in REGIONS}
        dogs: list[Watchdog] = []
        for site, config in trio_configs(pair, redis, health, interval, workdir).items():
            path = workdir / f"watchdog-{site}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            dog = Watchdog(site, path, workdir / f"watchdog-{site}.log")
            if profile is not None and site == REGIONS[0]:
                # cProfile's own overhead inflates this one's CPU figure: read the profile.
                dog.entry = ("-m", "cProfile", "-o", str(profile), "-m", "agentaskit_dr")
            dog.start()
            stack.callback(dog.stop)
            if wait_for_event([dog], lambda e: e.get("event") == "api_started", 30) is None:
                raise RuntimeError(f"{site} did not start; see {dog.log_path}")
            dogs.append(dog)
        if wait_for_event(dogs, lambda e: e.get("event") == "lock_acquired", 30) is None:
            raise RuntimeError(f"no watchdog took the lock; see the logs in {workdir}")
        time.sleep(warmup)
        pids = {dog.region: dog.proc.pid for dog in dogs if dog.proc is not None}
        cpu_start = {site: cpu_seconds(pid) for site, pid in pids.items()}
        samples: dict[str, list[float]] = {site: [] for site in pids}
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            for site, pid in pids.items():
                samples[site].append(rss_mib(pid))
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        cpu_end = {site: cpu_seconds(pid) for site, pid in pids.items()}
        holder = next((e["watchdog"] for dog in dogs for e in dog.read()
                       if e.get("event") == "lock_acquired"), None)
        return [
            {
                "node": site,
                "role": "witness" if site == WITNESS_SITE else
                        ("watchdog, lock holder" if site == holder else "watchdog"),
                "rss_mib_mean": round(statistics.fmean(samples[site]), 1),
                "rss_mib_max": round(max(samples[site]), 1),
                "cpu_percent": round(100 * (cpu_end[site] - cpu_start[site]) / elapsed, 2),
            }
            for site in pids
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="sampling time (60)")
    parser.add_argument("--interval", type=float, default=1.0, help="probe interval s (1)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before sampling")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path,
                        help="run the primary-region watchdog under cProfile, stats here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentaskit-footprint-"))
    rows = measure(args.seconds, args.interval, args.warmup, workdir, args.profile)
    print(f"idle footprint over {args.seconds:g}s at {args.interval:g}s probes "
          f"(targets: <= {TARGET_RSS_MIB:g} MiB, <= {TARGET_CPU_PERCENT:g} % of a core)")
    print(f"{'node':<12}{'role':<24}{'rss MiB mean':>14}{'rss MiB max':>13}{'cpu %':>8}")
    for row in rows:
        print(f"{row['node']:<12}{row['role']:<24}{row['rss_mib_mean']:>14}"
              f"{row['rss_mib_max']:>13}{row['cpu_percent']:>8}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "seconds": args.seconds,
                                         "interval": args.interval}, indent=2))
    print(f"logs and configs in {workdir}")
    watchdogs = [row for row in rows if row["role"] != "witness"]
    met = all(row["rss_mib_max"] <= TARGET_RSS_MIB and row["cpu_percent"] <= TARGET_CPU_PERCENT
              for row in watchdogs)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
