"""Start a local PostgreSQL server again, and read its control file: the switchover's half
of server control (``pg_control`` stops servers; this brings a demoted one back).

Both run the server's own binaries as ``control.os_user`` (see ``pg_control``):

- :func:`read_control_data` parses ``pg_controldata``: after a clean fast shutdown the
  cluster state is "shut down" and the latest checkpoint is the shutdown checkpoint, the
  last record the server wrote. A standby that replayed past it has everything.
- :func:`start_server` starts the server with ``pg_ctl start``, with the options of its
  previous start (``postmaster.opts``, as ``pg_ctl restart`` does: a port given on the
  command line stays the same), and waits until it answers. It refuses to start a data
  directory without ``standby.signal`` unless told to start it as the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agentaskit_dr.actuators.pg_control import (
    ServerControl,
    ServerControlFailed,
    as_os_user,
    server_bin_dir,
    standby_signal_present,
)

# Where pg_ctl sends the output of a server it starts (the server's own log settings,
# such as logging_collector, still apply); inside the data directory, which os_user owns.
START_LOG = "agentaskit-dr-start.log"
_SHUT_DOWN = "shut down"


@dataclass(frozen=True)
class ControlData:
    """What ``pg_controldata`` says about a stopped server.

    ``state``: "shut down" after a clean shutdown ("in production" after a crash or an
    immediate stop). ``checkpoint_lsn``: start of the latest checkpoint record (bytes);
    ``timeline``: that checkpoint's timeline.
    """

    state: str
    checkpoint_lsn: int
    timeline: int

    @property
    def cleanly_shut_down(self) -> bool:
        return self.state == _SHUT_DOWN


def parse_lsn(text: str) -> int:
    """``'0/3000028'`` as a byte position."""
    high, _, low = text.strip().partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(lsn: int) -> str:
    """A byte position as PostgreSQL writes it, ``'0/3000028'``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


async def read_control_data(control: ServerControl) -> ControlData:
    """``pg_controldata`` of the data directory; raises ServerControlFailed when unreadable."""
    output = await _run(control, "pg_controldata", "-D", str(control.data_directory))
    fields: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        return ControlData(
            state=fields["Database cluster state"],
            checkpoint_lsn=parse_lsn(fields["Latest checkpoint location"]),
            timeline=int(fields["Latest checkpoint's TimeLineID"]),
        )
    except (KeyError, ValueError) as exc:
        raise ServerControlFailed(
            f"pg_controldata of {control.data_directory} has no readable {exc}"
        ) from exc


async def start_server(control: ServerControl, *, within: float, as_primary: bool = False) -> None:
    """Start the server and wait until it answers; raises ServerControlFailed when it does
    not start ``within`` seconds. Without ``standby.signal`` only when ``as_primary`` (a
    switchover rolled back before any promotion)."""
    if not as_primary and not standby_signal_present(control):
        raise ServerControlFailed(
            f"refusing to start {control.data_directory} without standby.signal: it would "
            "come up as a primary"
        )
    argv = [
        "pg_ctl", "start", "-D", str(control.data_directory), "-w",
        "-t", str(max(1, round(within))), "-l", str(control.data_directory / START_LOG),
    ]
    options = _previous_options(control.data_directory)
    if options:
        argv += ["-o", options]
    await _run(control, *argv, within=within + 2.0)


def _previous_options(data_directory: Path) -> str:
    """The command-line options of the server's previous start, without its data directory
    (pg_ctl passes ``-D`` itself), quoted for the shell pg_ctl hands them to."""
    try:
        words = shlex.split((data_directory / "postmaster.opts").read_text())
    except (OSError, ValueError):
        return ""
    kept: list[str] = []
    skip_next = False
    for word in words[1:]:  # words[0] is the postgres binary
        if skip_next:
            skip_next = False
        elif word in ("-D", "--pgdata"):
            skip_next = True
        elif not word.startswith(("-D", "--pgdata=")):
            kept.append(word)
    return shlex.join(kept)


async def _run(control: ServerControl, binary: str, *args: str, within: float = 30.0) -> str:
    path = await server_bin_dir(control) / binary
    try:
        proc = await asyncio.create_subprocess_exec(
            str(path), *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd="/", **as_os_user(control),
        )
    except OSError as exc:
        raise ServerControlFailed(f"cannot run {path}: {exc.strerror or exc}") from exc
    try:
        async with asyncio.timeout(within):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise ServerControlFailed(f"{binary} did not finish within {within:g}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise ServerControlFailed(f"{binary} failed ({proc.returncode}): {text.strip()[-500:]}")
    return text
