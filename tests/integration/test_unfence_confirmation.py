"""``unfence`` asks the sources before the operator: a refusal asks nothing, and the prompt
comes only when the lift would go ahead. As the real CLI on a real terminal (a pty as its
stdin) against a real pair.

Before, ``unfence`` asked "Type the region to confirm" first and the sources after: an
operator typed the region and was then refused for what was already known.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentaskit_dr.sandbox.postgres import PostgresPair
from tests.integration.test_start_gate import WEST, cli, fail_over, write_config
from tests.integration.test_start_gate_unconfirmed import cut_off, hanging_port  # noqa: F401
from tests.integration.test_unfence_unconfirmed import fenced, said, still_fenced

pytestmark = pytest.mark.integration

PROMPT = f"Type {WEST!r} to confirm: "
UNFENCE = ("unfence", "--region", WEST, "--remove-standby-signal")
CTRL_D = "\x04"  # end of input at the start of a line (the terminal's VEOF)


@dataclass(frozen=True)
class Session:
    """One ``unfence`` run on a terminal: its exit code, what it printed, whether it asked."""

    code: int
    out: str
    err: str
    asked: bool


async def on_a_terminal(config: Path, *args: str, answer: str) -> Session:
    """``agentaskit-dr ARGS --config CONFIG`` with a pty as stdin; ``answer`` (a line, or
    Ctrl-D) is typed once the prompt shows (the prompt goes to stdout, a pipe here)."""
    controller, terminal = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentaskit_dr", *args, "--config", str(config),
            stdin=terminal, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ),
        )
    finally:
        os.close(terminal)
    assert proc.stdout is not None
    assert proc.stderr is not None
    err_read = asyncio.ensure_future(proc.stderr.read())
    out, asked = b"", False
    try:
        async with asyncio.timeout(60):
            while chunk := await proc.stdout.read(4096):
                out += chunk
                if not asked and PROMPT.encode() in out:
                    asked = True
                    os.write(controller, answer.encode())
            err = await err_read
            code = await proc.wait()
    finally:
        os.close(controller)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        err_read.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await err_read
    return Session(code, out.decode(), err.decode(), asked)


async def test_unfence_that_hears_nothing_refuses_without_asking(
    tmp_path: Path, pg_pair: PostgresPair, hanging_port: int,  # noqa: F811
) -> None:
    await fenced(pg_pair)
    config = cut_off(tmp_path, pg_pair, hanging_port)

    run = await on_a_terminal(config, *UNFENCE, answer=f"{WEST}\n")

    assert not run.asked, run.out
    assert run.code == 1, run.out
    assert said(run.err)[0].startswith("agentaskit-dr unfence: refusing to lift us-west-2's "
                                       "fence: nothing confirms")
    assert still_fenced(pg_pair)


async def test_unfence_refuses_the_old_primary_without_asking(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    config = write_config(tmp_path, pg_pair)
    fail_over(pg_pair)

    run = await on_a_terminal(config, *UNFENCE, answer=f"{WEST}\n")

    assert not run.asked, run.out
    assert run.code == 1, run.out
    assert "refusing to lift us-west-2's fence: region us-east-1's server" in run.err
    assert "promoted under epoch 1" in run.err
    # The old primary is down: nothing was lifted, standby.signal is where it was.
    assert not (pg_pair.primary.datadir / "standby.signal").exists()


async def test_unfence_asks_once_the_sources_allow_it_and_lifts_when_confirmed(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    # East's server answers (a standby): the primary is not elsewhere.
    await fenced(pg_pair)
    config = write_config(tmp_path, pg_pair)

    run = await on_a_terminal(config, *UNFENCE, answer=f"{WEST}\n")

    assert run.asked
    assert run.code == 0, run.err
    assert "LOGIN given back to: app" in run.out.split(PROMPT)[1]
    assert not (pg_pair.primary.datadir / "standby.signal").exists()
    assert pg_pair.primary.sql("SHOW default_transaction_read_only") == "off"


async def test_unfence_asked_and_not_confirmed_changes_nothing(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    await fenced(pg_pair)
    config = write_config(tmp_path, pg_pair)

    run = await on_a_terminal(config, *UNFENCE, answer="us-east-1\n")

    assert run.asked
    assert run.code == 1
    assert "agentaskit-dr unfence: not confirmed; nothing changed" in run.err
    assert still_fenced(pg_pair)


async def test_unfence_asked_and_given_end_of_input_changes_nothing_without_a_traceback(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    await fenced(pg_pair)
    config = write_config(tmp_path, pg_pair)

    run = await on_a_terminal(config, *UNFENCE, answer=CTRL_D)

    assert run.asked
    assert run.code == 1
    assert "Traceback" not in run.err
    assert "agentaskit-dr unfence: not confirmed; nothing changed" in run.err
    assert still_fenced(pg_pair)


async def test_unfence_unconfirmed_on_purpose_says_so_before_asking_and_once(
    tmp_path: Path, pg_pair: PostgresPair, hanging_port: int,  # noqa: F811
) -> None:
    await fenced(pg_pair)
    config = cut_off(tmp_path, pg_pair, hanging_port)

    run = await on_a_terminal(config, *UNFENCE, "--allow-unconfirmed", answer=f"{WEST}\n")

    assert run.asked
    assert run.code == 0, run.err
    before, after = run.out.split(PROMPT)
    assert said(before)[0].startswith("lifting us-west-2's fence unconfirmed, on purpose")
    assert "unconfirmed" not in after
    assert "LOGIN given back to: app" in after


async def test_unfence_without_a_terminal_asks_for_yes_once_the_sources_allow_it(
    tmp_path: Path, pg_pair: PostgresPair,
) -> None:
    await fenced(pg_pair)
    config = write_config(tmp_path, pg_pair)

    code, _, err = await cli(config, *UNFENCE)

    assert code == 1
    assert "agentaskit-dr unfence: not interactive: pass --yes" in err
    assert still_fenced(pg_pair)
