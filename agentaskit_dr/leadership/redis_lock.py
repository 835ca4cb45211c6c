"""The leader lock with a fencing epoch, kept in Redis.

Three keys under ``key_prefix``:

- ``{prefix}:leader``: the holder's random token, with the lock TTL;
- ``{prefix}:epoch``: the fencing counter, INCRed once per successful acquisition, no TTL;
- ``{prefix}:leader:info``: a hash ``{holder, epoch, token}`` with the same TTL as the lock.

Each operation is one Lua script, so taking the lock and issuing the epoch, or checking
the token and extending it, happen atomically on the server.

Production note: the epoch must never go backwards, so the Redis that holds the lock should
have AOF persistence (``appendonly yes``). A Redis restarted without persistence starts the
counter again at 1; ``raise_epoch_floor`` lets the new holder lift its epoch above every
epoch the targets recorded (the keeper reads them at each acquisition), so the system does
not wedge on actuators refusing a lower epoch.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urlsplit

import structlog
from redis.asyncio import Redis

from agentaskit_dr.leadership._store import StoreCalls, display_address, fail_fast_client
from agentaskit_dr.ports import Lease, LockUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

# KEYS: leader, epoch, info. ARGV: token, ttl_ms, holder.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[3], 'holder', ARGV[3], 'epoch', epoch, 'token', ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  return epoch
end
return false
"""

# KEYS: leader, info. ARGV: token, ttl_ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS: leader, info. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""

# KEYS: leader, epoch, info. ARGV: token, floor, ttl_ms.
_RAISE_FLOOR = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
local epoch = math.max(counter, tonumber(ARGV[2])) + 1
redis.call('SET', KEYS[2], epoch)
redis.call('HSET', KEYS[3], 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return epoch
"""

# KEYS: leader, info.
_CURRENT = """
local token = redis.call('GET', KEYS[1])
if not token then
  return false
end
local info = redis.call('HMGET', KEYS[2], 'holder', 'epoch', 'token')
if info[3] ~= token then
  return redis.error_reply('leader key and its info hash disagree')
end
return {info[1], info[2]}
"""


def default_margin(ttl: float) -> float:
    """``max(ttl * 0.2, 1 s)``, but at most ``ttl / 3``.

    The cap keeps at least two thirds of the TTL usable: a keeper renewing every
    ``ttl / 3`` then survives one missed renewal without its lease lapsing.
    """
    return min(max(ttl * 0.2, 1.0), ttl / 3)


class RedisLeaderLock:
    """``LeaderLock`` on one Redis server (see ``agentaskit_dr.ports.LeaderLock``).

    Every call is bounded by ``socket_timeout`` as a whole (connect, script load and
    reply), with no retry inside redis-py: a dead or stopped Redis raises
    ``LockUnavailable`` within that bound. ``safe_until`` is the clock reading taken
    *before* the request was sent, plus ``ttl`` minus ``margin``.

    ``clock`` must be the same clock the lease's user compares ``safe_until`` with; by
    default it is the running loop's ``time``, read at call time.
    """

    def __init__(
        self,
        url: str,
        *,
        holder: str,
        ttl: float,
        margin: float | None = None,
        key_prefix: str = "agentaskit-dr",
        socket_timeout: float = 1.0,
        password: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lock ttl must be positive, got {ttl}")
        margin = default_margin(ttl) if margin is None else margin
        if not 0 <= margin < ttl:
            raise ValueError(f"lock margin must be in [0, ttl={ttl}), got {margin}")
        if socket_timeout <= 0:
            raise ValueError(f"lock socket_timeout must be positive, got {socket_timeout}")
        self.holder = holder
        self.ttl = ttl
        self.margin = margin
        self._ttl_ms = max(1, round(ttl * 1000))
        self._clock = clock
        self._where = display_address(url)
        self._calls = StoreCalls(self._where, socket_timeout, [password or "",
                                                               urlsplit(url).password or ""])
        self._leader_key = f"{key_prefix}:leader"
        self._epoch_key = f"{key_prefix}:epoch"
        self._info_key = f"{key_prefix}:leader:info"
        # The keeper owns retries, so the client must fail fast.
        self._redis: Redis = fail_fast_client(url, password=password,
                                              socket_timeout=socket_timeout)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._current = self._redis.register_script(_CURRENT)
        self._raise_floor = self._redis.register_script(_RAISE_FLOOR)

    async def acquire(self) -> Lease | None:
        """Take the lock if free: a lease with a new epoch, or None if someone holds it."""
        token = secrets.token_hex(16)
        sent = self._now()
        epoch = await self._call(
            "acquire",
            lambda: self._acquire(
                keys=[self._leader_key, self._epoch_key, self._info_key],
                args=[token, self._ttl_ms, self.holder],
            ),
        )
        if epoch is None:
            return None
        if not isinstance(epoch, int):
            raise LockUnavailable(f"lock store {self._where} answered acquire with {epoch!r}")
        return Lease(epoch=epoch, token=token, holder=self.holder, safe_until=self._safe(sent))

    async def renew(self, lease: Lease) -> Lease | None:
        """Extend ``lease`` by the TTL if the store still holds its token; None if not."""
        sent = self._now()
        extended = await self._call(
            "renew",
            lambda: self._renew(
                keys=[self._leader_key, self._info_key], args=[lease.token, self._ttl_ms]
            ),
        )
        if extended != 1:
            return None
        return replace(lease, safe_until=self._safe(sent))

    async def release(self, lease: Lease) -> bool:
        """Delete the lock if it still holds our token; True when it did. Never raises."""
        try:
            released = await self._call(
                "release",
                lambda: self._release(keys=[self._leader_key, self._info_key], args=[lease.token]),
            )
        except LockUnavailable as exc:
            log.warning(
                "lock_release_failed", epoch=lease.epoch, holder=lease.holder, error=str(exc)
            )
            return False
        if released != 1:
            log.info("lock_release_not_ours", epoch=lease.epoch, holder=lease.holder)
            return False
        return True

    async def raise_epoch_floor(self, lease: Lease, floor: int) -> Lease | None:
        """While ``lease`` holds the lock: epoch := max(counter, ``floor``) + 1 and the TTL
        renewed, in one script; the lease under the new epoch, or None if not ours."""
        if floor < 0:
            raise ValueError(f"epoch floor must not be negative, got {floor}")
        sent = self._now()
        epoch = await self._call(
            "raise_epoch_floor",
            lambda: self._raise_floor(
                keys=[self._leader_key, self._epoch_key, self._info_key],
                args=[lease.token, floor, self._ttl_ms],
            ),
        )
        if epoch is None:
            return None
        if not isinstance(epoch, int):
            raise LockUnavailable(
                f"lock store {self._where} answered raise_epoch_floor with {epoch!r}")
        return replace(lease, epoch=epoch, safe_until=self._safe(sent))

    async def current(self) -> tuple[str, int] | None:
        """``(holder, epoch)`` of whoever holds the lock now; None if it is free."""
        found = await self._call(
            "current", lambda: self._current(keys=[self._leader_key, self._info_key])
        )
        if found is None:
            return None
        try:
            holder, epoch = found
            return str(holder), int(epoch)
        except (TypeError, ValueError) as exc:
            raise LockUnavailable(
                f"lock store {self._where} answered current with {found!r}"
            ) from exc

    async def verify(self, lease: Lease) -> bool:
        """True while the store still holds ``lease``'s token.

        Raises LockUnavailable when the store cannot say: the caller must not act then.
        """
        stored = await self._call("verify", lambda: self._redis.get(self._leader_key))
        return bool(stored == lease.token)

    @property
    def client(self) -> Redis:
        """The fail-fast client, for the journal kept next to the lock (same store)."""
        return self._redis

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _safe(self, sent: float) -> float:
        return sent + self.ttl - self.margin

    async def _call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """Run one request within the socket timeout; every store failure is LockUnavailable."""
        return await self._calls.call(what, request)
