"""The two-bucket backup store against a moto server over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped,unused-ignore]

from agentaskit_dr.backup._multipart import MAX_PARTS, part_size_for
from agentaskit_dr.backup.store import (
    BackupStore,
    BucketMissing,
    ObjectExists,
    ObjectMissing,
    StoreError,
    StoreUnavailable,
)
from agentaskit_dr.local_servers.tcp import free_port
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
    open_uploads,
    read_object,
    storage_config,
)

pytestmark = pytest.mark.integration
MIB = 1 << 20
PART = 5 * MIB  # S3's (and moto's) smallest part


async def pieces(data: bytes, size: int = 700_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_put_bytes_lands_in_both_buckets_with_its_checksum(moto_server: str) -> None:
    await create_buckets(moto_server)
    data = os.urandom(1000)

    async with BackupStore(storage_config(moto_server)) as store:
        info = await store.put_bytes("wal/000000010000000000000001", data)
        heads = [await store.head(info.key, bucket=b) for b in ("primary", "replica")]
        back = await store.get_bytes(info.key, bucket="replica")

    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert [(h.size, h.sha256) for h in heads if h] == [(1000, info.sha256)] * 2
    assert back == data
    assert await read_object(moto_server, PRIMARY, "wal/000000010000000000000001") == data


async def test_s3_replication_mode_writes_the_primary_only(moto_server: str) -> None:
    await create_buckets(moto_server)

    async with BackupStore(storage_config(moto_server, replication="s3")) as store:
        await store.put_bytes("a", b"x")
        assert await store.head("a", bucket="replica") is None

    assert await keys_in(moto_server, PRIMARY) == ["a"]
    assert await keys_in(moto_server, REPLICA) == []


async def test_keys_live_under_the_bucket_url_prefix(moto_server: str) -> None:
    await create_buckets(moto_server)

    async with BackupStore(storage_config(moto_server, prefix="pg/main")) as store:
        await store.put_bytes("wal/1", b"x")
        listed = await store.list("wal/")

    assert await keys_in(moto_server, PRIMARY) == ["pg/main/wal/1"]
    assert [info.key for info in listed] == ["wal/1"]


async def test_put_stream_goes_multipart_in_both_buckets_and_keeps_its_checksum(
    moto_server: str,
) -> None:
    await create_buckets(moto_server)
    data = os.urandom(2 * PART + 123_456)

    async with BackupStore(storage_config(moto_server), part_size=PART) as store:
        info = await store.put_stream("base/1/data.tar.enc", pieces(data))
        heads = [await store.head(info.key, bucket=b) for b in ("primary", "replica")]
        back = [await store.get_bytes(info.key, bucket=b) for b in ("primary", "replica")]

    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert [h.sha256 for h in heads if h] == [info.sha256] * 2
    assert back == [data, data]


async def test_a_short_stream_is_one_put(moto_server: str) -> None:
    await create_buckets(moto_server)

    async with BackupStore(storage_config(moto_server), part_size=PART) as store:
        info = await store.put_stream("small", pieces(b"tiny"))
        head = await store.head("small")

    assert head is not None
    assert (head.size, head.sha256) == (4, info.sha256)


async def test_a_failing_stream_aborts_its_uploads_and_leaves_no_object(
    moto_server: str,
) -> None:
    await create_buckets(moto_server)

    async def breaks() -> AsyncIterator[bytes]:
        yield os.urandom(PART + 1)
        yield os.urandom(PART)
        raise RuntimeError("pg_basebackup died")

    async with BackupStore(storage_config(moto_server), part_size=PART) as store:
        with pytest.raises(RuntimeError, match="pg_basebackup died"):
            await store.put_stream("base/2/data.tar.enc", breaks())
        assert await store.head("base/2/data.tar.enc") is None

    assert await open_uploads(moto_server, PRIMARY) == []
    assert await open_uploads(moto_server, REPLICA) == []


async def test_parts_sent_together_keep_their_order_and_the_checksum(
    moto_server: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await create_buckets(moto_server)
    data = b"".join(bytes([n]) * PART for n in range(7)) + b"tail"
    in_flight: list[int] = []
    most = 0

    async with BackupStore(storage_config(moto_server, replication="s3"), part_size=PART,
                           parts_in_flight=3) as store:
        client = store._target("primary").client
        upload_part = client.upload_part

        async def slow_early_parts(**kwargs: Any) -> Any:
            nonlocal most
            in_flight.append(kwargs["PartNumber"])
            most = max(most, len(in_flight))
            # Earlier parts finish later: S3 sees them out of order.
            await asyncio.sleep(0.05 * (8 - kwargs["PartNumber"]))
            try:
                return await upload_part(**kwargs)
            finally:
                in_flight.remove(kwargs["PartNumber"])

        monkeypatch.setattr(client, "upload_part", slow_early_parts)
        info = await store.put_stream("base/3/data.tar.enc", pieces(data))
        head = await store.head(info.key)
        back = await store.get_bytes(info.key)

    assert back == data
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert head is not None
    assert head.sha256 == info.sha256
    assert most == 3


async def test_a_failed_part_aborts_the_upload_while_others_are_in_flight(
    moto_server: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await create_buckets(moto_server)
    data = os.urandom(6 * PART)
    sent: list[int] = []

    async with BackupStore(storage_config(moto_server), part_size=PART,
                           parts_in_flight=4, attempts=1) as store:
        client = store._target("replica").client
        upload_part = client.upload_part

        async def third_part_refused(**kwargs: Any) -> Any:
            if kwargs["PartNumber"] == 3:
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"},
                                   "ResponseMetadata": {"HTTPStatusCode": 403}}, "UploadPart")
            await asyncio.sleep(0.2)
            sent.append(kwargs["PartNumber"])
            return await upload_part(**kwargs)

        monkeypatch.setattr(client, "upload_part", third_part_refused)
        with pytest.raises(StoreError, match=r"upload part 3 of .*AccessDenied"):
            await store.put_stream("base/4/data.tar.enc", pieces(data))
        assert await store.head("base/4/data.tar.enc") is None
        assert await store.head("base/4/data.tar.enc", bucket="replica") is None

    assert 3 not in sent
    assert len(sent) < 6
    assert await open_uploads(moto_server, PRIMARY) == []
    assert await open_uploads(moto_server, REPLICA) == []


def test_at_least_one_part_must_be_in_flight() -> None:
    with pytest.raises(ValueError, match="parts_in_flight must be at least 1, got 0"):
        BackupStore(storage_config("http://127.0.0.1:9"), parts_in_flight=0)


async def test_stale_uploads_of_a_killed_backup_are_aborted(moto_server: str) -> None:
    await create_buckets(moto_server)
    async with BackupStore(storage_config(moto_server)) as store:
        for target in ("primary", "replica"):  # a backup killed mid-upload left these
            for key in ("base/3/data.tar.enc", "other/x"):
                await store._target(target).client.create_multipart_upload(
                    Bucket=store._target(target).bucket.bucket, Key=key)

        # moto dates every upload 2010-11-10, so each is older than an hour here.
        assert await store.abort_stale_uploads("base/", older_than=3600) == 2

    assert await open_uploads(moto_server, PRIMARY) == ["other/x"]
    assert await open_uploads(moto_server, REPLICA) == ["other/x"]


async def test_list_and_delete(moto_server: str) -> None:
    await create_buckets(moto_server)

    async with BackupStore(storage_config(moto_server)) as store:
        for key in ("wal/2", "wal/1", "base/1/x"):
            await store.put_bytes(key, key.encode())
        listed = await store.list("wal/", bucket="replica")
        await store.delete(["wal/1", "wal/9"])

    assert [(i.key, i.size) for i in listed] == [("wal/1", 5), ("wal/2", 5)]
    assert await keys_in(moto_server, PRIMARY) == ["base/1/x", "wal/2"]
    assert await keys_in(moto_server, REPLICA) == ["base/1/x", "wal/2"]


async def test_a_missing_object_reads_as_none_or_object_missing(moto_server: str) -> None:
    await create_buckets(moto_server)

    async with BackupStore(storage_config(moto_server)) as store:
        assert await store.head("nope") is None
        with pytest.raises(ObjectMissing, match="nope"):
            await store.get_bytes("nope")


async def test_a_missing_bucket_is_named(moto_server: str) -> None:
    await create_buckets(moto_server, PRIMARY)

    async with BackupStore(storage_config(moto_server)) as store:
        with pytest.raises(BucketMissing, match=rf"'{REPLICA}' \(storage.replica.url\)"):
            await store.put_bytes("a", b"x")
        with pytest.raises(BucketMissing, match=REPLICA):
            await store.head("a", bucket="replica")
        with pytest.raises(BucketMissing, match=REPLICA):
            await store.check_buckets()


async def test_s3_down_is_store_unavailable(aws_credentials: None) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async with BackupStore(storage_config(dead), attempts=1, connect_timeout=1) as store:
        with pytest.raises(StoreUnavailable, match="S3 unavailable"):
            await store.put_bytes("a", b"x")
        with pytest.raises(StoreUnavailable):
            await store.head("a")


def test_part_sizes_grow_so_the_part_limit_never_caps_an_object() -> None:
    sizes = [part_size_for(n, 8 * MIB) for n in range(MAX_PARTS)]

    assert sizes[0] == sizes[999] == 8 * MIB
    assert sizes[1000] == 16 * MIB
    assert max(sizes) <= 5 << 30
    assert sum(sizes) > 5 << 40  # S3's largest object
    with pytest.raises(ValueError, match="10000 parts"):
        part_size_for(MAX_PARTS, 8 * MIB)


async def test_a_conditional_put_refuses_an_existing_key_per_bucket(moto_server: str) -> None:
    await create_buckets(moto_server)

    async with BackupStore(storage_config(moto_server)) as store:
        await store.put_bytes("wal/1", b"first", buckets=("primary",))
        with pytest.raises(ObjectExists) as caught:
            await store.put_bytes("wal/1", b"second", if_absent=True)
        back = [await store.get_bytes("wal/1", bucket=b) for b in ("primary", "replica")]

    assert caught.value.role == "primary"
    assert back == [b"first", b"second"]  # the replica, which lacked it, took it


async def test_copy_to_replica_copies_inside_s3_with_the_checksum(moto_server: str) -> None:
    await create_buckets(moto_server)

    async with BackupStore(storage_config(moto_server, prefix="pg")) as store:
        info = await store.put_bytes("wal/1", b"segment", buckets=("primary",))
        assert await store.head("wal/1", bucket="replica") is None
        await store.copy_to_replica("wal/1")
        copied = await store.head("wal/1", bucket="replica")

    assert copied is not None
    assert (copied.size, copied.sha256) == (7, info.sha256)
    assert await read_object(moto_server, REPLICA, "pg/wal/1") == b"segment"
