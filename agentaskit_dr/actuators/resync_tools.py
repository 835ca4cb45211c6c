"""The PostgreSQL binaries ``sync-primary`` runs on the old primary's host, as its OS user.

``pg_controldata`` (was the server shut down cleanly?), ``postgres -C`` (its own port and
``restore_command``), ``pg_ctl start``/``stop``, ``pg_rewind`` and ``pg_basebackup``.
Every start goes through :func:`start_in_recovery`, which refuses a data directory
without ``standby.signal``: a server this code starts comes up read-only or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agentaskit_dr.actuators.pg_control import (
    AUTO_CONF,
    ServerControl,
    ServerControlFailed,
    _write_owned,
    as_os_user,
    server_bin_dir,
    standby_signal_present,
)

#: ``pg_controldata`` states after which ``pg_rewind`` accepts the target.
CLEAN_STATES = ("shut down", "shut down in recovery")
START_LOG = "agentaskit-dr-start.log"
_PORT_COMMENT = "# agentaskit-dr sync-primary: this server's own port, not the source's"


@dataclass(frozen=True)
class BinaryRun:
    """A finished run of a PostgreSQL binary: its exit status and its output (tail)."""

    returncode: int
    output: str

    @property
    def last_line(self) -> str:
        """The last non-empty output line: what the binary said last (its error, usually)."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


async def run_binary(
    control: ServerControl, name: str, *args: str, budget: float,
    password: str | None = None,
) -> BinaryRun:
    """Run ``bin_dir/name ARGS`` as ``os_user``; a password goes in ``PGPASSWORD``, never argv.

    A run past ``budget`` seconds is killed and reported as exit status -1.
    """
    binary = await server_bin_dir(control) / name
    options = as_os_user(control)
    if password is not None:
        options["env"] = {**options["env"], "PGPASSWORD": password}
    try:
        proc = await asyncio.create_subprocess_exec(
            str(binary), *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd="/", **options,
        )
    except OSError as exc:
        raise ServerControlFailed(f"cannot run {binary}: {exc.strerror or exc}") from exc
    try:
        async with asyncio.timeout(max(budget, 0.1)):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")[-4000:]
        return BinaryRun(-1, f"{text}\n{name} did not finish within {budget:.0f}s")
    assert proc.returncode is not None
    return BinaryRun(proc.returncode, out.decode(errors="replace")[-4000:])


async def cluster_state(control: ServerControl, *, budget: float) -> str:
    """The ``Database cluster state`` that ``pg_controldata`` reads from the control file."""
    done = await run_binary(control, "pg_controldata", "-D", str(control.data_directory),
                            budget=budget)
    for line in done.output.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Database cluster state":
            return value.strip()
    raise ServerControlFailed(f"pg_controldata on {control.data_directory}: {done.last_line}")


@dataclass(frozen=True)
class LastStart:
    """How the server was last started (``postmaster.opts``), to start it the same way:
    its options but ``-D`` and ``-p`` (a Debian-style ``-c config_file=...`` kept), and
    the port it listens on. Read before pg_rewind or a re-clone replaces the directory."""

    options: tuple[str, ...]
    port: int

    def start_options(self) -> str:
        """The ``-o`` of ``pg_ctl start``."""
        return shlex.join([*self.options, "-p", str(self.port)])


async def setting(
    control: ServerControl, name: str, *, options: tuple[str, ...] = (), budget: float
) -> str:
    """A server setting as its config files give it (``postgres -C``; works while stopped)."""
    done = await run_binary(control, "postgres", "-D", str(control.data_directory), *options,
                            "-C", name, budget=budget)
    if done.returncode != 0:
        raise ServerControlFailed(f"postgres -C {name}: {done.last_line}")
    return done.output.strip()


async def last_start(control: ServerControl, *, budget: float) -> LastStart:
    """The options and port of the server's last start; the port from its config files
    when it was not given as ``-p``."""
    try:
        words = shlex.split((control.data_directory / "postmaster.opts").read_text())[1:]
    except (OSError, ValueError):
        words = []
    options: list[str] = []
    port: int | None = None
    pairs = iter(words)
    for word in pairs:
        if word in ("-D", "-p"):
            value = next(pairs, "")
            if word == "-p" and value.isdigit():
                port = int(value)
        else:
            options.append(word)
    if port is None:
        answer = await setting(control, "port", options=tuple(options), budget=budget)
        if not answer.isdigit():
            raise ServerControlFailed(f"cannot tell the server's port (postgres -C port: "
                                      f"{answer!r})")
        port = int(answer)
    return LastStart(tuple(options), port)


def keep_port(control: ServerControl, port: int) -> None:
    """Pin ``port`` in ``postgresql.auto.conf`` (read last), replacing any earlier one."""
    path = control.data_directory / AUTO_CONF
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    kept = [line for line in lines
            if line != _PORT_COMMENT and line.split("=", 1)[0].strip() != "port"]
    _write_owned(control, path, "\n".join([*kept, _PORT_COMMENT, f"port = {port}"]) + "\n")


async def start_in_recovery(
    control: ServerControl, how: LastStart, *, wait: float | None
) -> None:
    """``pg_ctl start`` as it was last started, on its port; only with ``standby.signal``.

    ``wait`` None returns once the postmaster is forked; otherwise pg_ctl waits up to
    ``wait`` seconds for it to accept (read-only) sessions, and a slower start is left
    running. Its early output goes to ``START_LOG`` in the data directory.
    """
    if not standby_signal_present(control):
        raise ServerControlFailed(
            f"refusing to start {control.data_directory} without standby.signal: it would "
            "come up as a writable primary"
        )
    data = str(control.data_directory)
    argv = ["start", "-D", data, "-o", how.start_options(), "-l", f"{data}/{START_LOG}"]
    argv += ["-W"] if wait is None else ["-w", "-t", str(max(1, round(wait)))]
    done = await run_binary(control, "pg_ctl", *argv, budget=(wait or 10.0) + 10.0)
    if done.returncode != 0 and wait is None:
        raise ServerControlFailed(f"pg_ctl start: {done.last_line}; see {data}/{START_LOG}")


def start_log_tail(control: ServerControl, lines: int = 5) -> str:
    """The last lines of what the server said while starting, for an error message."""
    try:
        text = (control.data_directory / START_LOG).read_text(errors="replace")
    except OSError:
        return "(no start log)"
    return " | ".join(line for line in text.splitlines()[-lines:] if line.strip())


def tablespaces(control: ServerControl) -> list[Path]:
    """Tablespace links in ``pg_tblspc``: a plain re-clone would write over their targets."""
    folder = control.data_directory / "pg_tblspc"
    return sorted(folder.iterdir()) if folder.is_dir() else []
