"""Stage by stage: where an encrypted base backup to moto spends its time.

Each stage adds one piece to the one before, on the same server and data, so the
differences say what each piece costs:

1. ``pg_basebackup -D - -Ft -X fetch`` into /dev/null (the server and the tar stream);
2. ``| zstd -1 -T0`` into a local file (compression; the file feeds stage 7);
3. our stream (:func:`stream_basebackup`: the relay that keeps ``backup_manifest``, zstd,
   read by Python), discarded;
4. the same, encrypted (AES-256-GCM STREAM), discarded: our pipeline without S3;
5. moto alone: one multipart upload of as many random bytes as a backup stores (8 MiB
   parts, 4 in flight, no encryption, no PostgreSQL): the emulator's own ingest rate;
6. moto alone: the server-side copy of that object into the second bucket;
7. ``tar --zstd -xf`` of stage 2's file to local disk: the restore's decompress + untar
   with no download and no decryption.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

MIB = 2**20
PART = 8 * MIB
IN_FLIGHT = 4


def _timed(argv: list[str], **options: Any) -> float:
    began = time.monotonic()
    subprocess.run(argv, check=True, **options)
    return time.monotonic() - began


def _compressed_to_file(pg_basebackup: list[str], target: Path) -> float:
    began = time.monotonic()
    with target.open("wb") as out:
        producer = subprocess.Popen(pg_basebackup, stdout=subprocess.PIPE)
        assert producer.stdout is not None
        zstd = subprocess.run(["zstd", "-1", "-T0", "-q", "-c"], stdin=producer.stdout,
                              stdout=out, check=True)
        producer.stdout.close()
    if producer.wait() != 0 or zstd.returncode != 0:
        raise RuntimeError("pg_basebackup | zstd failed")
    return time.monotonic() - began


async def _stream_seconds(settings: dict[str, Any], *, encrypt: bool) -> float:
    from agentaskit_dr.backup.basebackup import StreamResult, stream_basebackup
    from agentaskit_dr.backup.crypto import KeyRing, encrypt_stream
    from agentaskit_dr.config import BackupConfig

    config = BackupConfig.model_validate(settings)
    keyring = KeyRing.from_config(config.encryption)
    began = time.monotonic()
    stream = stream_basebackup(config.postgresql, StreamResult(), label="bench")
    async for _ in encrypt_stream(keyring, "bench", stream) if encrypt else stream:
        pass
    return time.monotonic() - began


async def _moto_alone(endpoint: str, size: int) -> tuple[float, float]:
    """(multipart upload seconds, server-side copy seconds) of ``size`` random bytes."""
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped,unused-ignore]
    from aiobotocore.session import get_session  # type: ignore[import-untyped,unused-ignore]

    key = "bench/moto-alone"
    config = AioConfig(max_pool_connections=32)
    async with get_session().create_client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", config=config,
            aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        began = time.monotonic()
        upload = await s3.create_multipart_upload(Bucket="bench-primary", Key=key)
        limit = asyncio.Semaphore(IN_FLIGHT)
        etags: dict[int, str] = {}

        async def part(number: int, length: int) -> None:
            async with limit:
                answer = await s3.upload_part(
                    Bucket="bench-primary", Key=key, UploadId=upload["UploadId"],
                    PartNumber=number, Body=os.urandom(length))
                etags[number] = answer["ETag"]

        await asyncio.gather(*(part(n + 1, min(PART, size - start))
                               for n, start in enumerate(range(0, size, PART))))
        await s3.complete_multipart_upload(
            Bucket="bench-primary", Key=key, UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]}
                                       for n in sorted(etags)]})
        uploaded = time.monotonic() - began
        began = time.monotonic()
        await s3.copy_object(Bucket="bench-replica", Key=key,
                             CopySource={"Bucket": "bench-primary", "Key": key})
        copied = time.monotonic() - began
        for bucket in ("bench-primary", "bench-replica"):
            await s3.delete_object(Bucket=bucket, Key=key)
    return uploaded, copied


def backup_stages(settings: dict[str, Any], bindir: Path, disk: Path, *, endpoint: str,
                  stored_bytes: int, home: Path) -> dict[str, float]:
    """The stages' seconds (see the module docstring), printed as they come."""
    from agentaskit_dr.local_servers.os_side import give_to_server_user, server_process_options

    pg_basebackup = [str(bindir / "pg_basebackup"), "-d", settings["postgresql"]["dsn"],
                     "-D", "-", "-Ft", "-X", "fetch", "-c", "fast", "--no-sync"]
    compressed = disk / "stage.tar.zst"
    stages: dict[str, float] = {}

    def note(name: str, seconds: float, what: str) -> None:
        stages[name] = round(seconds, 2)
        print(f"  stage {what}: {seconds:.2f}s", flush=True)

    note("pg_basebackup_to_null", _timed(pg_basebackup, stdout=subprocess.DEVNULL),
         "1 pg_basebackup -D - -Ft > /dev/null")
    note("pg_basebackup_zstd", _compressed_to_file(pg_basebackup, compressed),
         "2 pg_basebackup | zstd -1 -T0 > file")
    note("stream", asyncio.run(_stream_seconds(settings, encrypt=False)),
         "3 our stream (manifest relay | zstd | Python), discarded")
    note("stream_encrypt", asyncio.run(_stream_seconds(settings, encrypt=True)),
         "4 our stream + AES-256-GCM, discarded")
    uploaded, copied = asyncio.run(_moto_alone(endpoint, stored_bytes))
    note("moto_ingest", uploaded, f"5 moto alone: multipart upload of {stored_bytes / MIB:.0f}"
         f" MiB ({stored_bytes / MIB / uploaded:.0f} MiB/s)")
    note("moto_copy", copied, "6 moto alone: server-side copy to the second bucket")
    untarred = disk / "stage-untar"
    untarred.mkdir(mode=0o700)
    give_to_server_user(untarred)
    note("untar_zstd_local", _timed(["tar", "--zstd", "-xf", str(compressed), "-C",
                                     str(untarred)], **server_process_options(home)),
         "7 tar --zstd -x of stage 2's file, local")
    shutil.rmtree(untarred, ignore_errors=True)
    compressed.unlink()
    return stages
