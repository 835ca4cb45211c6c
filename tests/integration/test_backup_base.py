"""Base backups of a real PostgreSQL to the moto buckets, restored into a scratch target."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path

import pytest

from agentaskit_dr.backup.catalog import read_catalog
from agentaskit_dr.backup.crypto import KeyRing, decrypt_bytes
from agentaskit_dr.backup.manifest import TAR_NAME, object_key
from agentaskit_dr.backup.restore import run_restore_test
from agentaskit_dr.backup.run import run_backup
from agentaskit_dr.backup.store import BackupStore
from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.backup_harness import backup_config, scratch_fixture  # noqa: F401
from tests.integration.s3_buckets import PRIMARY, REPLICA, create_buckets, keys_in, s3_client

pytestmark = pytest.mark.integration


async def test_full_backup_lands_in_both_buckets_and_restores_row_by_row(
    pg_pair: PostgresPair, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_buckets(moto_server)
    primary = pg_pair.primary
    primary.sql("CREATE TABLE items (id int PRIMARY KEY, note text);"
                "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    config = backup_config(monkeypatch, primary, moto_server, scratch / "staging")

    record, decision = await run_backup(config, "full")

    assert decision.kind == "full"
    assert record.kind == "full"
    keys = [object_key(record.backup_id, name) for name in
            (TAR_NAME, "backup_manifest", "backup.json")]
    assert set(keys) <= set(await keys_in(moto_server, PRIMARY))
    assert set(keys) <= set(await keys_in(moto_server, REPLICA))
    async with BackupStore(config.storage) as store:
        catalog = await read_catalog(store, KeyRing.from_config(config.encryption))
    assert [r.backup_id for r in catalog.records] == [record.backup_id]
    assert record.timeline == 1
    assert record.start_lsn <= record.stop_lsn

    primary.sql("INSERT INTO items VALUES (5001, 'after the backup')")
    report = await run_restore_test(config, "staging", keep=False)

    assert report.ok, report.problems
    assert report.backup_id == record.backup_id
    assert {"database": "postgres", "table": "public.items", "rows": 5000} in report.tables
    assert report.relations_checked > 0
    assert not list((scratch / "staging").iterdir())


async def test_after_losing_the_primary_bucket_the_replica_restores(
    pg_pair: PostgresPair, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_buckets(moto_server)
    primary = pg_pair.primary
    primary.sql("CREATE TABLE kept AS SELECT g FROM generate_series(1, 777) g")
    config = backup_config(monkeypatch, primary, moto_server, scratch / "staging")
    # The replica's copy streamed from the primary, as for objects past S3's copy limit.
    monkeypatch.setattr("agentaskit_dr.backup.run.COPY_LIMIT", 0)
    record, _ = await run_backup(config, "full")
    async with s3_client(moto_server) as client:
        for key in await keys_in(moto_server, PRIMARY):
            await client.delete_object(Bucket=PRIMARY, Key=key)

    report = await run_restore_test(config, "staging", bucket="replica")

    assert report.ok, report.problems
    assert report.backup_id == record.backup_id
    assert {"database": "postgres", "table": "public.kept", "rows": 777} in report.tables


async def test_the_stored_manifest_is_the_tar_streams_own_last_member(
    pg_pair: PostgresPair, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_buckets(moto_server)
    pg_pair.primary.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g")
    config = backup_config(monkeypatch, pg_pair.primary, moto_server, scratch / "staging")
    keyring = KeyRing.from_config(config.encryption)

    record, _ = await run_backup(config, "full")

    tar_key = object_key(record.backup_id, TAR_NAME)
    manifest_key = object_key(record.backup_id, "backup_manifest")
    async with BackupStore(config.storage) as store:
        compressed = decrypt_bytes(keyring, tar_key, await store.get_bytes(tar_key))
        manifest = decrypt_bytes(keyring, manifest_key, await store.get_bytes(manifest_key))
    zstd = await asyncio.create_subprocess_exec(
        "zstd", "-d", "-q", "-c", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    plain, _ = await zstd.communicate(compressed)
    assert zstd.returncode == 0
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
        members = tar.getmembers()
        extracted = tar.extractfile(members[-1])
        assert extracted is not None
        last = extracted.read()

    assert members[-1].name == "backup_manifest"
    assert last == manifest
    assert record.object(TAR_NAME).plain_size == len(compressed)
    assert json.loads(manifest)["PostgreSQL-Backup-Manifest-Version"] >= 1
