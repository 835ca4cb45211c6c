"""``test-restore``: restore a backup into a scratch target, start it, check it, time it.

1. choose the newest backup that ended before the target time or LSN (or the newest);
2. fetch its chain (the full, then each incremental): download, check the stored bytes'
   SHA-256, decrypt (authenticated chunk by chunk), untar; ``pg_combinebackup`` joins an
   incremental chain; ``pg_verifybackup`` checks the result against the manifest;
3. fetch, authenticate and stage the archived WAL the recovery needs (when archived WAL
   exists), so ``restore_command`` only copies checked files: a server never starts from
   bytes that did not authenticate;
4. start PostgreSQL as the unprivileged server user on the target's port, on 127.0.0.1
   only, with archiving off; wait for recovery to end (it promotes at the target);
5. amcheck every database, count the rows of the largest tables, record how far the
   recovery got, the seconds and bytes, and the data age (RPO);
6. stop it and remove the copy unless ``keep``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agentaskit_dr.backup.catalog import Catalog, read_catalog
from agentaskit_dr.backup.crypto import KeyRing
from agentaskit_dr.backup.fetch import BackupDamaged, fetch_base, server_dir
from agentaskit_dr.backup.manifest import BackupRecord, parse_lsn
from agentaskit_dr.backup.pgtools import data_directory, tool
from agentaskit_dr.backup.restore_checks import check_restored
from agentaskit_dr.backup.restore_target import refuse_source_datadir, restore_target
from agentaskit_dr.local_servers.os_side import give_to_server_user, server_process_options
from agentaskit_dr.local_servers.postgres import PostgresServer

if TYPE_CHECKING:
    from agentaskit_dr.backup.store import BackupStore, Which
    from agentaskit_dr.config import BackupConfig

log = structlog.get_logger(__name__)

START_TIMEOUT = 3600.0
#: Stage archived WAL for the recovery: (store, keyring, record, to_lsn, dir, bucket=)
#: -> files staged.
WalStager = Callable[..., Any]


class RestoreFailed(Exception):
    """The restore could not be completed; the message names the object or the reason."""


@dataclass(slots=True)
class RestoreReport:
    """What ``test-restore`` measured (the evidence's ``extra``)."""

    target: str
    backup_id: str = ""
    chain: list[str] = field(default_factory=list)
    to_time: float | None = None
    to_lsn: str | None = None
    started_at: float = 0.0
    restore_seconds: float | None = None
    fetch_seconds: float | None = None
    recovery_seconds: float | None = None
    bytes_downloaded: int = 0
    database_bytes: int = 0
    wal_files_staged: int = 0
    recovered_to_lsn: str | None = None
    recovered_to_time: float | None = None
    rpo_seconds: float | None = None
    relations_checked: int = 0
    corruption: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    datadir: str | None = None
    kept: bool = False

    @property
    def ok(self) -> bool:
        return not self.corruption and not self.problems and self.restore_seconds is not None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def choose_backup(catalog: Catalog, *, to_time: float | None, to_lsn: str | None,
                  system_identifier: str | None = None) -> BackupRecord:
    """The newest full or incremental backup a recovery to the target can start from."""
    found = [r for r in catalog.records if r.kind in ("full", "incremental")
             and (system_identifier is None or r.system_identifier == system_identifier)]
    if to_time is not None:
        found = [r for r in found if r.stopped_at <= to_time]
    if to_lsn is not None:
        found = [r for r in found if parse_lsn(r.stop_lsn) <= parse_lsn(to_lsn)]
    if not found:
        raise RestoreFailed("no backup ended before the recovery target" if (to_time or to_lsn)
                            else "no good backup to restore (backup list shows none)")
    return found[-1]


async def run_restore_test(
    config: BackupConfig, target_name: str, *, to_time: float | None = None,
    to_lsn: str | None = None, keep: bool = False, stage_wal: WalStager | None = None,
    on_bytes: Callable[[int], None] | None = None, bucket: Which = "primary",
) -> RestoreReport:
    """Run the restore test from ``bucket`` (the replica after losing the primary's
    region); the report (``problems`` lists what failed after a start)."""
    from agentaskit_dr.backup.store import BackupStore

    target = restore_target(config, target_name)
    refuse_source_datadir(target_name, target.workdir, await data_directory(config.postgresql))
    keyring = KeyRing.from_config(config.encryption)
    report = RestoreReport(target=target_name, to_time=to_time, to_lsn=to_lsn,
                           started_at=time.time())
    began = time.monotonic()
    root = target.workdir / f"restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if root.exists():
        raise RestoreFailed(f"{root} already exists")
    target.workdir.mkdir(parents=True, exist_ok=True)
    root.mkdir(mode=0o755)
    give_to_server_user(root)
    server: PostgresServer | None = None
    try:
        async with BackupStore(config.storage) as store:
            catalog = await read_catalog(store, keyring, bucket=bucket)
            record = choose_backup(catalog, to_time=to_time, to_lsn=to_lsn)
            chain = [catalog.get(link) for link in record.chain]
            if any(link is None for link in chain):
                raise RestoreFailed(f"backup {record.backup_id} needs {record.chain}, "
                                    "and not all of them are listed as good")
            report.backup_id, report.chain = record.backup_id, list(record.chain)
            report.database_bytes = record.database_bytes

            def count(n: int) -> None:
                report.bytes_downloaded += n
                if on_bytes is not None:
                    on_bytes(n)

            datadir = await _fetch_chain(config, store, keyring, chain=[c for c in chain if c],
                                         root=root, on_bytes=count, bucket=bucket)
            wal_dir: Path | None = None
            if stage_wal is not None:
                wal_dir = server_dir(root / "wal")
                target_lsn = parse_lsn(to_lsn) if to_lsn is not None else None
                report.wal_files_staged = await stage_wal(store, keyring, record, target_lsn,
                                                          wal_dir, bucket=bucket)
        report.fetch_seconds = round(time.monotonic() - began, 3)
        report.datadir = str(datadir)
        _configure(datadir, target.port, wal_dir, to_time=to_time, to_lsn=to_lsn,
                   major=record.pg_version // 10000)
        server = PostgresServer(f"restore-{target_name}", datadir,
                                tool(config.postgresql, "postgres").parent, root / "home",
                                port=target.port)
        await _start_and_check(server, _source_user(config), record, report, began)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
        report.kept = keep and report.restore_seconds is not None
        if not report.kept:
            shutil.rmtree(root, ignore_errors=True)
    log.info("test_restore_finished", target=target_name, backup_id=report.backup_id,
             restore_seconds=report.restore_seconds, ok=report.ok)
    return report


async def _start_and_check(server: PostgresServer, user: str, record: BackupRecord,
                           report: RestoreReport, began: float) -> None:
    recovery_began = time.monotonic()
    await asyncio.to_thread(server.start, START_TIMEOUT)
    await _wait_promoted(server, user)
    report.recovery_seconds = round(time.monotonic() - recovery_began, 3)
    report.restore_seconds = round(time.monotonic() - began, 3)
    checks = await check_restored(server.port, user)
    report.relations_checked, report.corruption = checks.relations_checked, checks.corruption
    report.tables, report.problems = checks.tables, checks.problems
    report.recovered_to_lsn = checks.recovered_to_lsn or record.stop_lsn
    report.recovered_to_time = checks.recovered_to_time or record.stopped_at
    report.rpo_seconds = round(report.started_at - report.recovered_to_time, 3)


def _source_user(config: BackupConfig) -> str:
    from urllib.parse import urlsplit

    return urlsplit(config.postgresql.dsn or "").username or "postgres"


async def _fetch_chain(config: BackupConfig, store: BackupStore, keyring: KeyRing, *,
                       chain: list[BackupRecord], root: Path,
                       on_bytes: Callable[[int], None], bucket: Which) -> Path:
    home = server_dir(root / "home")
    parts = []
    for link in chain:
        part = root / ("data" if len(chain) == 1 else f"part-{link.backup_id}")
        try:
            await fetch_base(store, keyring, link, part, home=home, on_bytes=on_bytes,
                             bucket=bucket)
        except BackupDamaged as exc:
            raise RestoreFailed(f"backup {link.backup_id}: {exc}") from None
        parts.append(part)
    datadir = parts[0]
    if len(parts) > 1:
        datadir = root / "data"
        await _server_tool(config, home, "pg_combinebackup", *map(str, parts), "-o",
                           str(datadir), "--no-sync")
        for part in parts:
            shutil.rmtree(part, ignore_errors=True)
    await _server_tool(config, home, "pg_verifybackup", "--no-parse-wal"
                       if len(parts) > 1 else "--quiet", str(datadir))
    return datadir


async def _server_tool(config: BackupConfig, home: Path, name: str, *argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(tool(config.postgresql, name)), *argv, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, **server_process_options(home))
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        text = output.decode(errors="replace").strip().splitlines()
        raise RestoreFailed(f"{name} failed ({proc.returncode}): "
                            f"{text[-1] if text else 'no message'}")


def _configure(datadir: Path, port: int, wal_dir: Path | None, *, to_time: float | None,
               to_lsn: str | None, major: int) -> None:
    """Settings that make the copy a private scratch server, and the recovery target."""
    lines = [
        "", "# agentaskit-dr test-restore: a private scratch copy",
        f"port = {port}", "listen_addresses = '127.0.0.1'", "unix_socket_directories = ''",
        "archive_mode = off", "primary_conninfo = ''", "hot_standby = on",
        "recovery_target_action = 'promote'",
    ]
    if major >= 17:
        lines.append("summarize_wal = off")
    if wal_dir is not None:
        lines.append(f"restore_command = 'cp \"{wal_dir}/%f\" \"%p\"'")
        (datadir / "recovery.signal").write_text("")
    elif to_time is not None or to_lsn is not None:
        raise RestoreFailed("a point-in-time restore needs archived WAL, and none is staged")
    if to_time is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(to_time))
        lines.append(f"recovery_target_time = '{stamp}.{int(to_time % 1 * 1e6):06d}+00'")
    if to_lsn is not None:
        lines.append(f"recovery_target_lsn = '{to_lsn}'")
    (datadir / "standby.signal").unlink(missing_ok=True)
    with (datadir / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n".join(lines) + "\n")
    (datadir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")


async def _wait_promoted(server: PostgresServer, user: str) -> None:
    """Until recovery ended and the copy promoted itself (at the target, or at the end of
    the staged WAL); :class:`RestoreFailed` with the server's last words if it stopped."""
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=server.port, user=user,
                                 database="postgres", timeout=30)
    try:
        while await conn.fetchval("SELECT pg_is_in_recovery()"):
            if not server.running:
                break
            await asyncio.sleep(0.1)
    except (asyncpg.PostgresConnectionError, OSError):
        pass
    finally:
        await conn.close()
    if not server.running:
        raise RestoreFailed(f"the restored server stopped: {server.log_tail(3)}")
