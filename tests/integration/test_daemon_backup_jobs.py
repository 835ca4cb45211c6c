"""Two real watchdogs scheduling a cheap backup job (the configs backup to moto, due
every few seconds): it runs once per due time across both, a SIGHUP mid-run does not
stop it, and SIGTERM mid-run stops its processes and frees its lease."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from agentaskit_dr.config import LockConfig
from agentaskit_dr.runtime.job_schedule import iso
from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.appstate_harness import write_config
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.daemon_harness import WatchdogFleet, is_event, wait_until
from tests.integration.s3_buckets import create_buckets

pytestmark = pytest.mark.integration
JOB = "appstate-configs"
EVERY = 3.0
PREFIX = LockConfig.model_fields["key_prefix"].default


class Gate:
    """A TCP relay to ``port`` that holds new connections while closed (the job then
    hangs on its first S3 request, mid-run, for as long as the test wants)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.open = threading.Event()
        self.open.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.open.wait()
        with contextlib.suppress(OSError), client, socket.create_connection(
                ("127.0.0.1", self.target)) as upstream:
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
            _pipe(client, upstream)

    def close(self) -> None:
        self.open.set()
        self.listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def gate(moto_server: str) -> Iterator[Gate]:
    relay = Gate(int(moto_server.rsplit(":", 1)[1]))
    try:
        yield relay
    finally:
        relay.close()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_watchdogs_run_each_due_job_once_through_sighup_and_sigterm(
        pg_pair: PostgresPair, redis_server: RedisServer, moto_server: str, gate: Gate,
        tmp_path: Path) -> None:
    await create_buckets(moto_server)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "app.yaml").write_text("a: 1\n")
    backup = write_config(
        tmp_path, f"http://127.0.0.1:{gate.port}",
        {"configs": {"method": "git+s3", "schedule": "on-change", "retention": "365d",
                     "paths": [str(etc)], "git_dir": str(tmp_path / "configs-git")}},
        evidence_dir=str(tmp_path / "backup-evidence"))
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    overrides = {"backup": {"config": str(backup), "configs_every": f"{EVERY:g}s"}}
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "fleet") as fleet:
        west, east = fleet.start_pair(overrides)
        for dog in (west, east):
            fleet.wait_for(is_event("jobs_scheduled"), 30, what="jobs_scheduled", dogs=[dog])
        wait_until(lambda: len(fleet.events(is_event("job_finished", job=JOB))) >= 3,
                   12 * EVERY, what="three finished runs", hint=fleet.describe())
        for dog in (west, east):  # both show the job, whichever ran it
            listen = yaml.safe_load(dog.config.read_text())["api"]["listen"]
            row = json.loads(get(f"http://{listen}/v1/status"))["backups"][JOB]
            assert row["schedule"] == "every 3s"
            assert row["last_outcome"] in ("unchanged", "running")  # the next may have begun
            assert row["last_success"] is not None
            assert f'agentaskit_dr_job_last_success_timestamp{{job="{JOB}"}}' in get(
                f"http://{listen}/metrics")

        # SIGHUP while a run hangs on S3: the run goes on and ends normally.
        gate.open.clear()
        held = time.time()
        start = fleet.wait_for(is_event("job_started", job=JOB, since=held), 4 * EVERY,
                               what="a run while S3 is held")
        runner = fleet.dogs[start["watchdog"]]
        fleet.signal(runner, signal.SIGHUP)
        fleet.wait_for(is_event("config_reloaded", since=held), 10, what="the reload",
                       dogs=[runner])
        assert not fleet.events(is_event("job_finished", job=JOB, due=start["due"]))
        gate.open.set()
        done = fleet.wait_for(is_event("job_finished", job=JOB, due=start["due"]),
                              4 * EVERY, what="the held run's end")
        assert done["outcome"] in ("ok", "unchanged")
        assert done["watchdog"] == runner.region

        # SIGTERM while a run hangs: its processes are killed, the lease freed.
        gate.open.clear()
        held = time.time()
        start = fleet.wait_for(is_event("job_started", job=JOB, since=held), 4 * EVERY,
                               what="a second run while S3 is held")
        runner = fleet.dogs[start["watchdog"]]
        assert runner.proc is not None
        wait_until(lambda: bool(children(runner.proc.pid)), 10, what="the job's process")
        job_groups = [os.getpgid(pid) for pid in children(runner.proc.pid)]
        assert store.get(f"{PREFIX}:job:{JOB}") is not None
        assert fleet.stop(runner) == 0
        gate.open.set()
        wait_until(lambda: not any(map(group_alive, job_groups)), 10,
                   what="the job's processes gone")
        assert store.get(f"{PREFIX}:job:{JOB}") is None
        ended = fleet.events(is_event("job_finished", job=JOB, due=start["due"]))
        assert [e["outcome"] for e in ended] == ["cancelled"]
        record = json.loads(store.get(f"{PREFIX}:job:{JOB}:last") or "{}")
        assert (iso(record["due"]), record["outcome"]) == (start["due"], "cancelled")
        other = west if runner is east else east
        stopped = time.time()
        fleet.wait_for(lambda e: is_event("job_finished", job=JOB, since=stopped)(e)
                       and e["outcome"] in ("ok", "unchanged"), 4 * EVERY,
                       what="the other watchdog running the next one", dogs=[other])

    starts = Counter(e["due"] for e in fleet.events(is_event("job_started", job=JOB)))
    assert len(starts) >= 6
    assert set(starts.values()) == {1}, starts  # each due time started by one watchdog
    store.close()
