"""Host-bound steps: the parts of a failback that must run beside a region's database.

``sync-primary`` stops, rewinds (or re-clones) and starts the old primary as a standby;
``switchover`` demotes the current primary (CHECKPOINT, ``standby.signal``, fast stop),
promotes its standby under the run's epoch and starts the demoted server as the new
primary's standby. Both need ``regions.<r>.database.control`` for the server they touch.

:func:`perform` runs one on this host. :class:`HostStepJobs` is the serving side of the
delegation (``POST /v1/host-steps/{step}``, see ``api/host_steps``): a watchdog with the
control of its region runs the step for the run's leader as a background job keyed by
(step, run id), so a retried or polled request never starts a second one. Every request
is checked against the leader lock first: only the holder named in it, under the epoch
the lock holds now, is served (an older epoch is stale and refused).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import LockUnavailable

log = structlog.get_logger(__name__)

SYNC_PRIMARY = "sync-primary"
SWITCHOVER = "switchover"
HOST_STEPS = (SYNC_PRIMARY, SWITCHOVER)
#: Finished jobs kept for answering retries; the oldest go first past this many.
KEEP_JOBS = 32


class HostStepFailed(Exception):
    """The step ran and did not complete; the message is one line for the operator."""


def control_key(region: str) -> str:
    """The config key a host needs to run a host-bound step on ``region``'s server."""
    return f"regions.{region}.database.control"


async def perform(config: WatchdogConfig, step: str, *, region: str, run_id: str, epoch: int,
                  holder: str, params: dict[str, Any],
                  still_leader: Callable[[], Awaitable[bool]],
                  progress: Callable[[str], Awaitable[None]]) -> dict[str, Any]:
    """Run ``step`` on ``region``'s server, on this host (its control must be set here).

    ``sync-primary``: params ``timeout`` (seconds). ``switchover``: ``region`` is the
    current primary's; params ``to`` (the standby's region). ``progress("promoted")`` is
    called once the switchover's standby is the primary. Raises HostStepFailed.
    """
    if config.regions[region].database.control is None:
        raise HostStepFailed(f"{control_key(region)} is not set on {config.holder}")
    if step == SYNC_PRIMARY:
        return await _sync_primary(config, region, float(params.get("timeout", 600.0)))
    if step == SWITCHOVER:
        return await _switchover(config, region, str(params["to"]), run_id=run_id,
                                 epoch=epoch, holder=holder, still_leader=still_leader,
                                 progress=progress)
    raise HostStepFailed(f"unknown host step {step!r} (known: {', '.join(HOST_STEPS)})")


async def _sync_primary(config: WatchdogConfig, region: str, bound: float) -> dict[str, Any]:
    from agentaskit_dr.actuators.resync import resync_standby
    from agentaskit_dr.actuators.resync_plan import ResyncFailed
    from agentaskit_dr.resync_command import resync_plan

    try:
        return (await resync_standby(resync_plan(config, region, bound))).to_json()
    except ResyncFailed as exc:
        raise HostStepFailed(str(exc)) from exc


async def _switchover(config: WatchdogConfig, region: str, to: str, *, run_id: str,
                      epoch: int, holder: str, still_leader: Callable[[], Awaitable[bool]],
                      progress: Callable[[str], Awaitable[None]]) -> dict[str, Any]:
    from agentaskit_dr.actuators.fence import PromotionRefused
    from agentaskit_dr.actuators.pg_control import ServerControlFailed
    from agentaskit_dr.actuators.switchover import PostgresSwitchover
    from agentaskit_dr.fencing import primary_conninfo_for, server_control
    from agentaskit_dr.ports import StaleEpoch

    if to not in config.regions or to == region:
        raise HostStepFailed(f"switchover: 'to' must be the other region, got {to!r}")
    control = server_control(config, region)
    assert control is not None  # checked by perform

    async def promoted() -> None:
        await progress("promoted")

    try:
        result = await PostgresSwitchover(
            primary_dsn=config.regions[region].database.connect_dsn(),
            primary_control=control,
            standby_dsn=config.regions[to].database.connect_dsn(),
            primary_conninfo=primary_conninfo_for(config, to),
            io_timeout=config.probe.timeout,
            catch_up_timeout=config.promotion.catch_up_timeout,
            promote_timeout=config.promotion.timeout,
        ).switch(epoch=epoch, holder=holder, switchover_id=run_id,
                 still_leader=still_leader, on_promoted=promoted)
    except PromotionRefused as exc:
        raise HostStepFailed(f"switchover: {type(exc).__name__}: {exc.reason}") from exc
    except (ServerControlFailed, StaleEpoch) as exc:
        raise HostStepFailed(f"switchover: {type(exc).__name__}: {exc}") from exc
    return result.as_dict()


@dataclass(frozen=True)
class HostStepAnswer:
    """What the API sends back: an HTTP status and a JSON object.

    200 ``{"state": "done", "result": ...}`` or ``{"state": "failed", "reason": ...}``;
    202 ``{"state": "running", "progress": [...]}`` (ask again with the same body to
    poll); 409 ``{"error": ..., "refusal": "stale_epoch" | "no_control"}``; 503 when the
    lock store cannot say who leads.
    """

    status: int
    body: dict[str, Any]


@dataclass
class _Job:
    epoch: int
    holder: str
    task: asyncio.Task[dict[str, Any]]
    started_at: float
    progress: list[str] = field(default_factory=list)

    def failure(self) -> BaseException | None:
        """Why the finished job failed (None: it succeeded)."""
        if self.task.cancelled():
            return HostStepFailed("cancelled: the watchdog running it stopped")
        return self.task.exception()

    def answer(self) -> HostStepAnswer:
        base = {"epoch": self.epoch, "progress": list(self.progress)}
        if not self.task.done():
            return HostStepAnswer(202, {"state": "running", **base})
        exc = self.failure()
        if exc is None:
            return HostStepAnswer(200, {"state": "done", "result": self.task.result(), **base})
        return HostStepAnswer(200, {"state": "failed", "reason": str(exc), **base})


class HostStepJobs:
    """The host steps this watchdog runs for a run's leader, one job per (step, run id).

    ``config`` gives the current config (it follows reloads); ``lock_current`` the lock's
    ``(holder, epoch)`` now (``RedisLeaderLock.current``).
    """

    def __init__(self, config: Callable[[], WatchdogConfig],
                 lock_current: Callable[[], Awaitable[tuple[str, int] | None]]) -> None:
        self._config = config
        self._lock_current = lock_current
        self._jobs: dict[tuple[str, str], _Job] = {}

    async def request(self, step: str, *, run_id: str, epoch: int, holder: str, region: str,
                      params: dict[str, Any]) -> HostStepAnswer:
        """Start the job, or answer how the one started for (step, run id) is doing."""
        config = self._config()
        if region not in config.regions:
            return _refused(400, "bad_region", f"region: unknown region {region!r}")
        if config.regions[region].database.control is None:
            return _refused(409, "no_control", f"{step} needs {control_key(region)}: not set "
                            f"on {config.holder}")
        stale = await self._stale(epoch, holder)
        if stale is not None:
            return stale
        key = (step, run_id)
        job = self._jobs.get(key)
        # A job that failed under an older epoch is run again for the newer one (a
        # resumed run); anything else answers with the job already there.
        if job is not None and (not job.task.done() or job.epoch >= epoch
                                or job.failure() is None):
            return job.answer()
        self._jobs[key] = job = self._start(config, step, run_id=run_id, epoch=epoch,
                                            holder=holder, region=region, params=params)
        self._forget_old()
        return job.answer()

    async def _stale(self, epoch: int, holder: str) -> HostStepAnswer | None:
        """The refusal when (holder, epoch) is not the lock's now."""
        try:
            current = await self._lock_current()
        except LockUnavailable as exc:
            return _refused(503, "lock_unavailable", f"cannot check the epoch: {exc}")
        if current == (holder, epoch):
            return None
        held = (f"held by {current[0]} under epoch {current[1]}" if current is not None
                else "held by nobody")
        log.warning("host_step_refused", reason="stale_epoch", epoch=epoch, holder=holder,
                    lock=held)
        return _refused(409, "stale_epoch", f"stale epoch {epoch} of {holder}: the leader "
                        f"lock is {held}")

    def _start(self, config: WatchdogConfig, step: str, *, run_id: str, epoch: int,
               holder: str, region: str, params: dict[str, Any]) -> _Job:
        async def still_leader() -> bool:
            try:
                return await self._lock_current() == (holder, epoch)
            except LockUnavailable:
                return False

        async def progress(stage: str) -> None:
            job.progress.append(stage)

        async def run() -> dict[str, Any]:
            slog = log.bind(step=step, run_id=run_id, epoch=epoch, holder=holder,
                            region=region)
            slog.warning("host_step_started")
            try:
                result = await perform(config, step, region=region, run_id=run_id,
                                       epoch=epoch, holder=holder, params=params,
                                       still_leader=still_leader, progress=progress)
            except HostStepFailed as exc:
                slog.error("host_step_failed", reason=str(exc))
                raise
            except Exception as exc:
                slog.exception("host_step_failed", reason=f"{type(exc).__name__}: {exc}")
                raise HostStepFailed(f"{type(exc).__name__}: {exc}") from exc
            slog.warning("host_step_done")
            return result

        task = asyncio.create_task(run(), name=f"host-step:{step}:{run_id}")
        job = _Job(epoch, holder, task, time.monotonic())
        return job

    def _forget_old(self) -> None:
        finished = sorted((job.started_at, key) for key, job in self._jobs.items()
                          if job.task.done())
        for _, key in finished[:max(0, len(self._jobs) - KEEP_JOBS)]:
            del self._jobs[key]

    async def close(self) -> None:
        """Cancel the jobs still running (the daemon stops)."""
        running = [job.task for job in self._jobs.values() if not job.task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _refused(status: int, refusal: str, message: str) -> HostStepAnswer:
    return HostStepAnswer(status, {"error": message, "refusal": refusal})
