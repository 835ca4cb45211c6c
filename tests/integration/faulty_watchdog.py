"""The daemon with a fault injected, for the systemd notification and exit code tests.

``python -m tests.integration.faulty_watchdog FAULT run --config C`` runs the real daemon
with one of these faults; the injection lives here, in the tests, so no production code
path can trigger it:

- ``stall``: after SIGUSR1 the engine's next cycle waits until SIGUSR2 (an engine loop
  that makes no progress while the event loop, the API and the other tasks run on);
- ``hang-on-stop``: the peer poller ignores its cancellation, so it misses the stop grace
  period (shortened to 1 s);
- ``no-wx-memory``: the kernel refuses writable-then-executable memory to the process
  (``PR_SET_MDWE``), as the unit's ``MemoryDenyWriteExecute=yes`` does; exit 77 when this
  kernel cannot (before Linux 6.3).
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import sys
from typing import Any

import structlog

from agentaskit_dr import cli
from agentaskit_dr.runtime import engine, peers, supervisor

log = structlog.get_logger(__name__)


def _stall_on_sigusr1() -> None:
    original = engine.Engine._cycle
    events: dict[str, asyncio.Event] = {}

    async def cycle(self: engine.Engine, items: list[Any]) -> None:
        if not events:
            stalled, resumed = events["stalled"], events["resumed"] = (asyncio.Event(),
                                                                      asyncio.Event())
            loop = asyncio.get_running_loop()

            def resume() -> None:
                stalled.clear()
                resumed.set()

            loop.add_signal_handler(signal.SIGUSR1, stalled.set)
            loop.add_signal_handler(signal.SIGUSR2, resume)
        if events["stalled"].is_set():
            events["resumed"].clear()
            log.critical("engine_stall_injected")
            await events["resumed"].wait()
            log.critical("engine_stall_lifted")
        await original(self, items)

    engine.Engine._cycle = cycle  # type: ignore[method-assign]


def _hang_on_stop() -> None:
    original = peers.PeerPoller.run
    supervisor.GRACE_PERIOD = 1.0

    async def run(self: peers.PeerPoller) -> None:
        try:
            await original(self)
        except asyncio.CancelledError:
            log.critical("stop_hang_injected", task="peers")
            await asyncio.sleep(3600)  # until asyncio.run cancels what is left

    peers.PeerPoller.run = run  # type: ignore[method-assign]


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
EXIT_UNSUPPORTED = 77


def _no_wx_memory() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(EXIT_UNSUPPORTED)


FAULTS = {"stall": _stall_on_sigusr1, "hang-on-stop": _hang_on_stop,
          "no-wx-memory": _no_wx_memory}

if __name__ == "__main__":
    FAULTS[sys.argv[1]]()
    sys.exit(cli.main(sys.argv[2:]))
