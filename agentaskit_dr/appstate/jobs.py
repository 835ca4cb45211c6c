"""The jobs every application-state component shares: back up, verify, prune, list.

A component supplies a *collector* (uploads its objects, runs its checks on the copies
it kept on the way, returns :class:`Collected`) and a *file check* (the same checks on
downloaded copies). A backup is good once its record is written, and only after every
check passed; a failed job removes what it uploaded. Each job writes one evidence file,
``<evidence_dir>/backups/appstate-<component>[-<action>]-<id>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agentaskit_dr.appstate.evidence import JobResult, write_job
from agentaskit_dr.appstate.objects import (
    AppStateDamaged,
    download,
    read_catalog,
    write_record,
)
from agentaskit_dr.appstate.record import (
    RECORD_NAME,
    AppStateRecord,
    Component,
    backup_id_time,
    new_backup_id,
    object_key,
)
from agentaskit_dr.backup.crypto import KeyRing
from agentaskit_dr.backup.manifest import StoredObject

if TYPE_CHECKING:
    from agentaskit_dr.backup.store import BackupStore, Which
    from agentaskit_dr.config import BackupConfig

log = structlog.get_logger(__name__)
#: Objects of a job that died are removed by ``prune`` once they are this old.
LEFTOVER_AGE = 86400.0


class Unchanged(Exception):
    """The collector found nothing new to back up (configs on change); no backup."""


@dataclass
class Collected:
    objects: list[StoredObject]
    source: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)


Collector = Callable[["BackupStore", KeyRing, str, Path], Awaitable[Collected]]
FileCheck = Callable[[AppStateRecord, dict[str, Path], Path], Awaitable[dict[str, str]]]


def _store(config: BackupConfig) -> BackupStore:
    from agentaskit_dr.backup.store import BackupStore

    return BackupStore(config.storage)


async def run_backup(config: BackupConfig, component: Component, collect: Collector, *,
                     evidence_dir: Path, now: float | None = None,
                     record_unchanged: bool = True) -> JobResult:
    """Take one backup of ``component``; the result, with its evidence file written
    (for an ``unchanged`` outcome only if ``record_unchanged``). Failures are re-raised
    after their evidence is written and the upload removed."""
    keyring = KeyRing.from_config(config.encryption)
    started = time.time() if now is None else now
    backup_id = new_backup_id(started)
    job = f"appstate-{component}"
    log.info("appstate_backup_started", component=component, backup_id=backup_id)
    try:
        async with _store(config) as store:
            try:
                with tempfile.TemporaryDirectory(prefix=f"appstate-{component}-") as tmp:
                    collected = await collect(store, keyring, backup_id, Path(tmp))
                record = AppStateRecord(
                    component=component, backup_id=backup_id, started_at=started,
                    finished_at=time.time(), key_id=keyring.current_id,
                    objects=tuple(collected.objects), source=collected.source,
                    checks=collected.checks)
                await write_record(store, keyring, record)
            except Unchanged:
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(_remove(store, component, backup_id, tolerant=True))
                raise
    except Unchanged as exc:
        result = JobResult(job, backup_id, started, "unchanged", str(exc))
        if record_unchanged:
            write_job(evidence_dir, config.evidence_layout, result)
        return result
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        write_job(evidence_dir, config.evidence_layout,
                  JobResult(job, backup_id, started, "failed", reason))
        log.warning("appstate_backup_failed", component=component, backup_id=backup_id,
                    reason=reason)
        raise
    result = JobResult(job, backup_id, started, "ok", f"{len(record.objects)} objects",
                       extra={**record.summary(), "checks": dict(record.checks),
                              "source": dict(record.source)})
    write_job(evidence_dir, config.evidence_layout, result)
    log.info("appstate_backup_done", component=component, backup_id=backup_id,
             objects=len(record.objects), stored_bytes=record.stored_bytes)
    return result


async def _remove(store: BackupStore, component: Component, backup_id: str, *,
                  tolerant: bool = False) -> None:
    """Delete a backup from each bucket, its record first (so what a crash leaves behind
    is a leftover, never a good backup with objects missing). ``tolerant``: a bucket that
    fails is logged and the other one still cleaned (cleanup after a failed job)."""
    from agentaskit_dr.backup.store import StoreError

    prefix = object_key(component, backup_id, "")
    both: tuple[Which, ...] = ("primary", "replica")  # the replica too under S3 replication
    for which in both:
        try:
            await store.delete([object_key(component, backup_id, RECORD_NAME)], bucket=which)
            keys = [info.key for info in await store.list(prefix, bucket=which)]
            if keys:
                await store.delete(keys, bucket=which)
        except StoreError as exc:
            if not tolerant:
                raise
            log.warning("appstate_cleanup_failed", component=component, backup_id=backup_id,
                        bucket=which, reason=str(exc))


async def list_backups(config: BackupConfig, component: Component, *,
                       bucket: Which = "primary") -> list[AppStateRecord]:
    """The good backups of ``component``, oldest first."""
    keyring = KeyRing.from_config(config.encryption)
    async with _store(config) as store:
        return (await read_catalog(store, keyring, component, bucket=bucket)).records


async def latest(store: BackupStore, keyring: KeyRing, component: Component,
                 backup_id: str | None = None) -> AppStateRecord:
    """The newest good backup (or the one named); ValueError when there is none."""
    records = (await read_catalog(store, keyring, component)).records
    if backup_id is not None:
        records = [record for record in records if record.backup_id == backup_id]
        if not records:
            raise ValueError(f"no good {component} backup with id {backup_id!r}")
    if not records:
        raise ValueError(f"no good {component} backup in the primary bucket")
    return records[-1]


async def verify_record(store: BackupStore, keyring: KeyRing, record: AppStateRecord,
                        check: FileCheck, workdir: Path) -> dict[str, str]:
    """Every object in each bucket written to: present, same stored checksum as the
    record, authenticates, same plaintext checksum; then the component's checks on the
    primary's copies. :class:`AppStateDamaged` names the first bad object."""
    files: dict[str, Path] = {}
    buckets: tuple[Which, ...] = ("primary", "replica")
    for which in buckets:
        for item in record.objects:
            key = object_key(record.component, record.backup_id, item.name)
            info = await store.head(key, bucket=which)
            if info is None:
                raise AppStateDamaged(f"{which} {key}: missing")
            if info.sha256 != item.sha256 or info.size != item.size:
                raise AppStateDamaged(f"{which} {key}: stored SHA-256/size differ from the "
                                      "record")
            dest = workdir / f"{which}-{len(files)}"
            await download(store, keyring, record, item, dest, bucket=which)
            if which == "primary":
                files[item.name] = dest
            else:
                dest.unlink()
    return await check(record, files, workdir)


async def verify(config: BackupConfig, component: Component, check: FileCheck, *,
                 evidence_dir: Path, backup_id: str | None = None,
                 every: bool = False) -> JobResult:
    """``appstate verify``: the newest (or the named, or ``every`` retained) backup, in
    both buckets; the first bad one fails the job naming its object."""
    keyring = KeyRing.from_config(config.encryption)
    started = time.time()
    job = f"appstate-{component}-verify"
    async with _store(config) as store:
        if every:
            catalog = await read_catalog(store, keyring, component)
            if catalog.unreadable:
                first = next(iter(catalog.unreadable.values()))
                write_job(evidence_dir, config.evidence_layout,
                          JobResult(job, new_backup_id(started), started,
                                    "failed", first))
                raise AppStateDamaged(first)
            records = catalog.records
        else:
            records = [await latest(store, keyring, component, backup_id)]
        checks: dict[str, dict[str, str]] = {}
        for record in records:
            try:
                with tempfile.TemporaryDirectory(prefix=f"appstate-verify-{component}-") as tmp:
                    checks[record.backup_id] = await verify_record(store, keyring, record,
                                                                   check, Path(tmp))
            except Exception as exc:
                write_job(evidence_dir, config.evidence_layout,
                          JobResult(job, record.backup_id, started, "failed",
                                    str(exc)))
                raise
    newest = records[-1] if records else None
    result = JobResult(
        job, newest.backup_id if newest else new_backup_id(started), started, "ok",
        f"{len(records)} backups, both buckets, every object",
        extra={"checks": checks[newest.backup_id] if newest else {},
               "verified": list(checks), **(newest.summary() if newest else {})})
    write_job(evidence_dir, config.evidence_layout, result)
    return result


@dataclass
class PrunePlan:
    keep: list[str]
    delete: list[str]
    leftovers: list[str]


def plan_prune(records: list[AppStateRecord], leftovers: list[str], *, retention: float,
               now: float) -> PrunePlan:
    """Backups older than ``retention`` go, except the newest good one; leftovers of
    dead jobs go after a day."""
    expired = [r.backup_id for r in records[:-1] if r.finished_at < now - retention]
    keep = [r.backup_id for r in records if r.backup_id not in expired]
    dead = [i for i in leftovers if (backup_id_time(i) or now) < now - LEFTOVER_AGE]
    return PrunePlan(keep=keep, delete=expired, leftovers=dead)


async def prune(config: BackupConfig, component: Component, retention: float, *,
                dry_run: bool, evidence_dir: Path, now: float | None = None) -> PrunePlan:
    """Apply the retention to both buckets (the record goes first); the plan."""
    keyring = KeyRing.from_config(config.encryption)
    moment = time.time() if now is None else now
    async with _store(config) as store:
        catalog = await read_catalog(store, keyring, component)
        plan = plan_prune(catalog.records, list(catalog.leftovers), retention=retention,
                          now=moment)
        if not dry_run:
            for backup_id in [*plan.delete, *plan.leftovers]:
                await _remove(store, component, backup_id)
                log.info("appstate_backup_pruned", component=component, backup_id=backup_id)
    write_job(evidence_dir, config.evidence_layout, JobResult(
        f"appstate-{component}-prune", new_backup_id(moment), moment, "ok",
        "dry run" if dry_run else f"{len(plan.delete) + len(plan.leftovers)} deleted",
        extra={"dry_run": dry_run, "keep": plan.keep, "delete": plan.delete,
               "leftovers": plan.leftovers, "retention_seconds": retention}))
    return plan
