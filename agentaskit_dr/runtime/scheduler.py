"""Runs each probe in its own task, in jittered rounds, and hands observations to the engine.

Probes start in rounds, ``interval`` ± ``jitter`` apart. Up to ``SLOT_SIZE`` probes share
a start (a daemon's handful all do): one timer wakes them, and their reports go to the
engine together, in one cycle instead of one each (an idle watchdog's CPU, issue 13).
More probes are dealt into slots spread evenly over the interval, so a thousand of them
do not all start in one burst (bench/probe_scale.py). A slot's reports are held until
every probe of it has returned, or at most ``GATHER`` seconds after the first one did; a
report of a slot already handed over goes at once. Each probe still runs in its own task:
a slow or hung one only makes its own next start the first round after it returns, never
delays the others.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from agentaskit_dr.ports import Observation, Probe

log = structlog.get_logger(__name__)

#: The longest a slot's first report waits for the rest of its slot.
GATHER = 0.05
#: The most probes that start together (a daemon runs four: both databases, both
#: regions' health); more are spread over the interval in slots.
SLOT_SIZE = 4
#: Recent round starts kept: a probe's next start is found among them.
_ROUNDS_KEPT = 8


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


@dataclass(slots=True)
class _Round:
    """The reports of one round not handed over yet, and how many probes still run."""

    running: int = 0
    reports: list[ProbeReport] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class ProbeTiming:
    interval: float
    timeout: float
    jitter: float = 0.1


class ProbeScheduler:
    """One task per probe: observe, report, wait for the next round; repeat. Rounds are
    ``interval`` ± ``jitter`` apart, the first within ``jitter`` of the start.

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
        self._round_starts: list[float] = []
        self._rounds: dict[float, _Round] = {}

    def start(self) -> None:
        spread = self.timing.interval * self.timing.jitter
        self._round_starts = [asyncio.get_running_loop().time() + self._rng.uniform(0, spread)]
        slots = -(-len(self.probes) // SLOT_SIZE)
        for index, probe in enumerate(self.probes):
            offset = (index % slots) * self.timing.interval / slots
            task = asyncio.create_task(self._run(probe, offset), name=f"probe:{probe.name}")
            self._tasks.append(task)

    async def stop(self) -> None:
        for pending in self._rounds.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self._rounds.clear()
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

    def round_after(self, now: float) -> float:
        """The first round start later than ``now``: the same one for every probe that
        asks before it comes."""
        starts = self._round_starts
        while starts[-1] <= now:
            starts.append(starts[-1] + self._sleep_for())
            del starts[:-_ROUNDS_KEPT]
        return next(start for start in starts if start > now)

    async def sleep_until(self, at: float) -> None:
        """Wait for a probe's start (a hook: the scale benchmark times starts here)."""
        await asyncio.sleep(max(0.0, at - asyncio.get_running_loop().time()))

    async def _run(self, probe: Probe[Observation], offset: float) -> None:
        loop = asyncio.get_running_loop()
        round_start = self._round_starts[0]
        while True:
            at = round_start + offset
            await self.sleep_until(at)
            self._rounds.setdefault(at, _Round()).running += 1
            started = loop.time()
            observation = await self._observe(probe, started)
            self._deliver(at, ProbeReport(probe.name, self.generation, observation,
                                          loop.time()))
            # The next round (a timer may fire a hair early) or, after an overrun, the
            # first one whose start for this probe is still to come.
            round_start = self.round_after(max(loop.time() - offset, round_start))

    def _deliver(self, at: float, report: ProbeReport) -> None:
        pending = self._rounds.get(at)
        if pending is None:  # its round went out without it (or the scheduler stopped)
            self.report(report)
            return
        pending.running -= 1
        pending.reports.append(report)
        if pending.running <= 0:
            self._hand_over(at)
        elif pending.timer is None:
            pending.timer = asyncio.get_running_loop().call_later(GATHER, self._hand_over, at)

    def _hand_over(self, at: float) -> None:
        pending = self._rounds.pop(at, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        # One after the other, with no await between: the engine takes them in one batch.
        # Probes of the round still running report on their own when they return.
        for report in pending.reports:
            self.report(report)

    async def _observe(self, probe: Probe[Observation], started: float) -> Observation:
        backstop = self.timing.timeout + 1.0
        try:
            async with asyncio.timeout(backstop):
                return await probe.observe()
        except TimeoutError:
            log.exception("probe_overran_timeout", probe=probe.name, backstop=backstop)
            latency = asyncio.get_running_loop().time() - started
            return probe.failure(f"probe did not finish within {backstop:g}s", latency)
