"""Redis backup throughput: ``appstate backup redis`` (RDB over replication, encrypted,
both buckets of a moto server, redis-check-rdb) against the floor, ``redis-cli --rdb`` to
local disk, on the same server in the same run; and the peak RSS of the backup.

    .venv/bin/python bench/appstate_redis.py --mib 256

Everything listens on 127.0.0.1; the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import redis
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agentaskit_dr.appstate import jobs  # noqa: E402
from agentaskit_dr.appstate.components import collector  # noqa: E402
from agentaskit_dr.config import load_backup_config  # noqa: E402
from agentaskit_dr.local_servers.tcp import free_port, wait_for_port  # noqa: E402
from agentaskit_dr.sandbox.redis import RedisServer  # noqa: E402


def fill(port: int, mib: int) -> int:
    client = redis.Redis(port=port)
    value = os.urandom(512).hex()  # 1 KiB, incompressible
    keys = mib * 1024
    for start in range(0, keys, 10_000):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(keys, start + 10_000)):
            pipe.set(f"key:{index}", value)
        pipe.execute()
    client.config_set("repl-diskless-sync", "no")
    return keys


async def buckets(endpoint: str) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", region_name="us-east-1",
                                           endpoint_url=endpoint) as client:
        for name in ("agentaskit-backups-primary", "agentaskit-backups-replica"):
            await client.create_bucket(Bucket=name)


async def fetch_and_encrypt(url: str, tee: Path) -> float:
    """Our side alone: the RDB over replication, encrypted, teed to disk; no S3."""
    from agentaskit_dr.appstate.redis_sync import open_rdb_stream
    from agentaskit_dr.backup.crypto import KeyRing, encrypt_stream

    keyring = KeyRing("k1", {"k1": bytes(32)})
    start = time.perf_counter()
    stream = await open_rdb_stream(url)
    with tee.open("wb") as out:
        async def teed() -> AsyncIterator[bytes]:
            async for data in stream.chunks():
                await asyncio.to_thread(out.write, data)
                yield data
        async for _ in encrypt_stream(keyring, "bench", teed()):
            pass
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256, help="data set size in MiB")
    args = parser.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_EC2_METADATA_DISABLED": "true", "BENCH_KEY": "7e" * 32})
    base = Path(tempfile.mkdtemp(prefix="bench-appstate-"))
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=20, proc=moto)
        endpoint = f"http://127.0.0.1:{port}"
        asyncio.run(buckets(endpoint))
        with RedisServer() as server:
            keys = fill(server.port, args.mib)
            floor = time.perf_counter()
            subprocess.run(["redis-cli", "-p", str(server.port), "--rdb",
                            str(base / "floor.rdb")], check=True, capture_output=True)
            floor = time.perf_counter() - floor
            size = (base / "floor.rdb").stat().st_size
            ours = asyncio.run(fetch_and_encrypt(server.url, base / "ours.rdb"))
            path = base / "backup.yaml"
            path.write_text(yaml.safe_dump({
                "storage": {"primary": {"url": "s3://agentaskit-backups-primary"},
                            "replica": {"url": "s3://agentaskit-backups-replica"},
                            "endpoint_url": endpoint},
                "encryption": {"key_env": "BENCH_KEY"},
                "application_state": {"redis": {"method": "rdb+aof", "schedule": "0 * * * *",
                                                "retention": "7d", "url": server.url}}}))
            config = load_backup_config(path)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            took = time.perf_counter()
            asyncio.run(jobs.run_backup(config, "redis", collector(config, "redis"),
                                        evidence_dir=base))
            took = time.perf_counter() - took
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        moto.kill()
        moto.wait()
        shutil.rmtree(base, ignore_errors=True)
    print(f"keys {keys}, RDB {size / 2**20:.0f} MiB")
    print(f"redis-cli --rdb to local disk: {floor:.2f} s ({size / 2**20 / floor:.0f} MiB/s)")
    print(f"RDB over replication + encrypt + local copy, no S3: {ours:.2f} s "
          f"({size / 2**20 / ours:.0f} MiB/s)")
    print(f"appstate backup redis (encrypt, 2 buckets, check): {took:.2f} s "
          f"({size / 2**20 / took:.0f} MiB/s), {took / floor:.1f} x the floor")
    print(f"peak RSS {rss / 1024:.0f} MiB (before the backup {rss_before / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
