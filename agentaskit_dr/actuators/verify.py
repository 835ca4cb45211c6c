"""Runbook step 5, "verify services": the services answer and the new primary takes writes.

A failover is done only when what users reach works again: every health URL answers 2xx
and the new primary commits a write and reads it back. Both are checked together in
rounds, every ``interval``, until one round passes or ``timeout`` runs out; then the step
fails with what was still wrong, per URL and for the primary, ready for the operator.

The write lands in ``agentaskit_dr.write_check`` (one row, id = 1: run, epoch, at) and
carries the fencing epoch: a row written by a newer epoch is never overwritten, and
finding one raises StaleEpoch (a newer leader has taken over this run's target).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import structlog
from yarl import URL

from agentaskit_dr.actuators.fence import PromotionRefused, describe_dsn, session
from agentaskit_dr.ports import ActuationFailed, StaleEpoch, StepOutcome, refuse_newer_epoch
from agentaskit_dr.redaction import mask_secrets, url_password, without_userinfo

log = structlog.get_logger(__name__)

WRITE_CHECK_TABLE = "agentaskit_dr.write_check"

_WRITE_CHECK_DDL = (
    "CREATE SCHEMA IF NOT EXISTS agentaskit_dr",
    "CREATE TABLE IF NOT EXISTS agentaskit_dr.write_check "
    "(id int PRIMARY KEY, run text, epoch bigint, at timestamptz)",
)
# An older epoch never overwrites a newer one's row; the read-back then shows the newer.
_WRITE_CHECK_UPSERT = """
INSERT INTO agentaskit_dr.write_check AS w (id, run, epoch, at) VALUES (1, $1, $2, now())
ON CONFLICT (id) DO UPDATE SET run = excluded.run, epoch = excluded.epoch, at = excluded.at
WHERE w.epoch <= excluded.epoch
"""
_WRITE_CHECK_READ = "SELECT run, epoch FROM agentaskit_dr.write_check WHERE id = 1"
_PRIMARY_STATE = """
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('default_transaction_read_only') = 'on' AS read_only
"""
_MAX_ERROR_LENGTH = 200


@dataclass
class _Round:
    """One look at everything: status per URL (None when no answer) and what failed."""

    statuses: dict[str, int | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    write_check_ms: float | None = None


class ServiceVerifier:
    """Verifies the services after a failover; an ``Actuator`` named ``verify_services``.

    ``health_urls``: URLs that must all answer 2xx (redirects are not followed).
    ``primary_dsn``: the new primary, which must commit a write and read it back.
    ``timeout``: the whole verification. ``interval``: pause between rounds.
    ``check_timeout``: bounds each URL check and the write check within a round; a round
    after the first starts only when it can finish within ``timeout``.

    ``apply`` changes nothing in the services: it returns ``changed=True`` to mean "the
    checks ran and passed now". A resumed run verifies again rather than trusting an
    earlier pass, since health is a fact of the moment, not state that can be skipped.
    """

    name = "verify_services"

    def __init__(
        self,
        health_urls: Sequence[str],
        primary_dsn: str,
        *,
        timeout: float = 60.0,
        interval: float = 2.0,
        check_timeout: float = 5.0,
    ) -> None:
        if not health_urls:
            raise ValueError("verify_services: at least one health URL is needed")
        for url in health_urls:
            parsed = URL(url)
            if parsed.scheme not in {"http", "https"} or not parsed.host:
                raise ValueError(f"verify_services: not an http(s) URL: {without_userinfo(url)}")
        for setting, value in (
            ("timeout", timeout), ("interval", interval), ("check_timeout", check_timeout)
        ):
            if value <= 0:
                raise ValueError(f"verify_services: {setting} must be positive, got {value}")
        self._urls = tuple(health_urls)
        self._dsn = primary_dsn
        self._primary = describe_dsn(primary_dsn)
        self._timeout = timeout
        self._interval = interval
        self._check_timeout = check_timeout
        self._session: aiohttp.ClientSession | None = None

    async def describe(self) -> str:
        """What ``apply`` would check, with how each check answers right now; no writes."""
        limit = self._check_timeout
        checks = await asyncio.gather(*(self._check_url(url, limit) for url in self._urls))
        primary_now = await self._primary_state(limit)
        lines = [
            f"verify services: wait up to {self._timeout:g}s, checking every "
            f"{self._interval:g}s, until all of these pass at once:"
        ]
        for url, (status, error) in zip(self._urls, checks, strict=True):
            now = error or f"HTTP {status}"
            lines.append(f"  GET {without_userinfo(url)} answers 2xx (now: {now})")
        lines.append(
            f"  new primary {self._primary} commits a write to {WRITE_CHECK_TABLE} "
            f"and reads it back (now: {primary_now})"
        )
        return "\n".join(lines)

    async def apply(self, *, epoch: int, failover_id: str) -> StepOutcome:
        """Check in rounds until everything passes; ActuationFailed naming what did not.

        Raises StaleEpoch when the new primary's write check was done by a newer epoch.
        """
        vlog = log.bind(failover_id=failover_id, epoch=epoch, primary=self._primary)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        attempts = 0
        while True:
            attempts += 1
            limit = min(self._check_timeout, self._timeout)
            try:
                look = await self._round(epoch, failover_id, limit)
            except StaleEpoch as exc:
                vlog.error("services_verification_refused", reason=str(exc))
                raise
            if not look.failures:
                vlog.info(
                    "services_verified", attempts=attempts, urls=look.statuses,
                    write_check_ms=look.write_check_ms,
                )
                return StepOutcome(
                    changed=True,
                    detail=(
                        f"{len(self._urls)} health URLs answered 2xx and {self._primary} "
                        f"took a write after {attempts} round(s)"
                    ),
                    data={
                        "urls": look.statuses,
                        "write_check_ms": look.write_check_ms,
                        "attempts": attempts,
                    },
                )
            # A round starts only if it can run its full check_timeout before the deadline:
            # a round cut short would report its own timeout instead of the real failure.
            if loop.time() + self._interval + self._check_timeout > deadline:
                reason = (
                    f"services not verified within {self._timeout:g}s "
                    f"({attempts} round{'s' if attempts > 1 else ''}): {'; '.join(look.failures)}"
                )
                vlog.error("services_not_verified", attempts=attempts, reason=reason)
                raise ActuationFailed(reason)
            vlog.info("services_not_ready", attempt=attempts, failing=look.failures)
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _round(self, epoch: int, failover_id: str, limit: float) -> _Round:
        """All URL checks and the write check at once, each bounded by ``limit``."""
        look = _Round()
        url_checks = asyncio.gather(*(self._check_url(url, limit) for url in self._urls))
        write_check = self._write_check(epoch, failover_id, limit)
        # return_exceptions: a StaleEpoch from the write check must not leave the URL
        # checks running behind it.
        checks, write = await asyncio.gather(url_checks, write_check, return_exceptions=True)
        if isinstance(write, BaseException):
            raise write
        if isinstance(checks, BaseException):
            raise checks
        write_ms, write_error = write
        for url, (status, error) in zip(self._urls, checks, strict=True):
            look.statuses[without_userinfo(url)] = status
            if error is not None:
                look.failures.append(f"{without_userinfo(url)}: {error}")
        look.write_check_ms = write_ms
        if write_error is not None:
            look.failures.append(write_error)
        return look

    async def _check_url(self, url: str, limit: float) -> tuple[int | None, str | None]:
        """``(status, error)``: error is None for a 2xx, else why the URL failed."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # A fresh connection per check: a kept-alive one could outlive a dead server.
                connector=aiohttp.TCPConnector(force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        status: int | None = None
        try:
            async with (
                asyncio.timeout(limit),
                self._session.get(url, allow_redirects=False) as response,
            ):
                status = response.status
        except TimeoutError:
            return None, f"no answer within {round(limit, 2):g}s"
        except aiohttp.ClientConnectorError as exc:
            return None, _connect_error(exc)
        except Exception as exc:  # noqa: BLE001 (a failed check is a reason, not a crash)
            return None, _short(f"{type(exc).__name__}: {exc}", url)
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    async def _write_check(
        self, epoch: int, failover_id: str, limit: float
    ) -> tuple[float | None, str | None]:
        """``(milliseconds, error)`` of a write and read-back in one transaction.

        Raises StaleEpoch when the row already belongs to a newer epoch.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with (
                asyncio.timeout(limit),
                session(self._dsn, role="new primary", io_timeout=limit) as conn,
            ):
                row = await self._write_and_read(conn, epoch, failover_id)
        except TimeoutError:
            return None, f"new primary {self._primary}: no answer within {round(limit, 2):g}s"
        except PromotionRefused as exc:
            return None, _short(exc.reason, self._dsn)
        refuse_newer_epoch(row["epoch"], epoch,
                           f"new primary {self._primary} was verified under epoch "
                           f"{row['epoch']}, newer than {epoch}")
        if (row["run"], row["epoch"]) != (failover_id, epoch):
            return None, (
                f"new primary {self._primary}: read back run={row['run']!r} "
                f"epoch={row['epoch']}, wrote run={failover_id!r} epoch={epoch}"
            )
        return round((loop.time() - started) * 1000, 1), None

    async def _write_and_read(
        self, conn: asyncpg.Connection, epoch: int, failover_id: str
    ) -> asyncpg.Record:
        try:
            async with conn.transaction():
                for statement in _WRITE_CHECK_DDL:
                    await conn.execute(statement)
                await conn.execute(_WRITE_CHECK_UPSERT, failover_id, epoch)
                row: asyncpg.Record = await conn.fetchrow(_WRITE_CHECK_READ)
        except asyncpg.ReadOnlySQLTransactionError as exc:
            raise PromotionRefused(
                f"new primary {self._primary} is read-only (a standby or fenced): {exc}"
            ) from exc
        return row

    async def _primary_state(self, limit: float) -> str:
        """How the new primary looks now, read-only, as a phrase; never raises."""
        try:
            async with (
                asyncio.timeout(limit),
                session(self._dsn, role="new primary", io_timeout=limit) as conn,
            ):
                state = await conn.fetchrow(_PRIMARY_STATE)
        except TimeoutError:
            return f"no answer within {round(limit, 2):g}s"
        except PromotionRefused as exc:
            return _short(exc.reason, self._dsn)
        if state["in_recovery"]:
            return "in recovery (a standby: the write would fail)"
        if state["read_only"]:
            return "read-only (fenced: the write would fail)"
        return "a writable primary"


def _connect_error(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "connection refused"
    return f"cannot connect: {exc.os_error.strerror or exc.os_error}"


def _short(text: str, secret_source: str) -> str:
    """``text`` on one line, bounded, without the password of ``secret_source``."""
    return " ".join(mask_secrets(text, [url_password(secret_source)]).split())[:_MAX_ERROR_LENGTH]
