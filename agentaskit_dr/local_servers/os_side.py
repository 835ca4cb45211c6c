"""The OS side of the server binaries we run ourselves: the user PostgreSQL binaries run
as (it refuses root), the environment of server and client binaries, the postmaster of a
data directory (whoever started it), and its children."""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import Any

from agentaskit_dr.actuators.pg_control import ServerControl, postmaster_pid

#: Created when we are root and the machine has no ``postgres`` user.
FALLBACK_SERVER_USER = "agentaskit-pg"


@functools.cache
def server_user() -> pwd.struct_passwd | None:
    """The OS user that server binaries run as when we are root (PostgreSQL refuses root).

    ``postgres`` where it exists; otherwise a system user ``agentaskit-pg`` is created,
    so the restore test and the sandbox work on a machine that has no PostgreSQL package.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_SERVER_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    done = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         FALLBACK_SERVER_USER],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            "PostgreSQL refuses to run as root, there is no 'postgres' OS user and "
            f"'useradd {FALLBACK_SERVER_USER}' failed: {done.stderr.strip()}; run as "
            "an unprivileged user or create a 'postgres' user"
        )
    return pwd.getpwnam(FALLBACK_SERVER_USER)


def server_process_options(home: Path) -> dict[str, Any]:
    """Popen keywords that run a server binary as ``postgres`` when we are root."""
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    user = server_user()
    if user is None:
        return {"env": env}
    return {"env": env, "user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def give_to_server_user(path: Path) -> None:
    """chown ``path`` to the OS user PostgreSQL runs as (when we are root)."""
    user = server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def client_env() -> dict[str, str]:
    """Our environment for a client binary (``psql``, ``pg_isready``), without PG*."""
    # PG* variables from the caller's shell (PGPASSWORD, PGSSLMODE...) must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def postmaster_of(datadir: Path) -> int | None:
    """The pid of the live postmaster serving ``datadir``, whoever started it (we, or a
    watchdog's ``pg_ctl start``), or None: the watchdog's own check
    (:func:`~agentaskit_dr.actuators.pg_control.postmaster_pid`), so the servers tests
    and the sandbox run are judged up or down exactly as a watchdog judges its own. A
    stale ``postmaster.pid`` naming a zombie or a pid since reused is not trusted."""
    return postmaster_pid(ServerControl(data_directory=datadir))


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``T`` stopped, ``Z`` zombie...), or None
    when there is no such process."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (the postmaster's backends and auxiliary processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(int(stat.parent.name))
        if fields is not None and len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from the state on (field 3), or None when there is no such
    process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the state and the parent pid follow
    # its ")".
    return text.rpartition(")")[2].split()


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``pids``; one already gone is no error."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
