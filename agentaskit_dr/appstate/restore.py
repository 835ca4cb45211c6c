"""``appstate test-restore redis``: the newest (or a named) Redis backup loaded into a
scratch ``redis-server`` and compared with the source; the figures go to the evidence."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.appstate.evidence import JobResult, write_job
from agentaskit_dr.appstate.jobs import latest
from agentaskit_dr.appstate.objects import download
from agentaskit_dr.appstate.redis_job import RedisNotConfigured, restore_test
from agentaskit_dr.backup.crypto import KeyRing

if TYPE_CHECKING:
    from agentaskit_dr.appstate.record import Component
    from agentaskit_dr.backup.store import Which
    from agentaskit_dr.config import BackupConfig


async def redis_restore_test(config: BackupConfig, *, evidence_dir: Path,
                             backup_id: str | None = None, sample: int = 100) -> JobResult:
    """Restore, compare, stop the scratch server; ``outcome`` is ``ok`` when the key
    counts and every sampled key match the source."""
    from agentaskit_dr.backup.store import BackupStore

    settings = config.application_state.redis
    if settings.url is None:
        raise RedisNotConfigured
    keyring = KeyRing.from_config(config.encryption)
    started = time.time()
    job = "appstate-redis-restore"
    async with BackupStore(config.storage) as store:
        record = await latest(store, keyring, "redis", backup_id)
        try:
            with tempfile.TemporaryDirectory(prefix="appstate-restore-redis-") as tmp:
                figures = await restore_test(store, keyring, record, Path(tmp), settings,
                                             sample=sample)
        except Exception as exc:
            write_job(evidence_dir, config.evidence_layout,
                      JobResult(job, record.backup_id, started, "failed",
                                str(exc)))
            raise
    figures["restore_seconds"] = round(time.time() - started, 3)
    figures["data_age_seconds"] = round(started - record.finished_at, 3)
    detail = (f"{sum(figures['restored_keyspace'].values())} keys restored, "
              f"{figures['sampled_keys']} sampled, {len(figures['sample_differs'])} differ")
    if figures["restored_keyspace"] != figures["source_keyspace"]:
        detail += (f"; key counts differ: source {figures['source_keyspace']}, "
                   f"restored {figures['restored_keyspace']}")
    result = JobResult(job, record.backup_id, started, "ok" if figures["matches"] else
                       "differs", detail, extra=figures)
    write_job(evidence_dir, config.evidence_layout, result)
    return result


async def fetch_object(config: BackupConfig, component: Component, name: str, dest: Path, *,
                       backup_id: str | None = None, bucket: Which = "primary") -> Path:
    """Decrypt one object of the newest (or the named) backup to ``dest`` (a file, or a
    directory to put it in): what an operator restores from (``vault operator raft snapshot
    restore``, ``redis-server --dir``, untar the configs). Written under a temporary name
    and renamed only once every byte authenticated and matched the record."""
    from agentaskit_dr.backup.store import BackupStore

    keyring = KeyRing.from_config(config.encryption)
    async with BackupStore(config.storage) as store:
        record = await latest(store, keyring, component, backup_id)
        try:
            item = record.object(name)
        except KeyError:
            names = ", ".join(entry.name for entry in record.objects)
            raise ValueError(f"backup {record.backup_id} has no object {name!r} "
                             f"(it has {names})") from None
        target = _target(dest, name)
        partial = target.with_name(f".{target.name}.partial")
        try:
            await download(store, keyring, record, item, partial, bucket=bucket)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.rename(target)
    return target


def _target(dest: Path, name: str) -> Path:
    return dest / Path(name).name if dest.is_dir() else dest
