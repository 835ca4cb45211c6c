"""The ``appstate`` actions ``backup|list|verify|prune|test-restore`` for Redis, Vault
and config files (``--config`` is the backup YAML). Exit 0: done and good (or unchanged);
1: a backup or check failed (named on stderr); 2: bad input; 3: a server or bucket could
not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentaskit_dr.appstate.record import Component
    from agentaskit_dr.config import BackupConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
_COMPONENTS = ("redis", "vault", "configs")
DEFAULT_EVIDENCE_DIR = Path("/var/lib/agentaskit-dr/evidence")


def add_backup_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backup``, ``list``, ``verify``, ``prune``, ``test-restore`` to ``appstate``."""
    backup = actions.add_parser("backup", help="take a backup now (encrypted, both buckets)")
    backup.add_argument("--watch", action="store_true",
                        help="configs: keep watching, back up each change (every --interval)")
    backup.add_argument("--interval", type=float, default=60.0,
                        help="seconds between looks with --watch (default 60)")
    listing = actions.add_parser("list", help="the good backups in a bucket")
    listing.add_argument("--bucket", choices=("primary", "replica"), default="primary")
    verify = actions.add_parser("verify", help="check the newest (or --id) backup in both "
                                "buckets: checksums, authentication, the component's checks")
    verify.add_argument("--all", dest="every", action="store_true",
                        help="every retained backup, not only the newest")
    prune = actions.add_parser("prune", help="delete what the retention allows")
    prune.add_argument("--dry-run", action="store_true", help="show it, delete nothing")
    restore = actions.add_parser("test-restore", help="redis: load the newest (or --id) RDB "
                                 "into a scratch redis-server and compare it with the source")
    fetch = actions.add_parser("fetch", help="decrypt one object of the newest (or --id) "
                               "backup to a local file, to restore from")
    fetch.add_argument("--object", dest="object_name", required=True,
                       help="dump.rdb, aof/<file>, vault.snap or configs.tar.gz")
    fetch.add_argument("--to", dest="dest", required=True, type=Path,
                       help="a file, or a directory to put it in")
    fetch.add_argument("--bucket", choices=("primary", "replica"), default="primary")
    for command in (verify, restore, fetch):
        command.add_argument("--id", dest="backup_id", default=None, help="a backup id")
    for command in (backup, listing, verify, prune, restore, fetch):
        choices = ("redis",) if command is restore else _COMPONENTS
        command.add_argument("component", choices=choices)
        command.add_argument("--config", required=True, type=Path, help="backup YAML file")
        command.add_argument("--json", action="store_true", help="the result as JSON")
        command.add_argument("--evidence-dir", type=Path, default=None,
                             help="evidence goes to DIR/backups/ (default: the config's "
                             f"evidence_dir, else {DEFAULT_EVIDENCE_DIR})")
    for command, name in ((backup, "backup"), (listing, "list"), (verify, "verify"),
                          (prune, "prune"), (restore, "test-restore"), (fetch, "fetch")):
        command.set_defaults(appstate_command=name)


def evidence_dir(config: BackupConfig, given: Path | None) -> Path:
    if given is not None:
        return given
    configured = getattr(config, "evidence_dir", None)
    return configured if isinstance(configured, Path) else DEFAULT_EVIDENCE_DIR


def _print(args: argparse.Namespace, document: Any, text: str) -> None:
    print(json.dumps(document, indent=2, default=str) if args.json else text)


async def _dispatch(config: BackupConfig, args: argparse.Namespace) -> int:
    import asyncio

    from agentaskit_dr.appstate import components, jobs

    component: Component = args.component
    where = evidence_dir(config, args.evidence_dir)
    action = args.appstate_command
    if action == "backup":
        if args.watch:
            if component != "configs":
                raise ValueError("--watch is for configs (on change); schedule the others")
            await components.watch_configs(config, config_file=args.config,
                                           evidence_dir=where, interval=args.interval,
                                           stop=asyncio.Event())
            return EXIT_OK
        collect = components.collector(config, component, config_file=args.config)
        result = await jobs.run_backup(config, component, collect, evidence_dir=where)
        _print(args, result.to_json(),
               f"{component} backup {result.backup_id}: {result.outcome} ({result.detail})")
        return EXIT_OK
    if action == "list":
        records = await jobs.list_backups(config, component, bucket=args.bucket)
        lines = [f"{r.backup_id}  {r.summary()['finished_at']}  {len(r.objects)} objects  "
                 f"{r.stored_bytes} bytes" for r in records]
        _print(args, [r.summary() for r in records], "\n".join(lines) or "no backups")
        return EXIT_OK
    if action == "verify":
        result = await jobs.verify(config, component, components.file_check(component),
                                   evidence_dir=where, backup_id=args.backup_id,
                                   every=args.every)
        checks = "; ".join(f"{k}: {v}" for k, v in result.extra["checks"].items())
        _print(args, result.to_json(), f"{component}: {result.detail} verified "
               f"(newest {result.backup_id}: {checks or 'no backups'})")
        return EXIT_OK
    if action == "prune":
        plan = await jobs.prune(config, component, components.retention(config, component),
                                dry_run=args.dry_run, evidence_dir=where)
        verb = "would delete" if args.dry_run else "deleted"
        _print(args, {"dry_run": args.dry_run, "keep": plan.keep, "delete": plan.delete,
                      "leftovers": plan.leftovers},
               f"{verb} {len(plan.delete)} backups and {len(plan.leftovers)} leftovers "
               f"({', '.join([*plan.delete, *plan.leftovers]) or 'none'}); "
               f"keep {len(plan.keep)}")
        return EXIT_OK
    if action == "fetch":
        from agentaskit_dr.appstate.restore import fetch_object

        target = await fetch_object(config, component, args.object_name, args.dest,
                                    backup_id=args.backup_id, bucket=args.bucket)
        _print(args, {"path": str(target)}, f"{args.object_name} -> {target}")
        return EXIT_OK
    from agentaskit_dr.appstate.restore import redis_restore_test

    result = await redis_restore_test(config, evidence_dir=where, backup_id=args.backup_id)
    _print(args, result.to_json(), f"redis restore test of {result.backup_id}: "
           f"{result.outcome} ({result.detail})")
    return EXIT_OK if result.outcome == "ok" else EXIT_FAILED


def run_backup_action(args: argparse.Namespace) -> int:
    """Run one action; expected failures are one line on stderr."""
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.appstate.configs import ConfigsError
    from agentaskit_dr.appstate.objects import AppStateDamaged
    from agentaskit_dr.appstate.redis_sync import RedisSyncError
    from agentaskit_dr.appstate.redis_tools import RedisCheckFailed
    from agentaskit_dr.appstate.vault import VaultSnapshotError
    from agentaskit_dr.backup.crypto import BackupKeyError
    from agentaskit_dr.backup.store import StoreError, StoreUnavailable
    from agentaskit_dr.config import load_backup_config
    from agentaskit_dr.config_cli import load_or_explain

    name = f"appstate {args.appstate_command} {args.component}"
    logs.configure("info" if not sys.stderr.isatty() else "warning", stream=sys.stderr)
    config = load_or_explain(args.config, load_backup_config)
    if config is None:
        return EXIT_USAGE
    try:
        return asyncio.run(_dispatch(config, args))
    except (BackupKeyError, ConfigsError, ValueError) as exc:
        print(f"agentaskit-dr {name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreUnavailable, RedisSyncError) as exc:
        print(f"agentaskit-dr {name}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if "connect" in str(exc) or isinstance(
            exc, StoreUnavailable) else EXIT_FAILED
    except (StoreError, AppStateDamaged, RedisCheckFailed, VaultSnapshotError) as exc:
        print(f"agentaskit-dr {name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
