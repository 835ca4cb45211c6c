"""Redis: the RDB over the replication protocol, the AOF files beside the server, their
checks, and the restore test into a scratch ``redis-server``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agentaskit_dr.appstate.jobs import Collected
from agentaskit_dr.appstate.objects import download, read_file, upload
from agentaskit_dr.appstate.record import AppStateRecord, object_key
from agentaskit_dr.appstate.redis_sync import RedisSyncError, open_rdb_stream
from agentaskit_dr.appstate.redis_tools import ScratchRedis, check_aof, check_rdb, scan_sample
from agentaskit_dr.backup.manifest import StoredObject

if TYPE_CHECKING:
    from agentaskit_dr.backup.crypto import KeyRing
    from agentaskit_dr.backup.store import BackupStore
    from agentaskit_dr.config._backup import RedisStateBackup

RDB_NAME = "dump.rdb"
AOF_PREFIX = "aof/"
_KEYSPACE = re.compile(r"keys=(\d+)")


class RedisNotConfigured(ValueError):
    def __init__(self) -> None:
        super().__init__("application_state.redis.url: not set; nothing to back up")


def aof_files(data_dir: Path) -> list[Path]:
    """The AOF files under Redis's ``dir``: every file of ``appendonlydir`` (Redis 7
    multi-part: manifest, base and increments), else ``appendonly.aof``."""
    multi = data_dir / "appendonlydir"
    if multi.is_dir():
        return sorted(path for path in multi.iterdir() if path.is_file())
    single = data_dir / "appendonly.aof"
    return [single] if single.is_file() else []


async def keyspace(url: str, password: str | None) -> dict[str, int]:
    """Keys per database (``INFO keyspace``), like ``{"db0": 1000}``."""
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.retry import Retry

    client = aioredis.Redis.from_url(url, password=password, socket_timeout=10.0,
                                     socket_connect_timeout=10.0,
                                     retry=Retry(NoBackoff(), 0))
    try:
        info: dict[str, Any] = await client.info("keyspace")
    except RedisError as exc:
        where = f"{urlsplit(url).hostname}:{urlsplit(url).port}"
        verb = "cannot connect to" if isinstance(exc, ConnectionError | RedisConnectionError) \
            else "INFO keyspace on"
        raise RedisSyncError(f"{verb} {where}: {type(exc).__name__}") from None
    finally:
        await client.aclose()
    return {db: int(stats["keys"]) for db, stats in info.items() if isinstance(stats, dict)}


async def collect_redis(store: BackupStore, keyring: KeyRing, backup_id: str, workdir: Path,
                        *, settings: RedisStateBackup) -> Collected:
    """Upload the RDB (and AOF files) of the configured server; check each copy."""
    if settings.url is None:
        raise RedisNotConfigured
    password = settings.password()
    keys_before = await keyspace(settings.url, password)
    stream = await open_rdb_stream(settings.url, password, prepare_timeout=settings.timeout)
    local_rdb = workdir / RDB_NAME
    objects = [await upload(store, keyring, object_key("redis", backup_id, RDB_NAME), RDB_NAME,
                            stream.chunks(), tee=local_rdb)]
    checks = {RDB_NAME: await check_rdb(local_rdb, workdir)}
    aof: list[str] = []
    if settings.data_dir is not None:
        aof_dir = workdir / "aof"
        aof_dir.mkdir()
        for path in aof_files(settings.data_dir):
            name = AOF_PREFIX + path.name
            aof.append(path.name)
            objects.append(await upload(store, keyring, object_key("redis", backup_id, name),
                                        name, read_file(path), tee=aof_dir / path.name))
        if aof:
            checks["aof"] = await check_aof(_aof_entry(aof_dir, aof), workdir, name="aof")
    return Collected(
        objects=objects, checks=checks,
        source={"url": settings.url, "keyspace": keys_before, "diskless": stream.diskless,
                "rdb_bytes": objects[0].plain_size, "aof_files": aof,
                "data_dir": None if settings.data_dir is None else str(settings.data_dir)})


def _aof_entry(aof_dir: Path, names: list[str]) -> Path:
    """What ``redis-check-aof`` is given: the Redis 7 manifest, or the single file."""
    manifests = [name for name in names if name.endswith(".manifest")]
    return aof_dir / (manifests[0] if manifests else names[0])


async def check_redis_files(record: AppStateRecord, files: dict[str, Path],
                            workdir: Path) -> dict[str, str]:
    """Re-run the checks on downloaded copies (``verify``)."""
    checks = {RDB_NAME: await check_rdb(files[RDB_NAME], workdir)}
    aof = {name.removeprefix(AOF_PREFIX): path for name, path in files.items()
           if name.startswith(AOF_PREFIX)}
    if aof:
        aof_dir = workdir / "aof"
        aof_dir.mkdir(exist_ok=True)
        for name, path in aof.items():
            path.rename(aof_dir / name)
        checks["aof"] = await check_aof(_aof_entry(aof_dir, sorted(aof)), workdir, name="aof")
    return checks


async def restore_test(store: BackupStore, keyring: KeyRing, record: AppStateRecord,
                       workdir: Path, settings: RedisStateBackup, *,
                       sample: int = 100) -> dict[str, Any]:
    """Load the backup's RDB into a scratch ``redis-server`` and compare it with the source:
    keys per database and a sample of keys (type and ``DUMP`` payload)."""
    import redis.asyncio as aioredis

    item: StoredObject = record.object(RDB_NAME)
    await download(store, keyring, record, item, workdir / RDB_NAME)
    password = settings.password()
    assert settings.url is not None
    source_keys = await keyspace(settings.url, password)
    async with ScratchRedis(workdir) as scratch:
        restored_keys = await keyspace(f"redis://127.0.0.1:{scratch.port}/0", None)
        checked, differ = 0, []
        for db in sorted(restored_keys):
            index = int(db.removeprefix("db"))
            restored = aioredis.Redis(host="127.0.0.1", port=scratch.port, db=index)
            source = aioredis.Redis.from_url(
                urlsplit(settings.url)._replace(path=f"/{index}").geturl(), password=password)
            try:
                async for key in scan_sample(restored, sample):
                    checked += 1
                    if (await restored.dump(key)) != (await source.dump(key)):
                        differ.append(f"{db}:{key.decode(errors='replace')}")
            finally:
                await restored.aclose()
                await source.aclose()
    figures: dict[str, Any] = {
        "source_keyspace": source_keys, "restored_keyspace": restored_keys,
        "sampled_keys": checked, "sample_differs": differ[:20],
        "matches": restored_keys == source_keys and not differ}
    aof = [item for item in record.objects if item.name.startswith(AOF_PREFIX)]
    if aof:
        figures["aof_restored_keyspace"] = await _load_aof(store, keyring, record, aof, workdir)
    return figures


async def _load_aof(store: BackupStore, keyring: KeyRing, record: AppStateRecord,
                    aof: list[StoredObject], workdir: Path) -> dict[str, int]:
    """Keys per database of a scratch server started from the AOF copy alone (Redis 7's
    ``appendonlydir``, or a single ``appendonly.aof`` that it upgrades on load)."""
    root = workdir / "from-aof"
    multi = any(item.name.endswith(".manifest") for item in aof)
    folder = root / "appendonlydir" if multi else root
    folder.mkdir(parents=True)
    for item in aof:
        await download(store, keyring, record, item, folder / item.name.removeprefix(AOF_PREFIX))
    async with ScratchRedis(root, aof=True) as scratch:
        return await keyspace(f"redis://127.0.0.1:{scratch.port}/0", None)
