"""The measured RPO of a failover: the WAL the old primary had beyond the fork.

At promotion the promoter sees only its last view of the old primary, so the lag it
records is a lower bound. Once the old primary is resynced (``sync-primary``) the loss is
knowable: its data directory still holds every WAL record it wrote. Before anything
rewrites that WAL (the clean-shutdown cycle, pg_rewind, a re-clone) this module reads

- the **fork point**: the switch LSN of the old primary's timeline in the new primary's
  timeline history file (``pg_read_binary_file`` over SQL, the same grant pg_rewind needs),
- the **end of the old primary's WAL** on that timeline: ``pg_waldump`` from the fork
  until it finds no valid record (a torn last record after a kill -9 ends it too),

and reports the bytes between them and the transactions that committed in them, with
their commit times. Bytes count every record (a shutdown checkpoint written when the old
primary was stopped after the promotion counts too); ``lost_commits`` is the data loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from agentaskit_dr.actuators.fence import PromotionRefused, session
from agentaskit_dr.actuators.pg_control import ServerControl, as_os_user, server_bin_dir
from agentaskit_dr.actuators.pg_start import format_lsn, parse_lsn

_LSN = r"[0-9A-F]+/[0-9A-F]+"
_SEGMENT = re.compile(r"^([0-9A-F]{8})[0-9A-F]{16}$")
_COMMIT = re.compile(rf"lsn: ({_LSN}),.*desc: COMMIT(?:_PREPARED)? (\S+ \S+ \S+)")
# Where pg_waldump stopped reading: the position it expected the next record at.
_END_AT = (
    re.compile(rf"invalid record length at ({_LSN})"),
    re.compile(rf"record with incorrect prev-link {_LSN} at ({_LSN})"),
    re.compile(rf"invalid resource manager ID \d+ at ({_LSN})"),
    re.compile(rf"invalid record offset at ({_LSN})"),
    re.compile(rf"LSN ({_LSN}), offset \d+"),
)
_NOTHING_AFTER = re.compile(rf"could not find a valid record after ({_LSN})")
# PostgreSQL 15 names a page it could not read by segment and offset, without an LSN.
_AT_SEGMENT = re.compile(r"in (?:log|WAL) segment ([0-9A-F]{24}), offset (\d+)")


@dataclass
class ForkLoss:
    """What the old primary had beyond the fork; ``lost_wal_bytes`` None: not measured
    (``note`` says why). Times are as PostgreSQL wrote them (commit timestamps)."""

    lost_wal_bytes: int | None = None
    lost_commits: int | None = None
    first_lost_commit_at: str | None = None
    last_lost_commit_at: str | None = None
    fork_lsn: str | None = None
    old_end_of_wal_lsn: str | None = None
    old_timeline: int | None = None
    new_timeline: int | None = None
    measured_by: str = "pg_waldump on the old primary's pg_wal, before the resync"
    note: str | None = None
    commits: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """A plain dict for a journal or an evidence file (without the commit list)."""
        data = asdict(self)
        data.pop("commits")
        return data


def fork_point(history: str, timeline: int) -> int | None:
    """The LSN where ``timeline`` ended in a timeline history file, None when it is not an
    ancestor there (``<parent tli>\\t<switch lsn>\\t<reason>`` per line)."""
    for line in history.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].isdigit() and int(words[0]) == timeline:
            return parse_lsn(words[1])
    return None


def wal_timelines(control: ServerControl) -> list[int]:
    """The timelines of the WAL segment files in the data directory, highest first."""
    names = (control.data_directory / "pg_wal").iterdir()
    found = {int(match.group(1), 16) for path in names if (match := _SEGMENT.match(path.name))}
    return sorted(found, reverse=True)


async def measure_fork_loss(control: ServerControl, primary_dsn: str, *, role: str,
                            io_timeout: float, budget: float) -> ForkLoss:
    """The loss the failover caused, read from the stopped old primary; never raises for
    what it cannot read (the result's ``note`` says what)."""
    try:
        new_tli, history = await _new_primary_history(primary_dsn, role=role,
                                                       io_timeout=io_timeout)
    except PromotionRefused as exc:
        return ForkLoss(note=f"the new primary's timeline history is unreadable: {exc.reason}")
    try:
        timelines = wal_timelines(control)
    except OSError as exc:
        return ForkLoss(new_timeline=new_tli,
                        note=f"cannot list the old primary's pg_wal: {exc.strerror or exc}")
    if new_tli in timelines:
        return ForkLoss(new_timeline=new_tli, note=(
            f"the old primary already holds WAL of the new timeline {new_tli}: it was "
            "resynced before, when its loss was measured"))
    ancestors = [(tli, fork) for tli in timelines if (fork := fork_point(history, tli))
                 is not None]
    if not ancestors:
        return ForkLoss(new_timeline=new_tli, note=(
            f"none of the old primary's timelines {timelines} is an ancestor of the new "
            f"primary's timeline {new_tli}"))
    old_tli, fork = ancestors[0]
    loss = ForkLoss(fork_lsn=format_lsn(fork), old_timeline=old_tli, new_timeline=new_tli)
    await _read_wal_after(control, loss, fork, budget=budget)
    return loss


async def _new_primary_history(dsn: str, *, role: str, io_timeout: float) -> tuple[int, str]:
    async with session(dsn, role=role, io_timeout=io_timeout) as conn:
        walfile = await conn.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
        timeline = int(str(walfile)[:8], 16)
        if timeline == 1:
            return 1, ""
        try:
            raw = await conn.fetchval("SELECT pg_read_binary_file($1)",
                                      f"pg_wal/{timeline:08X}.history")
        except Exception as exc:
            raise PromotionRefused(
                f"pg_read_binary_file('pg_wal/{timeline:08X}.history'): {exc} (the role "
                "needs EXECUTE on pg_read_binary_file, as pg_rewind does)") from exc
    return timeline, bytes(raw).decode(errors="replace")


async def _read_wal_after(control: ServerControl, loss: ForkLoss, fork: int, *,
                          budget: float) -> None:
    """Fill ``loss`` from ``pg_waldump`` of timeline ``loss.old_timeline`` from ``fork``."""
    assert loss.old_timeline is not None
    binary = await server_bin_dir(control) / "pg_waldump"
    argv = [str(binary), "-p", str(control.data_directory / "pg_wal"),
            "-t", str(loss.old_timeline), "-s", format_lsn(fork), "-r", "Transaction"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd="/", **as_os_user(control))
    try:
        async with asyncio.timeout(max(budget, 1.0)):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.communicate()
        loss.note = f"pg_waldump did not finish within {budget:.0f}s"
        return
    said = err.decode(errors="replace").strip()
    for line in out.decode(errors="replace").splitlines():
        if match := _COMMIT.search(line):
            loss.commits.append(match.group(2))
    end = _end_of_wal(said, fork, control)
    if end is None:
        loss.note = f"pg_waldump: {said or f'exit status {proc.returncode}'}"
        return
    loss.old_end_of_wal_lsn = format_lsn(end)
    loss.lost_wal_bytes = max(0, end - fork)
    loss.lost_commits = len(loss.commits)
    if loss.commits:
        loss.first_lost_commit_at, loss.last_lost_commit_at = loss.commits[0], loss.commits[-1]


def _end_of_wal(said: str, fork: int, control: ServerControl) -> int | None:
    """Where pg_waldump found the end of valid WAL, from its last words; ``fork`` when it
    found no record after it; None when it stopped for another reason (a missing file)."""
    if _NOTHING_AFTER.search(said):
        return fork
    for pattern in _END_AT:
        if match := pattern.search(said):
            return parse_lsn(match.group(1))
    if match := _AT_SEGMENT.search(said):
        name, offset = match.group(1), int(match.group(2))
        try:
            size = (control.data_directory / "pg_wal" / name).stat().st_size
        except OSError:
            return None
        per_id = 0x100000000 // size
        return (int(name[8:16], 16) * per_id + int(name[16:24], 16)) * size + offset
    return None
