"""What the lock and the journal share: one bounded call to the store, errors made safe."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from agentaskit_dr.ports import LockUnavailable

T = TypeVar("T")


def display_address(url: str) -> str:
    """``scheme://host:port/db`` with any credentials left out."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def fail_fast_client(url: str, *, password: str | None, socket_timeout: float) -> Redis:
    """A client with no retries inside redis-py: its defaults (3 retries with backoff) made
    a 2 s timeout take 21-25 s (FIELD-NOTES), longer than a lease; callers own retries."""
    return Redis.from_url(
        url,
        password=password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


class StoreCalls:
    """Runs requests against the store at ``where`` within ``timeout`` seconds as a whole.

    Every store failure becomes ``LockUnavailable`` with ``secrets`` blanked out; the
    exception types in ``passthrough`` (a script's own refusal) are re-raised as they are.
    """

    def __init__(self, where: str, timeout: float, secrets: Sequence[str]) -> None:
        self.where = where
        self.timeout = timeout
        self.secrets = [secret for secret in secrets if secret]

    async def call(
        self, what: str, request: Callable[[], Awaitable[T]],
        passthrough: tuple[type[Exception], ...] = (),
    ) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await request()
        except TimeoutError as exc:
            # Builtin and asyncio timeouts (not redis ones): the whole call ran out of time.
            raise LockUnavailable(
                f"lock store {self.where} did not answer {what} within {self.timeout}s"
            ) from exc
        except (RedisError, OSError) as exc:
            if isinstance(exc, passthrough):
                raise
            raise LockUnavailable(self.scrub(
                f"lock store {self.where} failed on {what}: {type(exc).__name__}: {exc}"
            )) from exc

    def scrub(self, message: str) -> str:
        for secret in self.secrets:
            message = message.replace(secret, "***")
        return message
