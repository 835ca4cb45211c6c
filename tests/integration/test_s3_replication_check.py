"""The "S3 objects" row against moto: a background copier plays S3 replication (moto keeps
a replication config but never copies), and every missing piece is reported by name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.backup.s3_replication import S3Buckets, check_s3_replication
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.s3_buckets import PRIMARY, REPLICA, create_buckets, s3_client

DAY = 86400.0


def buckets(endpoint: str) -> S3Buckets:
    return S3Buckets(PRIMARY, REPLICA, "us-west-2", "us-east-1", endpoint)


async def set_up(endpoint: str, *, versioning: tuple[str, ...] = (PRIMARY, REPLICA),
                 rule: bool = True, noncurrent_days: int | None = 90) -> None:
    """Both buckets as the plan wants them, minus what the test leaves out."""
    await create_buckets(endpoint)
    async with s3_client(endpoint) as client:
        for name in versioning:
            await client.put_bucket_versioning(
                Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        if rule:
            await client.put_bucket_replication(Bucket=PRIMARY, ReplicationConfiguration={
                "Role": "arn:aws:iam::123456789012:role/replication",
                "Rules": [{"ID": "to-replica", "Status": "Enabled", "Priority": 1,
                           "Filter": {"Prefix": ""},
                           "DeleteMarkerReplication": {"Status": "Disabled"},
                           "Destination": {"Bucket": f"arn:aws:s3:::{REPLICA}"}}]})
        if noncurrent_days is not None:
            for name in (PRIMARY, REPLICA):
                await client.put_bucket_lifecycle_configuration(
                    Bucket=name, LifecycleConfiguration={"Rules": [{
                        "ID": "noncurrent", "Status": "Enabled", "Filter": {"Prefix": ""},
                        "NoncurrentVersionExpiration": {"NoncurrentDays": noncurrent_days},
                    }]})


@contextlib.asynccontextmanager
async def replication(endpoint: str, *, delay: float = 0.3) -> AsyncIterator[list[str]]:
    """Copy every new primary object to the replica after ``delay`` (S3's replication)."""
    copied: list[str] = []

    async def copier(client: Any) -> None:
        while True:
            answer = await client.list_objects_v2(Bucket=PRIMARY)
            for item in answer.get("Contents", []):
                if item["Key"] not in copied:
                    await asyncio.sleep(delay)
                    await client.copy_object(Bucket=REPLICA, Key=item["Key"],
                                             CopySource={"Bucket": PRIMARY, "Key": item["Key"]})
                    copied.append(item["Key"])
            await asyncio.sleep(0.05)

    async with s3_client(endpoint) as client:
        task = asyncio.create_task(copier(client))
        try:
            yield copied
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_replicated_bucket_pair_passes_with_the_canary_lag_measured(
        moto_server: str) -> None:
    await set_up(moto_server)
    async with replication(moto_server) as copied:
        report = await check_s3_replication(buckets(moto_server), retention=90 * DAY,
                                            slo=30.0, poll_interval=0.1)
    assert report.problems == []
    assert report.canary_key in copied
    assert report.canary_lag_seconds is not None
    assert report.canary_lag_seconds >= 0.3  # the copier's delay, measured
    assert report.checks["replication_rule"] == "to-replica"
    assert report.checks["primary_versioning"] == "Enabled"


async def test_a_stalled_canary_is_reported(moto_server: str) -> None:
    await set_up(moto_server)  # the rule is there, nothing copies
    report = await check_s3_replication(buckets(moto_server), retention=90 * DAY, slo=1.0,
                                        poll_interval=0.2)
    assert report.checks["canary"] == "stalled"
    assert len(report.problems) == 1
    assert "did not reach s3://agentaskit-backups-replica within the replication SLO" in (
        report.problems[0])


async def test_versioning_off_is_named(moto_server: str) -> None:
    await create_buckets(moto_server)
    async with s3_client(moto_server) as client:
        await client.put_bucket_versioning(Bucket=PRIMARY,
                                           VersioningConfiguration={"Status": "Enabled"})
    report = await check_s3_replication(buckets(moto_server), retention=90 * DAY, slo=1.0)
    assert "versioning is not enabled on the replica bucket s3://agentaskit-backups-replica " \
           "(never enabled)" in report.problems
    assert not any("primary bucket" in p and "versioning" in p for p in report.problems)


async def test_a_missing_rule_and_a_short_lifecycle_are_named(moto_server: str) -> None:
    await set_up(moto_server, rule=False, noncurrent_days=30)
    report = await check_s3_replication(buckets(moto_server), retention=90 * DAY, slo=1.0)
    assert ("no enabled replication rule from s3://agentaskit-backups-primary to "
            "s3://agentaskit-backups-replica") in report.problems
    assert ("the lifecycle rule of the primary bucket s3://agentaskit-backups-primary keeps "
            "noncurrent versions 30 days, the plan 90") in report.problems
    assert report.checks["canary"].startswith("not tried")


async def test_no_lifecycle_rule_is_named(moto_server: str) -> None:
    await set_up(moto_server, noncurrent_days=None)
    async with replication(moto_server, delay=0.0):
        report = await check_s3_replication(buckets(moto_server), retention=90 * DAY,
                                            slo=30.0, poll_interval=0.1)
    assert report.problems == [
        f"no lifecycle rule keeps noncurrent versions on the {role} bucket s3://{name} "
        "(the plan: 90 days)" for role, name in (("primary", PRIMARY), ("replica", REPLICA))]


async def test_the_cli_exits_non_zero_naming_what_is_missing(
        moto_server: str, tmp_path: Path) -> None:
    await set_up(moto_server, versioning=(PRIMARY,), rule=False)
    config = tmp_path / "backup.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"primary": {"url": f"s3://{PRIMARY}", "region": "us-west-2"},
                    "replica": {"url": f"s3://{REPLICA}", "region": "us-east-1"},
                    "endpoint_url": moto_server},
        "encryption": {"key_env": "TEST_BACKUP_KEY"},
        "application_state": {"s3_objects": {"replication_slo": "2s"}},
    }))
    env = {**os.environ, "TEST_BACKUP_KEY": "00" * 32}
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "agentaskit_dr", "appstate", "check-s3", "--config", str(config),
        "--json", "--evidence-dir", str(tmp_path / "evidence")], capture_output=True,
        text=True, timeout=60, env=env, check=False)
    assert done.returncode == 1, done.stderr
    assert "versioning is not enabled on the replica bucket" in done.stderr
    assert "no enabled replication rule" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["ok"] is False
    (kept,) = (tmp_path / "evidence" / "appstate").glob("s3-replication-*.json")
    evidence = json.loads(kept.read_text())
    assert evidence["outcome"] == "failed"
    assert evidence["problems"] == json.loads(done.stdout)["problems"]


@pytest.mark.parametrize("slo", ["0s", "soon"])
def test_a_bad_slo_is_one_line(tmp_path: Path, slo: str) -> None:
    config = tmp_path / "backup.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"primary": {"url": f"s3://{PRIMARY}"}, "replica": {"url": f"s3://{REPLICA}"}},
        "encryption": {"key_env": "TEST_BACKUP_KEY"},
        "application_state": {"s3_objects": {"replication_slo": slo}},
    }))
    done = subprocess.run([sys.executable, "-m", "agentaskit_dr", "appstate", "check-s3",
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TEST_BACKUP_KEY": "00" * 32},
                          check=False)
    assert done.returncode == 2
    assert "replication_slo" in done.stderr
    assert "Traceback" not in done.stderr
