"""What an encrypted base backup to S3 (moto) costs against plain ``pg_basebackup``.

One run: a fresh PostgreSQL primary (system binaries) loaded with about ``--mib`` MiB
(a narrow indexed table, a wide text table, some incompressible bytes), a moto server
with the two buckets, then, in the same run:

- floor: ``pg_basebackup -D DIR -Ft -X fetch -c fast`` to local disk, uncompressed;
- ours: ``agentaskit-dr backup run --kind full`` (pg_basebackup | zstd | AES-256-GCM |
  multipart upload to both buckets), as a child process whose peak RSS is read from
  ``wait4``;
- the stages of ours one by one (``_backup_stages``: pg_basebackup alone, + zstd, + our
  manifest relay, + encryption, moto's own ingest and copy of as many bytes, untar);
- restore floor: ``tar -xf base.tar`` of the floor's copy + start PostgreSQL until it
  accepts connections;
- ours: ``agentaskit-dr test-restore`` (download, check, decrypt, untar, pg_verifybackup,
  start, recovery), its ``restore_seconds`` (the checks after the start are not counted).

    .venv/bin/python bench/backup_throughput.py --mib 1100 [--json out.json]

Needs root (PostgreSQL runs as the ``postgres`` OS user), the PostgreSQL binaries, zstd
and tar; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _backup_stages import backup_stages

from agentaskit_dr.local_servers.os_side import (
    give_to_server_user as _give_to_server_user,
)
from agentaskit_dr.local_servers.os_side import (
    server_process_options as _server_process_options,
)
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.local_servers.tcp import free_port, wait_for_port
from agentaskit_dr.sandbox._os_side import (
    scratch_root as _scratch_root,
)
from agentaskit_dr.sandbox.postgres import _cluster_template, pg_bindir

MIB = 2**20
KEY_ENV = "AGENTASKIT_DR_BENCH_KEY"
ROOT = Path(__file__).resolve().parents[1]


def load(server: PostgresServer, mib: int) -> None:
    half = max(mib // 2, 1)
    server.sql("CREATE TABLE narrow (id bigint PRIMARY KEY, customer int, amount numeric);"
               "CREATE INDEX ON narrow (customer);"
               "CREATE TABLE wide (id bigint, title text, body text);"
               "CREATE TABLE noise (id int, b bytea)")
    server.sql(f"INSERT INTO narrow SELECT i, i % 1000, i / 7.0 FROM generate_series(1, "
               f"{half * 9000}) i", timeout=1800)
    server.sql(f"INSERT INTO wide SELECT i, 'title ' || i, repeat(md5(i::text), 5) FROM "
               f"generate_series(1, {half * 2300}) i", timeout=1800)
    server.sql(f"INSERT INTO noise SELECT i, decode(string_agg(md5(random()::text), ''), "
               f"'hex') FROM generate_series(1, {max(mib // 10, 1) * 2000}) i, "
               "generate_series(1, 30) j GROUP BY i", timeout=1800)
    server.sql("CHECKPOINT", timeout=600)


def timed_child(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB of the child, stdout) of one command."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[3:6]} failed: {err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss, out.decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1100, help="database size to load")
    parser.add_argument("--json", type=Path, default=None, help="also save the figures")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=_scratch_root()))
    base.chmod(0o755)
    disk = Path(tempfile.mkdtemp(prefix="bench-backup-disk-", dir="/var/tmp"))
    disk.chmod(0o755)
    moto = None
    server = None
    try:
        bindir = pg_bindir()
        home = base / "home"
        home.mkdir(mode=0o700)
        _give_to_server_user(home)
        server = PostgresServer("bench", disk / "data", bindir, home)
        subprocess.run(["cp", "-aT", str(_cluster_template(bindir)), str(server.datadir)],
                       check=True)
        server.start()
        print(f"loading about {args.mib} MiB ...", flush=True)
        began = time.monotonic()
        load(server, args.mib)
        size = int(server.sql("SELECT sum(pg_database_size(datname)) FROM pg_database"))
        print(f"loaded {size / MIB:.0f} MiB in {time.monotonic() - began:.0f}s", flush=True)

        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
               KEY_ENV: "3c" * 32, "PYTHONPATH": str(ROOT)}
        port = free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        wait_for_port(port, timeout=20, proc=moto)
        endpoint = f"http://127.0.0.1:{port}"
        for bucket in ("bench-primary", "bench-replica"):
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT"))
        staging = disk / "staging"
        config = disk / "backup.yaml"
        config.write_text(json.dumps({
            "postgresql": {"dsn": server.dsn, "bin_dir": str(bindir)},
            "storage": {"primary": {"url": "s3://bench-primary"},
                        "replica": {"url": "s3://bench-replica"}, "endpoint_url": endpoint},
            "encryption": {"key_env": KEY_ENV},
            "restore_targets": {"staging": {"workdir": str(staging), "port": free_port()}},
            "evidence_dir": str(disk / "evidence")}))

        figures = measure(server, disk, config, env, size)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures))
    finally:
        if server is not None:
            server.kill()
        if moto is not None:
            moto.kill()
            moto.wait()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    return 0


def measure(server: PostgresServer, disk: Path, config: Path, env: dict[str, str],
            size: int) -> dict[str, Any]:
    """Both backups, then both restores; the figures."""
    bindir, home = server.bindir, server.home
    floor_dir = disk / "floor"
    floor_dir.mkdir(mode=0o700)
    _give_to_server_user(floor_dir)
    began = time.monotonic()
    server.run_server_binary("pg_basebackup", "-h", "127.0.0.1", "-p", str(server.port),
                             "-U", "postgres", "-D", str(floor_dir), "-Ft", "-X", "fetch",
                             "-c", "fast", "--no-sync", timeout=3600)
    floor = time.monotonic() - began
    floor_bytes = sum(p.stat().st_size for p in floor_dir.iterdir())
    print(f"floor: pg_basebackup -Ft to local disk: {floor:.1f}s "
          f"({floor_bytes / MIB / floor:.0f} MiB/s)", flush=True)

    agentaskit = [sys.executable, "-m", "agentaskit_dr"]
    ours, rss, out = timed_child([*agentaskit, "backup", "run", "--kind", "full",
                                  "--config", str(config), "--json"], env)
    record = json.loads(out)
    one_bucket = config.with_name("backup-s3-replication.yaml")
    settings = json.loads(config.read_text())
    settings["storage"]["replication"] = "s3"
    one_bucket.write_text(json.dumps(settings))
    single, _, _ = timed_child([*agentaskit, "backup", "run", "--kind", "full", "--config",
                                str(one_bucket), "--json"], env)
    print(f"ours, replication s3 (the primary bucket only): {single:.1f}s, "
          f"{single / floor:.2f} x the floor", flush=True)
    print(f"ours: encrypted backup to moto (both buckets): {ours:.1f}s "
          f"({size / MIB / ours:.0f} MiB/s of database, {record['stored_bytes'] / MIB:.0f}"
          f" MiB stored per bucket), {ours / floor:.2f} x the floor; peak RSS "
          f"{rss / 1024:.0f} MiB", flush=True)
    os.environ[KEY_ENV] = env[KEY_ENV]
    stages = backup_stages(settings, bindir, disk, endpoint=settings["storage"]["endpoint_url"],
                           stored_bytes=record["stored_bytes"], home=home)
    pipeline = stages["stream_encrypt"]
    print(f"ours without S3: pg_basebackup | zstd | encrypt, discarded: {pipeline:.1f}s "
          f"({pipeline / floor:.2f} x the floor)", flush=True)

    restore_dir = disk / "plain-restore"
    restore_dir.mkdir(mode=0o700)
    _give_to_server_user(restore_dir)
    began = time.monotonic()
    subprocess.run(["tar", "-xf", str(floor_dir / "base.tar"), "-C", str(restore_dir)],
                   check=True, **_server_process_options(home))
    plain = PostgresServer("plain", restore_dir, bindir, home)
    with (restore_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write("archive_mode = off\n")
    plain.start(timeout=600)
    plain_restore = time.monotonic() - began
    plain.stop()
    shutil.rmtree(restore_dir, ignore_errors=True)
    print(f"floor: plain local restore (untar + start): {plain_restore:.1f}s", flush=True)

    total, restore_rss, out = timed_child(
        [*agentaskit, "test-restore", "--target", "staging", "--config", str(config),
         "--json"], env)
    report = json.loads(out)
    restore = report["restore_seconds"]
    print(f"ours: test-restore from moto: {restore:.1f}s to a promoted server "
          f"({restore / plain_restore:.2f} x plain), {total:.1f}s with amcheck and "
          f"row counts; peak RSS {restore_rss / 1024:.0f} MiB", flush=True)
    print(f"  of which fetch (download, check, decrypt, untar, pg_verifybackup) "
          f"{report['fetch_seconds']:.2f}s, recovery to promoted "
          f"{report['recovery_seconds']:.2f}s", flush=True)
    figures: dict[str, Any] = {
        "database_mib": round(size / MIB), "floor_backup_seconds": round(floor, 2),
        "backup_seconds": round(ours, 2), "backup_ratio": round(ours / floor, 2),
        "pipeline_without_s3_seconds": round(pipeline, 2),
        "backup_one_bucket_seconds": round(single, 2),
        "backup_one_bucket_ratio": round(single / floor, 2),
        "stored_mib": round(record["stored_bytes"] / MIB), "backup_peak_rss_mib":
        round(rss / 1024), "plain_restore_seconds": round(plain_restore, 2),
        "restore_seconds": restore, "restore_ratio": round(restore / plain_restore, 2),
        "restore_total_seconds": round(total, 2),
        "restore_peak_rss_mib": round(restore_rss / 1024),
        "self_rusage_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                        / 1024),
        "restore_fetch_seconds": report["fetch_seconds"],
        "restore_recovery_seconds": report["recovery_seconds"],
        "stages_seconds": stages,
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    return figures


if __name__ == "__main__":
    sys.exit(main())
