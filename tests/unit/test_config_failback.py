"""``failback:``: the traffic shift's steps, soak and health gate, validated with the key named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentaskit_dr.config import ConfigError, load_config
from agentaskit_dr.runtime.traffic_shift import health_gate
from tests.unit.test_config import shipped, shipped_env, write  # noqa: F401


def with_failback(tmp_path: Path, failback: dict[str, Any] | None) -> Path:
    data = shipped("watchdog.yaml")
    data["failback"] = failback
    return write(tmp_path, data)


def test_defaults_are_the_plans_10_50_100_with_a_5m_soak(tmp_path: Path) -> None:
    config = load_config(with_failback(tmp_path, None))

    assert config.failback.shift_steps == (10, 50, 100)
    assert config.failback.soak == 300.0
    assert config.failback.gate_healthy_fraction is None
    assert health_gate(config, "us-west-2").healthy_fraction == config.probe.healthy_fraction


def test_shipped_file_sets_the_documented_defaults() -> None:
    assert shipped("watchdog.yaml")["failback"] == {
        "shift_steps": [10, 50, 100], "soak": "5m", "gate_healthy_fraction": None}


def test_steps_soak_and_fraction_are_read(tmp_path: Path) -> None:
    config = load_config(with_failback(tmp_path, {"shift_steps": [25, 100], "soak": "90s",
                                                  "gate_healthy_fraction": 1.0}))

    assert config.failback.shift_steps == (25, 100)
    assert config.failback.soak == 90.0
    assert health_gate(config, "us-west-2").healthy_fraction == 1.0


@pytest.mark.parametrize(
    ("failback", "field", "message"),
    [
        ({"shift_steps": [50, 10, 100]}, "failback.shift_steps", "steps must increase"),
        ({"shift_steps": [10, 10, 100]}, "failback.shift_steps", "steps must increase"),
        ({"shift_steps": [10, 50]}, "failback.shift_steps", "the last step must be 100"),
        ({"shift_steps": [0, 100]}, "failback.shift_steps", "from 1 to 100"),
        ({"shift_steps": [10, 150]}, "failback.shift_steps", "from 1 to 100"),
        ({"shift_steps": [10.5, 100]}, "failback.shift_steps", "whole percentage"),
        ({"shift_steps": []}, "failback.shift_steps", "list of percentages"),
        ({"shift_steps": "10,50,100"}, "failback.shift_steps", "list of percentages"),
        ({"soak": "soon"}, "failback.soak", "duration"),
        ({"soak": "0s"}, "failback.soak", "greater than 0"),
        ({"gate_healthy_fraction": 0}, "failback.gate_healthy_fraction", "greater than 0"),
        ({"gate_healthy_fraction": 1.5}, "failback.gate_healthy_fraction", "less than or equal"),
        ({"soak_time": "5m"}, "failback.soak_time", ""),
    ],
)
def test_a_bad_key_is_named(
    tmp_path: Path, failback: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(with_failback(tmp_path, failback))

    [problem] = caught.value.problems
    assert problem.startswith(f"{field}: ")
    assert message in problem
