"""``wal-push`` and ``wal-fetch``: the fast commands PostgreSQL runs, one per WAL file.

They hand the work to the long-running archiver (:mod:`.wal_archiver`) through the spool
directory and wait for its verdict, starting it if it is not running; they import only
the standard library (PyYAML only for a config the hand scan cannot read), so a call
costs little more than a bare Python start instead of loading the AWS SDK. The archiver
pushes every ``.ready`` file ahead of PostgreSQL's calls, so most ``wal-push`` calls find
their ``.ok`` already there.

Exit status: 0 once the file is durable (push) or in place (fetch); 1 otherwise, with one
line on stderr (PostgreSQL logs it, keeps the WAL and retries the push later).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
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

TYPE_CHECKING = False  # typing's import costs ~5 ms on every call PostgreSQL makes
if TYPE_CHECKING:
    import argparse
    import subprocess

EXIT_OK = 0
EXIT_FAILURE = 1
#: How often a waiting command looks at the spool, at most.
_POLL = 0.01


class WalCommandError(Exception):
    """A one-line reason to fail the command."""


def spool_from_config(config: Path) -> Path:
    """``postgresql.wal.spool_dir`` of the backup config (relative to the file), read
    without validating the rest: the archiver validates the whole file when it starts.

    Block-style YAML is scanned by hand (PyYAML's import costs more than the rest of the
    command); anything else (flow style, anchors, odd quoting) goes to PyYAML.
    """
    try:
        text = config.read_text(encoding="utf-8")
    except OSError as exc:
        raise WalCommandError(f"cannot read {config}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WalCommandError(f"{config} is not UTF-8 text") from None
    sure, spool = scan_spool_dir(text)
    if not sure:
        spool = _yaml_spool_dir(config, text)
    if spool is None:
        return DEFAULT_SPOOL
    path = Path(spool)
    return path if path.is_absolute() else config.parent / path


_SPOOL_PATH = ["postgresql", "wal", "spool_dir"]


def scan_spool_dir(text: str) -> tuple[bool, str | None]:
    """``(sure, spool_dir)`` from block-style YAML; ``sure`` is False when only a real
    YAML parser can tell."""
    if "spool_dir" not in text:
        return True, None
    stack: list[tuple[int, str]] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, colon, value = stripped.partition(":")
        key = key.strip()
        if not colon or not key or key[0] in "-{[\"'?&*!|>%@`":
            continue
        value = value.split(" #")[0].strip()
        path = [*(k for _, k in stack), key]
        if path == _SPOOL_PATH:
            if value[:1] in ("'", '"'):
                if len(value) < 2 or value[-1] != value[0] or value[0] in value[1:-1]:
                    return False, None
                value = value[1:-1]
            elif not value or value[0] in "{[&*!|>%@`" or value in ("null", "~"):
                return False, None
            return True, value
        if value and path == _SPOOL_PATH[: len(path)]:
            return False, None  # postgresql: {...} or wal: {...}: flow style
        if not value:
            stack.append((indent, key))
    return False, None


def _yaml_spool_dir(config: Path, text: str) -> str | None:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise WalCommandError(f"{config} is not valid YAML") from None
    section: object = data
    for key in _SPOOL_PATH[:-1]:
        section = section.get(key) if isinstance(section, dict) else None
    spool = section.get("spool_dir") if isinstance(section, dict) else None
    if spool is None:
        return None
    if not isinstance(spool, str) or not spool.strip():
        raise WalCommandError(f"{config}: postgresql.wal.spool_dir must be a directory path")
    return spool


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
        import subprocess

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
        import shutil

        try:
            shutil.copyfile(source, temp)
        except FileNotFoundError:
            return False
        temp.replace(dest)
        source.unlink()
    return True


def add_wal_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``wal-push`` and ``wal-fetch`` in the full CLI's parser, for ``--help``; :func:`main`
    parses and runs them (without argparse)."""
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


_USAGE = {
    "wal-push": "usage: agentaskit-dr wal-push --config FILE [--timeout S] PATH",
    "wal-fetch": "usage: agentaskit-dr wal-fetch --config FILE [--timeout S] NAME DEST",
}
EXIT_USAGE = 2


def _parse(argv: Sequence[str]) -> tuple[str, Path, float, list[str]]:
    """``(command, config, timeout, positionals)``: argparse costs a start-up we skip."""
    command, *rest = argv
    options: dict[str, str] = {}
    positionals: list[str] = []
    items = iter(rest)
    for item in items:
        name, equals, value = item.partition("=")
        if name in ("--config", "--timeout"):
            options[name] = value if equals else next(items, "")
        elif item.startswith("-"):
            raise ValueError(item)
        else:
            positionals.append(item)
    wanted = 1 if command == "wal-push" else 2
    if not options.get("--config") or len(positionals) != wanted:
        raise ValueError(command)
    timeout = float(options.get("--timeout", "60"))
    if not timeout > 0:
        raise ValueError("--timeout")
    return command, Path(options["--config"]), timeout, positionals


def main(argv: Sequence[str]) -> int:
    """Run ``wal-push``/``wal-fetch`` (``argv`` starts with the command name)."""
    if "-h" in argv or "--help" in argv:
        print(f"{_USAGE[argv[0]]}\n(docs/backups.md: archive_command / restore_command)")
        return EXIT_OK
    try:
        command, config, timeout, args = _parse(argv)
    except ValueError:
        print(_USAGE[argv[0]], file=sys.stderr)
        return EXIT_USAGE
    try:
        if command == "wal-push":
            push(config, Path(args[0]), timeout)
            return EXIT_OK
        if fetch(config, args[0], Path(args[1]), timeout):
            return EXIT_OK
        print(f"agentaskit-dr wal-fetch: {args[0]} is not in the archive", file=sys.stderr)
    except WalCommandError as exc:
        print(f"agentaskit-dr {command}: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"agentaskit-dr {command}: {exc.strerror or exc}{where}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"agentaskit-dr {command}: interrupted", file=sys.stderr)
    return EXIT_FAILURE
