"""One multipart upload of the same bytes to one or two buckets (see :mod:`.store`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

#: S3's limits: at most 10,000 parts, each at most 5 GiB.
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 << 30
#: Parts per size step: the part size doubles every this many parts.
PARTS_PER_STEP = 1000


def part_size_for(index: int, base: int) -> int:
    """The size of part ``index`` (from 0): ``base`` doubled every 1,000 parts.

    With an 8 MiB base, 10,000 parts hold 1000 x 8 MiB x (2**10 - 1), about 8 TiB:
    more than S3's largest object (5 TiB), so the part limit never caps an object.
    """
    if index >= MAX_PARTS:
        raise ValueError(f"an object cannot have more than {MAX_PARTS} parts")
    return min(base << (index // PARTS_PER_STEP), MAX_PART_SIZE)


Translate = Callable[[Any, str, str], AbstractContextManager[None]]


class MultipartUpload:
    """Parts go to every target together; :meth:`complete` tags each copy with its SHA-256."""

    def __init__(self, targets: list[Any], key: str, translate: Translate) -> None:
        self._targets = targets
        self._key = key
        self._translate = translate
        self._ids: dict[str, str] = {}
        self._etags: dict[str, list[dict[str, Any]]] = {}
        self.parts_sent = 0

    async def start(self) -> None:
        for target in self._targets:
            with self._translate(target, self._key, "start upload of"):
                answer = await target.client.create_multipart_upload(
                    Bucket=target.bucket.bucket, Key=target.full_key(self._key))
            self._ids[target.role] = answer["UploadId"]
            self._etags[target.role] = []

    def send(self, part: bytes) -> Awaitable[None]:
        """Upload ``part`` as the next part to every target.

        Its number is taken now, not when the upload runs, so parts sent together keep
        the order they were given in."""
        self.parts_sent += 1
        return self._send(self.parts_sent, part)

    async def _send(self, number: int, part: bytes) -> None:
        async def one(target: Any) -> None:
            with self._translate(target, self._key, f"upload part {number} of"):
                answer = await target.client.upload_part(
                    Bucket=target.bucket.bucket, Key=target.full_key(self._key),
                    UploadId=self._ids[target.role], PartNumber=number, Body=part)
            self._etags[target.role].append({"PartNumber": number, "ETag": answer["ETag"]})

        await asyncio.gather(*(one(target) for target in self._targets))

    async def complete(self, sha256: str) -> None:
        async def one(target: Any) -> None:
            with self._translate(target, self._key, "complete upload of"):
                await target.client.complete_multipart_upload(
                    Bucket=target.bucket.bucket, Key=target.full_key(self._key),
                    UploadId=self._ids[target.role],
                    MultipartUpload={"Parts": sorted(self._etags[target.role],
                                                     key=lambda p: p["PartNumber"])})
            del self._ids[target.role]
            with self._translate(target, self._key, "tag"):
                await target.client.put_object_tagging(
                    Bucket=target.bucket.bucket, Key=target.full_key(self._key),
                    Tagging={"TagSet": [{"Key": "sha256", "Value": sha256}]})

        await asyncio.gather(*(one(target) for target in self._targets))

    async def abort(self) -> None:
        """Abort what is still open; errors are swallowed (stale uploads are swept later)."""
        for target in self._targets:
            upload_id = self._ids.pop(target.role, None)
            if upload_id is None:
                continue
            # Best effort: abort_stale_uploads sweeps whatever this leaves.
            with contextlib.suppress(Exception):
                await target.client.abort_multipart_upload(
                    Bucket=target.bucket.bucket, Key=target.full_key(self._key),
                    UploadId=upload_id)
