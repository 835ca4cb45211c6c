"""``agentaskit-dr status`` as tables on a terminal, and unchanged lines everywhere else."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agentaskit_dr.api.client import render_status
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import ApiServer
from agentaskit_dr.api.status_table import print_status, status_tables
from tests.unit.test_api_server import FakeController

REPO = Path(__file__).resolve().parents[2]


def daemon_status() -> dict[str, Any]:
    return {
        "node": "drill-us-east-1", "role": "watchdog", "region": "us-east-1",
        "primary_region": "us-east-1", "phase": "failed_over",
        "verdict": "no action: failed over (epoch 4); waiting for acknowledgement",
        "assessment": {"verdict": "healthy", "since_ago": 6.5, "detail": "primary healthy"},
        "conditions": {
            "db_unreachable": {"failing": True, "failing_for": 1.5, "threshold": 120.0,
                               "failing_since_ago": 1.5, "detail": "standby unreachable"},
            "region_unhealthy": {"failing": False, "failing_for": None, "threshold": 300.0,
                                 "failing_since_ago": None, "detail": "ok"},
        },
        "probes": {"db:primary": {"target": "127.0.0.1:5433", "ok": True,
                                  "in_recovery": False, "age": 0.25, "error": None}},
        "peers": {"http://127.0.0.1:9001": False},
        "epoch": 4, "lock_holder": "drill-us-east-1", "lag_bytes": None, "paused": False,
        "self_fenced": False, "alerts": {"old_primary": "not fenced yet"},
        "last_failover": {"decided_ago": 7.0, "completed_ago": 6.8, "epoch": 4,
                          "reason": "db_unreachable for 121s"},
        "cluster": {"known": True, "primary_region": "us-east-1", "primary_epoch": 4,
                    "primary_run_id": "fo-7", "ack_generation": 2},
        "brand_new_key": {"nested": 1},
    }


def rendered(status: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=140, record=True, color_system=None)
    console.print(status_tables(status))
    return console.export_text()


def test_the_tables_show_state_conditions_probes_peers_failover_alerts_and_the_rest() -> None:
    text = rendered(daemon_status())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "node drill-us-east-1 (watchdog in us-east-1)" in lines
    assert "phase failed_over" in lines
    assert "epoch 4" in lines
    assert "lock holder drill-us-east-1" in lines
    assert "assessment healthy for 6.5 s: primary healthy" in lines
    assert "lock store primary us-east-1 since epoch 4 (run fo-7); acks 2" in lines
    for title in ("Failover conditions", "Probes", "Peers", "Last failover", "Open alerts",
                  "Other"):
        assert title in lines, title
    assert "db_unreachable failing 1.5 s 2.0 min standby unreachable" in lines
    assert "region_unhealthy clear - 5.0 min ok" in lines
    assert "db:primary 127.0.0.1:5433 ok 0.25 s accepts writes" in lines
    assert "http://127.0.0.1:9001 not reached" in lines
    assert "old_primary not fenced yet" in lines
    # A key the tables do not know is still shown, as key/value lines.
    assert "brand_new_key" in lines
    assert "nested 1" in lines


def test_the_lock_stores_answer_without_a_watchdog_shows_as_other_lines() -> None:
    text = rendered({"cluster": {"primary": "us-east-1", "epoch": 3}, "note": "no watchdog"})
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "note no watchdog" in lines
    assert "primary us-east-1" in lines


def test_output_that_is_not_a_terminal_keeps_the_key_value_lines() -> None:
    out = io.StringIO()
    print_status(daemon_status(), out)
    assert out.getvalue() == render_status(daemon_status()) + "\n"


@pytest.fixture
def url() -> Iterator[str]:
    """An ApiServer with a daemon-like status, in a thread of its own."""
    controller = FakeController()
    controller.status_payload = daemon_status()
    server = ApiServer(controller, metrics=Metrics(), token_file=None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start("127.0.0.1:0"), loop).result(10)
        yield f"http://127.0.0.1:{server.port}"
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def run_status(url: str, *, terminal: bool) -> str:
    """``agentaskit-dr status --url`` as a process, its stdout a pseudo-terminal or a pipe."""
    argv = [sys.executable, "-m", "agentaskit_dr", "status", "--url", url]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "140", "TERM": "xterm"}
    env.pop("AGENTASKIT_DR_API_URL", None)
    if not terminal:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                              check=True)
        return done.stdout
    leader, follower = pty.openpty()
    with subprocess.Popen(argv, env=env, stdout=follower, stderr=subprocess.PIPE) as process:
        os.close(follower)
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the process closed the terminal
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)
        os.close(leader)
        assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
    return b"".join(chunks).decode()


def test_status_on_a_terminal_prints_tables_and_through_a_pipe_the_old_lines(url: str) -> None:
    on_terminal = run_status(url, terminal=True)
    assert "Failover conditions" in on_terminal
    assert "─" in on_terminal  # rich's table rules
    assert "db_unreachable" in on_terminal
    assert "\x1b[" in on_terminal  # styled for the terminal

    piped = run_status(url, terminal=False)
    assert piped == render_status(daemon_status()) + "\n"
    assert "\x1b[" not in piped
