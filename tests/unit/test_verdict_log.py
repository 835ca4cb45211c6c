"""The engine's verdict line: on change, when asked, and once a minute (issue 13)."""

from __future__ import annotations

from dataclasses import replace

from structlog.testing import capture_logs

from agentaskit_dr.core import WatchState
from agentaskit_dr.runtime.engine_log import VERDICT_HEARTBEAT, VerdictLog
from tests.unit.test_engine_virtual_time import watchdog_config

HEALTHY = WatchState(verdict="no action: primary healthy", epoch=7)


def logged_at(moments: list[tuple[float, WatchState, int | None, bool]]) -> list[float]:
    config = watchdog_config(jitter=0.0)
    verdicts = VerdictLog()
    with capture_logs() as logs:
        for cycle, (now, state, lag, force) in enumerate(moments, start=1):
            verdicts.cycle(state, config, cycle=cycle, lag_bytes=lag, now=now, force=force)
    return [moments[entry["cycle"] - 1][0] for entry in logs if entry["event"] == "verdict"]


def test_an_unchanged_verdict_is_logged_once_then_once_a_minute() -> None:
    moments = [(t * 0.5, HEALTHY, 0, False) for t in range(int(3 * VERDICT_HEARTBEAT / 0.5))]
    assert logged_at(moments) == [0.0, VERDICT_HEARTBEAT, 2 * VERDICT_HEARTBEAT]


def test_a_changed_verdict_is_logged_at_once_and_so_is_its_return() -> None:
    waiting = replace(HEALTHY, verdict="no action: waiting, db_unreachable for 1.0s of 120s")
    moments = [(0.0, HEALTHY, 0, False), (1.0, waiting, 0, False), (2.0, HEALTHY, 0, False),
               (3.0, HEALTHY, 0, False)]
    assert logged_at(moments) == [0.0, 1.0, 2.0]


def test_the_lag_is_logged_when_it_crosses_the_promotion_gate_not_as_it_moves() -> None:
    gate = watchdog_config(jitter=0.0).promotion.max_lag_bytes
    moments = [(0.0, HEALTHY, 0, False), (1.0, HEALTHY, gate // 2, False),
               (2.0, HEALTHY, gate + 1, False), (3.0, HEALTHY, gate * 2, False),
               (4.0, HEALTHY, gate, False), (5.0, HEALTHY, None, False)]
    assert logged_at(moments) == [0.0, 2.0, 4.0, 5.0]


def test_a_reload_or_a_control_asks_for_the_next_verdict() -> None:
    moments = [(0.0, HEALTHY, 0, False), (1.0, HEALTHY, 0, True), (2.0, HEALTHY, 0, False)]
    assert logged_at(moments) == [0.0, 1.0]
