"""``agentaskit-dr run`` under systemd's eyes: a real daemon process and a real AF_UNIX
datagram socket standing in for ``$NOTIFY_SOCKET`` (a socket file and an abstract name).

The daemon says READY=1 after its first probe round, RELOADING=1 (with MONOTONIC_USEC)
and READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM, a STATUS= line, and
WATCHDOG=1 only while its engine makes progress. Its exit code says how it stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.runtime.systemd_notify import monotonic_usec
from agentaskit_dr.sandbox.drill import Watchdog, health_endpoint, wait_for_event
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration import unit_sandbox
from tests.integration.test_daemon_lifecycle import EAST, WEST, config_for, nothing_listens
from tests.notify_socket import NotifySocket

pytestmark = pytest.mark.integration

#: Bound on a start: Python imports, config, the first lock round and probe round.
READY_TIMEOUT = 30.0
PROMPT = 5.0
#: The watchdog interval the daemons get (WATCHDOG_USEC): pets every 0.5 s.
WATCHDOG_SEC = 1.0
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "agentaskit-dr.service"


def event(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == name


class NotifiedDaemon:
    """One daemon process, started as systemd would: ``WATCHDOG_PID`` is its own PID
    (``sh`` sets it, then execs the daemon in its place) unless ``env`` names one."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str],
                 fault: str | None = None) -> None:
        config_path = workdir / "watchdog.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.dog = Watchdog("notify", config_path, workdir / "watchdog.log")
        entry = ["-m", "agentaskit_dr"] if fault is None else [
            "-m", "tests.integration.faulty_watchdog", fault]
        with self.dog.log_path.open("wb") as out:
            as_main_pid = [] if "WATCHDOG_PID" in env else [
                "/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"]
            self.dog.proc = subprocess.Popen(
                [*as_main_pid, sys.executable, *entry, "run", "--config", str(config_path)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
            )

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.dog.proc is not None
        return self.dog.proc

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = PROMPT) -> dict[str, Any]:
        found = wait_for_event([self.dog], predicate, timeout)
        assert found is not None, f"no {what} within {timeout:g}s; see {self.dog.log_path}"
        return found

    def names(self) -> list[str]:
        return [str(e.get("event")) for e in self.dog.read()]

    def signal(self, sig: signal.Signals) -> float:
        """Send ``sig``; the monotonic time just before."""
        assert self.proc.poll() is None, f"exited {self.proc.returncode}; {self.dog.log_path}"
        sent = time.monotonic()
        self.proc.send_signal(sig)
        return sent

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon still running 15s after SIGTERM; see {self.dog.log_path}")

    def stop(self) -> None:
        self.dog.stop()


@pytest.fixture
def start(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., NotifiedDaemon]]:
    """Start daemons (no database behind either DSN: every probe round ends at once)."""
    with ExitStack() as stack:
        health = {name: stack.enter_context(health_endpoint()) for name in (WEST, EAST)}
        started: list[NotifiedDaemon] = []

        def start(env: dict[str, str], fault: str | None = None,
                  databases: dict[str, str] | None = None) -> NotifiedDaemon:
            databases = databases or {WEST: nothing_listens(), EAST: nothing_listens()}
            config = config_for(databases=databases, lock_url=redis_server.url,
                                health=health, db_unreachable=30.0)
            workdir = tmp_path / f"daemon-{len(started)}"
            workdir.mkdir()
            # Its DR-testing schedule state goes here, never under the machine's default.
            config["evidence_dir"] = str(workdir / "evidence")
            daemon = NotifiedDaemon(workdir, config, env, fault)
            started.append(daemon)
            return daemon

        yield start
        for daemon in started:
            daemon.stop()


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_after_the_first_probe_round_reload_and_stop_are_announced(
    kind: str, tmp_path: Path, start: Callable[..., NotifiedDaemon],
) -> None:
    with NotifySocket(kind, tmp_path) as sock:
        daemon = start({"NOTIFY_SOCKET": sock.address,
                        "WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1e6))})
        hint = f"see {daemon.dog.log_path}"
        ready = sock.wait_for(lambda m: "READY" in m, READY_TIMEOUT, what="READY=1", hint=hint)
        assert ready["STATUS"].startswith("watching, primary us-west-2, epoch "), ready.fields
        names = daemon.names()
        # The config loaded, the daemon started, and a probe round reached the engine.
        assert names.index("daemon_started") < names.index("verdict") < names.index(
            "systemd_ready"), hint
        sock.wait_for(lambda m: "WATCHDOG" in m, PROMPT, what="WATCHDOG=1", hint=hint)
        # The lock taken: the status line says under which epoch, once it changed.
        daemon.wait_for(event("lock_acquired"), "lock_acquired", READY_TIMEOUT)
        sock.wait_for(lambda m: m.fields.get("STATUS", "").split("epoch ")[-1].isdigit(),
                      PROMPT, what="a STATUS= with the lock's epoch", hint=hint)

        sent = daemon.signal(signal.SIGHUP)
        reloading = sock.wait_for(lambda m: "RELOADING" in m, PROMPT, what="RELOADING=1",
                                  after=sent, hint=hint)
        # CLOCK_MONOTONIC is one clock for every process of the machine.
        assert sent * 1e6 <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        again = sock.wait_for(lambda m: "READY" in m, PROMPT, what="READY=1 after the reload",
                              after=reloading.at, hint=hint)
        assert again.at >= reloading.at
        daemon.wait_for(event("config_reloaded"), "config_reloaded")

        sent = daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, hint
        stopping = sock.received("STOPPING")
        assert [m["STATUS"] for m in stopping] == ["stopping: SIGTERM"], hint
        assert stopping[0].at >= sent
        # Nothing but the last pets may follow STOPPING=1: no READY, no RELOADING.
        after = [m.fields for m in sock.received() if m.at > stopping[0].at]
        assert all(set(fields) <= {"WATCHDOG", "STATUS"} for fields in after), after


def test_a_stalled_engine_stops_petting_the_watchdog_and_resumes_after(
    tmp_path: Path, start: Callable[..., NotifiedDaemon],
) -> None:
    with NotifySocket("abstract") as sock:
        daemon = start({"NOTIFY_SOCKET": sock.address,
                        "WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1e6))}, fault="stall")
        hint = f"see {daemon.dog.log_path}"
        sock.wait_for(lambda m: "READY" in m, READY_TIMEOUT, what="READY=1", hint=hint)
        sock.wait_for(lambda m: "WATCHDOG" in m, PROMPT, what="WATCHDOG=1", hint=hint)

        daemon.signal(signal.SIGUSR1)
        daemon.wait_for(event("engine_stall_injected"), "the injected stall")
        # /healthz's limit (5 probe intervals, 1.5 s) passes, then no more pets.
        withheld = daemon.wait_for(event("systemd_watchdog_withheld"), "watchdog withheld",
                                   timeout=10)
        assert withheld["watchdog_sec"] == WATCHDOG_SEC
        quiet_from = time.monotonic()
        time.sleep(3 * WATCHDOG_SEC)  # systemd would have killed the daemon by now
        late = [m for m in sock.received("WATCHDOG") if m.at > quiet_from]
        assert late == [], f"petted while stalled: {late}; {hint}"
        assert daemon.proc.poll() is None  # nobody here kills it: only systemd would

        lifted = daemon.signal(signal.SIGUSR2)
        sock.wait_for(lambda m: "WATCHDOG" in m, PROMPT, what="WATCHDOG=1 after the stall",
                      after=lifted, hint=hint)
        daemon.wait_for(event("systemd_watchdog_resumed"), "watchdog resumed")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, hint


def test_a_watchdog_meant_for_another_pid_is_not_petted(
    tmp_path: Path, start: Callable[..., NotifiedDaemon],
) -> None:
    with NotifySocket("path", tmp_path) as sock:
        daemon = start({"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "1000000",
                        "WATCHDOG_PID": "1"})
        hint = f"see {daemon.dog.log_path}"
        sock.wait_for(lambda m: "READY" in m, READY_TIMEOUT, what="READY=1", hint=hint)
        assert daemon.wait_for(event("systemd_notify"), "systemd_notify")["watchdog_sec"] is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, hint
        assert sock.received("WATCHDOG") == [], hint


def test_a_task_that_misses_the_stop_grace_period_exits_3(
    start: Callable[..., NotifiedDaemon],
) -> None:
    daemon = start({}, fault="hang-on-stop")
    hint = f"see {daemon.dog.log_path}"
    daemon.wait_for(event("verdict"), "a first verdict", READY_TIMEOUT)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 3, hint
    hung = [e for e in daemon.dog.read() if e.get("event") == "task_did_not_stop"]
    assert [e["task"] for e in hung] == ["peers"], hint
    assert [e["exit_code"] for e in daemon.dog.read()
            if e.get("event") == "daemon_stopped"] == [3], hint


def test_the_daemon_works_inside_the_units_system_call_sandbox(
    tmp_path: Path, pg_pair: PostgresPair, start: Callable[..., NotifiedDaemon],
) -> None:
    """SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute= of the
    unit, rebuilt with seccomp: the daemon (aiohttp, asyncpg against a real PostgreSQL
    pair, redis, the lock) starts, sees the primary healthy, reloads and stops cleanly."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    syscalls, families = unit_sandbox.syscalls_of_unit(UNIT)
    with NotifySocket("abstract") as sock:
        daemon = start({"NOTIFY_SOCKET": sock.address,
                        unit_sandbox.SYSCALLS_VARIABLE: ",".join(syscalls),
                        unit_sandbox.FAMILIES_VARIABLE: ",".join(families)},
                       fault="unit-sandbox",
                       databases={WEST: pg_pair.primary.dsn, EAST: pg_pair.replica.dsn})
        hint = f"see {daemon.dog.log_path}"
        deadline = time.monotonic() + READY_TIMEOUT
        while not sock.received("READY") and daemon.proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"no READY=1 within {READY_TIMEOUT:g}s; {hint}")
            time.sleep(0.05)
        if daemon.proc.poll() == 77:
            pytest.skip(f"no seccomp or PR_SET_MDWE here: {daemon.dog.log_path.read_text()}")
        assert daemon.proc.poll() is None, f"{daemon.dog.log_path.read_text()[-2000:]}"
        # Logged before the daemon configures JSON logging: look for the text.
        assert "unit_sandbox_entered" in daemon.dog.log_path.read_text(), hint
        daemon.wait_for(event("lock_acquired"), "lock_acquired", READY_TIMEOUT)
        daemon.wait_for(lambda e: e.get("event") == "verdict" and e.get("verdict") ==
                        "no action: primary healthy" and e.get("lag_bytes") is not None,
                        "a healthy verdict with both databases seen", READY_TIMEOUT)
        sent = daemon.signal(signal.SIGHUP)
        sock.wait_for(lambda m: "READY" in m, PROMPT, what="READY=1 after a reload",
                      after=sent, hint=hint)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, hint
        refused = [e for e in daemon.dog.read()
                   if "Operation not permitted" in str(e) or "EPERM" in str(e)]
        assert refused == [], refused
