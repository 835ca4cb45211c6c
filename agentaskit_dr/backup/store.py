"""The two backup buckets of ``storage:`` behind one async interface (aiobotocore).

``storage.replication: client`` writes every object to the primary and the replica bucket
(a put returns once both hold it); ``s3`` writes the primary only and leaves the copy to S3
replication (reads and verification can still name the replica). Keys given to the store
are relative to each bucket URL's prefix. Each object's SHA-256 (of the stored bytes) is
kept with it: as user metadata ``sha256`` for a single PUT, as the object tag ``sha256`` for
a multipart upload (its hash is known only at the end, and a tag can be set afterwards
without copying the object). Credentials come from the normal AWS chain.

Errors: :class:`StoreUnavailable` (connection refused, timeouts, 5xx after botocore's
retries), :class:`BucketMissing`, :class:`ObjectMissing`, else :class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aiobotocore.config import AioConfig  # type: ignore[import-untyped,unused-ignore]
from aiobotocore.session import get_session  # type: ignore[import-untyped,unused-ignore]
from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
    BotoCoreError,
    ClientError,
)

from agentaskit_dr.backup._multipart import MultipartUpload, part_size_for

if TYPE_CHECKING:
    from agentaskit_dr.config import Bucket, StorageConfig

Which = Literal["primary", "replica"]
#: Read size of :meth:`BackupStore.get_stream`.
READ_SIZE = 1 << 20
#: The largest object one PUT may carry; larger ones go multipart.
MAX_SINGLE_PUT = 5 << 30
#: Parts of one multipart upload sent at once (each part is held in memory until sent).
PARTS_IN_FLIGHT = 4
_MISSING_BUCKET = {"NoSuchBucket"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}


class StoreError(Exception):
    """An S3 call failed; the message names the bucket, the key and S3's answer."""


class StoreUnavailable(StoreError):
    """S3 did not answer in time or refused connections (after retries): try again later."""


class BucketMissing(StoreError):
    """A configured bucket does not exist."""

    def __init__(self, bucket: str, role: str) -> None:
        super().__init__(
            f"bucket {bucket!r} (storage.{role}.url) does not exist: create it, or fix the URL"
        )
        self.bucket = bucket


class ObjectMissing(StoreError):
    """The key is not in the bucket."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"s3://{bucket}/{key} does not exist")
        self.bucket = bucket
        self.key = key


class ObjectExists(StoreError):
    """A conditional put found the key already there."""

    def __init__(self, role: Which, bucket: str, key: str) -> None:
        super().__init__(f"s3://{bucket}/{key} already exists")
        self.role: Which = role
        self.bucket = bucket
        self.key = key


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object; ``sha256`` is hex of the stored bytes (None from :meth:`list`)."""

    key: str
    size: int
    sha256: str | None
    last_modified: datetime | None


@dataclass(frozen=True)
class _Target:
    role: Which
    bucket: Bucket
    client: Any

    def full_key(self, key: str) -> str:
        prefix = self.bucket.prefix.strip("/")
        return f"{prefix}/{key}" if prefix else key

    def relative_key(self, full_key: str) -> str:
        prefix = self.bucket.prefix.strip("/")
        return full_key[len(prefix) + 1:] if prefix else full_key

    def where(self, key: str = "") -> str:
        return f"s3://{self.bucket.bucket}/{self.full_key(key)}"


class BackupStore:
    """The primary and replica buckets; use as ``async with BackupStore(storage) as store``."""

    def __init__(self, storage: StorageConfig, *, connect_timeout: float = 5.0,
                 read_timeout: float = 60.0, attempts: int = 3,
                 part_size: int = 8 << 20, parts_in_flight: int = PARTS_IN_FLIGHT) -> None:
        if parts_in_flight < 1:
            raise ValueError(f"parts_in_flight must be at least 1, got {parts_in_flight}")
        self.storage = storage
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self._config = AioConfig(
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={"total_max_attempts": attempts, "mode": "standard"},
            max_pool_connections=32,
        )
        self._stack = AsyncExitStack()
        self._targets: dict[Which, _Target] = {}
        self._buckets_seen: set[str] = set()

    async def __aenter__(self) -> BackupStore:
        session = get_session()
        try:
            for role in ("primary", "replica"):
                bucket: Bucket = getattr(self.storage, role)
                client = await self._stack.enter_async_context(session.create_client(
                    "s3", region_name=bucket.region, endpoint_url=self.storage.endpoint_url,
                    config=self._config,
                ))
                self._targets[role] = _Target(role, bucket, client)
        except (BotoCoreError, ValueError) as exc:
            await self._stack.aclose()
            raise StoreError(f"cannot create an S3 client: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def writes(self) -> tuple[Which, ...]:
        """The buckets a put writes: both in client replication, the primary in s3 mode."""
        return ("primary", "replica") if self.storage.replication == "client" else ("primary",)

    def _target(self, which: Which) -> _Target:
        if which not in self._targets:
            raise RuntimeError("BackupStore used outside 'async with'")
        return self._targets[which]

    @contextlib.contextmanager
    def _translate(self, target: _Target, key: str, action: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _MISSING_BUCKET:
                raise BucketMissing(target.bucket.bucket, target.role) from exc
            if code in _MISSING_KEY:
                raise ObjectMissing(target.bucket.bucket, target.full_key(key)) from exc
            message = (f"{action} {target.where(key)}: {code} (HTTP {status}) "
                       f"{error.get('Message', '')}")
            if status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout"}:
                raise StoreUnavailable(message.strip()) from exc
            raise StoreError(message.strip()) from exc
        except (BotoCoreError, TimeoutError, OSError) as exc:
            detail = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"{action} {target.where(key)}: S3 unavailable: {detail}"
                                   ) from exc

    async def _check_bucket(self, target: _Target) -> None:
        """Raise :class:`BucketMissing` unless the bucket exists (checked once per store)."""
        if target.bucket.bucket in self._buckets_seen:
            return
        with self._translate(target, "", "check bucket"):
            try:
                await target.client.head_bucket(Bucket=target.bucket.bucket)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchBucket"}:
                    raise BucketMissing(target.bucket.bucket, target.role) from exc
                raise
        self._buckets_seen.add(target.bucket.bucket)

    async def check_buckets(self) -> None:
        """Both buckets exist (else :class:`BucketMissing`) and answer."""
        await asyncio.gather(*(self._check_bucket(t) for t in self._targets.values()))

    # ------------------------------------------------------------ writes

    async def put_bytes(self, key: str, data: bytes, *,
                        metadata: dict[str, str] | None = None, if_absent: bool = False,
                        buckets: tuple[Which, ...] | None = None) -> ObjectInfo:
        """Store ``data`` under ``key`` in every written bucket (or in ``buckets``); returns
        once all hold it. ``if_absent``: a conditional PUT (If-None-Match: *) that raises
        :class:`ObjectExists` for a bucket that already has the key (after the others end).
        """
        if len(data) > MAX_SINGLE_PUT and not if_absent and buckets is None:
            return await self.put_stream(key, _one(data))
        hashed = await asyncio.to_thread(hashlib.sha256, data)
        digest = hashed.hexdigest()
        # S3 checks the body against our SHA-256 (and botocore need not compute a CRC).
        checks = {"ChecksumSHA256": base64.b64encode(hashed.digest()).decode()}
        if if_absent:
            checks["IfNoneMatch"] = "*"

        async def put(target: _Target) -> None:
            try:
                with self._translate(target, key, "put"):
                    await target.client.put_object(
                        Bucket=target.bucket.bucket, Key=target.full_key(key), Body=data,
                        Metadata={**(metadata or {}), "sha256": digest}, **checks,
                    )
            except StoreError as exc:
                if if_absent and "PreconditionFailed" in str(exc):
                    raise ObjectExists(target.role, target.bucket.bucket, key) from exc
                raise

        await _all(put(self._target(which)) for which in buckets or self.writes)
        return ObjectInfo(key, len(data), digest, datetime.now(UTC))

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        """Store a stream of any length with bounded memory (multipart past one part).

        Part ``n`` (from 0) holds ``part_size_for(n)`` bytes: 8 MiB doubling every 1,000
        parts, so 10,000 parts carry more than S3's 5 TiB object limit. Up to
        ``parts_in_flight`` parts upload while the next fills (memory: that many parts plus
        one). Any failure aborts the upload.
        """
        buffer = bytearray()
        iterator = aiter(chunks)
        async for data in iterator:
            buffer += data
            if len(buffer) >= self.part_size:
                break
        else:
            return await self.put_bytes(key, bytes(buffer))
        targets = [self._target(which) for which in self.writes]
        upload = MultipartUpload(targets, key, self._translate)
        await upload.start()
        in_flight: set[asyncio.Task[None]] = set()
        try:
            digest = hashlib.sha256()
            size = 0
            exhausted = False
            while True:
                want = part_size_for(upload.parts_sent, self.part_size)
                while not exhausted and len(buffer) < want:
                    try:
                        buffer += await anext(iterator)
                    except StopAsyncIteration:
                        exhausted = True
                part = bytes(buffer[:want])
                del buffer[:want]
                # hashlib lets go of the GIL for large buffers: hash beside the loop.
                await asyncio.to_thread(digest.update, part)
                size += len(part)
                while len(in_flight) >= self.parts_in_flight:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                in_flight.add(asyncio.ensure_future(upload.send(part)))
                if exhausted and not buffer:
                    break
            await asyncio.gather(*in_flight)
            sha = digest.hexdigest()
            await upload.complete(sha)
        except BaseException:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await asyncio.shield(upload.abort())
            raise
        return ObjectInfo(key, size, sha, datetime.now(UTC))

    async def copy_to_replica(self, key: str) -> None:
        """Copy ``key`` from the primary bucket into the replica bucket inside S3 (objects
        up to 5 GiB): the bytes do not travel through this host a second time."""
        source, target = self._target("primary"), self._target("replica")
        with self._translate(target, key, "copy to replica"):
            await target.client.copy_object(
                Bucket=target.bucket.bucket, Key=target.full_key(key),
                CopySource={"Bucket": source.bucket.bucket, "Key": source.full_key(key)},
            )

    async def delete(self, keys: Iterable[str], *,
                     bucket: Which | Literal["both"] = "both") -> None:
        """Delete ``keys`` (missing ones are fine) from one bucket or both."""
        names = list(keys)
        roles: tuple[Which, ...] = ("primary", "replica") if bucket == "both" else (bucket,)
        for role in roles:
            target = self._target(role)
            for start in range(0, len(names), 1000):
                batch = [{"Key": target.full_key(k)} for k in names[start:start + 1000]]
                with self._translate(target, "", "delete from"):
                    answer = await target.client.delete_objects(
                        Bucket=target.bucket.bucket, Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise StoreError(f"delete {target.where(first.get('Key', ''))}: "
                                     f"{first.get('Code')} {first.get('Message', '')}".strip())

    async def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        """Abort multipart uploads under ``prefix`` started over ``older_than`` seconds ago
        (left by a killed backup), in both buckets; returns how many were aborted."""
        cutoff = time.time() - older_than
        aborted = 0
        for target in self._targets.values():
            with self._translate(target, prefix, "list uploads under"):
                paginator = target.client.get_paginator("list_multipart_uploads")
                async for page in paginator.paginate(Bucket=target.bucket.bucket,
                                                     Prefix=target.full_key(prefix)):
                    for upload in page.get("Uploads", []):
                        if upload["Initiated"].timestamp() < cutoff:
                            await target.client.abort_multipart_upload(
                                Bucket=target.bucket.bucket, Key=upload["Key"],
                                UploadId=upload["UploadId"])
                            aborted += 1
        return aborted

    # ------------------------------------------------------------ reads

    async def head(self, key: str, *, bucket: Which = "primary") -> ObjectInfo | None:
        """The object's size, checksum and time, or None if it does not exist."""
        target = self._target(bucket)
        try:
            with self._translate(target, key, "head"):
                answer = await target.client.head_object(
                    Bucket=target.bucket.bucket, Key=target.full_key(key))
        except ObjectMissing:
            await self._check_bucket(target)  # S3 answers a HEAD on a missing bucket with 404
            return None
        sha = answer.get("Metadata", {}).get("sha256")
        if sha is None:
            with self._translate(target, key, "read tags of"):
                tags = await target.client.get_object_tagging(
                    Bucket=target.bucket.bucket, Key=target.full_key(key))
            sha = {t["Key"]: t["Value"] for t in tags.get("TagSet", [])}.get("sha256")
        return ObjectInfo(key, int(answer["ContentLength"]), sha, answer.get("LastModified"))

    async def list(self, prefix: str, *, bucket: Which = "primary") -> list[ObjectInfo]:
        """Every object under ``prefix``, sorted by key (``sha256`` is None: see :meth:`head`)."""
        target = self._target(bucket)
        found: list[ObjectInfo] = []
        with self._translate(target, prefix, "list"):
            paginator = target.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=target.bucket.bucket,
                                                 Prefix=target.full_key(prefix)):
                found.extend(
                    ObjectInfo(target.relative_key(item["Key"]), int(item["Size"]), None,
                               item.get("LastModified"))
                    for item in page.get("Contents", [])
                )
        return sorted(found, key=lambda info: info.key)

    async def get_stream(self, key: str, *, bucket: Which = "primary"
                         ) -> AsyncIterator[bytes]:
        """The object's bytes in pieces of up to 1 MiB."""
        target = self._target(bucket)
        with self._translate(target, key, "get"):
            answer = await target.client.get_object(
                Bucket=target.bucket.bucket, Key=target.full_key(key))
            async with answer["Body"] as body:
                async for piece in body.iter_chunks(READ_SIZE):
                    yield piece

    async def get_bytes(self, key: str, *, bucket: Which = "primary") -> bytes:
        """The whole object."""
        return b"".join([piece async for piece in self.get_stream(key, bucket=bucket)])


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _all(calls: Iterable[Any]) -> None:
    """Run ``calls`` together; the first failure is raised once all ended."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
