"""The schedule is a pure function of the seed and the fault phase's length."""

from __future__ import annotations

import pytest

from tests.chaos.schedule import KINDS, MAX_FAULT, MIN_FAULT, generate, processes


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert generate(42, 60) == generate(42, 60)
    assert generate(42, 60) != generate(43, 60)


@pytest.mark.parametrize("seed", range(50))
def test_every_fault_is_healed_inside_the_fault_phase(seed: int) -> None:
    for fault in generate(seed, 60):
        assert fault.kind in KINDS
        assert 0 <= fault.at <= fault.end <= 60
        assert MIN_FAULT <= fault.duration <= MAX_FAULT


@pytest.mark.parametrize("seed", range(50))
def test_no_two_overlapping_faults_act_on_one_process(seed: int) -> None:
    faults = generate(seed, 60)
    for i, a in enumerate(faults):
        for b in faults[i + 1:]:
            if a.at < b.end and b.at < a.end:
                assert not processes(a) & processes(b), (a, b)


def test_faults_overlap_and_every_kind_appears_over_many_seeds() -> None:
    schedules = [generate(seed, 60) for seed in range(200)]
    assert {f.kind for s in schedules for f in s} == set(KINDS)
    assert any(a.at < b.end and b.at < a.end
               for s in schedules for i, a in enumerate(s) for b in s[i + 1:])


def test_one_way_cuts_start_from_a_site_that_dials_out() -> None:
    cuts = [f for seed in range(200) for f in generate(seed, 60) if f.kind == "cut_one_way"]
    assert cuts
    assert all(not f.target.startswith("redis|") for f in cuts)


def test_a_fault_phase_shorter_than_a_fault_is_refused() -> None:
    with pytest.raises(ValueError, match=r"duration: 1\.0s"):
        generate(1, 1.0)
