"""``self_fence``: the automatic lift is on by default; a switch keeps it manual."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentaskit_dr.config import load_config
from tests.unit.test_config import CONFIGS, problems_of, shipped_env

__all__ = ["shipped_env"]  # its autouse fixture sets the shipped passwords


def test_auto_lift_is_on_by_default_with_a_5m_stuck_alert() -> None:
    thresholds = load_config(CONFIGS / "watchdog.yaml").core_thresholds()

    assert thresholds.self_fence_auto_lift is True
    assert thresholds.self_fence_stuck_after == 300.0


def test_auto_lift_false_keeps_the_self_fence_manual(tmp_path: Path) -> None:
    text = (CONFIGS / "watchdog.yaml").read_text().replace(
        "  auto_lift: true\n  stuck_alert_after: 5m", "  auto_lift: false\n  stuck_alert_after: 2m")
    path = tmp_path / "watchdog.yaml"
    path.write_text(text)

    thresholds = load_config(path).core_thresholds()

    assert thresholds.self_fence_auto_lift is False
    assert thresholds.self_fence_stuck_after == 120.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("yes", "self_fence.auto_lift: "), ("maybe", "self_fence.auto_lift: ")],
)
def test_auto_lift_must_be_a_boolean(tmp_path: Path, value: str, expected: str) -> None:
    problems = problems_of(tmp_path, lambda d: d["self_fence"].update(auto_lift=value))

    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_stuck_alert_after_must_be_a_duration(tmp_path: Path) -> None:
    problems = problems_of(tmp_path,
                           lambda d: d["self_fence"].update(stuck_alert_after="soon"))

    assert len(problems) == 1
    assert problems[0].startswith("self_fence.stuck_alert_after: ")
