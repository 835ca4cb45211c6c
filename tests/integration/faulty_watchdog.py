"""The daemon with a fault injected, for the systemd notification and exit code tests.

``python -m tests.integration.faulty_watchdog FAULT run --config C`` runs the real daemon
with one of these faults; the injection lives here, in the tests, so no production code
path can trigger it:

- ``stall``: after SIGUSR1 the engine's next cycle waits until SIGUSR2 (an engine loop
  that makes no progress while the event loop, the API and the other tasks run on);
- ``hang-on-stop``: the peer poller ignores its cancellation, so it misses the stop grace
  period (shortened to 1 s);
- ``unit-sandbox``: the system call filter, socket families and writable-executable
  memory ban of systemd/agentaskit-dr.service (``unit_sandbox``, from the lists the test
  passes in the environment); exit 77 when this kernel or libseccomp cannot, 78 when the
  sandbox let through what it should refuse.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import structlog

from agentaskit_dr import cli
from agentaskit_dr.runtime import engine, peers, supervisor
from tests.integration import unit_sandbox

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


EXIT_UNSUPPORTED, EXIT_LEAKY = 77, 78


def _unit_sandbox() -> None:
    syscalls = unit_sandbox.parse_list(os.environ.pop(unit_sandbox.SYSCALLS_VARIABLE))
    families = unit_sandbox.parse_list(os.environ.pop(unit_sandbox.FAMILIES_VARIABLE))
    try:
        unit_sandbox.enter(syscalls, families)
    except OSError as exc:
        print(f"unit sandbox unsupported here: {exc}", file=sys.stderr)
        sys.exit(EXIT_UNSUPPORTED)
    leaks = unit_sandbox.in_force()
    if leaks:
        print(f"unit sandbox let through: {', '.join(leaks)}", file=sys.stderr)
        sys.exit(EXIT_LEAKY)
    log.info("unit_sandbox_entered", syscalls=len(syscalls), families=families)


FAULTS = {"stall": _stall_on_sigusr1, "hang-on-stop": _hang_on_stop,
          "unit-sandbox": _unit_sandbox}

if __name__ == "__main__":
    FAULTS[sys.argv[1]]()
    sys.exit(cli.main(sys.argv[2:]))
