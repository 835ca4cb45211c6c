"""The task that campaigns for the leader lock and keeps it (safety invariant 4).

Not held: try to acquire every ``ttl / 3``. Held: renew every ``ttl / 3``. A lease is
usable only until its ``safe_until``; a timer drops it at that moment even if the renew
call is stuck, so a watchdog that cannot renew stops acting at TTL minus the margin.
While the lock store is unreachable the keeper retries with capped exponential backoff,
forever, and says so in the log.

Epoch floor: on each acquisition (and when an actuator reported a stale epoch) the keeper
reads the highest epoch the targets recorded and, if the lock's counter is not above it,
raises it (``LeaderLock.raise_epoch_floor``) before anyone hears of the lease: a lock
store that lost its counter never leaves the holder refused by its own targets.

Cluster pause: while the cluster is paused the keeper holds no lock and does not
campaign, so operators' step-by-step commands can take it; it campaigns again on resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import AsyncRetrying

from agentaskit_dr.ports import LeaderLock, Lease, LockUnavailable
from agentaskit_dr.retry import RetryCallState, last_error, retry_policy

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Called with the lease when we start holding the lock, and with ``(None, holder_text)``
#: when we stop, or when we learn who holds it instead (``holder_text`` None: unknown).
LeadershipListener = Callable[[Lease | None, str | None], None]

#: Upper bound on the release at shutdown, so a dead store cannot hold up a stop.
RELEASE_TIMEOUT = 2.0

#: The highest epoch recorded by any target (``runtime.epoch_floor``); bounded by its sources.
EpochFloor = Callable[[], Awaitable[int]]

#: What the keeper says of the lock while the cluster is paused and it stands aside.
PAUSED_HOLDER = "nobody: the cluster is paused (the lock is left to operators)"


class LeadershipKeeper:
    """Holds the leader lock while it can, and tells ``on_change`` when that changes.

    ``clock`` must be the clock the lock computes ``safe_until`` with (by default both
    use the running loop's ``time``).
    """

    def __init__(
        self,
        lock: LeaderLock,
        *,
        ttl: float,
        on_change: LeadershipListener | None = None,
        clock: Callable[[], float] | None = None,
        epoch_floor: EpochFloor | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lock ttl must be positive, got {ttl}")
        self._lock = lock
        self._interval = ttl / 3
        # Public so the composer can wire it after construction (the engine that listens
        # needs an executor that needs this keeper); set it before run().
        self.on_change: LeadershipListener = on_change or (lambda _lease, _holder: None)
        self._clock = clock
        # The last lease the store granted us; it may be past safe_until (then the
        # `lease` property hides it) and is still renewed: if our token is still in the
        # store, nobody else can have taken the lock, so extending it is safe.
        self._lease: Lease | None = None
        self._expiry: asyncio.TimerHandle | None = None
        # What on_change last heard: (token we hold, or None; holder text when not ours).
        self._published: tuple[str | None, int | None, str | None] | None = None
        self._last_epoch: int | None = None
        self._epoch_floor = epoch_floor
        self._floor_wanted = False
        self._paused = False
        self._wake = asyncio.Event()

    @property
    def paused(self) -> bool:
        return self._paused

    def set_paused(self, paused: bool) -> None:
        """The cluster's pause: stand aside (release, stop campaigning) or campaign again."""
        if paused == self._paused:
            return
        self._paused = paused
        log.warning("leadership_paused" if paused else "leadership_resumed",
                    holder=self._lock.holder)
        self._wake.set()

    def request_epoch_floor(self) -> None:
        """An actuator refused our epoch as stale: raise the floor at the next tick."""
        self._floor_wanted = True
        self._wake.set()

    @property
    def lease(self) -> Lease | None:
        """The lease, only while the clock is before its ``safe_until``."""
        lease = self._lease
        if lease is None or self._now() >= lease.safe_until:
            return None
        return lease

    async def verified_lease(self) -> Lease | None:
        """The lease, if it is still safe locally *and* the store confirms it is ours.

        The check before each actuation; None when the store cannot say.
        """
        lease = self.lease
        if lease is None:
            return None
        try:
            ours = await self._bounded(self._lock.verify(lease))
        except LockUnavailable as exc:
            log.warning("lock_verify_failed", epoch=lease.epoch, error=str(exc))
            return None
        if not ours:
            self._forget(lease.token, reason="the store no longer holds our token (verify)")
            self._publish(None, None)
            return None
        now_held = self.lease
        return now_held if now_held is not None and now_held.token == lease.token else None

    async def run(self) -> None:
        """Campaign and keep the lock until cancelled; then release it, best effort."""
        log.info("leadership_campaign_started", holder=self._lock.holder, every=self._interval)
        try:
            while True:
                # Cleared before acting: a pause or floor request that arrives during this
                # round cuts the next sleep short instead of being lost.
                self._wake.clear()
                if self._paused:
                    await self._stand_aside()
                else:
                    async for attempt in self._retrying():
                        with attempt:
                            await self._step()
                await self._pause_for_interval()
        finally:
            self._cancel_expiry()
            await self._release()

    def _retrying(self) -> AsyncRetrying:
        # Waits from interval/8, doubling up to the interval itself, for as long as it takes.
        return retry_policy(LockUnavailable, attempts=None, backoff=self._interval / 8,
                            on_retry=self._log_unreachable)

    async def _pause_for_interval(self) -> None:
        """Sleep one interval, or less when a pause, resume or floor request arrives."""
        try:
            async with asyncio.timeout(self._interval):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _stand_aside(self) -> None:
        """Paused: give the lock up (if ours) and publish that nobody of ours holds it."""
        if self._lease is not None:
            await self._release(PAUSED_HOLDER)
        self._publish(None, PAUSED_HOLDER)

    async def _step(self) -> None:
        if self._paused:
            return
        lease = self._lease
        if lease is None:
            await self._campaign()
            return
        if self._floor_wanted:
            self._floor_wanted = False
            raised = await self._raise_floor(lease, always=True)
            if raised is not None:
                raised = await self._lasting(raised)
            if raised is None:
                self._forget(lease.token, reason="the store no longer holds our token (floor)")
                self._publish(None, None)
                return
            self._hold(raised)
            return
        renewed = await self._bounded(self._lock.renew(lease))
        if renewed is None:
            self._forget(lease.token, reason="the store no longer holds our token (renew)")
            self._publish(None, None)
            return
        was_held = self._holds(lease.token)
        self._hold(renewed)
        if not was_held:
            log.warning("lock_regained", epoch=renewed.epoch, holder=renewed.holder)

    async def _campaign(self) -> None:
        try:
            lease = await self._bounded(self._lock.acquire())
        except LockUnavailable:
            # Whoever held the lock when we last asked may be long gone: say "unknown"
            # rather than keep naming them in every verdict while the store is down.
            self._publish(None, None)
            raise
        if lease is None:
            self._publish(None, await self._who_holds())
            return
        self._floor_wanted = False
        raised = await self._raise_floor(lease, always=False)
        if raised is not None:
            raised = await self._lasting(raised)
        if raised is None:
            log.warning("lock_lost", reason="taken from us while reading the epoch floor",
                        epoch=lease.epoch, holder=lease.holder)
            return
        lease = raised
        if self._last_epoch is not None and lease.epoch <= self._last_epoch:
            log.warning(
                "lock_epoch_went_backwards",
                epoch=lease.epoch,
                previous=self._last_epoch,
                hint="the lock store lost its counter (no AOF persistence?); "
                "actuators that recorded a higher epoch will refuse this one",
            )
        self._last_epoch = lease.epoch
        log.info("lock_acquired", epoch=lease.epoch, holder=lease.holder)
        self._hold(lease)

    async def _raise_floor(self, lease: Lease, *, always: bool) -> Lease | None:
        """``lease``, lifted above every epoch the targets recorded; None if no longer ours.

        A floor that cannot be read in time is logged and skipped: it never blocks
        leadership (a target then refusing our epoch as stale asks for the floor again).
        """
        if self._epoch_floor is None:
            return lease
        try:
            async with asyncio.timeout(self._interval):
                floor = await self._epoch_floor()
        except TimeoutError:
            log.warning("epoch_floor_unread", epoch=lease.epoch,
                        reason=f"the epoch sources gave no answer within {self._interval:g}s")
            return lease
        if floor < lease.epoch and not always:
            return lease
        raised = await self._bounded(self._lock.raise_epoch_floor(lease, floor))
        if raised is not None:
            log.warning("epoch_floor_raised", floor=floor, old_epoch=lease.epoch,
                        epoch=raised.epoch, holder=lease.holder)
        return raised

    async def _lasting(self, lease: Lease) -> Lease | None:
        """``lease``, renewed at once if it would lapse before the next round renews it
        (one interval away, and bounded by another); None if the store no longer holds it.

        The epoch floor is read after the lease was granted (or instead of this round's
        renewal): a slow read (the first one imports the targets' clients, a loaded host)
        can spend most of the lease, and holding it as it is dropped it before the next
        renewal: lost, regained a round later, and an actuation refused in between."""
        if lease.safe_until - self._now() >= 2 * self._interval:
            return lease
        return await self._bounded(self._lock.renew(lease))

    async def _who_holds(self) -> str | None:
        try:
            found = await self._bounded(self._lock.current())
        except LockUnavailable:
            return None
        if found is None:
            return None
        holder, epoch = found
        return f"{holder} (epoch {epoch})"

    def _hold(self, lease: Lease) -> None:
        self._lease = lease
        self._cancel_expiry()
        delay = max(0.0, lease.safe_until - self._now())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire, lease)
        self._publish(lease, None)

    def _expire(self, lease: Lease) -> None:
        remaining = lease.safe_until - self._now()
        if remaining > 0:
            # The loop's timer and our clock may differ by float slop (or be different
            # clocks altogether): wait for our clock, which is what `lease` compares with.
            self._expiry = asyncio.get_running_loop().call_later(remaining, self._expire, lease)
            return
        self._expiry = None
        log.warning(
            "lock_lost",
            reason="not renewed before safe_until",
            epoch=lease.epoch,
            holder=lease.holder,
        )
        self._publish(None, None)

    def _forget(self, token: str, *, reason: str) -> None:
        """Drop the lease with ``token`` (a later renewal of it may have replaced ours)."""
        if self._lease is None or self._lease.token != token:
            return
        lease, self._lease = self._lease, None
        self._cancel_expiry()
        if self._holds(token):
            log.warning("lock_lost", reason=reason, epoch=lease.epoch, holder=lease.holder)

    async def _release(self, holder_text: str | None = None) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            async with asyncio.timeout(min(RELEASE_TIMEOUT, self._interval)):
                released = await self._lock.release(lease)
        except TimeoutError:
            log.warning("lock_release_timed_out", epoch=lease.epoch, holder=lease.holder)
        else:
            # Otherwise the lock already said why (lock_release_failed / _not_ours).
            if released:
                log.info("lock_released", epoch=lease.epoch, holder=lease.holder)
        self._publish(None, holder_text)

    def _holds(self, token: str) -> bool:
        """Whether on_change was last told that we hold the lease with ``token``."""
        return self._published is not None and self._published[0] == token

    def _publish(self, lease: Lease | None, holder_text: str | None) -> None:
        state = ((lease.token, lease.epoch, None) if lease is not None
                 else (None, None, holder_text))
        if state == self._published:
            return
        self._published = state
        if lease is None and holder_text is not None:
            log.info("lock_held_elsewhere", holder=holder_text)
        self.on_change(lease, holder_text)

    async def _bounded(self, request: Awaitable[T]) -> T:
        """Backstop for a lock call that overruns its own bound: treat it as unreachable."""
        try:
            async with asyncio.timeout(self._interval):
                return await request
        except TimeoutError as exc:
            raise LockUnavailable(f"lock store gave no answer within {self._interval:g}s") from exc

    def _log_unreachable(self, state: RetryCallState) -> None:
        log.warning(
            "lock_store_unreachable",
            error=str(last_error(state)),
            attempt=state.attempt_number,
            retry_in=state.next_action.sleep if state.next_action is not None else None,
            holding=self.lease is not None,
        )

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()
