"""How fast the WAL archive keeps up: sustained segments/s and archive lag under writes.

A real PostgreSQL primary with ``archive_mode = on`` and ``archive_command`` = our
``wal-push`` (run by PostgreSQL as the ``postgres`` OS user, one process per segment), the
resident archiver, and a moto server holding both buckets. A write load (INSERT batches
of 1 kB rows, the table truncated now and then) paced at ``--rate`` MB/s of WAL (0: as
fast as PostgreSQL goes) runs for ``--seconds``; then the archive drains.

    .venv/bin/python bench/wal_archive.py [--seconds 30] [--rate 56] [--json out.json]

Figures: WAL written (MB/s, segments/s) and archived (segments/s, from
``pg_stat_archiver``) during the load; the archive lag, sampled every 0.2 s as the age
of the oldest ``.ready`` file in ``pg_wal/archive_status`` (how long a completed segment
has waited to be archived), max and 95th percentile; the drain time after the load
stopped; failed archive_command calls. The target (issue 10): >= 3 segments/s with the
lag <= 5 s. Needs root and the PostgreSQL binaries; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from agentaskit_dr.local_servers.os_side import children
from agentaskit_dr.local_servers.tcp import free_port, wait_for_port
from tests.integration.aws import DUMMY_CREDENTIALS
from tests.integration.s3_buckets import create_buckets
from tests.integration.wal_harness import WalWorld, archiving_primary

SEGMENT = 16 << 20
ROWS_PER_BATCH = 4000
BENCH_SETTINGS = """
max_wal_size = '4GB'
checkpoint_timeout = '30min'
"""


async def load(dsn: str, rate: float, seconds: float) -> None:
    """INSERT batches paced at ``rate`` MB/s of WAL (0: flat out) for ``seconds``."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS big (id int, pad text)")
        start_lsn = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        started = time.monotonic()
        batches = 0
        while (elapsed := time.monotonic() - started) < seconds:
            await conn.execute(
                "INSERT INTO big SELECT g, md5(g::text) || repeat(md5(random()::text), 30) "
                f"FROM generate_series(1, {ROWS_PER_BATCH}) g")
            batches += 1
            if batches % 50 == 0:
                await conn.execute("TRUNCATE big")
            if rate > 0:
                written = await conn.fetchval(
                    "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn") - start_lsn
                ahead = float(written) / (rate * 1e6) - elapsed
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await conn.close()


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """CPU time of ``pid`` (and of its live and reaped children, if asked)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
        total = ticks / os.sysconf("SC_CLK_TCK")
        for child in children(pid):
            total += cpu_seconds(child, with_children=True)
        return total
    return ticks / os.sysconf("SC_CLK_TCK")


def oldest_ready_age(status: Path) -> float:
    now = time.time()
    ages = [0.0]
    for entry in os.scandir(status):
        if entry.name.endswith(".ready"):
            try:
                ages.append(now - entry.stat().st_mtime)
            except FileNotFoundError:
                continue
    return max(ages)


async def measure(dsn: str, status: Path, rate: float, seconds: float,
                  pids: dict[str, tuple[int, bool]]) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        async def archived() -> int:
            return int(await conn.fetchval("SELECT archived_count FROM pg_stat_archiver"))

        async def lsn() -> int:
            return int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))

        archived_0, lsn_0 = await archived(), await lsn()
        cpu_0 = {name: cpu_seconds(pid, with_children=kids) for name, (pid, kids) in pids.items()}
        started = time.monotonic()
        writer = asyncio.create_task(load(dsn, rate, seconds))
        lags: list[float] = []
        while not writer.done():
            lags.append(oldest_ready_age(status))
            await asyncio.sleep(0.2)
        await writer
        elapsed = time.monotonic() - started
        halves = (max(lags[: len(lags) // 2], default=0.0),
                  max(lags[len(lags) // 2 :], default=0.0))
        archived_1, lsn_1 = await archived(), await lsn()
        await conn.execute("SELECT pg_switch_wal()")
        drain_started = time.monotonic()
        while any(e.name.endswith(".ready") for e in os.scandir(status)):
            lags.append(oldest_ready_age(status))
            if time.monotonic() - drain_started > 120:
                break
            await asyncio.sleep(0.1)
        drain = time.monotonic() - drain_started
        cpu = {f"cpu_s_{name}": round(cpu_seconds(pid, with_children=kids) - cpu_0[name], 1)
               for name, (pid, kids) in pids.items()}
        failed = int(await conn.fetchval("SELECT failed_count FROM pg_stat_archiver"))
    finally:
        await conn.close()
    lags.sort()
    return {
        "seconds": round(elapsed, 1),
        "wal_mb_per_s": round((lsn_1 - lsn_0) / elapsed / 1e6, 1),
        "wal_segments_per_s": round((lsn_1 - lsn_0) / elapsed / SEGMENT, 2),
        "archived_segments_per_s": round((archived_1 - archived_0) / elapsed, 2),
        "archived_segments": archived_1 - archived_0,
        # Everything written during the load, over the time until all of it was archived.
        "end_to_end_segments_per_s": round((lsn_1 - lsn_0) / SEGMENT / (elapsed + drain), 2),
        "lag_max_first_half_s": round(halves[0], 2),
        "lag_max_second_half_s": round(halves[1], 2),
        "lag_max_s": round(lags[-1], 2),
        "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 2),
        "lag_median_s": round(statistics.median(lags), 2),
        "drain_s": round(drain, 2),
        "failed_archive_commands": failed,
        **cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=56.0,
                        help="MB/s of WAL to write (default 56, 3.3 segments/s; 0: flat out)")
    parser.add_argument("--replication", choices=("client", "s3"), default="client",
                        help="client: every segment PUT to both buckets (default); s3: "
                             "to the primary only")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-log", type=Path, default=None,
                        help="save the archiver's JSON log here")
    args = parser.parse_args()
    os.environ.update(DUMMY_CREDENTIALS)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    port = free_port()
    base = Path(tempfile.mkdtemp(prefix="walbench-"))
    base.chmod(0o755)
    # moto spools every object over 5 MiB to a temp file on disk; S3 is not that slow.
    moto_env = {**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(64 << 20)}
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=moto_env)
    world = server = archiver = None
    try:
        wait_for_port(port, timeout=20.0, proc=moto)
        endpoint = f"http://127.0.0.1:{port}"
        asyncio.run(create_buckets(endpoint))
        world = WalWorld(endpoint, replication=args.replication)
        archiver = world.start_archiver()
        server = archiving_primary(world, base, extra=BENCH_SETTINGS)
        dsn = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        status = server.datadir / "pg_wal" / "archive_status"
        assert server.proc is not None
        pids = {"moto": (moto.pid, False), "archiver": (archiver.pid, False),
                "postgres_and_wal_push": (server.proc.pid, True)}
        figures = asyncio.run(measure(dsn, status, args.rate, args.seconds, pids))
    finally:
        if server is not None:
            server.kill()
        if archiver is not None:
            archiver.terminate()
            archiver.wait(10)
        if world is not None:
            if args.keep_log is not None:
                args.keep_log.write_text(world.log())
            world.close()
        moto.kill()
        moto.wait()
        shutil.rmtree(base, ignore_errors=True)
    figures["target_rate_mb_per_s"] = args.rate
    figures["replication"] = args.replication
    figures["cpus"] = os.cpu_count() or 0
    figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    for name, value in figures.items():
        print(f"{name:>26}: {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    meets = figures["end_to_end_segments_per_s"] >= 3 and figures["lag_max_s"] <= 5
    print(f"{'target (>= 3 seg/s, lag <= 5 s)':>26}: {'met' if meets else 'NOT met'}")
    return 0 if meets else 1


if __name__ == "__main__":
    sys.exit(main())
