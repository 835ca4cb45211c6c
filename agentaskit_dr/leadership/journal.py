"""The crash-safe run journal, kept in the lock store next to the leader lock.

Keys under the lock's ``key_prefix``:

- ``{prefix}:run:{run_id}``: a hash: ``header`` (JSON: kind, plan, created_at,
  created_epoch, reason, meta), ``finished`` once closed, and ``last_epoch``, the newest
  epoch that wrote to the run;
- ``{prefix}:run:{run_id}:entries``: a list of JSON entries, oldest first;
- ``{prefix}:runs``: a sorted set of run ids scored by ``created_at``;
- ``{prefix}:active``: the id of the run opened and not yet finished.

Every write is one Lua script that first checks that the writer's lease still holds the
lock (``{prefix}:leader`` is its token and ``{prefix}:leader:info`` carries its epoch),
so the fence check and the write are atomic on the server. The journal keys have no TTL:
they must outlive the lease of the watchdog that wrote them, for a successor to resume.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from agentaskit_dr.leadership._store import StoreCalls, display_address, fail_fast_client
from agentaskit_dr.ports import (
    JournalEntry,
    Lease,
    LockUnavailable,
    RunJournal,
    StaleEpoch,
    StepStatus,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# A colon would let one run's keys collide with another's (run "x:entries").
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_OUTCOMES = ("done", "failed")

# Prepended to every write. KEYS[1] leader, KEYS[2] info; ARGV[1] token, ARGV[2] epoch.
_FENCE = """
local held_by = redis.call('GET', KEYS[1])
local info = redis.call('HMGET', KEYS[2], 'holder', 'epoch')
if held_by ~= ARGV[1] or info[2] ~= ARGV[2] then
  if not held_by then
    return redis.error_reply('STALE_EPOCH the lock is free')
  end
  return redis.error_reply('STALE_EPOCH the lock is held by ' .. tostring(info[1])
    .. ' under epoch ' .. tostring(info[2]))
end
"""

# Refuses a writer older than one that already wrote the run (KEYS[3] run, ARGV[2] epoch).
_NOT_OLDER = """
local last_epoch = tonumber(redis.call('HGET', KEYS[3], 'last_epoch'))
if last_epoch and last_epoch > tonumber(ARGV[2]) then
  return redis.error_reply('STALE_EPOCH the run was already written under epoch ' .. last_epoch)
end
"""

# KEYS: leader, info, run, runs, active. ARGV: token, epoch, run_id, header, created_at.
_OPEN = _FENCE + """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local active = redis.call('GET', KEYS[5])
if active and active ~= ARGV[3] then
  return redis.error_reply('ACTIVE_RUN ' .. active)
end
redis.call('HSET', KEYS[3], 'header', ARGV[4], 'last_epoch', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3])
redis.call('SET', KEYS[5], ARGV[3])
return 1
"""

# KEYS: leader, info, run, entries. ARGV: token, epoch, entry.
_RECORD = _FENCE + """
if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NO_RUN')
end
local finished = redis.call('HGET', KEYS[3], 'finished')
if finished then
  return redis.error_reply('RUN_FINISHED ' .. finished)
end
""" + _NOT_OLDER + """
redis.call('RPUSH', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[3], 'last_epoch', ARGV[2])
return 1
"""

# KEYS: leader, info, run, active. ARGV: token, epoch, run_id, outcome.
_FINISH = _FENCE + """
if redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('NO_RUN')
end
local finished = redis.call('HGET', KEYS[3], 'finished')
if finished and finished ~= ARGV[4] then
  return redis.error_reply('RUN_FINISHED ' .. finished)
end
""" + _NOT_OLDER + """
if not finished then
  redis.call('HSET', KEYS[3], 'finished', ARGV[4], 'last_epoch', ARGV[2])
end
if redis.call('GET', KEYS[4]) == ARGV[3] then
  redis.call('DEL', KEYS[4])
end
return 1
"""


class JournalRefused(Exception):
    """The store refused a write for a reason other than the fence (unknown or closed run)."""


class ActiveRunExists(JournalRefused):
    """Another run is open and unfinished: resume or finish it before opening a new one."""

    def __init__(self, message: str, active_run_id: str) -> None:
        super().__init__(message)
        self.active_run_id = active_run_id


class JournalCorrupt(LockUnavailable):
    """The store holds a journal record that is not what this code writes.

    A ``LockUnavailable``: the store answered wrongly, so nothing may be resumed or
    actuated on that basis, and every caller already stops and reports on it.
    """


class RedisJournal:
    """``Journal`` on the Redis that holds the leader lock (see ``agentaskit_dr.ports``).

    Each call is bounded by ``socket_timeout`` as a whole, with no retry inside redis-py:
    a dead or stopped Redis raises ``LockUnavailable`` within that bound. ``created_at``
    of a run is read from ``wall_clock`` (Unix seconds: journals outlive processes).
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
        """Open a client for ``url``, or use ``client`` (one built like the lock's, for the
        same ``url``); ``close`` closes only a client the journal opened itself."""
        if socket_timeout <= 0:
            raise ValueError(f"journal socket_timeout must be positive, got {socket_timeout}")
        self._owns_client = client is None
        if client is None:
            client = fail_fast_client(url, password=password, socket_timeout=socket_timeout)
        self._redis: Redis = client
        self._where = display_address(url)
        self._calls = StoreCalls(self._where, socket_timeout,
                                 [password or "", urlsplit(url).password or ""])
        self._prefix = key_prefix
        self._wall_clock = wall_clock
        self._leader_key = f"{key_prefix}:leader"
        self._info_key = f"{key_prefix}:leader:info"
        self._runs_key = f"{key_prefix}:runs"
        self._active_key = f"{key_prefix}:active"
        self._open = self._redis.register_script(_OPEN)
        self._record = self._redis.register_script(_RECORD)
        self._finish = self._redis.register_script(_FINISH)

    async def open(
        self,
        run_id: str,
        *,
        lease: Lease,
        kind: str,
        plan: Sequence[str],
        reason: str,
        meta: Mapping[str, Any] | None = None,
    ) -> RunJournal:
        """Create the run and mark it active; return an existing run with this id unchanged.

        Raises ``ActiveRunExists`` when another run is active, ``StaleEpoch`` when the
        lease no longer holds the lock, ``LockUnavailable`` when the store is unreachable.
        """
        _check_run_id(run_id)
        if not kind.strip():
            raise ValueError("journal run kind must not be blank")
        steps = tuple(plan)
        if isinstance(plan, str) or not all(isinstance(s, str) and s.strip() for s in steps):
            raise ValueError(f"journal plan steps must be non-blank strings, got {list(plan)!r}")
        created_at = self._wall_clock()
        header = _to_json(
            {
                "kind": kind, "plan": steps, "created_at": created_at,
                "created_epoch": lease.epoch, "reason": reason, "meta": dict(meta or {}),
            },
            f"header of run {run_id}",
        )
        created = await self._write(
            "open", run_id, lease, self._open,
            keys=[self._run_key(run_id), self._runs_key, self._active_key],
            args=[run_id, header, repr(created_at)],
        )
        run = await self.get(run_id)
        if run is None:
            raise JournalCorrupt(
                f"journal run {self._run_key(run_id)} vanished from {self._where} right after open"
            )
        log.info(
            "journal_run_opened" if created == 1 else "journal_run_exists",
            run_id=run_id, epoch=lease.epoch, kind=run.kind, reason=run.reason,
            entries=len(run.entries),
        )
        return run

    async def record(self, run_id: str, entry: JournalEntry, *, lease: Lease) -> None:
        """Append ``entry`` (written under ``lease``, so ``entry.epoch == lease.epoch``).

        A successor whose epoch is higher may append to a run created under a lower one;
        a writer older than the run's newest writer gets ``StaleEpoch``.
        """
        _check_run_id(run_id)
        if entry.epoch != lease.epoch:
            raise ValueError(
                f"journal entry for step {entry.step!r} carries epoch {entry.epoch}, "
                f"but is written under lease epoch {lease.epoch}"
            )
        payload = _to_json(asdict(entry), f"entry for step {entry.step!r} of run {run_id}")
        await self._write(
            "record", run_id, lease, self._record,
            keys=[self._run_key(run_id), self._entries_key(run_id)], args=[payload],
        )
        log.debug(
            "journal_step_recorded",
            run_id=run_id, step=entry.step, status=entry.status.value, epoch=lease.epoch,
        )

    async def finish(self, run_id: str, outcome: str, *, lease: Lease) -> None:
        """Close the run with ``outcome``; clear the active mark if it names this run.

        Finishing again with the same outcome is harmless (a resumed run).
        """
        _check_run_id(run_id)
        if outcome not in _OUTCOMES:
            raise ValueError(f"journal outcome must be one of {_OUTCOMES}, got {outcome!r}")
        await self._write(
            "finish", run_id, lease, self._finish,
            keys=[self._run_key(run_id), self._active_key], args=[run_id, outcome],
        )
        log.info("journal_run_finished", run_id=run_id, epoch=lease.epoch, outcome=outcome)

    async def active(self) -> RunJournal | None:
        """The run opened and not finished, if any: what a successor resumes."""
        run_id = await self._call("active", lambda: self._redis.get(self._active_key))
        if run_id is None:
            return None
        run_id = _text(run_id)
        run = await self.get(run_id)
        if run is None:
            raise JournalCorrupt(
                f"journal key {self._active_key} on {self._where} names run {run_id!r}, "
                f"but {self._run_key(run_id)} does not exist"
            )
        return run

    async def get(self, run_id: str) -> RunJournal | None:
        """The run with its entries, oldest first; None if there is no such run."""
        _check_run_id(run_id)
        runs = await self._read([run_id])
        return runs[0]

    async def recent(self, limit: int = 20) -> list[RunJournal]:
        """Up to ``limit`` runs, newest first by ``created_at``."""
        if limit < 1:
            raise ValueError(f"journal recent limit must be at least 1, got {limit}")
        found = await self._call(
            "recent", lambda: self._redis.zrevrange(self._runs_key, 0, limit - 1)
        )
        run_ids = [_text(run_id) for run_id in found]
        runs = await self._read(run_ids)
        missing = [run_id for run_id, run in zip(run_ids, runs, strict=True) if run is None]
        if missing:
            raise JournalCorrupt(
                f"journal index {self._runs_key} on {self._where} lists runs with no header: "
                f"{', '.join(missing)}"
            )
        return [run for run in runs if run is not None]

    async def close(self) -> None:
        """Close the connection pool, if this journal created it."""
        if self._owns_client:
            await self._redis.aclose()

    def _run_key(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}"

    def _entries_key(self, run_id: str) -> str:
        return f"{self._run_key(run_id)}:entries"

    async def _read(self, run_ids: list[str]) -> list[RunJournal | None]:
        """Headers and entries of ``run_ids`` in one transaction: a consistent snapshot."""
        if not run_ids:
            return []

        async def snapshot() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                for run_id in run_ids:
                    pipe.hgetall(self._run_key(run_id))
                    pipe.lrange(self._entries_key(run_id), 0, -1)
                return await pipe.execute()

        replies = await self._call("read", snapshot)
        return [
            self._parse_run(run_id, replies[2 * i], replies[2 * i + 1])
            for i, run_id in enumerate(run_ids)
        ]

    def _parse_run(
        self, run_id: str, header: Mapping[Any, Any], raw_entries: Sequence[Any]
    ) -> RunJournal | None:
        if not header:
            return None
        entries_key = self._entries_key(run_id)
        entries = []
        for index, raw in enumerate(raw_entries):
            where = f"journal entry {index} of {entries_key} on {self._where}"
            entries.append(JournalEntry(**_validated(_StoredEntry, _text(raw), where).model_dump()))
        fields = {_text(name): _text(value) for name, value in header.items()}
        where = f"journal run {self._run_key(run_id)} on {self._where}"
        finished = fields.get("finished")
        if finished not in (None, *_OUTCOMES):
            raise JournalCorrupt(f"{where} is invalid: finished is {finished!r}")
        if "header" not in fields:
            raise JournalCorrupt(f"{where} has no field 'header'")
        stored = _validated(_StoredHeader, fields["header"], where)
        return RunJournal(
            run_id=run_id, entries=tuple(entries), finished=finished, **stored.model_dump()
        )

    async def _write(
        self,
        what: str,
        run_id: str,
        lease: Lease,
        script: AsyncScript,
        *,
        keys: list[str],
        args: list[str],
    ) -> Any:
        """Run one fenced script; turn the script's refusals into exceptions."""
        try:
            return await self._call(
                what,
                lambda: script(
                    keys=[self._leader_key, self._info_key, *keys],
                    args=[lease.token, lease.epoch, *args],
                ),
                refusals=True,
            )
        except ResponseError as exc:
            code, _, detail = str(exc).partition(" ")
            where = f"journal {what} of run {run_id}"
            if code == "STALE_EPOCH":
                log.warning(
                    "journal_write_refused", run_id=run_id, epoch=lease.epoch,
                    holder=lease.holder, operation=what, reason=detail,
                )
                raise StaleEpoch(
                    f"{where} refused: lease epoch {lease.epoch} of {lease.holder} "
                    f"is stale; {detail}"
                ) from None
            if code == "ACTIVE_RUN":
                raise ActiveRunExists(
                    f"{where} refused: run {detail} is active and unfinished; "
                    f"resume or finish it first",
                    detail,
                ) from None
            if code == "NO_RUN":
                raise JournalRefused(f"{where} refused: no such run") from None
            if code == "RUN_FINISHED":
                raise JournalRefused(f"{where} refused: the run already finished as {detail}") \
                    from None
            raise LockUnavailable(
                self._scrub(f"lock store {self._where} failed on journal {what}: {exc}")
            ) from exc

    async def _call(
        self, what: str, request: Callable[[], Awaitable[T]], *, refusals: bool = False
    ) -> T:
        """One request within the socket timeout; store failures become LockUnavailable.

        With ``refusals``, a ``ResponseError`` (a script's own refusal) passes through.
        """
        return await self._calls.call(f"journal {what}", request,
                                      (ResponseError,) if refusals else ())

    def _scrub(self, message: str) -> str:
        return self._calls.scrub(message)

def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"journal run id {run_id!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _text(value: Any) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _to_json(value: object, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"journal {what} is not JSON-serialisable: {exc}") from exc


class _StoredEntry(BaseModel):
    """A ``JournalEntry`` as stored: JSON, checked field by field when read back."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    step: str = Field(min_length=1)
    status: StepStatus
    epoch: int = Field(ge=1)
    at: float
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class _StoredHeader(BaseModel):
    """A run's header as stored; ``finished`` lives in its own hash field."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    kind: str = Field(min_length=1)
    plan: tuple[str, ...]
    created_at: float
    created_epoch: int = Field(ge=1)
    reason: str
    meta: dict[str, Any]


def _validated(model: type[M], raw: str, where: str) -> M:
    """``raw`` JSON as ``model``; ``JournalCorrupt`` naming ``where`` and the bad fields."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['msg']}"
            for error in exc.errors()
        )
        raise JournalCorrupt(f"{where} is invalid: {problems}") from None
