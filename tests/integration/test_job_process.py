"""A job's commands as real processes: outcome and bytes from their answers, and a
cancel that leaves no process of the job behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agentaskit_dr.runtime.job_process import run_commands

pytestmark = pytest.mark.integration
SHELL = ("sh", "-c")


async def test_answers_give_the_outcome_and_the_bytes() -> None:
    unchanged = await run_commands(
        [('echo \'{"outcome": "unchanged", "stored_bytes": 5}\'',)] * 2, grace=1, program=SHELL)
    assert (unchanged.outcome, unchanged.nbytes) == ("unchanged", 10)
    mixed = await run_commands(
        [('echo \'{"bytes_checked": 7}\'',),
         ("echo 'agentaskit-dr verify-backup: s3://x/base/1: missing' >&2; exit 1",)],
        grace=1, program=SHELL)
    assert (mixed.outcome, mixed.nbytes) == ("failed", 7)
    assert "exit 1: agentaskit-dr verify-backup: s3://x/base/1: missing" in mixed.detail
    # A reader that gave up on such a line would leave the command blocked on its stderr.
    noisy = await asyncio.wait_for(run_commands(
        [("head -c 300000 /dev/zero | tr '\\0' x >&2; echo >&2; echo '{}'",)], grace=1,
        program=SHELL), 60)
    assert noisy.outcome == "ok"  # a line longer than the reader's buffer is no failure


async def test_a_cancelled_job_leaves_no_process_of_its_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # The command's shell, a child in the background, and a grandchild ignoring SIGTERM.
    script = (f"echo $$ > {pid_file}; sh -c 'trap \"\" TERM; sleep 60' & sleep 60 & "
              "wait")
    job = asyncio.create_task(run_commands([(script,)], grace=0.5, program=SHELL))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    group = int(pid_file.read_text())
    os.killpg(group, 0)  # alive
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert await group_gone(group), f"processes of group {group} still there"


async def group_gone(group: int) -> bool:
    """Whether the group empties within 10 s (killed processes are reaped by init)."""
    for _ in range(200):
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False
