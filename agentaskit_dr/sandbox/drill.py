"""The local sandbox drill: kill a real primary and watch two real watchdogs fail over.

Starts a PostgreSQL primary with a streaming replica, a redis-server for the leader lock,
one HTTP health endpoint per region, and two ``agentaskit-dr run`` processes (one per
region). Kills the primary with SIGKILL and prints, as a timeline, what the watchdogs
logged until the replica accepts writes. Writes an evidence file with the figures.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentaskit_dr.config import parse_duration
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.runtime.evidence_layout import drill_root, run_root
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer

REGIONS = ("us-west-2", "us-east-1")
WITNESS_SITE = "witness-site"
TIMELINE_EVENTS = {
    "lock_acquired", "failover_decided", "promotion_started", "promotion_done",
    "failover_refused", "primary_region_changed", "old_primary_fenced", "alert",
}


class _Healthy(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive, as a load balancer answers: the probes keep their connections.
    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        # A prober that went away (timed out, killed, or reset its kept connection
        # between two checks) is nothing to report: no traceback on the drill's stderr.
        with contextlib.suppress(ConnectionError):
            super().handle()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""


@contextlib.contextmanager
def health_endpoint() -> Iterator[str]:
    """An HTTP server on loopback answering 200, standing in for a region's load balancer."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
    finally:
        server.shutdown()
        server.server_close()


def watchdog_config(
    *, region: str, pair: PostgresPair, redis: RedisServer, health: dict[str, str],
    threshold: float, interval: float, evidence_dir: Path | None = None,
) -> dict[str, Any]:
    """A watchdog config for the sandbox with thresholds scaled down to seconds."""
    dsn = {"us-west-2": pair.primary.dsn, "us-east-1": pair.replica.dsn}
    return {
        "region": region,
        "primary_region": "us-west-2",
        "node_name": f"drill-{region}",
        "regions": {
            name: {"health_urls": [health[name]], "database": {"dsn": dsn[name]}}
            for name in REGIONS
        },
        "thresholds": {
            "region_unhealthy": f"{max(threshold * 4, interval * 2)}s",
            "db_unreachable": f"{threshold}s",
            "recovery": f"{threshold}s",
            "retry_backoff": f"{interval * 2}s",
        },
        "probe": {"interval": f"{interval}s", "timeout": f"{interval * 0.8}s", "jitter": 0.1},
        "lock": {"url": redis.url, "ttl": "3s", "socket_timeout": "0.5s"},
        "promotion": {"max_lag_bytes": "16MiB", "timeout": "10s"},
        "logging": {"level": "info"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "evidence_dir": str(evidence_dir or Path(tempfile.gettempdir()) / "agentaskit-evidence"),
    }


@dataclass
class Watchdog:
    region: str
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # What runs the daemon: tests swap in a wrapper module that injects faults.
    entry: tuple[str, ...] = ("-m", "agentaskit_dr")
    # Its whole environment; None inherits ours (tests give it a notify socket).
    env: dict[str, str] | None = None

    def start(self) -> None:
        out = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *self.entry, "run", "--config", str(self.config)],
            stdout=out, stderr=subprocess.STDOUT, env=self.env,
        )
        out.close()

    def read(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if isinstance(event, dict):
                    event["watchdog"] = self.region
                    events.append(event)
        self.events = events
        return events

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def event_time(event: dict[str, Any]) -> float:
    """When a watchdog logged ``event``: its ISO timestamp as POSIX seconds (``time.time()``)."""
    return dt.datetime.fromisoformat(str(event["timestamp"])).timestamp()


def wait_for_event(
    watchdogs: list[Watchdog], predicate: Any, timeout: float
) -> dict[str, Any] | None:
    """The first log event of any watchdog matching ``predicate``, polling until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for dog in watchdogs:
            for event in dog.read():
                if predicate(event):
                    return event
            if dog.proc is not None and dog.proc.poll() is not None:
                raise RuntimeError(f"watchdog {dog.region} exited early; see {dog.log_path}")
        time.sleep(0.05)
    return None


def wait_for_latest(watchdogs: list[Watchdog], key: str, value: Any, timeout: float) -> bool:
    """Whether, within ``timeout``, the latest verdict of every watchdog has ``key`` equal
    to ``value`` (a verdict is logged when it changes, so an old line is the current one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = []
        for dog in watchdogs:
            verdicts = [event for event in dog.read() if event.get("event") == "verdict"]
            latest.append(verdicts[-1].get(key) if verdicts else None)
            if dog.proc is not None and dog.proc.poll() is not None:
                raise RuntimeError(f"watchdog {dog.region} exited early; see {dog.log_path}")
        if all(found == value for found in latest):
            return True
        time.sleep(0.05)
    return False


def drill_once(*, threshold: float, interval: float, workdir: Path,
               failback: bool = False) -> dict[str, Any]:
    """One kill-the-primary run; returns the measured figures (seconds) and the timeline.
    With ``failback``, then the failback run back home (``result["failback"]``)."""
    from agentaskit_dr.sandbox import drill_failback as circle

    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # Data directories in the pair's own scratch space: the unprivileged PostgreSQL
        # user may not be able to traverse the caller's workdir (a 0700 parent).
        pair = stack.enter_context(PostgresPair())
        # The failback starts servers with pg_ctl: stopped before the pair is removed.
        stack.callback(circle.stop_servers, pair)
        if failback:
            circle.prepare(pair)
        redis = stack.enter_context(RedisServer())
        health = {name: stack.enter_context(health_endpoint()) for name in REGIONS}
        # Three vantage points: a watchdog per region and a witness (docs/architecture.md,
        # "Partitions").
        sites = (WITNESS_SITE, *REGIONS[::-1])  # start order: witness, secondary, primary
        api = {site: f"http://127.0.0.1:{free_port()}" for site in sites}
        dogs = []
        configs: dict[str, dict[str, Any]] = {}
        for site in sites:
            config = watchdog_config(region=REGIONS[0], pair=pair, redis=redis, health=health,
                                     threshold=threshold, interval=interval,
                                     evidence_dir=workdir / "evidence")
            config["api"] = {"listen": api[site].removeprefix("http://")}
            if site == WITNESS_SITE:
                config.update(region=site, role="witness", node_name="drill-witness",
                              peers=[api[region] for region in REGIONS])
            else:
                config.update(region=site, node_name=f"drill-{site}", witness=api[WITNESS_SITE],
                              peers=[api[other] for other in REGIONS if other != site])
            if failback:  # beside its server, as in production; a shared peer token
                circle.apply_site_overrides(config, site, pair, workdir)
            configs[site] = config
            path = workdir / f"watchdog-{site}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            dogs.append(Watchdog(site, path, workdir / f"watchdog-{site}.log"))
        for dog in dogs:
            dog.start()
            stack.callback(dog.stop)
            # The primary-side watchdog must hear its peers within fence_after of starting.
            if wait_for_event([dog], lambda e: e.get("event") == "api_started", 20) is None:
                raise RuntimeError(f"{dog.region} did not start; see {dog.log_path}")
        ready = wait_for_event(dogs, lambda e: e.get("event") == "lock_acquired", 20)
        # Every vantage must hear the others and see the primary healthy before the kill.
        # Verdicts are logged when they change: the latest one of each watchdog counts.
        healthy = wait_for_latest(dogs, "assessment", "healthy", 20)
        if ready is None or not healthy:
            raise RuntimeError(f"watchdogs did not become ready; see the logs in {workdir}")
        killed_at = time.time()  # before kill(): it also reaps and cleans up after itself
        pair.primary.kill()
        done = wait_for_event(dogs, lambda e: e.get("event") in {"promotion_done"},
                         threshold * 3 + 20)
        if done:
            # Let the other watchdog see the promotion before the drill stops them all.
            wait_for_event(dogs, lambda e: e.get("watchdog") != done["watchdog"]
                      and e.get("phase") == "failed_over", threshold + 5)
        writable = pair.replica.sql(
            "CREATE TABLE IF NOT EXISTS drill_probe(at timestamptz);"
            "INSERT INTO drill_probe VALUES (now()) RETURNING 'writable'"
        ) if done else "no"
        circled = circle.full_circle(redis.url, configs[REGIONS[1]], workdir, [
            api[region] for region in REGIONS]) if failback and done else None
        for dog in dogs:
            dog.stop()
        events = sorted((e for dog in dogs for e in dog.read()), key=event_time)
    result = _summary(events, killed_at, threshold, interval, writable == "writable")
    if failback:
        result["failback"] = circled or {"outcome": "not run: the failover did not happen"}
    return result


def _summary(events: list[dict[str, Any]], killed_at: float, threshold: float,
             interval: float, writable: bool) -> dict[str, Any]:
    def first(name: str) -> dict[str, Any] | None:
        return next((e for e in events if e.get("event") == name and event_time(e) >= killed_at),
                    None)

    detected = next((e for e in events if event_time(e) >= killed_at and "db_unreachable for"
                     in str(e.get("verdict", ""))), None)
    decided, done = first("failover_decided"), first("promotion_done")
    first_doubt: set[str] = set()  # each watchdog's first verdict that saw the failure

    def shown(e: dict[str, Any]) -> bool:
        if event_time(e) < killed_at:
            return False
        if e.get("event") == "verdict" and "db_unreachable for" in str(e.get("verdict")):
            if e["watchdog"] in first_doubt:
                return False
            first_doubt.add(e["watchdog"])
            return True
        return e.get("event") in TIMELINE_EVENTS

    timeline = [{"t": 0.0, "watchdog": "drill", "event": "primary_killed",
                 "detail": "SIGKILL to the PostgreSQL primary"}]
    timeline += [
        {"t": round(event_time(e) - killed_at, 3), "watchdog": e["watchdog"], "event": e["event"],
         **{k: e[k] for k in ("verdict", "reason", "epoch", "message", "detail") if k in e}}
        for e in events
        if shown(e)
    ]
    figures: dict[str, Any] = {
        "threshold": threshold,
        "interval": interval,
        "first_failed_probe_after_kill": _since(detected, killed_at),
        "decision_after_kill": _since(decided, killed_at),
        "detection_overshoot": decided.get("overshoot") if decided else None,
        "decision_to_writable": done.get("decision_to_writable") if done else None,
        "kill_to_writable": _since(done, killed_at),
        "epoch": done.get("epoch") if done else None,
        "promoted_by": done.get("watchdog") if done else None,
        "promotions": sum(1 for e in events if e.get("event") == "promotion_done"
                          and not e.get("already_promoted")),
        "replica_writable": writable,
    }
    return {"figures": figures, "timeline": timeline}


def _since(event: dict[str, Any] | None, start: float) -> float | None:
    return round(event_time(event) - start, 3) if event else None


def print_report(result: dict[str, Any], out: Any = sys.stdout) -> None:
    print("\nTimeline (seconds after the primary was killed):", file=out)
    for row in result["timeline"]:
        text = (row.get("verdict") or row.get("reason") or row.get("message")
                or row.get("detail") or "")
        epoch = f" epoch={row['epoch']}" if row.get("epoch") is not None else ""
        print(f"  {row['t']:>8.3f}s  {row['watchdog']:<10} {row['event']:<22}{epoch} {text}",
              file=out)
    print("\nFigures:", file=out)
    for key, value in result["figures"].items():
        print(f"  {key:<30} {value}", file=out)


def run_drill(*, threshold: str, interval: str, workdir: Path | None,
              failback: bool = False) -> int:
    """The ``agentaskit-dr drill`` command: 0 when the replica was promoted exactly once
    (and, with ``failback``, the failback run brought the primary back home)."""
    try:
        threshold_s, interval_s = parse_duration(threshold), parse_duration(interval)
    except ValueError as exc:
        print(f"agentaskit-dr drill: {exc}", file=sys.stderr)
        return 2
    if threshold_s <= interval_s:
        print(f"agentaskit-dr drill: --threshold ({threshold}) must exceed --interval "
              f"({interval})", file=sys.stderr)
        return 2
    keep = workdir is not None
    base = workdir or Path(tempfile.mkdtemp(prefix="agentaskit-drill-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"Sandbox drill: db_unreachable threshold {threshold_s:g}s, probe interval "
          f"{interval_s:g}s; workdir {base}")
    root = (base if keep else Path.cwd()) / "evidence"
    runbook_files: list[Path] = []
    try:
        try:
            result = drill_once(threshold=threshold_s, interval=interval_s, workdir=base,
                                failback=failback)
        except (RuntimeError, OSError) as exc:
            # A part that would not start: one readable paragraph, not a traceback.
            print(f"agentaskit-dr drill: {exc}", file=sys.stderr)
            return 1
        # The acting watchdog's runbook evidence (timeline, RTO, RPO) and review draft.
        # (in the plan's layout, TEST/dr/failover/<kind>/, kept the same under ``root``).
        for path in sorted(run_root(base / "evidence").glob("fail*/*")):
            target = root / path.relative_to(base / "evidence")
            if path != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            runbook_files.append(target)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    print_report(result)
    if failback:
        from agentaskit_dr.sandbox.drill_failback import print_failback

        print_failback(result["failback"], result["figures"])
    evidence_dir = drill_root(root)  # the plan's layout: operational_audit/dr_drills
    evidence_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    evidence = evidence_dir / f"sandbox-drill-{stamp}.json"
    evidence.write_text(json.dumps(result, indent=2))
    print(f"\nEvidence: {evidence}")
    for path in runbook_files:
        print(f"Runbook evidence: {path}")
    ok = result["figures"]["promotions"] == 1 and result["figures"]["replica_writable"]
    if failback:
        ok = ok and result["failback"].get("outcome") == "done"
    passed = ("Result: PASS, promoted exactly once"
              + (", and failed back home" if failback else ""))
    print(passed if ok else "Result: FAIL", flush=True)
    return 0 if ok else 1
