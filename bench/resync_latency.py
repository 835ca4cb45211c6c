"""How long failback step 2 (``sync-primary``) takes on real PostgreSQL: rewind vs re-clone.

Each run starts a fresh primary + streaming replica (``PostgresPair``), loads ``--rows``
rows, lets the old primary commit a row the standby never gets, kills it (kill -9),
promotes the standby and writes on it, then runs the same actuator as ``sync-primary``
(``actuators/resync.resync_standby``) until the old primary streams with lag 0:

- ``rewind``: pg_rewind works (after the clean-shutdown cycle a crashed server needs);
- ``reclone``: the old primary's WAL around the fork point is removed first (as if
  recycled), so pg_rewind fails and the server is re-cloned with pg_basebackup.

    .venv/bin/python bench/resync_latency.py --runs 3 [--rows 200000] [--json out.json]

Prints one line per run (total and per-phase seconds) and the medians. Needs root
(PostgreSQL runs as the ``postgres`` OS user) and the PostgreSQL binaries; everything
listens on 127.0.0.1. Data directories live on tmpfs when there is one (see the sandbox).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.actuators.pg_control import ServerControl
from agentaskit_dr.actuators.resync import resync_standby
from agentaskit_dr.actuators.resync_plan import ResyncPlan
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.resync_command import NO_STATEMENT_TIMEOUT, libpq_source, standby_conninfo
from agentaskit_dr.sandbox.postgres import PostgresPair

METHODS = ("rewind", "reclone")


def _prepare(pair: PostgresPair, rows: int, method: str) -> None:
    old, new = pair.primary, pair.replica
    old.sql(f"CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note "
            f"FROM generate_series(1, {rows}) AS g")
    pair.wait_replayed(timeout=120)
    old.sql("CHECKPOINT")  # as checkpoint_timeout would, between the load and the failure
    new.kill()  # the standby stops receiving: what follows on the old primary diverges
    old.sql("INSERT INTO orders VALUES (0, 'diverged')")
    if method == "reclone":
        for _ in range(3):
            old.sql("INSERT INTO orders VALUES (-1, 'more'); SELECT pg_switch_wal()")
        old.sql("CHECKPOINT")
        old.kill()
        _remove_wal_before_redo(old)
    else:
        old.kill()
    new.start()
    new.sql("SELECT pg_promote(wait => true)")
    new.sql("INSERT INTO orders VALUES (-2, 'new primary')")


def _remove_wal_before_redo(server: PostgresServer) -> None:
    control = subprocess.run(
        [str(server.bindir / "pg_controldata"), "-D", str(server.datadir)],
        capture_output=True, text=True, check=True,
    ).stdout
    redo = next(line.split(":", 1)[1].strip() for line in control.splitlines()
                if line.startswith("Latest checkpoint's REDO WAL file"))
    for segment in (server.datadir / "pg_wal").glob("0" * 7 + "1*"):
        if len(segment.name) == 24 and segment.name < redo:
            segment.unlink()


def _plan(pair: PostgresPair) -> ResyncPlan:
    old, new = pair.primary, pair.replica

    async def nowhere() -> str | None:
        return None

    return ResyncPlan(
        region="west", primary_region="east",
        control=ServerControl(data_directory=old.datadir, os_user="postgres",
                              bin_dir=old.bindir, stop_timeout=5.0),
        target_dsn=old.dsn, primary_dsn=new.dsn,
        primary_conninfo=standby_conninfo(new.dsn, "west"),
        rewind_source=libpq_source(new.dsn, None, options=NO_STATEMENT_TIMEOUT),
        clone_source=libpq_source(new.dsn, None),
        timeout=600.0, io_timeout=5.0, primary_elsewhere=nowhere, primary_here=nowhere,
    )


def _stop_started_servers(pair: PostgresPair) -> None:
    for datadir in pair.base_dir.glob("primary*"):
        if (datadir / "postmaster.pid").exists():
            subprocess.run(
                [str(pair.primary.bindir / "pg_ctl"), "stop", "-D", str(datadir), "-m",
                 "immediate"], user="postgres", capture_output=True, check=False, cwd="/",
            )


def run_once(method: str, rows: int) -> dict[str, Any]:
    """One prepared failover and one ``resync_standby``; its figures."""
    pair = PostgresPair().start()
    try:
        _prepare(pair, rows, method)
        size = int(pair.replica.sql("SELECT pg_database_size('postgres')"))
        started = time.monotonic()
        result = asyncio.run(resync_standby(_plan(pair)))
        total = time.monotonic() - started
        if result.method != method:
            raise RuntimeError(f"expected {method}, got {result.method}: {result.reclone_reason}")
        return {"method": method, "total": round(total, 3), "db_mib": round(size / 2**20, 1),
                "phases": result.phases, "reclone_reason": result.reclone_reason}
    finally:
        _stop_started_servers(pair)
        pair.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per method (default 3)")
    parser.add_argument("--rows", type=int, default=200_000,
                        help="rows loaded before the failover (default 200000, ~25 MiB)")
    parser.add_argument("--json", type=Path, default=None, help="also save the runs as JSON")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    runs: list[dict[str, Any]] = []
    for method in METHODS:
        for number in range(1, args.runs + 1):
            run = run_once(method, args.rows)
            runs.append(run)
            phases = "  ".join(f"{name} {secs:.2f}" for name, secs in run["phases"].items())
            print(f"{method:8} run {number}: total {run['total']:.2f}s  db {run['db_mib']} MiB"
                  f"  [{phases}]")
    medians = {method: statistics.median(r["total"] for r in runs if r["method"] == method)
               for method in METHODS}
    for method, median in medians.items():
        print(f"median {method}: {median:.2f}s")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians, "rows": args.rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
