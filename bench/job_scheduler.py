"""What the backup-job scheduler costs a watchdog: one look at eight jobs (one MGET and
the pure decisions) against a real redis-server, a due job's claim-run-record round with
a job that does nothing, and the start of a job's ``agentaskit-dr`` process.

    .venv/bin/python bench/job_scheduler.py --looks 2000

Everything listens on 127.0.0.1; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from redis.asyncio import Redis  # noqa: E402

from agentaskit_dr import logs  # noqa: E402
from agentaskit_dr.config import BackupJobsConfig  # noqa: E402
from agentaskit_dr.runtime.job_process import JobOutcome, run_commands  # noqa: E402
from agentaskit_dr.runtime.jobs import JobScheduler  # noqa: E402
from agentaskit_dr.sandbox.redis import RedisServer  # noqa: E402

BACKUP = """
postgresql: {dsn: "postgresql://backup@127.0.0.1:1/postgres"}
storage: {primary: {url: s3://bench-one}, replica: {url: s3://bench-two}}
encryption: {key_env: BENCH_JOBS_KEY}
application_state:
  redis: {method: rdb+aof, schedule: "0 * * * *", retention: 7d, url: "redis://127.0.0.1:1/0"}
  secrets: {method: vault-snapshot, schedule: "0 3 * * *", retention: 30d,
            vault_addr: "http://127.0.0.1:1", token_env: BENCH_JOBS_KEY}
restore_targets: {staging: {workdir: /tmp/bench-restore, port: 55432}}
"""


async def nothing(steps: Sequence[Sequence[str]], grace: float) -> JobOutcome:
    return JobOutcome("ok", 0, "ok")


async def main(looks: int, starts: int) -> None:
    logs.configure("warning", stream=sys.stderr)
    os.environ["BENCH_JOBS_KEY"] = "ef" * 32
    with RedisServer() as server, tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "backup.yaml"
        path.write_text(BACKUP)
        watchdog: Any = SimpleNamespace(
            holder="bench", evidence_dir=Path(scratch), lock=SimpleNamespace(key_prefix="b"),
            backup=BackupJobsConfig(config=path, configs_every=60))
        client = Redis.from_url(server.url, decode_responses=True)
        now = [1_800_000_000.0]
        jobs = JobScheduler(lambda: watchdog, client, clock=lambda: now[0], runner=nothing)
        await jobs._refresh()
        await jobs.check()  # baselines
        began = time.perf_counter()
        for _ in range(looks):
            await jobs.check()
        per_look = (time.perf_counter() - began) / looks
        rounds = []
        for _ in range(starts):
            now[0] += 60  # the configs job is due again
            began = time.perf_counter()
            await jobs.check()
            await asyncio.gather(*jobs.running.values())
            rounds.append(time.perf_counter() - began)
        await client.aclose()
    print(f"jobs scheduled: {len(jobs.specs)}")
    print(f"one look (MGET of {2 * len(jobs.specs)} keys + decisions): "
          f"{per_look * 1e3:.3f} ms (mean of {looks})")
    print(f"a due job's claim, start record, empty run, end record and release: "
          f"{statistics.median(rounds) * 1e3:.2f} ms (median of {starts})")
    spawn = []
    for _ in range(3):
        began = time.perf_counter()
        await run_commands([("backup", "run", "--help")], grace=1)
        spawn.append(time.perf_counter() - began)
    print(f"start of a job's agentaskit-dr process (backup run --help): "
          f"{statistics.median(spawn):.2f} s (median of 3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--looks", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=200)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.looks, arguments.starts))
