"""The failover runbook's world, for the end-to-end tests and ``bench/runbook_latency.py``.

Besides the PostgreSQL pair and Redis of :mod:`daemon_harness`, a full runbook reaches
Route 53 (moto, behind the counting proxy of :mod:`aws`), the new primary region's
Kubernetes API (the emulation of :mod:`kube_api`) and three webhooks (Slack, PagerDuty,
a generic one, all on the receiver of :mod:`webhook_receiver`). Those servers are aiohttp
apps; here they run on an event loop in a background thread (:class:`ServerLoop`), so
they keep answering the watchdog processes while the test's main thread blocks in the
fleet's polling waits. Every read of their state goes through that loop too.

    with RunbookWorld.started(moto_url, tmp_path) as world:
        fleet.start(EAST, overrides=world.overrides())
        ...
        assert world.dns_changes == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from agentaskit_dr.leadership.journal import RedisJournal
from agentaskit_dr.local_servers.tcp import free_port, wait_for_port
from agentaskit_dr.ports import RunJournal, StepStatus
from agentaskit_dr.runtime.runbook_plan import PROMOTE
from tests.integration.aws import (
    DUMMY_CREDENTIALS,
    Route53Counter,
    create_zone,
    record_sets,
    upsert,
)
from tests.integration.daemon_harness import REGIONS, Watchdog, WatchdogFleet
from tests.integration.kube_api import KubeApi
from tests.integration.webhook_receiver import ReceivedRequest, WebhookReceiver

T = TypeVar("T")

WEST, EAST = REGIONS
ZONE = "example.com"
RECORD = "api.example.com"
MARKER = "_agentaskit-dr.api.example.com"
DNS_TARGETS = {WEST: "west-lb.example.net", EAST: "east-lb.example.net"}
NAMESPACE = "agentaskit-production"
#: The emulated east cluster's deployments and their replicas before the failover.
DEPLOYMENTS = {"api": 4, "worker": 3}
KUBE_TOKEN = "kube-token-for-the-watchdog"
ROUTING_KEY = "R0UT1NGKEYfor-the-runbook-tests"
SLACK, PAGERDUTY, GENERIC = "/slack/T0001/B0002", "/pagerduty/v2/enqueue", "/hooks/generic"
#: What each webhook must receive over one failover, in order.
EXPECTED_NOTIFICATIONS = {
    SLACK: ["failover_started", "failover_done"],
    PAGERDUTY: ["trigger failover_started", "resolve"],
    GENERIC: ["failover_started", "incident_opened", "status_page", "failover_done"],
}
_SLACK_TITLE = re.compile(r"\*\[[A-Z]+\] (\w+)\*")


class ServerLoop:
    """An asyncio loop in a daemon thread; :meth:`run` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="runbook-servers",
                                        daemon=True)

    def __enter__(self) -> ServerLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(_cancel_others())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and wait (``timeout`` s at most) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def _cancel_others() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


@dataclass
class Deployment:
    """A snapshot of one emulated deployment."""

    replicas: int
    annotations: dict[str, str]


@dataclass
class RunbookWorld:
    """Route 53 (a zone whose CNAME serves the west), the east cluster (``DEPLOYMENTS``) and
    the webhook receiver, served from ``servers``; ``workdir`` holds the secret files."""

    servers: ServerLoop
    moto_url: str
    workdir: Path
    counter: Route53Counter
    kube: KubeApi
    receiver: WebhookReceiver
    zone_id: str = ""
    _cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def started(cls, moto_url: str, workdir: Path, *,
                rollout_delay: float = 0.05) -> Iterator[RunbookWorld]:
        """Start every server against the moto at ``moto_url``; all stopped on the way out.

        ``rollout_delay``: seconds before scaled deployments report their new replicas ready.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "kube-token").write_text(KUBE_TOKEN + "\n")
        (workdir / "pagerduty-routing-key").write_text(ROUTING_KEY + "\n")
        with ServerLoop() as servers:
            counter = Route53Counter(moto_url)
            kube = KubeApi(token=KUBE_TOKEN, rollout_delay=rollout_delay)
            world = cls(servers, moto_url, workdir, counter, kube, WebhookReceiver())
            try:
                servers.run(world._start())
                yield world
            finally:
                servers.run(world._stop())

    async def _start(self) -> None:
        await self.counter.start()
        self._cleanups.append(self.counter.stop)
        await self.kube.start()
        self._cleanups.append(self.kube.stop)
        for name, replicas in DEPLOYMENTS.items():
            self.kube.add_deployment(NAMESPACE, name, replicas)
        # As the receiver's own fixture does, on this loop rather than the test's.
        runner = web.AppRunner(self.receiver.app, shutdown_timeout=1.0)
        await runner.setup()
        self._cleanups.append(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        self.receiver.base = f"http://{host}:{port}"
        self.zone_id = await create_zone(self.moto_url, ZONE)
        await upsert(self.moto_url, self.zone_id, RECORD, "CNAME", DNS_TARGETS[WEST])

    async def _stop(self) -> None:
        self.receiver.release()
        for cleanup in reversed(self._cleanups):
            await cleanup()
        self._cleanups.clear()

    # ------------------------------------------------------------ config

    def overrides(self, **runbook: Any) -> dict[str, Any]:
        """Config keys that give a watchdog the full runbook against this world
        (``runbook`` changes the ``runbook`` section)."""
        return {
            "regions": {
                WEST: {"dns_target": DNS_TARGETS[WEST]},
                EAST: {
                    "dns_target": DNS_TARGETS[EAST],
                    "kubernetes": {
                        "api_url": self.kube.url,
                        "token_file": str(self.workdir / "kube-token"),
                        "namespace": NAMESPACE,
                        "ready_timeout": "10s",
                    },
                },
            },
            "dns": {"route53": {
                "hosted_zone_id": self.zone_id, "record_name": RECORD, "record_type": "CNAME",
                "ttl": 60, "style": "simple", "endpoint_url": self.counter.url,
                "aws_region": "us-east-1",
            }},
            "notifications": {"webhooks": [
                {"kind": "slack", "url": self.receiver.url(SLACK)},
                {"kind": "pagerduty", "url": self.receiver.url(PAGERDUTY),
                 "routing_key_file": str(self.workdir / "pagerduty-routing-key")},
                {"kind": "generic", "url": self.receiver.url(GENERIC)},
            ]},
            "runbook": {"scale_percent": 50, "verify_timeout": "10s", "notify_timeout": "3s",
                        **runbook},
        }

    # ------------------------------------------------------------ what the world saw

    @property
    def dns_changes(self) -> int:
        """ChangeResourceRecordSets calls moto accepted (the test's own setup excluded)."""
        return self.counter.changes

    def dns_record(self) -> tuple[str, str]:
        """The CNAME's value and the fencing marker's TXT text, as Route 53 serves them."""
        async def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return (await record_sets(self.moto_url, self.zone_id, RECORD),
                    await record_sets(self.moto_url, self.zone_id, MARKER))

        cnames, markers = self.servers.run(read())
        assert len(cnames) == 1, cnames
        assert len(markers) == 1, markers
        value = cnames[0]["ResourceRecords"][0]["Value"]
        return str(value).rstrip("."), " ".join(r["Value"] for r in markers[0]["ResourceRecords"])

    def deployment(self, name: str) -> Deployment:
        async def read() -> Deployment:
            found = self.kube.get(NAMESPACE, name)
            return Deployment(found.replicas, dict(found.annotations))

        return self.servers.run(read())

    def scale_writes(self) -> Counter[str]:
        """Writes to each deployment's ``/scale`` subresource (PATCH or PUT), by name."""
        async def read() -> Counter[str]:
            return Counter(call.path.split("/")[-2] for call in self.kube.writes()
                           if call.path.endswith("/scale"))

        return self.servers.run(read())

    def notifications(self) -> dict[str, list[str]]:
        """What each webhook received, in order, as the names in ``EXPECTED_NOTIFICATIONS``."""
        async def read() -> list[ReceivedRequest]:
            return list(self.receiver.requests)

        found: dict[str, list[str]] = {path: [] for path in EXPECTED_NOTIFICATIONS}
        for request in self.servers.run(read()):
            if not is_alert(request):
                found.setdefault(request.path, []).append(notification_name(request))
        return found

    def alerts(self, path: str = GENERIC) -> list[dict[str, Any]]:
        """The daemons' alerts (not the runbook's notifications) a webhook received."""
        return [request.body for request in self.received(path)
                if is_alert(request) and isinstance(request.body, dict)]

    def received(self, path: str, *, alerts: bool = True) -> list[ReceivedRequest]:
        """What the webhook at ``path`` received; ``alerts=False`` leaves the daemons'
        alerts out (only the runbook's notifications)."""
        async def read() -> list[ReceivedRequest]:
            return self.receiver.received(path)

        return [r for r in self.servers.run(read()) if alerts or not is_alert(r)]

    def runs(self, redis_url: str, key_prefix: str = "agentaskit-dr") -> list[RunJournal]:
        """Every run in the journal next to the lock, newest first."""
        async def read() -> list[RunJournal]:
            journal = RedisJournal(redis_url, key_prefix=key_prefix)
            try:
                return await journal.recent(limit=100)
            finally:
                await journal.close()

        return self.servers.run(read())


def is_alert(request: ReceivedRequest) -> bool:
    """An alert of a daemon (``runtime/alerts.py``), told apart from the runbook's
    notifications by its dedup key ``agentaskit-dr/<node>/<key>``."""
    body = request.body if isinstance(request.body, dict) else {}
    if "event_action" in body:
        return str(body.get("dedup_key", "")).startswith("agentaskit-dr/")
    if "blocks" in body:
        return "(run agentaskit-dr/" in str(body.get("text", ""))
    return body.get("event") == "alert"


def notification_name(request: ReceivedRequest) -> str:
    """The notification a webhook request carries: the event for Slack and the generic
    hook, ``trigger <event>`` or ``resolve`` for PagerDuty; ``?`` when unreadable."""
    body = request.body if isinstance(request.body, dict) else {}
    if "event_action" in body:
        details = (body.get("payload") or {}).get("custom_details") or {}
        return " ".join(filter(None, (str(body["event_action"]), details.get("event"))))
    if "blocks" in body:
        title = _SLACK_TITLE.search(str(body["blocks"][0]["text"]["text"]))
        return title.group(1) if title else "?"
    return str(body.get("event", "?"))


def done_counts(run: RunJournal) -> Counter[str]:
    """How many ``done`` entries each step of ``run`` has."""
    return Counter(e.step for e in run.entries if e.status is StepStatus.DONE)


def refused_before_promotion(run: RunJournal) -> bool:
    """An attempt the runbook refused before its promotion: closed ``failed`` with the
    promote step never done. Nothing irreversible happened in it; the core retries the
    failover as a new run (under load a check can fail: one bounded by the probe timeout,
    or the leadership check when the lease lapsed locally)."""
    return run.finished == "failed" and run.last_status(PROMOTE) is not StepStatus.DONE


def one_run_and_refusals(runs: Sequence[RunJournal]) -> tuple[RunJournal, list[RunJournal]]:
    """The journal's one run that is not an attempt refused before its promotion, and
    those refused attempts, oldest first. Fails if there is not exactly one such run, or
    if a refused attempt wrote after that run was opened (two runs open at once)."""
    kept = [run for run in runs if not refused_before_promotion(run)]
    assert len(kept) == 1, describe_runs(runs)
    (run,) = kept
    refused = sorted((r for r in runs if r is not run), key=lambda r: r.created_at)
    for attempt in refused:
        last_write = max((e.at for e in attempt.entries), default=attempt.created_at)
        assert last_write <= run.created_at, describe_runs(runs)
    return run, refused


def describe_runs(runs: Sequence[RunJournal]) -> str:
    """Each run's id, outcome, creation time and entries (step, status, epoch), for
    failure messages."""
    return "\n".join(
        f"{r.run_id} finished={r.finished} created_at={r.created_at:.3f} epoch={r.created_epoch}: "
        + ", ".join(f"{e.step}:{e.status.value}@e{e.epoch}" for e in r.entries)
        for r in runs
    )


# ------------------------------------------------------------ processes


def start_with_crash(fleet: WatchdogFleet, region: str, step: str,
                     overrides: Mapping[str, Any]) -> Watchdog:
    """Start a watchdog that SIGKILLs itself right after journaling ``step`` done (the
    test-only wrapper ``tests.integration.crashing_watchdog``; nothing else is affected)."""
    return fleet.start(region, overrides=overrides,
                       entry=("-m", "tests.integration.crashing_watchdog", step))


def restart(fleet: WatchdogFleet, dog: Watchdog) -> Watchdog:
    """Start ``dog`` again from its config file (same node name), logging to a new file;
    ``dog`` must have exited. The new process is labelled ``<label>-restarted``."""
    assert dog.proc is not None, f"{dog.region} was never started"
    assert dog.proc.poll() is not None, f"{dog.region} still runs"
    label = f"{dog.region}-restarted"
    again = Watchdog(label, dog.config, fleet.workdir / f"watchdog-{label}.log")
    again.start()
    fleet.dogs[label] = again  # stopped with the rest on the way out
    return again


def wait_exit(fleet: WatchdogFleet, dog: Watchdog, timeout: float, *, what: str) -> int:
    """Wait (``timeout`` s at most) for ``dog`` to exit; its exit code (-9 after SIGKILL)."""
    assert dog.proc is not None, f"{dog.region} was never started"
    try:
        return dog.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no {what} within {timeout:g}s\n{fleet.describe()}") from None


@contextlib.contextmanager
def moto_endpoint(log_dir: Path) -> Iterator[str]:
    """A ``moto.server`` process on a free loopback port, for the bench (the tests use
    the ``moto_server`` fixture); its endpoint URL."""
    port = free_port()
    with (log_dir / "moto.log").open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=20.0, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def aws_environment(workdir: Path) -> Iterator[None]:
    """The ``aws_credentials`` fixture's environment outside pytest (for the bench): dummy
    keys, no shared files, no instance metadata; restored on the way out."""
    wanted: dict[str, str | None] = dict.fromkeys((
        "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL"))
    wanted |= {**DUMMY_CREDENTIALS, "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
               "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
               "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {name: os.environ.get(name) for name in wanted}
    try:
        for name, value in wanted.items():
            _set_env(name, value)
        yield
    finally:
        for name, value in saved.items():
            _set_env(name, value)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture(name="runbook_world")
def runbook_world_fixture(moto_server: str, tmp_path: Path) -> Iterator[RunbookWorld]:
    """A started :class:`RunbookWorld` on a freshly reset moto; stopped after the test."""
    with RunbookWorld.started(moto_server, tmp_path / "world") as world:
        yield world
