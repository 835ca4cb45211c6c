"""Control of a PostgreSQL server on this host: stop it for good, make any restart read-only.

The hard half of the fence (``fence.py`` holds the SQL half). Where the watchdog runs on
the server's host (``regions.<r>.database.control``), the fence:

1. writes ``standby.signal`` and ``primary_conninfo`` into the data directory, so the next
   start of this server, by anyone, comes up in recovery: read-only, following the new
   primary when it can, waiting otherwise. Done even when the server is already down;
2. stops the server: ``pg_ctl stop -m fast``, then ``-m immediate``, each bounded by
   ``stop_timeout``; a postmaster that cannot stop (SIGSTOPped, hung) is frozen with
   SIGSTOP so it forks nothing, and it and its children get SIGKILL, which works on
   stopped processes too. A process stuck in uninterruptible I/O dies when the I/O ends.

Confirmed means: no live postmaster for the data directory, and ``standby.signal``
present. The watchdog runs as root or as ``os_user``; ``pg_ctl`` runs as ``os_user``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentaskit_dr.atomic_file import write_atomically

STANDBY_SIGNAL = "standby.signal"
AUTO_CONF = "postgresql.auto.conf"
_POSTGRES_NAMES = ("postgres", "postmaster")
_FENCE_COMMENT = "# agentaskit-dr fence: the primary moved; failback replaces this line"
_POLL = 0.05


class ServerControlFailed(Exception):
    """The local server could not be stopped or demoted; the message says what is left."""


@dataclass(frozen=True)
class ServerControl:
    """A local server this watchdog may control (``regions.<r>.database.control``).

    ``bin_dir`` None asks ``pg_config --bindir``. ``stop_timeout`` bounds each stop mode
    and the wait after SIGKILL.
    """

    data_directory: Path
    os_user: str = "postgres"
    bin_dir: Path | None = None
    stop_timeout: float = 10.0


def postmaster_pid(control: ServerControl) -> int | None:
    """The pid of the live postmaster of this data directory, or None when it is down.

    A pid from ``postmaster.pid`` counts only if it is a live (not zombie) process named
    postgres, run by the data directory's owner, working in that directory (a postmaster
    chdirs to its data directory): a stale file after a crash, or a pid reused by another
    program or cluster, means down.
    """
    try:
        first_line = (control.data_directory / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first_line)
    except (OSError, ValueError):
        return None
    if _process_state(pid) in (None, "Z", "X"):
        return None
    if _process_name(pid) not in _POSTGRES_NAMES or _process_uid(pid) != _owner_uid(control):
        return None
    try:
        cwd = Path(f"/proc/{pid}/cwd").readlink()
    except PermissionError:
        return pid  # not ours to inspect; name and owner matched
    except OSError:
        return None
    return pid if cwd == control.data_directory.resolve() else None


def standby_signal_present(control: ServerControl) -> bool:
    """Whether the next start of this server comes up in recovery."""
    return (control.data_directory / STANDBY_SIGNAL).is_file()


def write_recovery_config(control: ServerControl, primary_conninfo: str | None) -> None:
    """Write ``standby.signal`` and, when given, ``primary_conninfo`` into the data directory.

    Idempotent. ``primary_conninfo`` replaces any earlier one in ``postgresql.auto.conf``
    (the file ALTER SYSTEM owns, which the server reads last); None keeps what is there.
    Files are written atomically and given to the data directory's owner.
    """
    data = _data_directory(control)
    if primary_conninfo is not None:
        _rewrite_auto_conf(control, data / AUTO_CONF, primary_conninfo)
    signal_file = data / STANDBY_SIGNAL
    if not signal_file.is_file():
        _write_owned(control, signal_file, "")


def remove_standby_signal(control: ServerControl) -> bool:
    """Remove ``standby.signal``: the next start comes up as a primary. True if removed."""
    try:
        (_data_directory(control) / STANDBY_SIGNAL).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ServerControlFailed(f"cannot remove {STANDBY_SIGNAL}: {exc.strerror or exc}") from exc
    return True


async def stop_server(control: ServerControl) -> str:
    """Stop the server for good; return how. Raises ServerControlFailed if it lives on.

    A stopped (SIGSTOP, traced) postmaster is killed at once: waking it to shut down
    cleanly would let its backends finish what they were doing, commits included.
    """
    pid = postmaster_pid(control)
    if pid is None:
        return "server already down"
    why_not_pg_ctl = "the postmaster is stopped (SIGSTOP)"
    if _process_state(pid) not in ("T", "t"):
        for mode in ("fast", "immediate"):
            try:
                await _pg_ctl_stop(control, mode)
            except ServerControlFailed as exc:
                why_not_pg_ctl = str(exc)  # no pg_ctl to run: signals still work
                break
            # pg_ctl returns when postmaster.pid is gone, a moment before the process.
            if await _gone(pid, within=min(1.0, control.stop_timeout)):
                return f"stopped (pg_ctl -m {mode})"
            why_not_pg_ctl = "pg_ctl stop -m fast and -m immediate did not complete"
    children = await _kill_server(pid)
    # Confirmed once the postmaster *and* the children it had are gone: a killed backend
    # dies asynchronously, a stopped one a moment after it is woken to die.
    if await _all_gone([pid, *children], within=control.stop_timeout):
        return f"killed (SIGKILL to postmaster {pid} and its children: {why_not_pg_ctl})"
    raise ServerControlFailed(
        f"postmaster {pid} of {control.data_directory} survived SIGKILL for "
        f"{control.stop_timeout:g}s (uninterruptible I/O?); it takes no writes while stuck, "
        "and its children were killed"
    )


async def stop_and_hold(control: ServerControl,
                        primary_conninfo: str | None) -> tuple[str, list[str]]:
    """Write ``standby.signal`` + ``primary_conninfo`` and stop the server, each tried even
    when the other fails (a stopped server without the signal file, or the file on a
    server that would not stop, is still half a fence). (how it was stopped, problems:
    empty when the postmaster is gone and the signal file is in place)."""
    problems: list[str] = []
    how = "not stopped"
    try:
        write_recovery_config(control, primary_conninfo)
    except ServerControlFailed as exc:
        problems.append(str(exc))
    try:
        how = await stop_server(control)
    except ServerControlFailed as exc:
        problems.append(str(exc))
    if postmaster_pid(control) is not None:
        problems.append("postmaster still running")
    if not standby_signal_present(control):
        problems.append("standby.signal missing")
    return how, problems


async def _pg_ctl_stop(control: ServerControl, mode: str) -> None:
    timeout = control.stop_timeout
    pg_ctl = await server_bin_dir(control) / "pg_ctl"
    argv = [
        str(pg_ctl), "stop", "-D", str(control.data_directory),
        "-m", mode, "-w", "-t", str(max(1, round(timeout))),
    ]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd="/", **as_os_user(control),
        )
    except OSError as exc:
        raise ServerControlFailed(f"cannot run {pg_ctl}: {exc.strerror or exc}") from exc
    try:
        async with asyncio.timeout(timeout + 2.0):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _kill_server(pid: int) -> list[int]:
    """SIGKILL the postmaster and its children; the children it had."""
    # Freeze the postmaster first so it forks nothing while its children are listed;
    # backends lead their own process groups, so each one is signalled by pid.
    try:
        _signal(pid, signal.SIGSTOP)
        children = _children(pid)
        for child in children:
            _signal(child, signal.SIGKILL)
        _signal(pid, signal.SIGKILL)
    except PermissionError as exc:
        raise ServerControlFailed(
            f"not allowed to kill postmaster {pid}: run the watchdog as root or as the "
            "server's OS user (control.os_user)"
        ) from exc
    return children


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def _all_gone(pids: list[int], *, within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for pid in pids:
        if not await _gone(pid, within=max(0.0, deadline - loop.time())):
            return False
    return True


async def _gone(pid: int, *, within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while _process_state(pid) not in (None, "Z", "X"):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL)
    return True


async def server_bin_dir(control: ServerControl) -> Path:
    """The server's binaries: ``control.bin_dir``, else what ``pg_config --bindir`` says."""
    if control.bin_dir is not None:
        return control.bin_dir
    try:
        proc = await asyncio.create_subprocess_exec(
            "pg_config", "--bindir", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        async with asyncio.timeout(control.stop_timeout):
            out, _ = await proc.communicate()
    except (OSError, TimeoutError) as exc:
        raise ServerControlFailed(
            f"control.bin_dir is not set and pg_config --bindir failed: {exc}"
        ) from exc
    if proc.returncode != 0 or not out.strip():
        raise ServerControlFailed("control.bin_dir is not set and pg_config --bindir failed")
    return Path(out.decode().strip())


def as_os_user(control: ServerControl) -> dict[str, Any]:
    """Subprocess keywords that run a server binary as ``os_user``."""
    try:
        user = pwd.getpwnam(control.os_user)
    except KeyError:
        raise ServerControlFailed(f"control.os_user: no OS user {control.os_user!r}") from None
    env = {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    if os.geteuid() == user.pw_uid:
        return {"env": env}
    if os.geteuid() != 0:
        raise ServerControlFailed(
            f"control.os_user: this watchdog runs as uid {os.geteuid()} and cannot act as "
            f"{control.os_user!r}; run it as root or as {control.os_user!r}"
        )
    return {"env": env, "user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _data_directory(control: ServerControl) -> Path:
    data = control.data_directory
    if not (data / "PG_VERSION").is_file():
        raise ServerControlFailed(
            f"control.data_directory: {data} is not a PostgreSQL data directory (no PG_VERSION)"
        )
    return data


def _owner_uid(control: ServerControl) -> int | None:
    try:
        return control.data_directory.stat().st_uid
    except OSError:
        return None


def _rewrite_auto_conf(control: ServerControl, path: Path, primary_conninfo: str) -> None:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    kept = [
        line for line in lines
        if line != _FENCE_COMMENT and line.split("=", 1)[0].strip() != "primary_conninfo"
    ]
    quoted = primary_conninfo.replace("'", "''")
    kept += [_FENCE_COMMENT, f"primary_conninfo = '{quoted}'"]
    _write_owned(control, path, "\n".join(kept) + "\n")


def _write_owned(control: ServerControl, path: Path, text: str) -> None:
    """Write ``path`` atomically, mode 0600, owned like the data directory."""
    try:
        write_atomically(path, text, mode=0o600, owner_of=control.data_directory)
    except OSError as exc:
        raise ServerControlFailed(f"cannot write {path}: {exc.strerror or exc}") from exc


def _proc_stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; state and parent pid follow its ")".
    return text.rpartition(")")[2].split()


def _process_state(pid: int) -> str | None:
    fields = _proc_stat_fields(pid)
    return fields[0] if fields else None


def _process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _process_uid(pid: int) -> int | None:
    """The real uid, from ``/proc/<pid>/status`` (the directory's owner can be root)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat_fields(int(entry.name))
            if fields and len(fields) > 1 and fields[1] == str(pid):
                found.append(int(entry.name))
    return found
