"""What ``verify-data-integrity`` costs: seconds per GiB for amcheck and for the table
comparison, and how long the compared tables refuse writes (the consistent point).

Each run starts a fresh primary + streaming replica (``PostgresPair``), loads about
``--mib`` MiB into three tables (a narrow one with two B-tree indexes, a wide one with
text, a jsonb one), waits until the replica has it all, then runs the check
(``agentaskit_dr.integrity.verify_data_integrity``) ``--runs`` times and prints each
run's figures and the medians.

    .venv/bin/python bench/integrity_cost.py --mib 256 --runs 3 [--writer] [--json out.json]

``--writer`` keeps an application writing (one-row commits and two-table transactions)
through every run, to show the write pause under load. Needs root (PostgreSQL runs as
the ``postgres`` OS user) and the PostgreSQL binaries; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import yaml

from agentaskit_dr.config import load_config
from agentaskit_dr.integrity import IntegrityReport, verify_data_integrity
from agentaskit_dr.sandbox.postgres import PostgresPair

GIB = 2**30
# Rows per MiB of each table, measured once on PostgreSQL 15 (so --mib is roughly right).
NARROW_ROWS_PER_MIB, WIDE_ROWS_PER_MIB, DOCS_ROWS_PER_MIB = 20_000, 3_300, 4_500


def load(pair: PostgresPair, mib: int) -> None:
    third = max(mib // 3, 1)
    pair.primary.sql("CREATE EXTENSION amcheck")
    pair.primary.sql(
        "CREATE TABLE narrow (id bigint PRIMARY KEY, customer int, amount numeric(12, 2)); "
        "CREATE INDEX narrow_customer ON narrow (customer); "
        "CREATE TABLE wide (id bigint, title text, body text, at timestamptz); "
        "CREATE TABLE docs (id bigint PRIMARY KEY, doc jsonb)")
    pair.primary.sql(
        f"INSERT INTO narrow SELECT i, i % 1000, i / 7.0 "
        f"FROM generate_series(1, {third * NARROW_ROWS_PER_MIB}) AS i", timeout=600)
    pair.primary.sql(
        f"INSERT INTO wide SELECT i, 'title ' || i, repeat(md5(i::text), 5), now() "
        f"FROM generate_series(1, {third * WIDE_ROWS_PER_MIB}) AS i", timeout=600)
    pair.primary.sql(
        f"INSERT INTO docs SELECT i, jsonb_build_object('n', i, 'tags', "
        f"jsonb_build_array('a', 'b', i % 13), 'note', md5(i::text)) "
        f"FROM generate_series(1, {third * DOCS_ROWS_PER_MIB}) AS i", timeout=600)
    pair.primary.sql("VACUUM (FREEZE, ANALYZE)", timeout=600)
    pair.wait_replayed(timeout=600)


def config_file(folder: Path, pair: PostgresPair) -> Path:
    regions = {name: {"health_urls": ["http://127.0.0.1:9/health"], "database": {"dsn": dsn}}
               for name, dsn in (("primary", pair.primary.dsn), ("standby", pair.replica.dsn))}
    path = folder / "integrity.yaml"
    path.write_text(yaml.safe_dump({"region": "primary", "primary_region": "primary",
                                    "regions": regions, "api": {"listen": None}}))
    return path


@contextlib.asynccontextmanager
async def writer(dsn: str, enabled: bool, first_id: int) -> AsyncIterator[list[int]]:
    done: list[int] = []
    if not enabled:
        yield done
        return
    stop = asyncio.Event()

    async def write() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            n = first_id
            while not stop.is_set():
                n += 1
                await conn.execute("INSERT INTO narrow VALUES ($1, 1, 1)", n)
                async with conn.transaction():
                    await conn.execute("UPDATE docs SET doc = doc WHERE id = $1", n % 1000 + 1)
                    await conn.execute("UPDATE narrow SET amount = amount + 1 WHERE id = 1")
                done.append(n)
        finally:
            await conn.close()

    task = asyncio.create_task(write())
    try:
        yield done
    finally:
        stop.set()
        await task


def figures(report: IntegrityReport, database_bytes: int, seconds: float) -> dict[str, float]:
    return {
        "total_s": round(seconds, 3),
        "amcheck_s": report.amcheck_seconds,
        "amcheck_s_per_gib": round(report.amcheck_seconds / (database_bytes / GIB), 2),
        "compare_s": report.compare_seconds,
        "compare_s_per_gib": round(report.compare_seconds / (report.bytes_compared / GIB), 2),
        "write_pause_ms": report.write_pause_ms or 0.0,
        "point_attempts": report.point_attempts,
    }


async def measure(pair: PostgresPair, path: Path, runs: int, with_writer: bool) -> list[dict]:
    config = load_config(path)
    results = []
    for run in range(1, runs + 1):
        database_bytes = int(pair.replica.sql("SELECT pg_database_size(current_database())"))
        async with writer(pair.primary.dsn, with_writer, first_id=10**9 * run) as committed:
            started = time.monotonic()
            report = await verify_data_integrity(config, max_wait=60)
            seconds = time.monotonic() - started
        if not report.same:
            sys.exit(f"run {run}: the copies differ: {report.problems}")
        result = figures(report, database_bytes, seconds)
        result["writer_commits"] = len(committed)
        print(f"run {run}: {json.dumps(result)}", flush=True)
        results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=192, help="data to load (default 192)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--writer", action="store_true", help="an application writes throughout")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with PostgresPair() as pair:
        started = time.monotonic()
        load(pair, args.mib)
        size = int(pair.primary.sql("SELECT pg_database_size(current_database())"))
        print(f"loaded {size / 2**20:.0f} MiB in {time.monotonic() - started:.1f}s "
              f"(PostgreSQL {pair.primary.sql('SHOW server_version')}, "
              f"{os.cpu_count()} CPUs, writer {'on' if args.writer else 'off'})", flush=True)
        results = asyncio.run(measure(pair, config_file(pair.base_dir, pair), args.runs,
                                      args.writer))
    medians = {key: statistics.median(r[key] for r in results) for key in results[0]}
    print(f"median: {json.dumps(medians)}")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": results, "median": medians,
                                         "database_bytes": size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
