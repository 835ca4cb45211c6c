"""The write-unavailability window of a planned switchover, on real PostgreSQL.

Each run starts a fresh primary + streaming replica (``PostgresPair``), starts writer
tasks that commit one row per transaction to whichever server takes writes (reconnecting
and trying the other server on any error, as an application would), switches the primary
to the replica with ``PostgresSwitchover``, then back, and measures for each switch:

- ``window``: the writers' view, first refused write -> first write acknowledged by the
  new primary (the issue's definition);
- ``actuator``: start of the old primary's stop -> the new primary's first write (the
  epoch marker), from the switchover result;
- the switchover's phases, and whether every acknowledged row is on the final primary.

    .venv/bin/python bench/switchover_window.py --runs 5 [--writers 3] [--json out.json]

Prints one line per switch and the medians (seconds). Exit status 0 only when no
acknowledged write was lost in any run and the median window is within the target
(2 s). Needs root (PostgreSQL runs as the ``postgres`` OS user) and the PostgreSQL
binaries; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from agentaskit_dr.actuators.pg_control import ServerControl, postmaster_pid, stop_server
from agentaskit_dr.actuators.switchover import PostgresSwitchover
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.writer import CREATE_TABLE, TABLE, WriterLog, write_continuously

TARGET_SECONDS = 2.0
SETTLE_SECONDS = 0.5


def control_of(server: PostgresServer) -> ServerControl:
    owner = pwd.getpwuid(server.datadir.stat().st_uid).pw_name
    return ServerControl(data_directory=server.datadir, os_user=owner, bin_dir=server.bindir)


async def leader() -> bool:
    return True


async def switch(old: PostgresServer, new: PostgresServer, epoch: int,
                 log: WriterLog) -> dict[str, Any]:
    since = time.monotonic()
    result = await PostgresSwitchover(
        primary_dsn=old.dsn, primary_control=control_of(old), standby_dsn=new.dsn,
        primary_conninfo=f"host=127.0.0.1 port={new.port} user=postgres",
    ).switch(epoch=epoch, holder="bench", switchover_id=f"so-bench-{epoch}",
             still_leader=leader)
    await asyncio.sleep(SETTLE_SECONDS)
    window = log.unavailable_window(since, new.name)
    return {
        "direction": f"{old.name}->{new.name}",
        "window": None if window is None else round(window, 4),
        "actuator": result.write_unavailable_seconds,
        "phases": result.as_dict()["phases"],
        "timelines": [result.old_timeline, result.new_timeline],
        "rejoined": result.rejoined,
    }


async def missing_rows(server: PostgresServer, log: WriterLog) -> int:
    acked = [a.row_id for a in log.acked]
    conn = await asyncpg.connect(server.dsn)
    try:
        found = await conn.fetchval(
            f"SELECT count(*) FROM {TABLE} WHERE id = ANY($1::bigint[])", acked)
    finally:
        await conn.close()
    return len(acked) - int(found)


async def one_run(run: int, writers: int) -> list[dict[str, Any]]:
    with PostgresPair() as pair:
        a, b = pair.primary, pair.replica
        try:
            a.sql(CREATE_TABLE)
            pair.wait_replayed()
            log, stop = WriterLog(), asyncio.Event()
            servers = {a.name: a.dsn, b.name: b.dsn}
            tasks = [asyncio.create_task(write_continuously(servers, log, stop, writer=n))
                     for n in range(1, writers + 1)]
            try:
                await asyncio.sleep(SETTLE_SECONDS)
                switches = [await switch(a, b, 2 * run, log),
                            await switch(b, a, 2 * run + 1, log)]
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            lost = await missing_rows(a, log)
            for figures in switches:
                figures["acked"], figures["lost"] = len(log.acked), lost
            return switches
        finally:
            for server in (a, b):
                if postmaster_pid(control_of(server)) is not None:
                    await stop_server(control_of(server))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet
    switches: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        for figures in asyncio.run(one_run(run, args.writers)):
            switches.append(figures)
            phases = "  ".join(f"{k} {v:.3f}" for k, v in figures["phases"].items())
            window = "none" if figures["window"] is None else f"{figures['window']:.3f}s"
            print(f"run {run} {figures['direction']:<16} window {window}  actuator "
                  f"{figures['actuator']:.3f}s  timelines {figures['timelines']}  "
                  f"lost {figures['lost']}/{figures['acked']}  [{phases}]", flush=True)
    windows = [s["window"] for s in switches if s["window"] is not None]
    medians = {
        "window": round(statistics.median(windows), 4) if windows else None,
        "actuator": round(statistics.median(s["actuator"] for s in switches), 4),
        **{f"phase_{name}": round(statistics.median(s["phases"][name] for s in switches), 4)
           for name in switches[0]["phases"]},
    }
    lost = sum(s["lost"] for s in switches[1::2])
    print(f"median over {len(switches)} switches ({args.runs} runs, {args.writers} writers, "
          f"{os.cpu_count()} CPUs): window {medians['window']}s, actuator "
          f"{medians['actuator']}s (target <= {TARGET_SECONDS:g}s); acknowledged rows lost: "
          f"{lost}")
    if args.json is not None:
        args.json.write_text(json.dumps({"switches": switches, "medians": medians}, indent=2))
    ok = lost == 0 and len(windows) == len(switches) and medians["window"] is not None \
        and medians["window"] <= TARGET_SECONDS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
