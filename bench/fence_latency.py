"""How long the fence takes on real PostgreSQL, in each mode, and what the zero-loss
promotion costs: the figures behind "after a promotion the old primary never commits".

Each run starts a fresh primary + streaming replica (``PostgresPair``) with an application
role and 20 open client sessions, then measures one of:

- ``sql``: the SQL fence (read-only, every other login role locked out, sessions ended,
  confirmed) of a primary that answers;
- ``control``: the control-mode fence (SQL fence, ``standby.signal``, ``pg_ctl -m fast``)
  of a primary that answers;
- ``frozen``: the control-mode fence of a SIGSTOPped primary (the SQL part times out, the
  postmaster is killed);
- ``promote``: the whole promotion with the old primary answering: fence, the standby's
  catch-up to the fenced primary's final LSN, ``pg_promote``, the epoch marker.

    .venv/bin/python bench/fence_latency.py --runs 5 [--io-timeout 1s] [--json out.json]

Prints one line per run and the medians (seconds). Needs root (PostgreSQL runs as the
``postgres`` OS user) and the PostgreSQL binaries; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import structlog

from agentaskit_dr.actuators.fence import fence_server
from agentaskit_dr.actuators.pg_control import ServerControl
from agentaskit_dr.actuators.promote import PostgresPromoter
from agentaskit_dr.config import parse_duration
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair

SESSIONS = 20
MODES = ("sql", "control", "frozen", "promote")
log = structlog.get_logger("bench.fence")


def prepare(server: PostgresServer) -> None:
    server.sql("CREATE ROLE app LOGIN; CREATE TABLE orders (id int); "
               "GRANT SELECT, INSERT ON orders TO app")


async def open_sessions(server: PostgresServer) -> list[asyncpg.Connection]:
    dsn = f"postgresql://app@127.0.0.1:{server.port}/postgres"
    return [await asyncpg.connect(dsn) for _ in range(SESSIONS)]


def control_of(server: PostgresServer) -> ServerControl:
    return ServerControl(data_directory=server.datadir, os_user="postgres",
                         bin_dir=server.bindir, stop_timeout=5.0)


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def one_run(mode: str, io_timeout: float) -> float:
    with PostgresPair() as pair:
        prepare(pair.primary)
        pair.wait_replayed()
        sessions = await open_sessions(pair.primary)
        try:
            primary = pair.primary
            if mode == "promote":
                promoter = PostgresPromoter(
                    standby_dsn=pair.replica.dsn, old_primary_dsn=primary.dsn,
                    max_lag_bytes=16 * 2**20, connect_timeout=io_timeout,
                    promote_timeout=10.0, catch_up_timeout=10.0)

                async def leader() -> bool:
                    return True

                return await timed(lambda: promoter.promote(
                    epoch=1, holder="bench", failover_id="fo-bench", primary_last_lsn=None,
                    still_leader=leader, old_primary_answering=True))
            control = None if mode == "sql" else control_of(primary)
            if mode == "frozen":
                primary.pause()
            result = None

            async def fence() -> None:
                nonlocal result
                result = await fence_server(primary.dsn, epoch=None, io_timeout=io_timeout,
                                            flog=log, control=control)

            seconds = await timed(fence)
            if result is None or not result.fenced:
                raise RuntimeError(f"{mode}: fence not confirmed: {result}")
            return seconds
        finally:
            for conn in sessions:
                conn.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--io-timeout", type=parse_duration, default="1s",
                        help="the fence's bound on each connect and query (probe.timeout)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # quiet
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    for run in range(1, args.runs + 1):
        line = [f"run {run}:"]
        for mode in MODES:
            seconds = asyncio.run(one_run(mode, args.io_timeout))
            figures[mode].append(seconds)
            line.append(f"{mode} {seconds:.3f}s")
        print("  ".join(line), flush=True)
    medians = {mode: round(statistics.median(values), 4) for mode, values in figures.items()}
    print(f"median ({args.runs} runs, {SESSIONS} open sessions, io timeout "
          f"{args.io_timeout:g}s): " + "  ".join(f"{m} {v:.3f}s" for m, v in medians.items()))
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": figures, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
