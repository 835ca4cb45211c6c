"""The daemon with a crash injected in the middle of a switchover, for the resume tests.

``python -m tests.integration.crashing_switchover STAGE ONCE run --config C`` runs the
real daemon, which SIGKILLs itself right after the switchover's ``STAGE`` returned, unless
the file ``ONCE`` exists (it is created at the crash: of several watchdogs started this
way, only the first to switch crashes; the resume goes through):
``demote`` (the primary stopped with standby.signal, the standby not promoted) or
``promote`` (the standby promoted, the old primary not rejoined, nothing recorded). The
injection lives here, in the tests, so no production code path can trigger it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr import cli
from agentaskit_dr.actuators.switchover import PostgresSwitchover

STAGES = {"demote": "_demote", "promote": "_promote"}


def _first_crash(once: Path) -> bool:
    try:
        once.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def _crash_after(stage: str, once: Path) -> None:
    name = STAGES[stage]
    original = getattr(PostgresSwitchover, name)

    async def crashing(self: PostgresSwitchover, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        if not _first_crash(once):
            return result
        structlog.get_logger(__name__).critical("crash_injected", stage=stage)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(PostgresSwitchover, name, crashing)


if __name__ == "__main__":
    _crash_after(sys.argv[1], Path(sys.argv[2]))
    sys.exit(cli.main(sys.argv[3:]))
