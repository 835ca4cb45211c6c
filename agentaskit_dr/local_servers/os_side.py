"""The OS side of the server binaries we run ourselves: the user PostgreSQL binaries run
as (it refuses root), the environment of server and client binaries, and a postmaster's
children."""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import Any

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


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (the postmaster's backends and auxiliary processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name (field 2) may hold spaces; the parent pid follows its ")".
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``pids``; one already gone is no error."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
