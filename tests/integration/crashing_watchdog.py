"""The daemon with a fault injected, for the crash-resume tests only.

``python -m tests.integration.crashing_watchdog STEP run --config C`` runs the real
daemon, which SIGKILLs itself right after its runbook journals ``STEP`` as done. The
injection lives here, in the tests, so no production code path can trigger it.
"""

from __future__ import annotations

import os
import signal
import sys

import structlog

from agentaskit_dr import cli
from agentaskit_dr.runtime import runbook


def _crash_after(step: str) -> None:
    original = runbook.Runbook.__init__

    def init(self: runbook.Runbook, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]

        def after_step(name: str) -> None:
            if name == step:
                structlog.get_logger(__name__).critical("crash_injected", step=name)
                os.kill(os.getpid(), signal.SIGKILL)

        self.after_step = after_step

    runbook.Runbook.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    _crash_after(sys.argv[1])
    sys.exit(cli.main(sys.argv[2:]))
