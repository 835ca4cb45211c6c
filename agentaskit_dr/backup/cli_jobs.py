"""The bodies of the backup commands: run the job, print the answer, write evidence."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from agentaskit_dr.backup.evidence import job_evidence, write_job_evidence
from agentaskit_dr.backup.progress import transfer_progress

if TYPE_CHECKING:
    from agentaskit_dr.backup.manifest import BackupRecord
    from agentaskit_dr.config import BackupConfig

EXIT_OK, EXIT_FAILED = 0, 1
_KIND_TEXT = {
    "full": "full",
    "incremental": "incremental (block-level, pg_combinebackup at restore)",
    "restore-point": "restore point (PostgreSQL < 17: a full + WAL verified in the archive)",
}


def _stamp(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def _evidence(config: BackupConfig, job: str, run_id: str, started: float, *, outcome: str,
              reason: str, detail: str, extra: dict[str, Any]) -> None:
    write_job_evidence(config.evidence_dir, job_evidence(
        job=job, run_id=run_id, started_at=started, finished_at=time.time(),
        outcome=outcome, reason=reason, detail=detail, extra=extra), config.evidence_layout)


def record_row(record: BackupRecord) -> dict[str, Any]:
    return {
        "backup_id": record.backup_id, "kind": record.kind, "parent": record.parent,
        "timeline": record.timeline, "start_lsn": record.start_lsn,
        "stop_lsn": record.stop_lsn, "started_at": _stamp(record.started_at),
        "stopped_at": _stamp(record.stopped_at), "database_bytes": record.database_bytes,
        "stored_bytes": record.stored_bytes, "pg_version": record.pg_version,
        "key_id": record.key_id, "meaning": _KIND_TEXT[record.kind],
    }


async def run(config: BackupConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.backup.run import run_backup

    started = time.time()
    with transfer_progress(f"backup {args.kind}") as on_bytes:
        try:
            record, decision = await run_backup(config, args.kind, on_bytes=on_bytes)
        except Exception as exc:
            _evidence(config, f"backup-{args.kind}", f"backup-{args.kind}-"
                      f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}", started,
                      outcome="failed", reason=f"backup run --kind {args.kind}",
                      detail=str(exc), extra={})
            raise
    row = record_row(record) | {"reason": decision.reason,
                                "seconds": round(record.stopped_at - record.started_at, 3)}
    _evidence(config, f"backup-{record.kind}", f"backup-{record.backup_id}", started,
              outcome="ok", reason=decision.reason,
              detail=f"backup {record.backup_id} written", extra=row)
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        mib = record.stored_bytes / 2**20
        print(f"{record.kind} backup {record.backup_id}: {mib:.1f} MiB stored in "
              f"{row['seconds']:g}s, WAL {record.start_lsn}..{record.stop_lsn} on timeline "
              f"{record.timeline} ({decision.reason})")
    return EXIT_OK


async def list_backups(config: BackupConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.backup.catalog import read_catalog
    from agentaskit_dr.backup.crypto import KeyRing
    from agentaskit_dr.backup.store import BackupStore

    async with BackupStore(config.storage) as store:
        catalog = await read_catalog(store, KeyRing.from_config(config.encryption),
                                     bucket=args.bucket)
    rows = [record_row(r) for r in catalog.records]
    if args.json:
        print(json.dumps({"backups": rows, "unfinished": sorted(catalog.leftovers),
                          "broken": catalog.broken}, indent=2))
        return EXIT_OK
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table("backup", "kind", "ended", "timeline", "WAL", "stored MiB", "meaning")
        for row in rows:
            table.add_row(row["backup_id"], row["kind"], row["stopped_at"],
                          str(row["timeline"]), f"{row['start_lsn']}..{row['stop_lsn']}",
                          f"{row['stored_bytes'] / 2**20:.1f}", row["meaning"])
        Console().print(table)
    else:
        for row in rows:
            print(f"{row['backup_id']}  {row['kind']:<13} ended {row['stopped_at']}  "
                  f"timeline {row['timeline']}  WAL {row['start_lsn']}..{row['stop_lsn']}  "
                  f"{row['stored_bytes'] / 2**20:.1f} MiB")
    for backup_id in sorted(catalog.leftovers):
        print(f"{backup_id}  unfinished (no record: never restored; pruned after a day)")
    for backup_id, why in sorted(catalog.broken.items()):
        print(f"{backup_id}  BROKEN: {why}")
    return EXIT_OK


async def prune(config: BackupConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.backup.prune import prune as run_prune
    from agentaskit_dr.backup.wal_listing import wal_files

    started = time.time()
    plan = await run_prune(config, dry_run=args.dry_run, wal_files=wal_files)
    answer = {"dry_run": args.dry_run, "delete_backups": plan.delete_backups,
              "delete_unfinished": plan.delete_leftovers, "delete_wal": plan.delete_wal,
              "kept": plan.kept}
    if not args.dry_run:
        _evidence(config, "backup-prune", f"prune-{time.strftime('%Y%m%dT%H%M%SZ')}",
                  started, outcome="ok", reason="retention", detail="pruned", extra=answer)
    if args.json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    for backup_id in plan.delete_backups + plan.delete_leftovers:
        print(f"{verb} backup {backup_id}")
    if plan.delete_wal:
        print(f"{verb} {len(plan.delete_wal)} WAL files ({plan.delete_wal[0]} .. "
              f"{plan.delete_wal[-1]})")
    for backup_id, why in sorted(plan.kept.items()):
        print(f"keep {backup_id}: {why}")
    return EXIT_OK


async def verify_backup(config: BackupConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.backup.verify import verify_backups
    from agentaskit_dr.backup.wal_listing import list_wal

    started = time.time()
    with transfer_progress("verify") as on_bytes:
        report = await verify_backups(config, list_wal=list_wal, on_bytes=on_bytes)
    outcome = "ok" if report.ok else "failed"
    _evidence(config, "verify-backup", f"verify-{time.strftime('%Y%m%dT%H%M%SZ')}", started,
              outcome=outcome, reason="verify-backup",
              detail=report.problems[0] if report.problems else "all good",
              extra=report.as_json())
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(f"checked {len(report.backups)} backups, {report.objects_checked} objects "
              f"({report.bytes_checked / 2**20:.1f} MiB) in both buckets and "
              f"{report.wal_segments_listed} archived WAL files in {report.seconds:g}s")
    for problem in report.problems:
        print(f"agentaskit-dr verify-backup: {problem}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


async def restore_test(config: BackupConfig, args: argparse.Namespace) -> int:
    from agentaskit_dr.backup.restore import RestoreReport
    from agentaskit_dr.backup.restore import run_restore_test as run_restore
    from agentaskit_dr.backup.wal_listing import stage_wal
    from agentaskit_dr.backup_command import parse_target

    to_time, to_lsn = parse_target(args.to) if args.to else (None, None)
    started = time.time()
    run_id = f"restore-{args.target}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}"
    try:
        with transfer_progress(f"restore to {args.target}") as on_bytes:
            report = await run_restore(config, args.target, to_time=to_time, to_lsn=to_lsn,
                                       keep=args.keep, stage_wal=stage_wal,
                                       on_bytes=on_bytes, bucket=args.bucket)
    except Exception as exc:
        failed = RestoreReport(target=args.target, to_time=to_time, to_lsn=to_lsn,
                               started_at=started, problems=[str(exc)])
        _evidence(config, "test-restore", run_id, started, outcome="failed",
                  reason=f"--target {args.target}", detail=str(exc), extra=failed.as_json())
        raise
    outcome = "ok" if report.ok else "failed"
    _evidence(config, "test-restore", run_id, started, outcome=outcome,
              reason=f"--target {args.target}",
              detail=report.problems[0] if report.problems else "restored and checked",
              extra=report.as_json())
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(f"restored {report.backup_id} (chain {' + '.join(report.chain)}) into "
              f"{args.target} in {report.restore_seconds}s: {report.bytes_downloaded / 2**20:.1f}"
              f" MiB downloaded, {report.wal_files_staged} WAL files, recovered to "
              f"{report.recovered_to_lsn} at {_stamp(report.recovered_to_time)} (data age "
              f"{report.rpo_seconds}s); amcheck {report.relations_checked} relations, "
              f"{len(report.corruption)} corrupt")
        for table in report.tables:
            print(f"  {table['database']}: {table['table']}: {table['rows']} rows")
    for problem in [*report.corruption, *report.problems]:
        print(f"agentaskit-dr test-restore: {problem}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED
