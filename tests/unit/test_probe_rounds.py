"""The probe scheduler's rounds: every probe starts at the same round time (one timer wakes
them all), rounds are ``interval`` ± ``jitter`` apart, and a slow probe never delays the
others (it only starts again at the first round after it returned). Virtual time."""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field

import pytest

from agentaskit_dr.ports import PostgresObservation
from agentaskit_dr.runtime.scheduler import (
    GATHER,
    SLOT_SIZE,
    ProbeReport,
    ProbeScheduler,
    ProbeTiming,
)


@dataclass
class TimedProbe:
    """Answers after ``latency`` seconds; records the loop time of each start."""

    name: str
    latency: float
    starts: list[float] = field(default_factory=list)

    async def observe(self) -> PostgresObservation:
        self.starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.latency)
        return PostgresObservation(target=self.name, reachable=True, latency=self.latency)

    def failure(self, error: str, latency: float) -> PostgresObservation:
        return PostgresObservation(target=self.name, reachable=False, latency=latency,
                                   error=error)

    async def close(self) -> None:
        return None


async def run_for(probes: list[TimedProbe], seconds: float, *, interval: float = 1.0,
                  jitter: float = 0.1, probe_timeout: float = 0.8) -> list[ProbeReport]:
    reports: list[ProbeReport] = []
    scheduler = ProbeScheduler(probes, ProbeTiming(interval, probe_timeout, jitter), reports.append,
                               generation=1, rng=random.Random(7))
    scheduler.start()
    await asyncio.sleep(seconds)
    await scheduler.stop()
    return reports


async def handed_over(probes: list[TimedProbe], seconds: float,
                      timing: ProbeTiming) -> list[tuple[float, str]]:
    """(loop time, probe) of each report as the scheduler hands it to the engine."""
    handed: list[tuple[float, str]] = []
    scheduler = ProbeScheduler(probes, timing,
                               lambda r: handed.append((asyncio.get_running_loop().time(),
                                                        r.probe)),
                               generation=1, rng=random.Random(3))
    scheduler.start()
    await asyncio.sleep(seconds)
    await scheduler.stop()
    return handed


@pytest.mark.looptime
async def test_every_probe_starts_at_the_same_round_times() -> None:
    probes = [TimedProbe("db", 0.004), TimedProbe("health", 0.03), TimedProbe("other", 0.2)]
    start = asyncio.get_running_loop().time()

    await run_for(probes, 10.0)

    rounds = probes[0].starts
    assert len(rounds) >= 9
    for probe in probes[1:]:
        assert probe.starts == rounds
    assert rounds[0] - start <= 0.1 + 1e-9  # the first round within the jitter
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    assert all(0.9 - 1e-9 <= gap <= 1.1 + 1e-9 for gap in gaps), gaps
    assert len({round(gap, 6) for gap in gaps}) > 1  # jittered, not a fixed period


@pytest.mark.looptime
async def test_a_slow_probe_skips_rounds_and_never_delays_the_others() -> None:
    fast, slow = TimedProbe("fast", 0.01), TimedProbe("slow", 2.5)

    reports = await run_for([fast, slow], 12.0, probe_timeout=3.0)

    assert len(fast.starts) >= 11
    # The slow one starts only at rounds of the fast one, the first after each return.
    assert set(slow.starts) <= set(fast.starts)
    for begun, after in zip(slow.starts, slow.starts[1:], strict=False):
        assert after == min(t for t in fast.starts if t > begun + 2.5)
    fast_reports = [r for r in reports if r.probe == "fast"]
    assert len(fast_reports) >= 11  # one per round, slow probe or not


@pytest.mark.looptime
async def test_a_hung_probe_is_reported_failed_at_the_backstop_and_rejoins_the_rounds() -> None:
    fast, hung = TimedProbe("fast", 0.01), TimedProbe("hung", 60.0)

    reports = await run_for([fast, hung], 8.0, probe_timeout=0.5)

    failed = [r for r in reports if r.probe == "hung"]
    assert failed
    assert not failed[0].observation.reachable
    assert "did not finish within 1.5s" in (failed[0].observation.error or "")
    assert set(hung.starts) <= set(fast.starts)
    assert len(hung.starts) >= 3


@pytest.mark.looptime
async def test_a_rounds_reports_are_handed_over_together_when_the_last_returns() -> None:
    probes = [TimedProbe("db", 0.004), TimedProbe("health", 0.03)]
    handed = await handed_over(probes, 3.5, ProbeTiming(1.0, 0.8, 0.1))

    by_time: dict[float, list[str]] = {}
    for at, name in handed:
        by_time.setdefault(at, []).append(name)
    assert len(by_time) >= 3
    # Both reports of a round at one instant, when the slower one returned.
    for round_start, (at, names) in zip(probes[0].starts, sorted(by_time.items()),
                                        strict=False):
        assert sorted(names) == ["db", "health"]
        assert at == pytest.approx(round_start + 0.03)


@pytest.mark.looptime
async def test_a_hung_probe_holds_its_rounds_other_reports_for_the_gather_window_only() -> None:
    fast, hung = TimedProbe("fast", 0.01), TimedProbe("hung", 60.0)
    handed = await handed_over([fast, hung], 0.5, ProbeTiming(1.0, 0.5, 0.1))

    assert handed == [(pytest.approx(fast.starts[0] + 0.01 + GATHER), "fast")]


@pytest.mark.looptime
async def test_more_probes_than_a_slot_are_spread_over_the_interval_in_slots() -> None:
    probes = [TimedProbe(f"t{i}", 0.01) for i in range(3 * SLOT_SIZE + 1)]

    await run_for(probes, 6.0)

    slots = 4  # 49 probes: four slots of at most SLOT_SIZE
    first_starts = sorted({probe.starts[0] for probe in probes})
    assert len(first_starts) == slots
    offsets = [start - first_starts[0] for start in first_starts]
    assert offsets == pytest.approx([0.0, 0.25, 0.5, 0.75])
    for start in first_starts:
        assert sum(1 for probe in probes if probe.starts[0] == start) <= SLOT_SIZE
    # Every probe once a round, each slot a fixed offset after the round's start.
    rounds = probes[0].starts
    for index, probe in enumerate(probes):
        assert probe.starts == pytest.approx([r + (index % slots) * 0.25 for r in rounds][
            :len(probe.starts)])
        assert len(probe.starts) >= len(rounds) - 1
