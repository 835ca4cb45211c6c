"""wal-push / wal-fetch against moto: a pg_wal directory laid out as PostgreSQL leaves it."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agentaskit_dr.backup.crypto import KeyRing, decrypt_bytes
from agentaskit_dr.backup.wal_layout import wal_key
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.s3_buckets import (
    PRIMARY,
    REPLICA,
    create_buckets,
    keys_in,
    read_object,
    s3_client,
)
from tests.integration.wal_harness import KEY_HEX, S3Outage, WalWorld

pytestmark = pytest.mark.integration
RING = KeyRing("k1", {"k1": bytes.fromhex(KEY_HEX)})
SEGMENTS = ["000000010000000000000001", "000000010000000000000002",
            "000000010000000000000003"]


@pytest.fixture
async def world(moto_server: str) -> AsyncIterator[WalWorld]:
    await create_buckets(moto_server)
    world = WalWorld(moto_server)
    yield world
    world.close()


def make_pg_wal(root: Path, names: list[str], size: int = 1 << 20) -> Path:
    """A data dir whose pg_wal holds ``names``, each marked .ready."""
    status = root / "pg_wal" / "archive_status"
    status.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "pg_wal" / name).write_bytes(os.urandom(size))
        (status / f"{name}.ready").touch()
    return root


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def archived(endpoint: str, bucket: str, name: str) -> bytes:
    key = wal_key(name)
    return decrypt_bytes(RING, key, await read_object(endpoint, bucket, key))


async def test_wal_push_lands_in_both_buckets_and_pushes_the_other_ready_files_ahead(
    world: WalWorld, moto_server: str, tmp_path: Path
) -> None:
    datadir = make_pg_wal(tmp_path, SEGMENTS)

    done = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir)

    assert done.returncode == 0, done.stderr + world.log()
    original = (datadir / "pg_wal" / SEGMENTS[0]).read_bytes()
    assert await archived(moto_server, PRIMARY, SEGMENTS[0]) == original
    assert await archived(moto_server, REPLICA, SEGMENTS[0]) == original
    for name in SEGMENTS[1:]:  # pushed ahead of PostgreSQL's next calls
        wait_for(lambda n=name: (world.spool / "pushed" / f"{n}.ok").exists(), f"{name}.ok")
        assert world.wal("wal-push", f"pg_wal/{name}", cwd=datadir).returncode == 0
    assert await keys_in(moto_server, PRIMARY) == [wal_key(n) for n in SEGMENTS]


async def test_a_timeline_history_file_is_archived(world: WalWorld, moto_server: str,
                                                  tmp_path: Path) -> None:
    datadir = make_pg_wal(tmp_path, ["00000002.history"], size=40)

    done = world.wal("wal-push", "pg_wal/00000002.history", cwd=datadir)

    assert done.returncode == 0, done.stderr
    assert await keys_in(moto_server, REPLICA) == ["wal/00000002/00000002.history"]


async def test_pushing_the_same_segment_again_succeeds_and_other_content_fails(
    world: WalWorld, tmp_path: Path
) -> None:
    datadir = make_pg_wal(tmp_path / "first", SEGMENTS[:1])
    copy = make_pg_wal(tmp_path / "copy", [])
    (copy / "pg_wal" / SEGMENTS[0]).write_bytes((datadir / "pg_wal" / SEGMENTS[0]).read_bytes())
    other = make_pg_wal(tmp_path / "other", SEGMENTS[:1])

    first = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir)
    again = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir)
    world.stop_archiver()  # a fresh archiver remembers nothing: the buckets must answer
    same_bytes = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=copy)
    conflict = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=other)

    assert [first.returncode, again.returncode, same_bytes.returncode] == [0, 0, 0], \
        first.stderr + again.stderr + same_bytes.stderr
    assert conflict.returncode == 1
    assert f"{SEGMENTS[0]} is already archived in the " in conflict.stderr
    assert "bucket with different content" in conflict.stderr


async def test_an_s3_outage_fails_the_push_and_loses_nothing(
    moto_server: str, tmp_path: Path
) -> None:
    await create_buckets(moto_server)
    proxy = S3Outage(urlsplit(moto_server).port or 0)
    world = WalWorld(proxy.url)
    try:
        datadir = make_pg_wal(tmp_path, SEGMENTS[:1])
        proxy.down()

        failed = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir)
        proxy.up()
        wait_for((world.spool / "pushed" / f"{SEGMENTS[0]}.ok").exists,
                 "the archiver's retry once S3 is back")
        retried = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir)
    finally:
        world.close()
        proxy.close()

    assert failed.returncode == 1
    assert "S3 unavailable" in failed.stderr
    assert retried.returncode == 0, retried.stderr
    original = (datadir / "pg_wal" / SEGMENTS[0]).read_bytes()
    assert await archived(moto_server, PRIMARY, SEGMENTS[0]) == original
    assert await archived(moto_server, REPLICA, SEGMENTS[0]) == original


async def test_wal_fetch_restores_an_archived_segment_and_reports_a_missing_one(
    world: WalWorld, tmp_path: Path
) -> None:
    datadir = make_pg_wal(tmp_path, SEGMENTS[:2])
    assert world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir).returncode == 0
    restore = tmp_path / "restore"
    (restore / "pg_wal").mkdir(parents=True)

    fetched = world.wal("wal-fetch", SEGMENTS[0], "pg_wal/RECOVERYXLOG", cwd=restore)
    missing = world.wal("wal-fetch", "000000010000000000000009", "pg_wal/RECOVERYXLOG",
                        cwd=restore / "..")

    assert fetched.returncode == 0, fetched.stderr + world.log()
    assert (restore / "pg_wal" / "RECOVERYXLOG").read_bytes() == \
        (datadir / "pg_wal" / SEGMENTS[0]).read_bytes()
    assert missing.returncode == 1
    assert "000000010000000000000009 is not in the archive" in missing.stderr


async def test_wal_fetch_refuses_a_tampered_segment_and_writes_nothing(
    world: WalWorld, moto_server: str, tmp_path: Path
) -> None:
    datadir = make_pg_wal(tmp_path, SEGMENTS[:1])
    assert world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir).returncode == 0
    key = wal_key(SEGMENTS[0])
    blob = bytearray(await read_object(moto_server, PRIMARY, key))
    blob[len(blob) // 2] ^= 1
    async with s3_client(moto_server) as client:
        await client.put_object(Bucket=PRIMARY, Key=key, Body=bytes(blob))

    fetched = world.wal("wal-fetch", SEGMENTS[0], str(tmp_path / "out"))

    assert fetched.returncode == 1
    assert f"object '{key}' failed authentication" in fetched.stderr
    assert not (tmp_path / "out").exists()


async def test_a_missing_bucket_fails_the_push_naming_it(moto_server: str,
                                                        tmp_path: Path) -> None:
    await create_buckets(moto_server, PRIMARY)  # no replica bucket
    world = WalWorld(moto_server)
    try:
        datadir = make_pg_wal(tmp_path, SEGMENTS[:1])
        failed = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir)
    finally:
        world.close()

    assert failed.returncode == 1
    assert f"bucket '{REPLICA}' (storage.replica.url) does not exist" in failed.stderr


async def test_an_unusable_key_stops_the_archiver_before_anything_is_written(
    moto_server: str, tmp_path: Path
) -> None:
    await create_buckets(moto_server)
    world = WalWorld(moto_server)
    world.env.pop("AGENTASKIT_DR_BACKUP_KEY")
    try:
        datadir = make_pg_wal(tmp_path, SEGMENTS[:1])
        failed = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir)
    finally:
        world.close()

    assert failed.returncode == 1
    assert "the WAL archiver exited" in failed.stderr
    assert "environment variable AGENTASKIT_DR_BACKUP_KEY is not set" in failed.stderr
    assert await keys_in(moto_server, PRIMARY) == []


async def test_with_s3_replication_the_push_writes_the_primary_only(moto_server: str,
                                                                   tmp_path: Path) -> None:
    await create_buckets(moto_server)
    world = WalWorld(moto_server, replication="s3")
    try:
        datadir = make_pg_wal(tmp_path, SEGMENTS[:1])
        done = world.wal("wal-push", f"pg_wal/{SEGMENTS[0]}", cwd=datadir)
    finally:
        world.close()

    assert done.returncode == 0, done.stderr
    assert await keys_in(moto_server, PRIMARY) == [wal_key(SEGMENTS[0])]
    assert await keys_in(moto_server, REPLICA) == []


async def test_a_file_that_vanishes_before_the_push_fails_and_is_forgotten(
    world: WalWorld, tmp_path: Path
) -> None:
    datadir = make_pg_wal(tmp_path, [])
    world.spool.joinpath("push").mkdir(exist_ok=True)
    gone = datadir / "pg_wal" / SEGMENTS[0]
    (world.spool / "push" / SEGMENTS[0]).write_text(str(gone))  # a request, then rm
    (datadir / "pg_wal" / SEGMENTS[1]).write_bytes(b"x")

    pushed = world.wal("wal-push", f"pg_wal/{SEGMENTS[1]}", cwd=datadir)

    assert pushed.returncode == 0, pushed.stderr
    wait_for(lambda: not (world.spool / "push" / SEGMENTS[0]).exists(), "the request dropped")
    assert "No such file" in (world.spool / "pushed" / f"{SEGMENTS[0]}.error").read_text()
