"""``wal-push`` and ``wal-fetch``: the fast commands PostgreSQL runs, one per WAL file.

They hand the work to the long-running archiver (:mod:`.wal_archiver`) through the spool
directory and wait for its verdict, starting it if it is not running; they import only
the standard library and PyYAML, so each call costs a bare Python start (tens of ms)
instead of loading the AWS SDK. The archiver pushes every ``.ready`` file ahead of
PostgreSQL's calls, so most ``wal-push`` calls find their ``.ok`` already there.

Exit status: 0 once the file is durable (push) or in place (fetch); 1 otherwise, with one
line on stderr (PostgreSQL logs it, keeps the WAL and retries the push later).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agentaskit_dr.backup.wal_layout import (
    DEFAULT_SPOOL,
    Spool,
    is_wal_name,
    stat_signature,
    write_atomic,
)

EXIT_OK = 0
EXIT_FAILURE = 1
#: How often a waiting command looks at the spool, at most.
_POLL = 0.01


class WalCommandError(Exception):
    """A one-line reason to fail the command."""


def spool_from_config(config: Path) -> Path:
    """``postgresql.wal.spool_dir`` of the backup config (relative to the file), read
    without validating the rest: the archiver validates the whole file when it starts."""
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WalCommandError(f"cannot read {config}: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise WalCommandError(f"{config} is not valid YAML") from None
    wal = ((data or {}).get("postgresql") or {}).get("wal") or {}
    spool = wal.get("spool_dir") if isinstance(wal, dict) else None
    if spool is None:
        return DEFAULT_SPOOL
    if not isinstance(spool, str) or not spool.strip():
        raise WalCommandError(f"{config}: postgresql.wal.spool_dir must be a directory path")
    path = Path(spool)
    return path if path.is_absolute() else config.parent / path


def archiver_running(spool: Spool) -> bool:
    """Whether an archiver holds the spool's lock."""
    try:
        fd = os.open(spool.lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class _Archiver:
    """Starts the archiver when none runs, and notices when the one we started died."""

    def __init__(self, config: Path, spool: Spool) -> None:
        self._config = config
        self._spool = spool
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_check = 0.0

    def ensure(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 0.25
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            raise WalCommandError(f"the WAL archiver exited: {self._last_log_line()}")
        if archiver_running(self._spool):
            return
        with self._spool.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "agentaskit_dr.backup.wal_archiver",
                 "--config", str(self._config.absolute()),
                 "--spool", str(self._spool.root.absolute())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )

    def _last_log_line(self) -> str:
        with contextlib.suppress(OSError):
            lines = self._spool.log.read_text(encoding="utf-8", errors="replace").splitlines()
            if lines:
                return lines[-1][-500:]
        return f"see {self._spool.log}"


def _fresh_error(path: Path, since: float) -> str | None:
    """The message of an error file written at or after ``since`` (epoch seconds)."""
    try:
        if path.stat().st_mtime < since:
            return None
        return path.read_text(encoding="utf-8", errors="replace").strip() or "failed"
    except FileNotFoundError:
        return None


def push(config: Path, file: Path, timeout: float) -> None:
    """Return once the archiver reports ``file`` durable; :class:`WalCommandError` if not."""
    name = file.name
    if not is_wal_name(name):
        raise WalCommandError(f"{name!r} is not a WAL file name PostgreSQL archives")
    path = file.absolute()
    try:
        signature = stat_signature(path)
    except OSError as exc:
        raise WalCommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    spool = Spool(spool_from_config(config))
    started = time.time()
    deadline = time.monotonic() + timeout
    if _take_ok(spool, name, signature):
        return
    try:
        spool.make()
        write_atomic(spool.push / name, str(path).encode())
    except OSError as exc:
        raise WalCommandError(f"cannot write to spool {spool.root}: {exc.strerror or exc}"
                              ) from None
    archiver = _Archiver(config, spool)
    while True:
        if _take_ok(spool, name, signature):
            return
        message = _fresh_error(spool.push_error(name), started)
        if message is not None:
            raise WalCommandError(message)
        archiver.ensure()
        if time.monotonic() > deadline:
            raise WalCommandError(f"{name} not archived after {timeout:g}s (the archiver is "
                                  f"still trying; see {spool.log})")
        time.sleep(_POLL)


def _take_ok(spool: Spool, name: str, signature: str) -> bool:
    """Consume the ``.ok`` of ``name`` if it confirms this very file."""
    ok = spool.ok(name)
    try:
        recorded = ok.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):
        ok.unlink()
    return recorded == signature


def fetch(config: Path, name: str, dest: Path, timeout: float) -> bool:
    """Put the archived ``name`` at ``dest``; False if the archive does not hold it."""
    if not is_wal_name(name):
        raise WalCommandError(f"{name!r} is not a WAL file name PostgreSQL archives")
    spool = Spool(spool_from_config(config))
    started = time.time()
    deadline = time.monotonic() + timeout
    if _take_fetched(spool, name, dest):
        return True
    try:
        spool.make()
        write_atomic(spool.fetch / name, b"")
    except OSError as exc:
        raise WalCommandError(f"cannot write to spool {spool.root}: {exc.strerror or exc}"
                              ) from None
    archiver = _Archiver(config, spool)
    while True:
        if _take_fetched(spool, name, dest):
            return True
        missing = spool.missing(name)
        if missing.exists():
            with contextlib.suppress(FileNotFoundError):
                missing.unlink()
            return False
        message = _fresh_error(spool.fetch_error(name), started)
        if message is not None:
            raise WalCommandError(message)
        archiver.ensure()
        if time.monotonic() > deadline:
            raise WalCommandError(f"{name} not fetched after {timeout:g}s (see {spool.log})")
        time.sleep(_POLL)


def _take_fetched(spool: Spool, name: str, dest: Path) -> bool:
    source = spool.fetched / name
    try:
        source.replace(dest)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Another file system (rename fails with EXDEV even when the source is absent).
        temp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(source, temp)
        except FileNotFoundError:
            return False
        temp.replace(dest)
        source.unlink()
    return True


def add_wal_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``wal-push`` and ``wal-fetch`` (for ``--help``; :func:`main` runs them)."""
    push_cmd = sub.add_parser(
        "wal-push", help="archive_command: ship a WAL file to the backup buckets (%%p)")
    push_cmd.add_argument("--config", required=True, type=Path, help="backup YAML file")
    push_cmd.add_argument("--timeout", type=float, default=60.0,
                          help="seconds to wait for the archiver (default 60)")
    push_cmd.add_argument("path", type=Path, help="the WAL file (%%p)")
    fetch_cmd = sub.add_parser(
        "wal-fetch", help="restore_command: fetch an archived WAL file (%%f %%p)")
    fetch_cmd.add_argument("--config", required=True, type=Path, help="backup YAML file")
    fetch_cmd.add_argument("--timeout", type=float, default=60.0,
                           help="seconds to wait for the archiver (default 60)")
    fetch_cmd.add_argument("name", help="the WAL file name (%%f)")
    fetch_cmd.add_argument("dest", type=Path, help="where to put it (%%p)")


def main(argv: Sequence[str]) -> int:
    """Run ``wal-push``/``wal-fetch`` (``argv`` starts with the command name)."""
    parser = argparse.ArgumentParser(prog="agentaskit-dr")
    add_wal_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        if args.command == "wal-push":
            push(args.config, args.path, args.timeout)
            return EXIT_OK
        if fetch(args.config, args.name, args.dest, args.timeout):
            return EXIT_OK
        print(f"agentaskit-dr wal-fetch: {args.name} is not in the archive", file=sys.stderr)
    except WalCommandError as exc:
        print(f"agentaskit-dr {args.command}: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"agentaskit-dr {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"agentaskit-dr {args.command}: interrupted", file=sys.stderr)
    return EXIT_FAILURE
