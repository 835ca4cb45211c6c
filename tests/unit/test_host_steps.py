"""The serving side of delegated host steps (``HostStepJobs``): one job per (step, run
id), the leader lock checked at every request, a failed job run again only for a newer
epoch. The step itself fails fast here: the new primary's address answers nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from structlog.testing import capture_logs

from agentaskit_dr.config import WatchdogConfig, load_config
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.runtime.host_steps import HostStepJobs

WEST, EAST = "us-west-2", "us-east-1"


def config(tmp_path: Path) -> WatchdogConfig:
    def nowhere() -> str:
        return f"postgresql://dr@127.0.0.1:{free_port()}/postgres"

    data = {
        "region": WEST, "primary_region": WEST, "node_name": "watchdog-west",
        "regions": {
            WEST: {"health_urls": ["http://127.0.0.1:9/healthz"],
                   "database": {"dsn": nowhere(), "control": {
                       "data_directory": str(tmp_path / "no-such-data-dir")}}},
            EAST: {"health_urls": ["http://127.0.0.1:9/healthz"],
                   "database": {"dsn": nowhere()}},
        },
        "probe": {"interval": "1s", "timeout": "0.5s"},
        "lock": {"url": f"redis://127.0.0.1:{free_port()}/0"},
        "api": {"listen": None},
    }
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


class Lock:
    """Who holds the lock, as ``RedisLeaderLock.current`` answers."""

    def __init__(self, holder: str, epoch: int) -> None:
        self.held: tuple[str, int] | None = (holder, epoch)

    async def current(self) -> tuple[str, int] | None:
        return self.held


async def finished(jobs: HostStepJobs, **request: object) -> dict[str, object]:
    for _ in range(200):
        answer = await jobs.request("sync-primary", **request)
        if answer.status != 202:
            return answer.body
        await asyncio.sleep(0.02)
    raise AssertionError("the job did not finish")


async def test_one_job_per_run_and_a_newer_epoch_retries_a_failed_one(tmp_path: Path) -> None:
    lock = Lock("operator", 3)
    jobs = HostStepJobs(lambda: config(tmp_path), lock.current)
    request = {"run_id": "failback-1", "epoch": 3, "holder": "operator", "region": WEST,
               "params": {"timeout": 5}}
    with capture_logs() as logs:
        first = await jobs.request("sync-primary", **request)
        assert first.status == 202
        body = await finished(jobs, **request)
        again = await jobs.request("sync-primary", **request)

        assert body["state"] == "failed"
        assert again.body == body  # the same answer, no second action
        assert [e["event"] for e in logs].count("host_step_started") == 1

        lock.held = ("operator-2", 4)  # the leader crashed; a new one resumes the run
        stale = await jobs.request("sync-primary", **request)
        assert (stale.status, stale.body["refusal"]) == (409, "stale_epoch")
        assert "held by operator-2 under epoch 4" in stale.body["error"]

        resumed = await finished(jobs, **{**request, "epoch": 4, "holder": "operator-2"})

    assert resumed["epoch"] == 4
    assert [e["event"] for e in logs].count("host_step_started") == 2
    await jobs.close()


async def test_a_region_without_control_here_is_refused_naming_the_key(tmp_path: Path) -> None:
    jobs = HostStepJobs(lambda: config(tmp_path), Lock("operator", 3).current)

    answer = await jobs.request("sync-primary", run_id="failback-1", epoch=3,
                                holder="operator", region=EAST, params={})

    assert answer.status == 409
    assert answer.body["refusal"] == "no_control"
    assert f"regions.{EAST}.database.control: not set on" in answer.body["error"]
    lock_free = Lock("x", 1)
    lock_free.held = None
    lost = HostStepJobs(lambda: config(tmp_path), lock_free.current)
    free = await lost.request("sync-primary", run_id="failback-1", epoch=3,
                              holder="operator", region=WEST, params={})
    assert (free.status, free.body["refusal"]) == (409, "stale_epoch")
    assert "held by nobody" in free.body["error"]
