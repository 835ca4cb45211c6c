"""The effect side of the self-fence lift (the decision is ``core.self_fence``).

While this watchdog's self-fence is in force it reads, at most once per probe interval
and beside the engine loop (a slow store or server never stalls a cycle), what the core
needs: the cluster record and whether the other region's server is a standby. When the
core issues ``LiftSelfFence``, the lift runs beside the loop too, and only after checking
again, at that moment: the lease verified under the command's epoch, the record still
naming this region with no failover newer than the fence's, the other server still a
standby. In control mode (this watchdog stopped its server and wrote ``standby.signal``)
the signal is removed and the server started; a server found running in recovery is
stopped first, but only when this watchdog's self-fence record says its own fence left it
so (a restart meanwhile: the service manager starts it behind the gate, in recovery);
without the record it is refused (a promotion is not a lift). Then the SQL part is lifted
under the epoch (a server whose marker records a newer epoch refuses it). Both outcomes go back to
the core as events, through the engine's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import structlog

from agentaskit_dr.actuators.fence import (
    PromotionRefused,
    ServerUnreachable,
    fence_server,
    lift_fence_over_sql,
    session,
)
from agentaskit_dr.actuators.pg_control import (
    ServerControlFailed,
    postmaster_pid,
    remove_standby_signal,
    standby_signal_present,
    stop_server,
)
from agentaskit_dr.actuators.pg_start import start_server
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import Event, LiftSelfFence, SelfFenceFacts, SelfFenceLiftDone
from agentaskit_dr.fencing import other_region, primary_conninfo_for, server_control
from agentaskit_dr.leadership.cluster import RedisClusterStore
from agentaskit_dr.ports import Lease, LockUnavailable, StaleEpoch
from agentaskit_dr.runtime.self_fence_record import load as load_record

log = structlog.get_logger(__name__)


class LeaseSource(Protocol):
    async def verified_lease(self) -> Lease | None: ...


#: {region: who says so} of servers their own region's watchdog holds stopped with
#: ``standby.signal`` in place (``PeerPoller.held_servers``).
HeldServers = Callable[[], Mapping[str, str]]


async def gather_facts(config: WatchdogConfig, file_primary: str,
                       held: HeldServers = dict) -> SelfFenceFacts:
    """The cluster record and the other region's server, as the lift conditions need them.

    A server that does not answer at all counts as a standby only when a fresh report of
    its own region's watchdog says it holds it stopped with ``standby.signal`` in place
    (it runs beside it: two file checks, no network between): any start of it then comes
    up in recovery. A server that answers, even with an error, speaks for itself.
    """
    region = config.primary_region
    recorded_region: str | None
    recorded_epoch: int | None = None
    lock = config.lock
    store = RedisClusterStore(lock.store_url, key_prefix=lock.key_prefix,
                              socket_timeout=lock.socket_timeout, password=lock.password_value())
    try:
        primary = (await store.read()).primary
    except LockUnavailable as exc:
        log.info("self_fence_record_unknown", reason=str(exc))
        recorded_region = None
    else:
        # Nothing recorded: no failover ever happened, the file's primary is the primary.
        recorded_region = primary.region if primary is not None else file_primary
        recorded_epoch = primary.epoch if primary is not None else None
    finally:
        await store.close()
    other = other_region(config, region)
    in_recovery: bool | None
    try:
        async with session(config.regions[other].database.connect_dsn(),
                           role=f"{other} server", io_timeout=config.probe.timeout) as conn:
            in_recovery = bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
        detail = f"{other}: " + ("in recovery" if in_recovery else "accepts the primary role")
    except ServerUnreachable as exc:
        in_recovery, detail = None, exc.reason
        if (who := held().get(other)) is not None:
            in_recovery = True
            detail = f"{other}: stopped with standby.signal in place, says {who} ({exc.reason})"
    except PromotionRefused as exc:
        in_recovery, detail = None, exc.reason
    return SelfFenceFacts(region=region, recorded_region=recorded_region,
                          recorded_epoch=recorded_epoch, other_in_recovery=in_recovery,
                          other_detail=detail)


def recheck(command: LiftSelfFence, facts: SelfFenceFacts) -> str | None:
    """Why the lift must not go ahead now, or None (the conditions read again at once)."""
    if facts.recorded_region != facts.region:
        return f"the cluster record names {facts.recorded_region or 'nothing readable'}"
    if facts.recorded_epoch is not None and (
            command.fence_epoch is None or facts.recorded_epoch > command.fence_epoch):
        return (f"a failover of epoch {facts.recorded_epoch} is recorded, newer than the "
                f"fence's {command.fence_epoch}")
    if facts.other_in_recovery is not True:
        return f"the other region's server is not known to be a standby ({facts.other_detail})"
    return None


async def lift(config: WatchdogConfig, file_primary: str, command: LiftSelfFence,
               leases: LeaseSource, held: HeldServers = dict) -> SelfFenceLiftDone:
    """Lift the self-fence of this region's server under ``command.epoch``; a refusal is an
    outcome, not an exception (anything unexpected is turned into one by the lifter)."""
    lease = await leases.verified_lease()
    if lease is None or lease.epoch != command.epoch:
        return SelfFenceLiftDone(False, f"not the lock holder under epoch {command.epoch}")
    facts = await gather_facts(config, file_primary, held)
    why_not = recheck(command, facts)
    if why_not is not None:
        return SelfFenceLiftDone(False, why_not)
    region = config.primary_region
    said: list[str] = [facts.other_detail]
    control = server_control(config, region)
    started = False
    try:
        if (control is not None and postmaster_pid(control) is not None
                and standby_signal_present(control)):
            if load_record(config) is None:
                return SelfFenceLiftDone(False, "the server runs in recovery (standby.signal): "
                                                "a promotion is not a lift; an operator decides")
            # Our own fence left it so (its record says): a restart of this watchdog, and
            # the service manager started the server behind the gate, in recovery.
            said.append(f"in recovery after this watchdog's self-fence: "
                        f"{await stop_server(control)}")
        if control is not None and postmaster_pid(control) is None:
            if standby_signal_present(control):
                remove_standby_signal(control)
                said.append("standby.signal removed")
            started = True
            await start_server(control, within=max(10.0, 2 * control.stop_timeout),
                               as_primary=True)
            said.append("server started")
            # Starting took a while: the lease must still be ours before writes resume.
            await _still_leader(leases, command.epoch)
        roles = await lift_fence_over_sql(config.regions[region].database.connect_dsn(),
                                          io_timeout=config.probe.timeout, flog=log,
                                          epoch=command.epoch)
    except (PromotionRefused, StaleEpoch, ServerControlFailed) as exc:
        if started:  # fenced again, as before the lift: stopped, standby.signal in place
            await _fence_again(config, region)
        return SelfFenceLiftDone(False, f"{type(exc).__name__}: {exc}")
    if roles is None:
        return SelfFenceLiftDone(False, "the server is in recovery: nothing to lift")
    said.append(f"read-only reset; LOGIN given back to: {', '.join(roles) or 'none'}")
    return SelfFenceLiftDone(True, "; ".join(said))


async def _still_leader(leases: LeaseSource, epoch: int) -> None:
    lease = await leases.verified_lease()
    if lease is None or lease.epoch != epoch:
        raise StaleEpoch(f"not the lock holder under epoch {epoch} any more")


async def _fence_again(config: WatchdogConfig, region: str) -> None:
    try:
        result = await fence_server(
            config.regions[region].database.connect_dsn(), epoch=None,
            io_timeout=config.probe.timeout, flog=log, control=server_control(config, region),
            primary_conninfo=primary_conninfo_for(config, other_region(config, region)))
    except PromotionRefused as exc:
        log.critical("self_fence_lift_rollback_failed", region=region, reason=exc.reason)
        return
    log.warning("self_fence_lift_rolled_back", region=region, fenced=result.fenced,
                detail=result.detail)


class SelfFenceLifter:
    """Runs the fact reads and the lift beside the engine loop, one task at a time."""

    def __init__(self, clock: Callable[[], float], post: Callable[[Event], object]) -> None:
        self._clock = clock
        self._post = post
        self.held: HeldServers = dict  # the supervisor wires PeerPoller.held_servers
        self._task: asyncio.Task[None] | None = None
        self._next_read = 0.0

    def read_due(self, config: WatchdogConfig, file_primary: str) -> None:
        """Read the facts again if a probe interval passed and nothing runs."""
        if self._busy() or self._clock() < self._next_read:
            return
        self._next_read = self._clock() + config.probe.interval
        self._spawn(gather_facts(config, file_primary, self.held), "self_fence_facts_failed")

    def start_lift(self, config: WatchdogConfig, file_primary: str, command: LiftSelfFence,
                   leases: LeaseSource) -> None:
        async def run() -> SelfFenceLiftDone:
            done = await lift(config, file_primary, command, leases, self.held)
            values = dict(command.conditions)
            if done.lifted:
                log.critical("self_fence_lifted", epoch=command.epoch,
                             fence_epoch=command.fence_epoch, reason=command.reason,
                             conditions=values, detail=done.detail)
            else:
                log.error("self_fence_lift_refused", epoch=command.epoch,
                          conditions=values, reason=done.detail)
            return done
        if self._task is not None:
            self._task.cancel()  # a fact read: the lift reads them again itself
        self._spawn(run(), "self_fence_lift_failed",
                    on_error=lambda why: SelfFenceLiftDone(False, why))

    def _busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def _spawn(self, work: Coroutine[Any, Any, Event], failure: str,
               on_error: Callable[[str], Event] | None = None) -> None:
        async def guarded() -> None:
            try:
                event = await work
            except Exception as exc:  # said; a failed lift goes back to the core as refused
                log.exception(failure)
                if on_error is None:
                    return
                event = on_error(f"{type(exc).__name__}: {exc}")
            self._post(event)
        self._task = asyncio.create_task(guarded(), name="self-fence-lift")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
