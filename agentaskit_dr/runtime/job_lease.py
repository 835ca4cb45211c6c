"""Job leases and last-run records in the lock store (Redis), beside the leader lock.

Two keys per job under the lock's ``key_prefix``:

- ``{prefix}:job:{name}``: the lease, a random token (``SET NX PX``), renewed while the
  job runs and deleted at its end; it expires if its watchdog dies;
- ``{prefix}:job:{name}:last``: :class:`~agentaskit_dr.runtime.job_schedule.LastRun` as
  JSON, no TTL.

Claiming is one script: take the lease, and return the last-run record read under it,
so the caller decides again on what the other watchdog may have just written. Records
are written only by the lease's holder (or, after the lease expired, by nobody else).
Every call is bounded by the client's socket timeout; errors are ``LockUnavailable``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agentaskit_dr.ports import LockUnavailable
from agentaskit_dr.runtime.job_schedule import LastRun

# KEYS: lease, last. ARGV: token, ttl_ms.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('GET', KEYS[2])}
end
return {0, false}
"""

# KEYS: lease. ARGV: token, ttl_ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease, last. ARGV: token, record, release (1: delete the lease).
_RECORD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[2], ARGV[2])
  if holder and ARGV[3] == '1' then
    redis.call('DEL', KEYS[1])
  end
  return 1
end
return 0
"""

# KEYS: lease. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: last. ARGV: record.
_BASELINE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class JobLeases:
    """Leases and records of the backup jobs on the lock store's client."""

    def __init__(self, client: Redis, *, key_prefix: str, ttl: float) -> None:
        self.client = client
        self.prefix = key_prefix
        self.ttl = ttl
        self._ttl_ms = max(1, round(ttl * 1000))
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._record = client.register_script(_RECORD)
        self._release = client.register_script(_RELEASE)
        self._baseline = client.register_script(_BASELINE)

    def lease_key(self, name: str) -> str:
        return f"{self.prefix}:job:{name}"

    def last_key(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:last"

    async def read(self, names: Sequence[str]) -> dict[str, tuple[LastRun | None, bool]]:
        """Each job's last-run record and whether its lease is free, in one round trip."""
        if not names:
            return {}
        keys = [key for name in names for key in (self.last_key(name), self.lease_key(name))]
        values = await self._call(self.client.mget(keys))
        return {name: (LastRun.from_json(values[2 * i]), values[2 * i + 1] is None)
                for i, name in enumerate(names)}

    async def claim(self, name: str) -> tuple[str, LastRun | None] | None:
        """The lease (its token) and the record read under it; None if another holds it."""
        token = secrets.token_hex(16)
        won, last = await self._call(self._claim(
            keys=[self.lease_key(name), self.last_key(name)], args=[token, self._ttl_ms]))
        return (token, LastRun.from_json(last)) if won == 1 else None

    async def renew(self, name: str, token: str) -> bool:
        """Extend the lease by the TTL; False if it is no longer ours."""
        return bool(await self._call(self._renew(keys=[self.lease_key(name)],
                                                 args=[token, self._ttl_ms])))

    async def record(self, name: str, token: str, record: LastRun, *,
                     release: bool = False) -> bool:
        """Write the record while the lease is ours or nobody's (and release it); False
        when another watchdog holds the lease now."""
        return bool(await self._call(self._record(
            keys=[self.lease_key(name), self.last_key(name)],
            args=[token, record.to_json(), "1" if release else "0"])))

    async def release(self, name: str, token: str) -> bool:
        """Delete the lease if it is still ours."""
        return bool(await self._call(self._release(keys=[self.lease_key(name)],
                                                   args=[token])))

    async def baseline(self, name: str, record: LastRun) -> bool:
        """Write a first record unless one exists (another watchdog may have just)."""
        return bool(await self._call(self._baseline(keys=[self.last_key(name)],
                                                    args=[record.to_json()])))

    async def _call(self, pending: Any) -> Any:
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise LockUnavailable(f"lock store: {type(exc).__name__}: {exc}") from None
