"""Real ``agentaskit-dr run`` processes against the sandbox, for the end-to-end daemon tests.

A :class:`WatchdogFleet` starts watchdogs (one process each, JSON logs in ``workdir``)
with the sandbox drill's config, thresholds scaled down to seconds, plus any overrides;
it waits for log events with bounded polls and fails with a message that names the log
files. Built on the drill's pieces (``watchdog_config``, ``Watchdog``, ``wait_for_event``,
``health_endpoint``) so the tests and ``agentaskit-dr drill`` run the daemon the same way.

Use it as a context manager: every watchdog it started is stopped on the way out, even
when the test failed::

    with WatchdogFleet(pg_pair, redis_server, tmp_path) as fleet:
        west, east = fleet.start_pair()
        holder = fleet.wait_ready()
"""

from __future__ import annotations

import contextlib
import copy
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from agentaskit_dr.sandbox.drill import (
    REGIONS,
    Watchdog,
    event_time,
    health_endpoint,
    wait_for_event,
    watchdog_config,
)
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer

__all__ = [
    "INTERVAL",
    "REGIONS",
    "THRESHOLD",
    "Event",
    "Predicate",
    "Watchdog",
    "WatchdogFleet",
    "event_time",
    "is_event",
    "is_promotion",
    "is_verdict",
    "merged",
    "wait_until",
]

#: db_unreachable threshold of the scaled-down watchdogs (seconds).
THRESHOLD = 2.0
#: Probe interval (seconds); the probe timeout is 0.8 of it (see ``watchdog_config``).
INTERVAL = 0.4
#: Bound on a watchdog's start: Python imports, config, first lock round and probes.
READY_TIMEOUT = 20.0

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, nested mappings key by key; neither is changed."""
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def is_event(name: str, *, since: float | None = None, **fields: Any) -> Predicate:
    """A predicate: the event is ``name``, logged at or after ``since`` (``time.time()``),
    with each of ``fields`` equal to the given value (``watchdog`` names the process)."""

    def matches(event: Event) -> bool:
        if event.get("event") != name:
            return False
        if since is not None and event_time(event) < since:
            return False
        return all(event.get(key) == value for key, value in fields.items())

    return matches


def is_verdict(containing: str = "", *, since: float | None = None, **fields: Any) -> Predicate:
    """A predicate: a ``verdict`` event whose text contains ``containing``; ``since`` and
    ``fields`` as in :func:`is_event` (``phase="failed_over"``, ``watchdog=...``)."""
    verdict = is_event("verdict", since=since, **fields)
    return lambda event: verdict(event) and containing in str(event.get("verdict"))


def is_promotion(event: Event) -> bool:
    """A ``promotion_done`` that changed the replica, not the resume of one."""
    return event.get("event") == "promotion_done" and event.get("already_promoted") is False


class WatchdogFleet:
    """Watchdog processes over one PostgreSQL pair and one Redis, logs under ``workdir``.

    ``threshold`` is the db_unreachable threshold and ``interval`` the probe interval
    every watchdog starts with; per-watchdog ``overrides`` change any config key.
    """

    def __init__(
        self,
        pair: PostgresPair,
        redis: RedisServer,
        workdir: Path,
        *,
        threshold: float = THRESHOLD,
        interval: float = INTERVAL,
    ) -> None:
        self.pair = pair
        self.redis = redis
        self.workdir = workdir
        self.threshold = threshold
        self.interval = interval
        self.health: dict[str, str] = {}
        self.dogs: dict[str, Watchdog] = {}
        self._stopped: set[str] = set()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> WatchdogFleet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._stack as stack:
            for region in REGIONS:
                self.health[region] = stack.enter_context(health_endpoint())
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            self._stack.close()

    # ------------------------------------------------------------ processes

    def config_for(
        self, region: str, *, name: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The config a watchdog in ``region`` would start with (``name`` is its node name)."""
        config = watchdog_config(
            region=region, pair=self.pair, redis=self.redis, health=self.health,
            threshold=self.threshold, interval=self.interval,
            evidence_dir=self.workdir / "evidence",
        )
        if name is not None:
            config["node_name"] = name
        return merged(config, overrides or {})

    def write_config(self, name: str, config: Mapping[str, Any]) -> Path:
        """Write ``config`` as the YAML file of watchdog ``name`` (also to rewrite it)."""
        path = self.workdir / f"watchdog-{name}.yaml"
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        return path

    def start(
        self, region: str, *, name: str | None = None, overrides: Mapping[str, Any] | None = None,
        entry: tuple[str, ...] | None = None, env: Mapping[str, str] | None = None,
    ) -> Watchdog:
        """Start a watchdog in ``region``; ``name`` (default ``drill-{region}``) labels its
        log events (``event["watchdog"]``) and is its lock holder name. ``entry`` replaces
        ``-m agentaskit_dr`` (a test wrapper that injects a fault); ``env`` replaces the
        environment it inherits (a service manager's ``$NOTIFY_SOCKET``, say)."""
        label = name or f"drill-{region}"
        if label in self.dogs:
            raise ValueError(f"a watchdog named {label} was already started")
        path = self.write_config(label, self.config_for(region, name=label, overrides=overrides))
        # Watchdog labels its events with its ``region`` field: give it our name.
        dog = Watchdog(label, path, self.workdir / f"watchdog-{label}.log")
        if entry is not None:
            dog.entry = entry
        if env is not None:
            dog.env = dict(env)
        dog.start()
        self.dogs[label] = dog
        return dog

    def start_pair(self, overrides: Mapping[str, Any] | None = None) -> list[Watchdog]:
        """One watchdog per region, configured alike (``overrides`` apply to both)."""
        return [self.start(region, overrides=overrides) for region in REGIONS]

    def stop(self, dog: Watchdog) -> int | None:
        """SIGTERM ``dog`` and wait (SIGKILL after 10 s); its exit code. From now on waits
        leave it out (any other watchdog that exits fails the wait)."""
        self._stopped.add(dog.region)
        dog.stop()
        return dog.proc.returncode if dog.proc is not None else None

    def signal(self, dog: Watchdog, sig: signal.Signals) -> None:
        """Send ``sig`` to a running watchdog (SIGHUP to reload, SIGTERM to stop...)."""
        if dog.proc is None or dog.proc.poll() is not None:
            raise AssertionError(f"watchdog {dog.region} is not running; see {dog.log_path}")
        dog.proc.send_signal(sig)

    def stop_all(self) -> None:
        """Stop every watchdog that is still running; always called on the way out."""
        for dog in self.dogs.values():
            dog.stop()

    def live(self) -> list[Watchdog]:
        """The watchdogs not stopped on purpose: the ones every wait watches by default."""
        return [dog for name, dog in self.dogs.items() if name not in self._stopped]

    # ------------------------------------------------------------ logs

    def events(self, predicate: Predicate | None = None,
               dogs: Iterable[Watchdog] | None = None) -> list[Event]:
        """Every parsed log event of ``dogs`` (default: all), matching ``predicate``,
        in time order; each carries ``watchdog``, the watchdog's name."""
        found = [
            event
            for dog in (self.dogs.values() if dogs is None else dogs)
            for event in dog.read()
            if predicate is None or predicate(event)
        ]
        return sorted(found, key=event_time)

    def wait_for(
        self, predicate: Predicate, timeout: float, *, what: str,
        dogs: Iterable[Watchdog] | None = None,
    ) -> Event:
        """The first event of ``dogs`` (default: :meth:`live`) matching ``predicate``,
        polling for at most ``timeout`` s; fails naming ``what`` and the log files, or as
        soon as one of ``dogs`` exits (RuntimeError naming its log)."""
        watched = list(self.live() if dogs is None else dogs)
        found = wait_for_event(watched, predicate, timeout)
        if found is None:
            raise AssertionError(f"no {what} within {timeout:g}s\n{self.describe()}")
        return found

    def assert_absent(
        self, predicate: Predicate, during: float, *, what: str,
        dogs: Iterable[Watchdog] | None = None,
    ) -> None:
        """Poll for ``during`` s and fail at the first event matching ``predicate``."""
        watched = list(self.live() if dogs is None else dogs)
        found = wait_for_event(watched, predicate, during)
        if found is not None:
            raise AssertionError(f"unexpected {what}: {found}\n{self.describe()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Watchdog:
        """Wait until one live watchdog holds the lock and every live one has seen both
        databases (a verdict with a replication lag); the lock holder."""
        dogs = self.live()
        acquired = self.wait_for(is_event("lock_acquired"), timeout, what="lock_acquired")
        for dog in dogs:
            self.wait_for(
                lambda e: is_verdict()(e) and e.get("lag_bytes") is not None,
                timeout, what=f"first verdict with both databases seen by {dog.region}",
                dogs=[dog],
            )
        return self.dogs[acquired["watchdog"]]

    def describe(self) -> str:
        """Log files and each watchdog's latest verdict, for failure messages."""
        lines = [f"watchdog logs in {self.workdir}:"]
        for name, dog in self.dogs.items():
            verdicts = [e for e in dog.read() if e.get("event") == "verdict"]
            last = verdicts[-1]["verdict"] if verdicts else "(no verdict yet)"
            code = dog.proc.poll() if dog.proc is not None else "not started"
            lines.append(f"  {name}: {dog.log_path} (exit code {code}); last verdict: {last}")
        return "\n".join(lines)


def wait_until(check: Callable[[], bool], timeout: float, *, what: str, hint: str = "") -> None:
    """Poll ``check`` (every 50 ms) until it holds; fail after ``timeout`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not seen within {timeout:g}s\n{hint}")
        time.sleep(0.05)
