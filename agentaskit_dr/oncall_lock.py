"""How an on-call command holds the leader lock: taken as ``<holder>/cli:<user>``, the
epoch lifted above every epoch the targets recorded, renewed until the command ends."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.exit_codes import EXIT_OK
from agentaskit_dr.ports import Actuator, Lease, LockUnavailable


class Refused(Exception):
    """The command cannot go on; the message is for the operator."""


class HeldLock:
    """The leader lock taken by a command, renewed in the background until released."""

    def __init__(self, lease: Lease, verify: Callable[[Lease], Awaitable[bool]]) -> None:
        self.lease = lease
        self._verify = verify

    async def verified_lease(self) -> Lease | None:
        try:
            return self.lease if await self._verify(self.lease) else None
        except LockUnavailable:
            return None


@contextlib.asynccontextmanager
async def held_lock(config: WatchdogConfig) -> AsyncIterator[HeldLock]:
    """Take the lock as ``<holder>/cli:<user>``; Refused naming the holder if it is taken."""
    from agentaskit_dr.runtime.builders import (
        build_cluster_store,
        build_journal,
        build_lock,
        epoch_floor_reader,
    )

    lock_cfg = config.lock
    holder = f"{config.holder}/cli:{getpass.getuser()}"
    lock = build_lock(config, holder=holder)
    try:
        lease = await lock.acquire()
        if lease is None:
            current = await lock.current()
            who = f"{current[0]} (epoch {current[1]})" if current else "someone (just now)"
            raise Refused(
                f"the leader lock is held by {who}. To act step by step while the watchdogs "
                "run: 'agentaskit-dr pause --reason ...' (every watchdog releases the lock "
                "and stops campaigning; 'agentaskit-dr resume' afterwards), then run this "
                "command again; or let the holder run the whole runbook: 'agentaskit-dr "
                "request-failover'. Never stop the watchdogs for this.")
        journal = build_journal(config, client=lock.client)
        cluster = build_cluster_store(config, client=lock.client)
        floor = await epoch_floor_reader(lambda: config, journal, cluster)()
        if floor >= lease.epoch:
            raised = await lock.raise_epoch_floor(lease, floor)
            if raised is None:
                raise Refused("the leader lock was taken from us while reading the epoch "
                              "floor; nothing changed")
            print(f"epoch raised above {floor}, the highest the targets recorded",
                  file=sys.stderr)
            lease = raised
        print(f"lock taken as {holder}, epoch {lease.epoch}", file=sys.stderr)
        held = HeldLock(lease, lock.verify)

        async def renew() -> None:
            while True:
                await asyncio.sleep(lock_cfg.ttl / 3)
                with contextlib.suppress(LockUnavailable):
                    renewed = await lock.renew(held.lease)
                    if renewed is not None:
                        held.lease = renewed

        renewer = asyncio.create_task(renew())
        try:
            yield held
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await lock.release(held.lease)
    finally:
        await lock.close()


def new_run_id(kind: str, epoch: int) -> str:
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-e{epoch}"


async def apply_step(actuator: Actuator, epoch: int, run_id: str) -> int:
    try:
        outcome = await actuator.apply(epoch=epoch, failover_id=run_id)
    finally:
        await actuator.close()
    state = "changed" if outcome.changed else "already done"
    print(f"{actuator.name}: {state}: {outcome.detail}")
    return EXIT_OK
