"""A backup job's commands, each an ``agentaskit-dr`` process of its own.

Why a process and not the job's coroutine in the daemon: a backup streams gigabytes
through compression, encryption and hashing, and a restore test starts a PostgreSQL;
none of that may share the event loop (or the memory) of the loop that renews the
leader lock and watches the primary. The command is exactly what an operator runs by
hand, so the job's evidence file, exit codes and JSON answer are the CLI's.

Each command runs in a session of its own: cancelling (SIGTERM of the daemon) sends
SIGTERM to the whole process group (pg_basebackup, zstd, tar...), then SIGKILL after
``grace``. Its stderr (JSON log lines) passes through to the daemon's; its stdout is the
command's ``--json`` answer, read for the outcome and the byte count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentaskit_dr.runtime.job_schedule import Outcome

#: Keys of the commands' JSON answers that count a job's bytes, first found wins.
_BYTES_KEYS = ("stored_bytes", "bytes_downloaded", "bytes_checked")
_TAIL = 4096


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job's commands ended: outcome, bytes (None: not reported) and a detail.
    ``recorded``: a command recorded the run in the DR testing schedule itself."""

    outcome: Outcome
    nbytes: int | None
    detail: str
    evidence: str | None = None
    recorded: bool = False


async def run_commands(steps: Sequence[Sequence[str]], *, grace: float,
                       program: Sequence[str] = (sys.executable, "-m", "agentaskit_dr"),
                       ) -> JobOutcome:
    """Run ``steps`` one after the other (all of them, even after one failed)."""
    outcomes: list[Outcome] = []
    details: list[str] = []
    total: int | None = None
    evidence: str | None = None
    recorded = False
    results: list[str] = []
    for argv in steps:
        code, answer, tail = await _run(list(program) + list(argv), grace=grace)
        document = _json(answer)
        nbytes = _bytes(document)
        if nbytes is not None:
            total = (total or 0) + nbytes
        evidence = str(document.get("evidence") or "") or evidence
        recorded = recorded or bool(document.get("recorded"))
        if isinstance(document.get("result"), str):
            results.append(document["result"])  # the command's own one-line result
        if code != 0:
            outcomes.append("failed")
            details.append(f"{' '.join(argv[:3])}: exit {code}: {tail or 'no message'}")
        elif document.get("outcome") == "unchanged":
            outcomes.append("unchanged")
        else:
            outcomes.append("ok")
    outcome: Outcome = ("failed" if "failed" in outcomes else
                        "unchanged" if outcomes and set(outcomes) == {"unchanged"} else "ok")
    return JobOutcome(outcome, total, "; ".join(results or details) or outcome, evidence,
                      recorded)


async def _run(argv: list[str], *, grace: float) -> tuple[int, bytes, str]:
    """Exit code, stdout and the last stderr line of one command."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdout = asyncio.ensure_future(proc.stdout.read())
    stderr = asyncio.ensure_future(_pass_through(proc.stderr))
    try:
        code = await proc.wait()
        return code, await stdout, await stderr
    except BaseException:
        await _stop_group(proc, grace)
        raise
    finally:
        for task in (stdout, stderr):
            task.cancel()
        await asyncio.gather(stdout, stderr, return_exceptions=True)


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the command's process group, SIGKILL after ``grace``; never raises."""
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.shield(asyncio.wait_for(proc.wait(), grace))
    # Leftovers of the group (its leader may be gone already) get no second chance.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(proc.wait())


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _pass_through(stream: asyncio.StreamReader) -> str:
    """Copy the command's stderr to ours line by line; its last non-empty line."""
    last = b""
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    while line := await _next_line(stream):
        if line.strip():
            last = line.strip()[-_TAIL:]
        if out is not None:
            out.write(line)
            out.flush()
    text = last.decode(errors="replace")
    with contextlib.suppress(ValueError):
        event = json.loads(text)
        if isinstance(event, dict):
            text = str(event.get("error") or event.get("reason") or event.get("event") or text)
    return text


async def _next_line(stream: asyncio.StreamReader) -> bytes:
    """The next line, or the next 64 KiB of one too long for the reader's buffer."""
    try:
        return await stream.readline()
    except ValueError:  # LimitOverrunError: no newline within the buffer's limit
        return await stream.read(1 << 16)


def _json(answer: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        document = json.loads(answer)
        if isinstance(document, dict):
            return document
    return {}


def _bytes(document: dict[str, Any]) -> int | None:
    for key in _BYTES_KEYS:
        value = document.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
