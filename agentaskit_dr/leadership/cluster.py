"""The cluster record, kept in the lock store next to the leader lock and the journal.

One hash, ``{prefix}:cluster``:

- the operators' controls: ``paused`` ("1"/"0"), ``pause_reason``, ``paused_by``,
  ``paused_at``; ``ack_generation`` (incremented by each acknowledgement), ``acked_by``,
  ``acked_at``;
- the current primary: ``primary_region``, ``primary_epoch``, ``primary_run_id``,
  ``primary_at``, written by the failover run right after its promotion.

Controls belong to the cluster, not to one daemon (like Patroni's maintenance mode): every
watchdog reads them each cycle, and a watchdog started while the cluster is paused starts
paused. The hash has no TTL: it must outlive every process. Each write is one Lua script;
the primary's is fenced by the writer's lease like the journal's writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from agentaskit_dr.leadership._store import StoreCalls, display_address, fail_fast_client
from agentaskit_dr.ports import (
    ClusterControls,
    ClusterPrimary,
    ClusterRecord,
    Lease,
    LockUnavailable,
    StaleEpoch,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Longest pause reason or operator name kept (the API caps reasons at 1000 characters).
MAX_TEXT = 1000

# KEYS: cluster. ARGV: reason, by, at. A second pause keeps the first one's time.
_PAUSE = """
if redis.call('HGET', KEYS[1], 'paused') ~= '1' then
  redis.call('HSET', KEYS[1], 'paused_at', ARGV[3])
end
redis.call('HSET', KEYS[1], 'paused', '1', 'pause_reason', ARGV[1], 'paused_by', ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: cluster. ARGV: by, at.
_RESUME = """
redis.call('HSET', KEYS[1], 'paused', '0', 'resumed_by', ARGV[1], 'resumed_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'pause_reason', 'paused_by', 'paused_at')
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: cluster. ARGV: by, at.
_ACKNOWLEDGE = """
redis.call('HINCRBY', KEYS[1], 'ack_generation', 1)
redis.call('HSET', KEYS[1], 'acked_by', ARGV[1], 'acked_at', ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: leader, info, cluster. ARGV: token, epoch, region, run_id, at.
_RECORD_PRIMARY = """
local held_by = redis.call('GET', KEYS[1])
local info = redis.call('HMGET', KEYS[2], 'holder', 'epoch')
if held_by ~= ARGV[1] or info[2] ~= ARGV[2] then
  return redis.error_reply('STALE_EPOCH the lock is no longer held under epoch ' .. ARGV[2])
end
local recorded = tonumber(redis.call('HGET', KEYS[3], 'primary_epoch'))
if recorded and recorded > tonumber(ARGV[2]) then
  return redis.error_reply('STALE_EPOCH the primary was recorded under epoch ' .. recorded)
end
redis.call('HSET', KEYS[3], 'primary_region', ARGV[3], 'primary_epoch', ARGV[2],
           'primary_run_id', ARGV[4], 'primary_at', ARGV[5])
return 1
"""


class RedisClusterStore:
    """``ClusterStore`` on the Redis that holds the leader lock (see ``agentaskit_dr.ports``).

    Every call is bounded by ``socket_timeout`` as a whole, with no retry inside redis-py;
    a failure is ``LockUnavailable``. Pass the lock's ``client`` to share its connections.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "agentaskit-dr",
        socket_timeout: float = 1.0,
        password: str | None = None,
        client: Redis | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if socket_timeout <= 0:
            raise ValueError(f"cluster store socket_timeout must be positive, got {socket_timeout}")
        self._owns_client = client is None
        if client is None:
            client = fail_fast_client(url, password=password, socket_timeout=socket_timeout)
        self._redis: Redis = client
        self._where = display_address(url)
        self._calls = StoreCalls(self._where, socket_timeout,
                                 [password or "", urlsplit(url).password or ""])
        self._wall_clock = wall_clock
        self._key = f"{key_prefix}:cluster"
        self._leader_key = f"{key_prefix}:leader"
        self._info_key = f"{key_prefix}:leader:info"
        self._pause = self._redis.register_script(_PAUSE)
        self._resume = self._redis.register_script(_RESUME)
        self._acknowledge = self._redis.register_script(_ACKNOWLEDGE)
        self._record_primary = self._redis.register_script(_RECORD_PRIMARY)

    async def read(self) -> ClusterRecord:
        """The record as stored; an empty one (not paused, no primary) if never written."""
        found = await self._calls.call("cluster read", lambda: self._redis.hgetall(self._key))
        return self._parse(dict(found))

    async def read_with(self, key: str) -> tuple[Any, ClusterRecord]:
        """The value at ``key`` of the same store (the journal's active run) and the record,
        in one round trip: what every watchdog follows each probe interval."""

        async def both() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.hgetall(self._key)
                return await pipe.execute()

        value, found = await self._calls.call("cluster read", both)
        return value, self._parse(dict(found))

    async def pause(self, *, reason: str, by: str) -> ClusterRecord:
        """Pause the whole cluster; a second pause keeps the first one's time."""
        reply = await self._calls.call("cluster pause", lambda: self._pause(
            keys=[self._key], args=[_text(reason), _text(by), repr(self._wall_clock())]))
        record = self._parse(_pairs(reply))
        log.warning("cluster_paused", reason=reason, by=by)
        return record

    async def resume(self, *, by: str) -> ClusterRecord:
        reply = await self._calls.call("cluster resume", lambda: self._resume(
            keys=[self._key], args=[_text(by), repr(self._wall_clock())]))
        record = self._parse(_pairs(reply))
        log.warning("cluster_resumed", by=by)
        return record

    async def acknowledge(self, *, by: str) -> ClusterRecord:
        """A new acknowledgement generation: every watchdog applies it once."""
        reply = await self._calls.call("cluster acknowledge", lambda: self._acknowledge(
            keys=[self._key], args=[_text(by), repr(self._wall_clock())]))
        record = self._parse(_pairs(reply))
        log.warning("cluster_acknowledged", by=by,
                    generation=record.controls.ack_generation)
        return record

    async def record_primary(self, region: str, *, epoch: int, run_id: str,
                             lease: Lease) -> None:
        """Record ``region`` as the cluster's primary, made so by ``run_id`` under ``epoch``.

        Fenced: only while ``lease`` holds the lock under ``epoch`` (else ``StaleEpoch``),
        and never over a record of a newer epoch. Writing the same record again is harmless.
        """
        if epoch != lease.epoch:
            raise ValueError(f"primary recorded under epoch {epoch} with a lease of epoch "
                             f"{lease.epoch}")
        try:
            await self._calls.call("cluster record_primary", lambda: self._record_primary(
                keys=[self._leader_key, self._info_key, self._key],
                args=[lease.token, epoch, region, run_id, repr(self._wall_clock())],
            ), (ResponseError,))
        except ResponseError as exc:
            code, _, detail = str(exc).partition(" ")
            if code != "STALE_EPOCH":
                raise LockUnavailable(self._calls.scrub(
                    f"lock store {self._where} failed on cluster record_primary: {exc}")) from exc
            log.warning("cluster_primary_refused", region=region, epoch=epoch, reason=detail)
            raise StaleEpoch(f"recording {region} as primary under epoch {epoch} refused: "
                             f"{detail}") from None
        log.warning("cluster_primary_recorded", region=region, epoch=epoch, run_id=run_id)

    async def close(self) -> None:
        """Close the connection pool, if this store created it."""
        if self._owns_client:
            await self._redis.aclose()

    def _parse(self, raw: dict[Any, Any]) -> ClusterRecord:
        """The hash as a record; a field this code would not write is ``LockUnavailable``."""
        fields = {_decoded(key): _decoded(value) for key, value in raw.items()}
        where = f"cluster record {self._key} on {self._where}"
        try:
            controls = ClusterControls(
                paused=fields.get("paused") == "1",
                pause_reason=fields.get("pause_reason", ""),
                paused_by=fields.get("paused_by", ""),
                paused_at=_optional(float, fields.get("paused_at")),
                ack_generation=int(fields.get("ack_generation", "0")),
                acked_by=fields.get("acked_by", ""),
                acked_at=_optional(float, fields.get("acked_at")),
            )
            primary = None
            if "primary_region" in fields:
                primary = ClusterPrimary(
                    region=fields["primary_region"],
                    epoch=int(fields["primary_epoch"]),
                    run_id=fields.get("primary_run_id", ""),
                    at=float(fields.get("primary_at", "0")),
                )
        except (KeyError, ValueError) as exc:
            raise LockUnavailable(f"{where} is invalid: {type(exc).__name__}: {exc}") from None
        return ClusterRecord(controls=controls, primary=primary)


def _pairs(reply: Sequence[Any]) -> dict[Any, Any]:
    """A flat HGETALL reply from a script as a mapping."""
    items = list(reply)
    return dict(zip(items[0::2], items[1::2], strict=True))


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text(value: str) -> str:
    return value[:MAX_TEXT]


def _optional(kind: Callable[[str], T], value: str | None) -> T | None:
    return None if value is None else kind(value)
