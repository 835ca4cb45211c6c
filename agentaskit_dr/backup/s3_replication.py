"""The plan's "S3 objects" row: not copied by us, checked.

S3 cross-region replication keeps the application's objects; this checks it is set up
and working: versioning on both buckets, a replication rule primary → replica, a
lifecycle rule on each bucket keeping noncurrent versions ``retention`` long, and a
canary object written to the primary that must appear in the replica within
``replication_slo`` (its lag measured). Every problem is named in :attr:`S3Check.problems`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig  # type: ignore[import-untyped,unused-ignore]
from aiobotocore.session import get_session  # type: ignore[import-untyped,unused-ignore]
from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
    BotoCoreError,
    ClientError,
)

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig

DAY = 86400.0
_NOT_CONFIGURED = {"ReplicationConfigurationNotFoundError", "NoSuchLifecycleConfiguration"}


@dataclass(frozen=True, slots=True)
class S3Buckets:
    """The two buckets the check looks at, and where S3 is."""

    primary: str
    replica: str
    primary_region: str | None
    replica_region: str | None
    endpoint_url: str | None


@dataclass(slots=True)
class S3Check:
    """What the check found; ``ok`` when ``problems`` is empty."""

    buckets: S3Buckets
    checks: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    canary_key: str | None = None
    canary_lag_seconds: float | None = None

    @property
    def ok(self) -> bool:
        """Nothing is missing and the canary arrived within the SLO."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``, evidence and the status."""
        return {"ok": self.ok, "primary": self.buckets.primary, "replica": self.buckets.replica,
                "checks": dict(self.checks), "problems": list(self.problems),
                "canary_key": self.canary_key, "canary_lag_seconds": self.canary_lag_seconds}


def buckets_from(config: BackupConfig) -> S3Buckets:
    """``application_state.s3_objects``'s buckets, or the backup storage's by default."""
    s3 = config.application_state.s3_objects
    storage = config.storage

    def name(url: str | None, fallback: str) -> str:
        return fallback if url is None else url.removeprefix("s3://").partition("/")[0]

    return S3Buckets(name(s3.primary, storage.primary.bucket),
                     name(s3.replica, storage.replica.bucket),
                     storage.primary.region, storage.replica.region, storage.endpoint_url)


async def check_s3_replication(
    buckets: S3Buckets, *, retention: float, slo: float, poll_interval: float = 5.0,
    canary_prefix: str = "agentaskit-dr/canary/",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> S3Check:
    """Run every check; S3 errors other than "not configured" become named problems."""
    result = S3Check(buckets)
    config = AioConfig(connect_timeout=5, read_timeout=30,
                       retries={"total_max_attempts": 3, "mode": "standard"})
    async with AsyncExitStack() as stack:
        session = get_session()
        clients = {}
        for role, region in (("primary", buckets.primary_region),
                             ("replica", buckets.replica_region)):
            clients[role] = await stack.enter_async_context(session.create_client(
                "s3", region_name=region or "us-east-1", endpoint_url=buckets.endpoint_url,
                config=config))
        names = {"primary": buckets.primary, "replica": buckets.replica}
        for role, client in clients.items():
            await _versioning(result, role, names[role], client)
            await _lifecycle(result, role, names[role], client, retention)
        replicating = await _replication(result, buckets, clients["primary"])
        if replicating:
            await _canary(result, buckets, clients, slo=slo, poll_interval=poll_interval,
                          prefix=canary_prefix, clock=clock, sleep=sleep)
        else:
            result.checks["canary"] = "not tried: no replication rule to carry it"
    return result


async def _call(result: S3Check, what: str, call: Awaitable[Any]) -> Any:
    """The answer, None when S3 says it is not configured, or a named problem."""
    try:
        return await call
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_CONFIGURED:
            return None
        result.problems.append(f"{what}: S3 answered {code}")
    except (BotoCoreError, OSError, TimeoutError) as exc:
        result.problems.append(f"{what}: S3 unavailable: {type(exc).__name__}")
    return False


async def _versioning(result: S3Check, role: str, bucket: str, client: Any) -> None:
    answer = await _call(result, f"versioning of s3://{bucket}",
                         client.get_bucket_versioning(Bucket=bucket))
    if answer is False:
        return
    status = (answer or {}).get("Status", "never enabled")
    result.checks[f"{role}_versioning"] = status
    if status != "Enabled":
        result.problems.append(f"versioning is not enabled on the {role} bucket s3://{bucket} "
                               f"({status})")


async def _lifecycle(result: S3Check, role: str, bucket: str, client: Any,
                     retention: float) -> None:
    answer = await _call(result, f"lifecycle of s3://{bucket}",
                         client.get_bucket_lifecycle_configuration(Bucket=bucket))
    if answer is False:
        return
    want = round(retention / DAY)
    days = [int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
            for rule in (answer or {}).get("Rules", [])
            if rule.get("Status") == "Enabled"
            and "NoncurrentDays" in rule.get("NoncurrentVersionExpiration", {})]
    result.checks[f"{role}_noncurrent_days"] = ", ".join(map(str, days)) or "none"
    if not days:
        result.problems.append(f"no lifecycle rule keeps noncurrent versions on the {role} "
                               f"bucket s3://{bucket} (the plan: {want} days)")
    elif min(days) < want:
        result.problems.append(f"the lifecycle rule of the {role} bucket s3://{bucket} keeps "
                               f"noncurrent versions {min(days)} days, the plan {want}")


async def _replication(result: S3Check, buckets: S3Buckets, client: Any) -> bool:
    answer = await _call(result, f"replication of s3://{buckets.primary}",
                         client.get_bucket_replication(Bucket=buckets.primary))
    if answer is False:
        return False
    rules = ((answer or {}).get("ReplicationConfiguration") or {}).get("Rules", [])
    target = f"arn:aws:s3:::{buckets.replica}"
    to_replica = [rule for rule in rules if rule.get("Status") == "Enabled"
                  and rule.get("Destination", {}).get("Bucket") == target]
    result.checks["replication_rule"] = (to_replica[0].get("ID") or "enabled") if to_replica \
        else "none"
    if not to_replica:
        result.problems.append(f"no enabled replication rule from s3://{buckets.primary} to "
                               f"s3://{buckets.replica}")
    return bool(to_replica)


async def _canary(result: S3Check, buckets: S3Buckets, clients: dict[str, Any], *,
                  slo: float, poll_interval: float, prefix: str,
                  clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
    now = dt.datetime.now(dt.UTC)
    key = f"{prefix}{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
    result.canary_key = key
    written = await _call(result, f"canary s3://{buckets.primary}/{key}", clients[
        "primary"].put_object(Bucket=buckets.primary, Key=key, Body=now.isoformat().encode()))
    if written is False:
        return
    start = clock()
    while True:
        arrived = await _arrived(clients["replica"], buckets.replica, key)
        elapsed = clock() - start
        if arrived:
            result.canary_lag_seconds = round(elapsed, 3)
            result.checks["canary"] = f"replicated in {elapsed:.1f}s (SLO {slo:g}s)"
            break
        if elapsed >= slo:
            result.checks["canary"] = "stalled"
            result.problems.append(f"the canary s3://{buckets.primary}/{key} did not reach "
                                   f"s3://{buckets.replica} within the replication SLO "
                                   f"({slo:g}s): replication is stalled")
            break
        await sleep(min(poll_interval, max(slo - elapsed, 0.0)))
    for role, bucket in (("primary", buckets.primary), ("replica", buckets.replica)):
        await _call(result, "canary clean-up", clients[role].delete_object(Bucket=bucket,
                                                                           Key=key))


async def _arrived(client: Any, bucket: str, key: str) -> bool:
    try:
        await client.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True
