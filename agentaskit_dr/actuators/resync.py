"""``sync-primary``: the old primary rejoins as a streaming standby of the new primary.

Runs on the old primary's host (``regions.<r>.database.control``). In order:

1. the new primary answers and is not in recovery, else refused; an old primary that
   still runs as a primary is stopped only when the caller confirms the primary is
   elsewhere (a newer marker, the cluster record), else refused: it is the primary;
2. the server is stopped and, before anything rewrites its WAL, what it had beyond the
   fork is measured (``resync_loss``: the failover's real RPO); ``standby.signal`` +
   ``primary_conninfo`` are written (before any start), and a server that crashed gets
   one start and stop in recovery, because pg_rewind needs a clean shutdown and its own
   single-user crash recovery refuses a data directory with ``standby.signal``;
3. CHECKPOINT on the new primary (else pg_rewind reads the old timeline from its control
   file and may find "no rewind required"), then ``pg_rewind`` with the new primary as
   source (``statement_timeout=0``; ``--restore-target-wal`` when the server has a
   ``restore_command``). pg_rewind copies the source's config files and removes
   ``standby.signal``: both are put back at once, with the server's own port;
4. when pg_rewind fails (missing WAL, no ``wal_log_hints``/checksums, ...) the data
   directory is renamed aside with a timestamp and re-cloned with ``pg_basebackup -R -X
   stream``; a failed re-clone puts the old directory back;
5. started in recovery (never without ``standby.signal``) and done once its WAL receiver
   streams and it has replayed the new primary's current LSN (lag 0 bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import structlog
from asyncpg import Connection

from agentaskit_dr.actuators.fence import PromotionRefused, describe_dsn, session
from agentaskit_dr.actuators.pg_control import (
    ServerControl,
    ServerControlFailed,
    postmaster_pid,
    stop_server,
    write_recovery_config,
)
from agentaskit_dr.actuators.resync_loss import measure_fork_loss
from agentaskit_dr.actuators.resync_plan import (
    ResyncFailed,
    ResyncPlan,
    ResyncRefused,
    ResyncResult,
)
from agentaskit_dr.actuators.resync_tools import (
    CLEAN_STATES,
    BinaryRun,
    LastStart,
    cluster_state,
    keep_port,
    last_start,
    run_binary,
    setting,
    start_in_recovery,
    start_log_tail,
    tablespaces,
)

log = structlog.get_logger(__name__)

_POLL = 0.1
_PID_FILE_GRACE = 5.0
_STANDBY_STATUS = """
SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver,
       (SELECT received_tli FROM pg_stat_wal_receiver) AS timeline,
       pg_last_wal_replay_lsn()::text AS replay,
       pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())::bigint AS lag
"""
_REPLICATION_STATUS = """
SELECT state, pg_current_wal_lsn()::text AS primary_lsn, replay_lsn::text AS replay,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag
FROM pg_stat_replication WHERE application_name = $1
ORDER BY backend_start DESC LIMIT 1
"""



async def resync_standby(plan: ResyncPlan) -> ResyncResult:
    """Make ``plan.region``'s stopped or fenced old primary a streaming standby, lag 0."""
    run = _Run(plan, asyncio.get_running_loop())
    try:
        await run.steps()
    except ServerControlFailed as exc:
        raise ResyncFailed(f"{plan.region}: {exc}") from exc
    except PromotionRefused as exc:
        raise ResyncFailed(f"{plan.region}: {exc.reason}") from exc
    return run.result


class _Run:
    """One ``sync-primary`` run: its deadline, and the result it fills in phase by phase."""

    def __init__(self, plan: ResyncPlan, loop: asyncio.AbstractEventLoop) -> None:
        self.plan, self.loop = plan, loop
        self.deadline = loop.time() + plan.timeout
        self.result = ResyncResult(plan.region, plan.primary_region)
        self.how = LastStart((), 0)

    def left(self) -> float:
        """Seconds left of the run's budget; ResyncFailed once none are."""
        remaining = self.deadline - self.loop.time()
        if remaining <= 0:
            raise ResyncFailed(f"out of time ({self.plan.timeout:g}s) after phases "
                               f"{', '.join(self.result.phases)}")
        return remaining

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase into ``result.phases`` and log it."""
        started = self.loop.time()
        try:
            yield
        finally:
            seconds = self.result.phases[name] = round(self.loop.time() - started, 3)
            log.info("sync_primary_phase", region=self.plan.region, phase=name, seconds=seconds)

    async def steps(self) -> None:
        plan, result, control = self.plan, self.result, self.plan.control
        with self.phase("check"):
            await _check_roles(plan)
        with self.phase("stop"):
            result.stopped = await stop_server(control)
        with self.phase("measure_loss"):
            # Before anything rewrites its WAL: what the failover lost (resync_loss).
            loss = await measure_fork_loss(control, plan.primary_dsn, role=_primary_role(plan),
                                           io_timeout=plan.io_timeout,
                                           budget=min(self.left(), 60.0))
            result.fork_loss = loss.to_json()
            log.warning("failover_loss_measured", region=plan.region, **result.fork_loss)
        self.how = await last_start(control, budget=self.left())
        result.port = self.how.port
        write_recovery_config(control, plan.primary_conninfo)
        if await cluster_state(control, budget=self.left()) not in CLEAN_STATES:
            with self.phase("clean_shutdown"):
                await _clean_shutdown_cycle(control, self.how, self.left())
        with self.phase("checkpoint"):
            async with session(plan.primary_dsn, role=_primary_role(plan),
                               io_timeout=max(plan.io_timeout, min(self.left(), 60.0))) as conn:
                await conn.execute("CHECKPOINT")
        await self.rewind_or_reclone()
        keep_port(control, result.port)
        with self.phase("start"):
            await start_in_recovery(control, self.how, wait=None)
        with self.phase("catch_up"):
            await _wait_streaming(plan, result, self.deadline)

    async def rewind_or_reclone(self) -> None:
        plan, result = self.plan, self.result
        restore = await setting(plan.control, "restore_command", options=self.how.options,
                                budget=self.left())
        result.restore_target_wal = bool(restore)
        with self.phase("rewind"):
            rewound = await _rewind(plan, restore_target_wal=bool(restore), budget=self.left())
        if rewound.returncode == 0:
            said = rewound.output.lower()
            result.rewind_note = "no rewind required" if "no rewind required" in said else None
            return
        reason = rewound.last_line
        if not reason.startswith("pg_rewind"):
            reason = f"pg_rewind: {reason}"
        result.method, result.reclone_reason = "reclone", reason
        log.warning("sync_primary_reclone", region=plan.region, reason=result.reclone_reason)
        with self.phase("reclone"):
            result.kept_aside = str(await _reclone(plan, budget=self.left()))


def _primary_role(plan: ResyncPlan) -> str:
    return f"new primary ({plan.primary_region})"


async def _check_roles(plan: ResyncPlan) -> None:
    """Refuse unless the other region's server is a primary and the target is not the one."""
    async with session(plan.primary_dsn, role=_primary_role(plan),
                       io_timeout=plan.io_timeout) as conn:
        if await conn.fetchval("SELECT pg_is_in_recovery()"):
            raise ResyncRefused(
                f"region {plan.primary_region}'s server {describe_dsn(plan.primary_dsn)} is "
                "in recovery: there is no new primary to follow (nothing changed)"
            )
    here = await plan.primary_here()
    if here is not None:
        raise ResyncRefused(f"{here}: {plan.region} is the current primary, not an old one "
                            "to rejoin (nothing changed)")
    if postmaster_pid(plan.control) is None:
        return
    # The control file says whether the running server is a standby, with no session
    # needed (a standby with hot_standby off takes none); anything else may be a primary.
    state = await cluster_state(plan.control, budget=plan.io_timeout + 5.0)
    if state == "in archive recovery":
        return
    elsewhere = await plan.primary_elsewhere()
    if elsewhere is None:
        raise ResyncRefused(
            f"region {plan.region}'s server is running ({state}) and nothing says the "
            "primary moved (no newer marker elsewhere, no cluster record): it is the current "
            "primary; sync-primary only rejoins an old primary after a failover (nothing changed)"
        )
    log.warning("sync_primary_stops_old_primary", region=plan.region, state=state,
                reason=elsewhere)


async def _clean_shutdown_cycle(control: ServerControl, how: LastStart, budget: float) -> None:
    """Start the crashed server in recovery (``standby.signal`` is in place) and stop it:
    crash recovery runs, and the control file then says "shut down in recovery"."""
    await start_in_recovery(control, how, wait=min(budget, 60.0))
    await stop_server(control)
    state = await cluster_state(control, budget=budget)
    if state not in CLEAN_STATES:
        raise ResyncFailed(
            f"after a start and stop in recovery the cluster state is {state!r}, and pg_rewind "
            f"needs a clean shutdown; server said: {start_log_tail(control)}"
        )


async def _rewind(
    plan: ResyncPlan, *, restore_target_wal: bool, budget: float
) -> BinaryRun:
    argv = ["-D", str(plan.control.data_directory),
            f"--source-server={plan.rewind_source.conninfo}"]
    if restore_target_wal:
        argv.append("--restore-target-wal")
    try:
        return await run_binary(plan.control, "pg_rewind", *argv, budget=budget,
                                password=plan.rewind_source.password)
    finally:
        # pg_rewind removes standby.signal (the source has none) and copies the source's
        # config, whether it finished or not: put ours back before anything can start it.
        write_recovery_config(plan.control, plan.primary_conninfo)


async def _reclone(plan: ResyncPlan, *, budget: float) -> Path:
    """A fresh copy of the new primary in the data directory; the old one renamed aside."""
    control = plan.control
    data = control.data_directory
    linked = tablespaces(control)
    if linked:
        raise ResyncFailed(
            f"pg_rewind failed and {data} has tablespaces ({', '.join(map(str, linked))}): "
            "re-clone by hand with pg_basebackup --tablespace-mapping"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = data.with_name(f"{data.name}.before-sync-{stamp}")
    owner = data.stat()
    try:
        data.rename(aside)
    except OSError as exc:
        raise ResyncFailed(f"cannot move {data} aside to {aside}: {exc.strerror}") from exc
    try:
        data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(data, owner.st_uid, owner.st_gid)
        cloned = await run_binary(
            control, "pg_basebackup", "-D", str(data), "-R", "-X", "stream", "-c", "fast",
            "-d", plan.clone_source.conninfo, budget=budget,
            password=plan.clone_source.password,
        )
    except BaseException:
        _put_back(data, aside)
        raise
    if cloned.returncode != 0:
        _put_back(data, aside)
        raise ResyncFailed(f"re-clone failed: pg_basebackup: {cloned.last_line}; {data} is "
                           "back as it was")
    # -R wrote standby.signal; our primary_conninfo replaces the one it wrote.
    write_recovery_config(control, plan.primary_conninfo)
    return aside


def _put_back(data: Path, aside: Path) -> None:
    shutil.rmtree(data, ignore_errors=True)
    with contextlib.suppress(OSError):
        aside.rename(data)


async def _wait_streaming(plan: ResyncPlan, result: ResyncResult, deadline: float) -> None:
    """Until the standby streams and has replayed the primary's current LSN (read first,
    so lag 0 holds against that LSN); bounded by ``deadline``."""
    loop = asyncio.get_running_loop()
    control = plan.control
    last = "not answering yet"
    started, seen = loop.time(), False
    while loop.time() < deadline:
        # pg_ctl start -W returns before the postmaster writes its pid file.
        if postmaster_pid(control) is not None:
            seen = True
        elif seen or loop.time() - started > _PID_FILE_GRACE:
            raise ResyncFailed(f"the server stopped while starting as a standby: "
                               f"{start_log_tail(control)}")
        try:
            async with session(plan.primary_dsn, role=_primary_role(plan),
                               io_timeout=plan.io_timeout) as primary:
                said = await _caught_up(plan, primary, result)
        except PromotionRefused as exc:
            said = exc.reason
        if said is None:
            return
        last = said
        await asyncio.sleep(_POLL)
    raise ResyncFailed(
        f"not streaming with lag 0 within {plan.timeout:g}s: {last}; the server said: "
        f"{start_log_tail(control)}"
    )


async def _caught_up(plan: ResyncPlan, primary: Connection, result: ResyncResult) -> str | None:
    """None once caught up (``result`` filled in), else what is still missing.

    Asked of the standby itself (``pg_stat_wal_receiver``); a standby that takes no
    session (``hot_standby = off``, or still starting) is looked up on the primary
    (``pg_stat_replication`` by ``standby_name``), whose replay position comes from the
    standby's status messages (up to ``wal_receiver_status_interval`` late).
    """
    primary_lsn = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
    try:
        async with session(plan.target_dsn, role=f"{plan.region} standby",
                           io_timeout=plan.io_timeout) as standby:
            row = await standby.fetchrow(_STANDBY_STATUS, primary_lsn)
    except PromotionRefused as exc:
        if plan.standby_name is None:
            return exc.reason
        seen = await primary.fetchrow(_REPLICATION_STATUS, plan.standby_name)
        if seen is None:
            return f"{exc.reason}; not in pg_stat_replication as {plan.standby_name!r}"
        if seen["state"] == "streaming" and seen["lag"] is not None and seen["lag"] <= 0:
            result.primary_lsn, result.replay_lsn = seen["primary_lsn"], seen["replay"]
            result.lag_bytes, result.confirmed_by = 0, "pg_stat_replication"
            return None
        return f"{exc.reason}; on the primary: {seen['state']}, {seen['lag']} bytes behind"
    if not row["in_recovery"]:
        raise ResyncFailed(f"{plan.region}'s server came up out of recovery")
    lag = row["lag"]
    if row["receiver"] == "streaming" and lag is not None and lag <= 0:
        result.primary_lsn, result.replay_lsn = primary_lsn, row["replay"]
        result.lag_bytes, result.timeline = 0, row["timeline"]
        result.confirmed_by = "pg_stat_wal_receiver"
        return None
    return (f"WAL receiver {row['receiver'] or 'not running'}, "
            f"replay {'unknown' if lag is None else f'{lag} bytes'} behind")
