"""Bad input and faults: a tampered object, a wrong or missing key, a killed backup."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agentaskit_dr.backup.catalog import read_catalog
from agentaskit_dr.backup.crypto import BackupKeyError, KeyRing, encrypt_bytes
from agentaskit_dr.backup.fetch import BackupDamaged, fetch_base, server_dir
from agentaskit_dr.backup.manifest import TAR_NAME, BackupRecord, StoredObject, object_key
from agentaskit_dr.backup.restore import RestoreFailed, run_restore_test
from agentaskit_dr.backup.run import run_backup
from agentaskit_dr.backup.store import BackupStore
from agentaskit_dr.backup.verify import verify_backups
from agentaskit_dr.local_servers.tcp import wait_for_port
from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.backup_harness import (  # noqa: F401 - fixtures
    KEY_ENV,
    backup_config,
    scratch_fixture,
    write_config,
)
from tests.integration.netcut import Forwarder
from tests.integration.s3_buckets import (
    PRIMARY,
    create_buckets,
    keys_in,
    open_uploads,
    read_object,
    s3_client,
)

pytestmark = pytest.mark.integration


async def test_a_tampered_object_fails_verify_and_restore_naming_it(
    pg_pair: PostgresPair, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_buckets(moto_server)
    config = backup_config(monkeypatch, pg_pair.primary, moto_server, scratch / "staging")
    record, _ = await run_backup(config, "full")
    key = object_key(record.backup_id, TAR_NAME)
    data = bytearray(await read_object(moto_server, PRIMARY, key))
    data[len(data) // 2] ^= 0x01
    async with s3_client(moto_server) as client:
        await client.put_object(Bucket=PRIMARY, Key=key, Body=bytes(data))

    verified = await verify_backups(config)
    with pytest.raises(RestoreFailed, match=key):
        await run_restore_test(config, "staging")

    assert not verified.ok
    assert key in verified.problems[0]
    assert any("failed authentication" in p and key in p for p in verified.problems)
    port = config.restore_targets["staging"].port
    with pytest.raises(TimeoutError):
        wait_for_port(port, timeout=0.2)  # no server was started
    assert not list((scratch / "staging").iterdir())


async def test_a_wrong_key_is_refused_and_nothing_is_written(
    pg_pair: PostgresPair, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_buckets(moto_server)
    config = backup_config(monkeypatch, pg_pair.primary, moto_server, scratch / "staging")
    await run_backup(config, "full")
    before = await keys_in(moto_server, PRIMARY)
    monkeypatch.setenv(KEY_ENV, "a7" * 32)
    wrong = config.model_validate(config.model_dump())

    with pytest.raises(BackupKeyError, match="wrong encryption key"):
        await run_backup(wrong, "full")
    async with BackupStore(wrong.storage) as store:
        catalog = await read_catalog(store, KeyRing.from_config(wrong.encryption))

    assert await keys_in(moto_server, PRIMARY) == before
    assert catalog.records == []
    assert list(catalog.broken) == [before[0].split("/")[1]]


def test_a_missing_key_is_one_line_and_exit_2(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTASKIT_DR_BACKUP_KEY", raising=False)
    done = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "backup", "list", "--config",
         str(Path(__file__).parents[2] / "configs" / "backup.yaml")],
        capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "encryption.key_env" in done.stderr
    assert "AGENTASKIT_DR_BACKUP_KEY" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_backup_killed_mid_upload_is_not_listed_and_the_next_run_cleans_up(
    pg_pair: PostgresPair, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_buckets(moto_server)
    primary = pg_pair.primary
    # Incompressible rows, so the stream outgrows one 8 MiB part and goes multipart.
    primary.sql("CREATE TABLE noise AS SELECT g, decode(string_agg(md5(random()::text), ''),"
                " 'hex') AS b FROM generate_series(1, 40000) g, generate_series(1, 40) h "
                "GROUP BY g")
    config = backup_config(monkeypatch, primary, moto_server, scratch / "staging")
    # The killed run reaches S3 over a slow link (latency added to every chunk): its
    # multipart upload stays open for round trips, so the poll below (straight to moto)
    # catches it open however fast this machine is. Once a run on a quiet machine ended
    # between two polls.
    with Forwarder(port_of(moto_server), name="backup->moto") as slow:
        slow.delay = 0.05
        slowed = backup_config(monkeypatch, primary, f"http://127.0.0.1:{slow.port}",
                               scratch / "staging")
        path = write_config(slowed, scratch / "backup.yaml")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentaskit_dr", "backup", "run", "--kind", "full",
            "--config", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env=dict(os.environ))
        try:
            while not await open_uploads(moto_server, PRIMARY):
                assert proc.returncode is None, "the backup ended before its upload was caught"
                await asyncio.sleep(0.02)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
    async with BackupStore(config.storage) as store:
        after_kill = await read_catalog(store, KeyRing.from_config(config.encryption))

    record, _ = await run_backup(config, "full", stale_upload_age=0)

    assert after_kill.records == []
    assert await open_uploads(moto_server, PRIMARY) == []
    async with BackupStore(config.storage) as store:
        catalog = await read_catalog(store, KeyRing.from_config(config.encryption))
    assert [r.backup_id for r in catalog.records] == [record.backup_id]



async def test_an_authentic_object_tar_cannot_read_fails_the_fetch_without_hanging(
    pg_pair: PostgresPair, moto_server: str, scratch: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes that decrypt but are no zstd tar: tar dies while chunks are being fed."""
    await create_buckets(moto_server)
    config = backup_config(monkeypatch, pg_pair.primary, moto_server, scratch / "staging")
    keyring = KeyRing.from_config(config.encryption)
    key = object_key("20261129T020000Z-F", TAR_NAME)
    garbage = encrypt_bytes(keyring, key, os.urandom(24 << 20))
    async with BackupStore(config.storage) as store:
        await store.put_bytes(key, garbage)
    record = BackupRecord(
        backup_id="20261129T020000Z-F", kind="full", parent=None,
        chain=("20261129T020000Z-F",), pg_version=150020, system_identifier="1", timeline=1,
        start_lsn="0/2000028", stop_lsn="0/2000100", started_at=0.0, stopped_at=1.0,
        database_bytes=1, key_id=keyring.current_id, compression="zstd",
        objects=(StoredObject(TAR_NAME, len(garbage), hashlib.sha256(garbage).hexdigest()),))
    home = server_dir(scratch / "home")

    async with BackupStore(config.storage) as store:
        with pytest.raises(BackupDamaged, match=re.escape(f"object {key}: tar")):
            await asyncio.wait_for(fetch_base(store, keyring, record, scratch / "data",
                                              home=home), timeout=60)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port
