"""What the lock and the journal share: one bounded call to the store, errors made safe."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from agentaskit_dr.ports import LockUnavailable
from agentaskit_dr.redaction import mask_secrets

T = TypeVar("T")


_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class SentinelTarget:
    """A ``redis+sentinel://[user:pass@]h1:p1,h2:p2/<service>/<db>`` URL, taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelTarget:
        scheme, _, rest = url.partition("://")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username, _, password = userinfo.partition(":") if at else ("", "", "")
        service, _, db = path.partition("/")
        sentinels = tuple(
            (host, int(port)) for host, _, port in (h.rpartition(":") for h in hosts.split(","))
        )
        return cls(sentinels=sentinels, service=unquote(service), db=int(db or 0),
                   tls=scheme.startswith("rediss"), username=unquote(username) or None,
                   password=unquote(password) or None)


def display_address(url: str) -> str:
    """``scheme://host:port/db`` with any credentials left out."""
    if url.startswith(_SENTINEL_SCHEMES):
        target = SentinelTarget.parse(url)
        hosts = ",".join(f"{host}:{port}" for host, port in target.sentinels)
        return f"{url.partition('://')[0]}://{hosts}/{target.service}/{target.db}"
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def fail_fast_client(url: str, *, password: str | None, socket_timeout: float) -> Redis:
    """A client with no retries inside redis-py: its defaults (3 retries with backoff) made
    a 2 s timeout take 21-25 s (docs/operations-notes.md), longer than a lease; callers own
    retries. A ``redis+sentinel://`` URL gives the master the Sentinels name, asked again
    after each failed connection, so a Sentinel failover costs one failed call."""
    if url.startswith(_SENTINEL_SCHEMES):
        return _sentinel_master(SentinelTarget.parse(url), password=password,
                                socket_timeout=socket_timeout)
    return Redis.from_url(
        url,
        password=password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


class _SentinelMaster(Redis):
    """The master's client; closing it closes the clients of the Sentinels it asked too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for client in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await client.aclose()


def _sentinel_master(target: SentinelTarget, *, password: str | None,
                     socket_timeout: float) -> Redis:
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        sentinel_kwargs={"socket_timeout": socket_timeout,
                         "socket_connect_timeout": socket_timeout,
                         "retry": Retry(NoBackoff(), 0)},
    )
    master: Redis = sentinel.master_for(
        target.service,
        redis_class=_SentinelMaster,
        db=target.db,
        username=target.username,
        password=password or target.password,
        ssl=target.tls,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    return master


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
        return mask_secrets(message, self.secrets)
