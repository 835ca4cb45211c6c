"""Backup buckets on the moto server: a storage config for them and a plain client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiobotocore.session import get_session  # type: ignore[import-untyped,unused-ignore]

from agentaskit_dr.config import StorageConfig

PRIMARY = "agentaskit-backups-primary"
REPLICA = "agentaskit-backups-replica"


def storage_config(endpoint_url: str, *, replication: str = "client",
                   prefix: str = "") -> StorageConfig:
    """``storage:`` for the two test buckets at ``endpoint_url``."""
    tail = f"/{prefix}" if prefix else ""
    return StorageConfig.model_validate({
        "primary": {"url": f"s3://{PRIMARY}{tail}", "region": "us-west-2"},
        "replica": {"url": f"s3://{REPLICA}{tail}", "region": "us-east-1"},
        "endpoint_url": endpoint_url,
        "replication": replication,
    })


@asynccontextmanager
async def s3_client(endpoint_url: str) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint_url
    ) as client:
        yield client


async def create_buckets(endpoint_url: str, *names: str) -> None:
    async with s3_client(endpoint_url) as client:
        for name in names or (PRIMARY, REPLICA):
            await client.create_bucket(Bucket=name)


async def read_object(endpoint_url: str, bucket: str, key: str) -> bytes:
    async with s3_client(endpoint_url) as client:
        answer = await client.get_object(Bucket=bucket, Key=key)
        async with answer["Body"] as body:
            data: bytes = await body.read()
            return data


async def keys_in(endpoint_url: str, bucket: str, prefix: str = "") -> list[str]:
    async with s3_client(endpoint_url) as client:
        answer = await client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in answer.get("Contents", []))


async def open_uploads(endpoint_url: str, bucket: str) -> list[str]:
    async with s3_client(endpoint_url) as client:
        answer = await client.list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]
