"""The daemon's life as an operator sees it: start, reload on SIGHUP, stop on SIGTERM/SIGINT.

Each test runs ``python -m agentaskit_dr run`` as a real process (thresholds scaled down to
seconds) and asserts on its JSON log lines, its exit code and the lock keys in Redis.
Failure messages name the daemon's log file, kept under pytest's ``tmp_path``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.drill import Watchdog, event_time, health_endpoint
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration

Event = dict[str, Any]

WEST, EAST = "us-west-2", "us-east-1"
NODE = "lifecycle-west"
KEY_PREFIX = "lifecycle"
INTERVAL = 0.3
LOCK_TTL = 10.0
#: Bound on a start: Python imports, config, the first lock round and probe round.
READY_TIMEOUT = 20.0
#: Bound on a reload, a stop, or any single event that follows a signal at once.
PROMPT = 5.0
#: After a kill: the threshold, a probe interval, and generous scheduling slack.
DECISION_SLACK = 6.0
#: Bound on the work after a decision: lock check, lag gate, pg_promote, marker.
PROMOTION_TIMEOUT = 10.0


class Daemon:
    """One ``agentaskit-dr run`` process: its config file, JSON log and exit code."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.evidence_dir = workdir / "evidence"
        self.config_path = workdir / "watchdog.yaml"
        self.write(config)
        self._process = Watchdog("lifecycle", self.config_path, workdir / "watchdog.log")

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._process.proc is not None, "daemon not started"
        return self._process.proc

    def write(self, config: dict[str, Any] | str) -> None:
        """Replace the config file (a mapping, or raw text for broken files). A mapping
        without ``evidence_dir`` gets one under the workdir: a test's failover never
        writes into the machine's /var/lib/agentaskit-dr."""
        if not isinstance(config, str):
            config = {"evidence_dir": str(self.evidence_dir), **config}
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(text)

    def start(self) -> Daemon:
        self._process.start()
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; a no-op once the process has exited."""
        self._process.stop()

    def running(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: signal.Signals) -> float:
        """Send ``sig``; the wall-clock time it was sent (comparable with event times)."""
        assert self.running(), f"daemon exited with {self.proc.returncode}; see {self.log_path}"
        sent = time.time()
        self.proc.send_signal(sig)
        return sent

    def events(self, name: str | None = None, since: float | None = None) -> list[Event]:
        return [
            event for event in self._process.read()
            if (name is None or event.get("event") == name)
            and (since is None or event_time(event) >= since)
        ]

    def wait_for(
        self, name: str, *, timeout: float, since: float | None = None,
        where: Callable[[Event], bool] = lambda _event: True,
    ) -> Event:
        """The first ``name`` event (at or after ``since``) that satisfies ``where``."""
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running()
            found = [event for event in self.events(name, since) if where(event)]
            if found:
                return found[0]
            if exited:
                pytest.fail(f"daemon exited with {self.proc.returncode} before {name}; "
                            f"see {self.log_path}")
            if time.monotonic() >= deadline:
                pytest.fail(f"no {name} event within {timeout:g}s; see {self.log_path}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon still running {timeout:g}s after the signal; see {self.log_path}")

    def wait_healthy(self) -> None:
        """Wait until it holds the lock and has seen both databases healthy."""
        self.wait_for("lock_acquired", timeout=READY_TIMEOUT)
        self.wait_for("verdict", timeout=READY_TIMEOUT, where=lambda e: (
            e["verdict"] == "no action: primary healthy" and e["lag_bytes"] is not None
        ))


def config_for(
    *, databases: dict[str, str], lock_url: str, health: dict[str, str], db_unreachable: float
) -> dict[str, Any]:
    """A watchdog config for us-west-2 (the primary) with thresholds scaled to seconds."""
    return {
        "region": WEST,
        "primary_region": WEST,
        "node_name": NODE,
        "regions": {
            name: {"health_urls": [health[name]], "database": {"dsn": databases[name]}}
            for name in (WEST, EAST)
        },
        "thresholds": {
            "region_unhealthy": "60s",
            "db_unreachable": f"{db_unreachable}s",
            "recovery": "1s",
            "retry_backoff": "1s",
        },
        "probe": {"interval": f"{INTERVAL}s", "timeout": f"{INTERVAL * 0.8:.2f}s"},
        "lock": {"url": lock_url, "ttl": f"{LOCK_TTL}s", "socket_timeout": "0.5s",
                 "key_prefix": KEY_PREFIX},
        "promotion": {"max_lag_bytes": "16MiB", "timeout": "10s"},
        "logging": {"level": "info"},
    }


def with_threshold(config: dict[str, Any], db_unreachable: str) -> dict[str, Any]:
    thresholds = {**config["thresholds"], "db_unreachable": db_unreachable}
    return {**config, "thresholds": thresholds}


def nothing_listens() -> str:
    """A PostgreSQL DSN on a loopback port with no server behind it."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


@pytest.fixture
def health() -> Iterator[dict[str, str]]:
    """A healthy HTTP endpoint per region."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(health_endpoint()) for name in (WEST, EAST)}


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Daemon]]:
    """Start daemons from configs; every one is stopped after the test."""
    started: list[Daemon] = []

    def start(config: dict[str, Any]) -> Daemon:
        daemon = Daemon(tmp_path / f"daemon-{len(started)}", config)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def on_real_pair(
    pg_pair: PostgresPair, redis_server: RedisServer, health: dict[str, str]
) -> Callable[[float], dict[str, Any]]:
    """Configs over a real primary and replica and a real lock store."""
    databases = {WEST: pg_pair.primary.dsn, EAST: pg_pair.replica.dsn}
    return lambda threshold: config_for(
        databases=databases, lock_url=redis_server.url, health=health, db_unreachable=threshold,
    )


@pytest.fixture
def without_databases(
    redis_server: RedisServer, health: dict[str, str]
) -> Callable[[float], dict[str, Any]]:
    """Configs with a real lock store and no database behind either DSN."""
    databases = {WEST: nothing_listens(), EAST: nothing_listens()}
    return lambda threshold: config_for(
        databases=databases, lock_url=redis_server.url, health=health, db_unreachable=threshold,
    )


def lock_keys(server: RedisServer) -> dict[str, Any]:
    """What the lock store holds for us: leader token TTL (ms, -2 if absent) and holder."""
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        return {
            "leader_pttl": client.pttl(f"{KEY_PREFIX}:leader"),
            "holder": client.hget(f"{KEY_PREFIX}:leader:info", "holder"),
        }


def kill_primary_and_wait_for_decision(pg_pair: PostgresPair, daemon: Daemon,
                                       threshold: float) -> tuple[Event, float]:
    """SIGKILL the primary; the failover_decided event and its delay after the kill.

    Also waits for the promotion to finish, so the teardown never cuts it short.
    """
    pg_pair.primary.kill()
    killed_at = time.time()
    decided = daemon.wait_for("failover_decided", since=killed_at,
                              timeout=threshold + DECISION_SLACK)
    daemon.wait_for("promotion_done", since=killed_at, timeout=PROMOTION_TIMEOUT)
    return decided, event_time(decided) - killed_at


# ---------------------------------------------------------------- reload (SIGHUP)


BAD_FILES = {
    # A syntax error below a would-be threshold of 1s: nothing of the file may apply.
    "yaml_syntax_error": (
        lambda config: yaml.safe_dump(with_threshold(config, "1s"), sort_keys=False)
        + "notes: [unclosed\n",
        ("YAML syntax error", "line "),
    ),
    "bad_threshold_value": (
        lambda config: yaml.safe_dump(with_threshold(config, "soon"), sort_keys=False),
        ("thresholds.db_unreachable", "'soon'"),
    ),
}


@pytest.mark.parametrize("bad_file", list(BAD_FILES))
def test_sighup_with_an_invalid_file_keeps_running_on_the_old_threshold(
    bad_file: str, pg_pair: PostgresPair, on_real_pair: Callable[[float], dict[str, Any]],
    start_daemon: Callable[[dict[str, Any]], Daemon],
) -> None:
    config = on_real_pair(2.0)
    daemon = start_daemon(config)
    daemon.wait_healthy()
    render, named = BAD_FILES[bad_file]
    daemon.write(render(config))

    sent = daemon.send(signal.SIGHUP)
    failed = daemon.wait_for("config_reload_failed", since=sent, timeout=PROMPT)
    problems = "\n".join(failed["problems"])
    assert all(part in problems for part in named), f"{problems}; see {daemon.log_path}"
    assert failed["keeping"] == "the running config"
    daemon.wait_for("verdict", since=event_time(failed), timeout=PROMPT,
                    where=lambda e: e["verdict"] == "no action: primary healthy")
    assert daemon.events("config_reloaded") == []

    decided, after_kill = kill_primary_and_wait_for_decision(pg_pair, daemon, 2.0)
    assert decided["threshold"] == 2.0, f"see {daemon.log_path}"
    assert after_kill >= 2.0, f"decided {after_kill:.2f}s after the kill; see {daemon.log_path}"
    assert daemon.running()


def test_sighup_lowering_db_unreachable_from_30s_to_2s_fails_over_after_2s(
    pg_pair: PostgresPair, on_real_pair: Callable[[float], dict[str, Any]],
    start_daemon: Callable[[dict[str, Any]], Daemon],
) -> None:
    config = on_real_pair(30.0)
    daemon = start_daemon(config)
    daemon.wait_healthy()
    daemon.write(with_threshold(config, "2s"))

    sent = daemon.send(signal.SIGHUP)
    reloaded = daemon.wait_for("config_reloaded", since=sent, timeout=PROMPT)
    assert reloaded["thresholds"]["db_unreachable"] == 2.0

    decided, after_kill = kill_primary_and_wait_for_decision(pg_pair, daemon, 2.0)
    assert decided["threshold"] == 2.0, f"see {daemon.log_path}"
    assert 2.0 <= after_kill < 2.0 + DECISION_SLACK, (
        f"decided {after_kill:.2f}s after the kill; see {daemon.log_path}"
    )


def test_sighup_changing_region_or_node_name_is_refused_and_the_lock_stays_ours(
    without_databases: Callable[[float], dict[str, Any]], redis_server: RedisServer,
    start_daemon: Callable[[dict[str, Any]], Daemon],
) -> None:
    config = without_databases(30.0)
    daemon = start_daemon(config)
    daemon.wait_for("lock_acquired", timeout=READY_TIMEOUT)
    daemon.write({**config, "region": EAST, "node_name": "someone-else"})

    sent = daemon.send(signal.SIGHUP)
    failed = daemon.wait_for("config_reload_failed", since=sent, timeout=PROMPT)
    problems = "\n".join(failed["problems"])
    assert "region: changed from 'us-west-2' to 'us-east-1'" in problems, daemon.log_path
    assert "node_name: changed from 'lifecycle-west' to 'someone-else'" in problems
    assert "restart" in problems
    daemon.wait_for("verdict", since=event_time(failed), timeout=PROMPT)
    assert daemon.running()
    assert lock_keys(redis_server)["holder"] == NODE


def test_sighup_changing_lock_settings_keeps_the_running_lock(
    without_databases: Callable[[float], dict[str, Any]], redis_server: RedisServer,
    start_daemon: Callable[[dict[str, Any]], Daemon],
) -> None:
    config = without_databases(30.0)
    daemon = start_daemon(config)
    daemon.wait_for("lock_acquired", timeout=READY_TIMEOUT)
    changed = with_threshold(config, "20s")
    changed["lock"] = {**config["lock"], "key_prefix": "elsewhere", "ttl": "3s"}
    daemon.write(changed)

    sent = daemon.send(signal.SIGHUP)
    partial = daemon.wait_for("config_reload_partial", since=sent, timeout=PROMPT)
    reloaded = daemon.wait_for("config_reloaded", since=sent, timeout=PROMPT)
    assert partial["ignored"] == "lock"
    assert reloaded["thresholds"]["db_unreachable"] == 20.0  # the rest did apply
    running_lock = reloaded["config"]["lock"]
    assert (running_lock["key_prefix"], running_lock["ttl"]) == (KEY_PREFIX, LOCK_TTL)
    assert lock_keys(redis_server)["holder"] == NODE


def test_sighup_with_a_file_that_breaks_the_loader_never_stops_the_daemon(
    without_databases: Callable[[float], dict[str, Any]],
    start_daemon: Callable[[dict[str, Any]], Daemon],
) -> None:
    config = without_databases(30.0)
    daemon = start_daemon(config)
    daemon.wait_for("verdict", timeout=READY_TIMEOUT)
    # Far beyond a float: the loader has raised OverflowError on this, not ConfigError.
    daemon.write(with_threshold(config, "9" * 400 + "d"))

    sent = daemon.send(signal.SIGHUP)
    failed = daemon.wait_for("config_reload_failed", since=sent, timeout=PROMPT)
    assert failed["problems"], f"see {daemon.log_path}"
    daemon.wait_for("verdict", since=event_time(failed), timeout=PROMPT)

    # The engine is still whole: the next good file applies.
    daemon.write(with_threshold(config, "20s"))
    sent = daemon.send(signal.SIGHUP)
    reloaded = daemon.wait_for("config_reloaded", since=sent, timeout=PROMPT)
    assert reloaded["thresholds"]["db_unreachable"] == 20.0


# ---------------------------------------------------------------- stop (SIGTERM, SIGINT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stop_signal_exits_0_and_releases_the_lock_before_its_ttl(
    sig: signal.Signals, without_databases: Callable[[float], dict[str, Any]],
    redis_server: RedisServer, start_daemon: Callable[[dict[str, Any]], Daemon],
) -> None:
    daemon = start_daemon(without_databases(30.0))
    daemon.wait_for("lock_acquired", timeout=READY_TIMEOUT)
    held = lock_keys(redis_server)
    assert held["holder"] == NODE
    assert held["leader_pttl"] > 0

    sent = daemon.send(sig)
    code = daemon.wait_exit(timeout=PROMPT)
    stopped_after = time.time() - sent

    assert code == 0, f"see {daemon.log_path}"
    assert lock_keys(redis_server) == {"leader_pttl": -2, "holder": None}
    assert stopped_after < LOCK_TTL / 2
    assert daemon.events("daemon_stopping")[0]["signal"] == sig.name
    assert [e["exit_code"] for e in daemon.events("daemon_stopped")] == [0]
    assert daemon.events("lock_released"), f"see {daemon.log_path}"
    assert "Traceback" not in daemon.log_path.read_text()


# ---------------------------------------------------------------- start


def test_run_with_an_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump({
        "region": WEST,
        "primary_region": WEST,
        "regions": {
            name: {"health_urls": ["http://127.0.0.1:9/healthz"],
                   "database": {"dsn": "postgresql://postgres@127.0.0.1:9/postgres"}}
            for name in (WEST, EAST)
        },
        "thresholds": {"db_unreachable": "soon"},
    }))

    result = subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )

    assert result.returncode == 2
    assert "thresholds.db_unreachable" in result.stderr
    assert "'soon'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "daemon_started" not in result.stdout


def test_lock_store_unreachable_at_start_keeps_watching_without_acting(
    health: dict[str, str], start_daemon: Callable[[dict[str, Any]], Daemon],
) -> None:
    config = config_for(
        databases={WEST: nothing_listens(), EAST: nothing_listens()},
        lock_url=f"redis://127.0.0.1:{free_port()}/0", health=health, db_unreachable=1.0,
    )
    daemon = start_daemon(config)

    daemon.wait_for("lock_store_unreachable", timeout=READY_TIMEOUT,
                    where=lambda e: e["attempt"] >= 2)
    verdict = daemon.wait_for("verdict", timeout=PROMPT, where=lambda e: (
        "but the lock is held by nobody reachable" in e["verdict"]
    ))
    assert (verdict["epoch"], verdict["lock_holder"]) == (None, None)
    assert daemon.events("failover_decided") == []
    assert daemon.events("lock_acquired") == []

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit(timeout=PROMPT) == 0, f"see {daemon.log_path}"
    assert [e["exit_code"] for e in daemon.events("daemon_stopped")] == [0]
