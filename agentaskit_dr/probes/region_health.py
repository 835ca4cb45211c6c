"""Probe of one region's HTTP health endpoints, judged by the fraction that answer 2xx.

All URLs are checked concurrently, each within ``timeout``. Only a 2xx answer counts:
redirects are not followed (a health check that bounces elsewhere checks something else),
so a 3xx is a failure. The body is never read; the status line is the verdict.

Connections are kept alive between checks for at most ``session_max_age`` seconds, then
the probe starts over with new ones, so what only a new client meets (a full accept
queue, a listener gone) shows within that age. A kept connection the server closed is
not an outage: aiohttp sends a GET that fails on a reused connection once more on a new
one (RFC 9112, "Retrying Requests"). ``session_max_age=0``: a new connection per check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import structlog
from yarl import URL

from agentaskit_dr.ports import RegionHealthObservation, UrlCheck
from agentaskit_dr.redaction import mask_secrets, url_password, without_userinfo

log = structlog.get_logger(__name__)

MAX_ERROR_LENGTH = 200


class RegionHealthProbe:
    """Checks a region's health URLs; healthy when ``ok / len(urls) >= healthy_fraction``.

    The probe's ``name`` is ``region_health:<region>``. A ``session`` passed in is used
    as is and left open; otherwise one is created at the first observation and closed by
    ``close()``.
    """

    def __init__(
        self,
        region: str,
        urls: Sequence[str],
        *,
        timeout: float,
        healthy_fraction: float,
        session: aiohttp.ClientSession | None = None,
        session_max_age: float = 10.0,
    ) -> None:
        if not urls:
            raise ValueError(f"region {region}: at least one health URL is needed")
        for url in urls:
            parsed = URL(url)
            if parsed.scheme not in {"http", "https"} or not parsed.host:
                raise ValueError(f"region {region}: not an http(s) URL: {without_userinfo(url)}")
        if timeout <= 0:
            raise ValueError(f"region {region}: timeout must be positive, got {timeout}")
        if not 0 < healthy_fraction <= 1:
            raise ValueError(
                f"region {region}: healthy_fraction must be in (0, 1], got {healthy_fraction}"
            )
        self.name = f"region_health:{region}"
        self.region = region
        self.urls = tuple(urls)
        self.timeout = timeout
        self.healthy_fraction = healthy_fraction
        if session_max_age < 0:
            raise ValueError(
                f"region {region}: session_max_age must not be negative, got {session_max_age}"
            )
        self.session_max_age = session_max_age
        self._session = session
        self._owns_session = session is None
        self._opened_at = 0.0

    async def observe(self) -> RegionHealthObservation:
        """Check every URL at once; the observation takes at most about ``timeout``."""
        session = await self._get_session()
        checks = await asyncio.gather(*(self._check(session, url) for url in self.urls))
        ok_count = sum(1 for check in checks if check.ok)
        return RegionHealthObservation(
            region=self.region,
            healthy=ok_count / len(checks) >= self.healthy_fraction,
            checks=tuple(checks),
        )

    def failure(self, error: str, latency: float) -> RegionHealthObservation:
        """The region seen unhealthy: every URL failed with ``error``."""
        checks = tuple(
            UrlCheck(url=without_userinfo(url), ok=False, status=None, latency=latency, error=error)
            for url in self.urls
        )
        return RegionHealthObservation(region=self.region, healthy=False, checks=checks)

    async def close(self) -> None:
        """Close the session this probe created (not one that was passed in)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _get_session(self) -> aiohttp.ClientSession:
        now = asyncio.get_running_loop().time()
        if (self._owns_session and self._session is not None
                and now - self._opened_at >= self.session_max_age):
            # Aged out: the next checks open new connections, as a new client would.
            old, self._session = self._session, None
            await old.close()
        if self._session is None:
            self._opened_at = now
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(force_close=self.session_max_age == 0),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _check(self, session: aiohttp.ClientSession, url: str) -> UrlCheck:
        loop = asyncio.get_running_loop()
        shown = without_userinfo(url)
        started = loop.time()
        status: int | None = None
        error: str | None = None
        try:
            async with (
                asyncio.timeout(self.timeout),
                session.get(url, allow_redirects=False) as response,
            ):
                status = response.status
        except TimeoutError:
            error = f"timeout after {self.timeout}s"
        except aiohttp.ClientConnectorError as exc:
            error = (
                "connection refused"
                if isinstance(exc.os_error, ConnectionRefusedError)
                else f"cannot connect: {exc.os_error.strerror or exc.os_error}"
            )
        except Exception as exc:  # noqa: BLE001 (a probe never raises; the error is the data)
            error = f"{type(exc).__name__}: {exc}"
        if status is not None and 300 <= status < 400:
            error = f"HTTP {status}: redirect not followed"
        elif status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        ok = error is None
        if error is not None:
            error = " ".join(mask_secrets(error, [url_password(url)]).split())[:MAX_ERROR_LENGTH]
            log.debug("health_url_failed", region=self.region, url=shown, error=error)
        return UrlCheck(
            url=shown,
            ok=ok,
            status=status,
            latency=loop.time() - started,
            error=error,
        )
