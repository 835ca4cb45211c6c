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
The scripts are in ``_journal_scripts``, the stored records' schema in ``_journal_records``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from agentaskit_dr.leadership._journal_records import (
    OUTCOMES,
    JournalCorrupt,
    StoredEntry,
    StoredHeader,
    as_text,
    check_run_id,
    to_json,
    validated,
)
from agentaskit_dr.leadership._journal_scripts import FINISH, OPEN, RECORD
from agentaskit_dr.leadership._store import StoreCalls, display_address, fail_fast_client
from agentaskit_dr.ports import (
    JournalEntry,
    Lease,
    LockUnavailable,
    RunJournal,
    StaleEpoch,
)

__all__ = ["ActiveRunExists", "JournalCorrupt", "JournalRefused", "RedisJournal"]

log = structlog.get_logger(__name__)

T = TypeVar("T")




class JournalRefused(Exception):
    """The store refused a write for a reason other than the fence (unknown or closed run)."""


class ActiveRunExists(JournalRefused):
    """Another run is open and unfinished: resume or finish it before opening a new one."""

    def __init__(self, message: str, active_run_id: str) -> None:
        super().__init__(message)
        self.active_run_id = active_run_id


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
        self._open = self._redis.register_script(OPEN)
        self._record = self._redis.register_script(RECORD)
        self._finish = self._redis.register_script(FINISH)

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
        check_run_id(run_id)
        if not kind.strip():
            raise ValueError("journal run kind must not be blank")
        steps = tuple(plan)
        if isinstance(plan, str) or not all(isinstance(s, str) and s.strip() for s in steps):
            raise ValueError(f"journal plan steps must be non-blank strings, got {list(plan)!r}")
        created_at = self._wall_clock()
        header = to_json(
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
        check_run_id(run_id)
        if entry.epoch != lease.epoch:
            raise ValueError(
                f"journal entry for step {entry.step!r} carries epoch {entry.epoch}, "
                f"but is written under lease epoch {lease.epoch}"
            )
        payload = to_json(asdict(entry), f"entry for step {entry.step!r} of run {run_id}")
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
        check_run_id(run_id)
        if outcome not in OUTCOMES:
            raise ValueError(f"journal outcome must be one of {OUTCOMES}, got {outcome!r}")
        await self._write(
            "finish", run_id, lease, self._finish,
            keys=[self._run_key(run_id), self._active_key], args=[run_id, outcome],
        )
        log.info("journal_run_finished", run_id=run_id, epoch=lease.epoch, outcome=outcome)

    @property
    def active_key(self) -> str:
        """The key naming the active run (``RedisClusterStore.read_with`` reads it along)."""
        return self._active_key

    async def active(self) -> RunJournal | None:
        """The run opened and not finished, if any: what a successor resumes."""
        run_id = await self._call("active", lambda: self._redis.get(self._active_key))
        return await self.active_named(run_id)

    async def active_named(self, run_id: Any) -> RunJournal | None:
        """The active run, given the value of ``active_key`` read just before (None: none)."""
        if run_id is None:
            return None
        run_id = as_text(run_id)
        run = await self.get(run_id)
        if run is None:
            raise JournalCorrupt(
                f"journal key {self._active_key} on {self._where} names run {run_id!r}, "
                f"but {self._run_key(run_id)} does not exist"
            )
        return run

    async def get(self, run_id: str) -> RunJournal | None:
        """The run with its entries, oldest first; None if there is no such run."""
        check_run_id(run_id)
        runs = await self._read([run_id])
        return runs[0]

    async def recent(self, limit: int = 20) -> list[RunJournal]:
        """Up to ``limit`` runs, newest first by ``created_at``."""
        if limit < 1:
            raise ValueError(f"journal recent limit must be at least 1, got {limit}")
        found = await self._call(
            "recent", lambda: self._redis.zrevrange(self._runs_key, 0, limit - 1)
        )
        run_ids = [as_text(run_id) for run_id in found]
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
            entries.append(JournalEntry(**validated(StoredEntry, as_text(raw), where).model_dump()))
        fields = {as_text(name): as_text(value) for name, value in header.items()}
        where = f"journal run {self._run_key(run_id)} on {self._where}"
        finished = fields.get("finished")
        if finished not in (None, *OUTCOMES):
            raise JournalCorrupt(f"{where} is invalid: finished is {finished!r}")
        if "header" not in fields:
            raise JournalCorrupt(f"{where} has no field 'header'")
        stored = validated(StoredHeader, fields["header"], where)
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
                self._calls.scrub(f"lock store {self._where} failed on journal {what}: {exc}")
            ) from exc

    async def _call(
        self, what: str, request: Callable[[], Awaitable[T]], *, refusals: bool = False
    ) -> T:
        """One request within the socket timeout; store failures become LockUnavailable.

        With ``refusals``, a ``ResponseError`` (a script's own refusal) passes through.
        """
        return await self._calls.call(f"journal {what}", request,
                                      (ResponseError,) if refusals else ())
