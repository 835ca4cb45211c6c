"""Runs each probe in its own task, jittered, and hands observations to the engine."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from agentaskit_dr.ports import Observation, Probe

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """An observation as the engine receives it.

    ``generation`` names the probe set that made it: after a failover or a reload the
    engine starts a new generation and drops late reports from the old one.
    """

    probe: str
    generation: int
    observation: Observation
    at: float


@dataclass(frozen=True, slots=True)
class ProbeTiming:
    interval: float
    timeout: float
    jitter: float = 0.1


class ProbeScheduler:
    """One task per probe: observe, report, sleep ``interval`` ± ``jitter``; repeat.

    The probe bounds itself by ``timeout``; the scheduler adds a backstop a little longer
    than that, so a misbehaving probe shows up as a failure instead of a stuck task.
    """

    def __init__(
        self,
        probes: Sequence[Probe[Observation]],
        timing: ProbeTiming,
        report: Callable[[ProbeReport], None],
        *,
        generation: int,
        rng: random.Random | None = None,
    ) -> None:
        self.probes = list(probes)
        self.timing = timing
        self.report = report
        self.generation = generation
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for probe in self.probes:
            task = asyncio.create_task(self._run(probe), name=f"probe:{probe.name}")
            self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for probe in self.probes:
            try:
                await probe.close()
            except Exception as exc:  # noqa: BLE001 - closing must not stop the others
                log.warning("probe_close_failed", probe=probe.name, error=repr(exc))

    def _sleep_for(self) -> float:
        spread = self.timing.interval * self.timing.jitter
        return max(0.0, self.timing.interval + self._rng.uniform(-spread, spread))

    async def _run(self, probe: Probe[Observation]) -> None:
        loop = asyncio.get_running_loop()
        # Spread the first round so probes of one daemon do not fire in lockstep.
        await asyncio.sleep(self._rng.uniform(0, self.timing.interval * self.timing.jitter))
        while True:
            started = loop.time()
            observation = await self._observe(probe, started)
            self.report(ProbeReport(probe.name, self.generation, observation, loop.time()))
            elapsed = loop.time() - started
            await asyncio.sleep(max(0.0, self._sleep_for() - elapsed))

    async def _observe(self, probe: Probe[Observation], started: float) -> Observation:
        backstop = self.timing.timeout + 1.0
        try:
            async with asyncio.timeout(backstop):
                return await probe.observe()
        except TimeoutError:
            log.exception("probe_overran_timeout", probe=probe.name, backstop=backstop)
            latency = asyncio.get_running_loop().time() - started
            return probe.failure(f"probe did not finish within {backstop:g}s", latency)
