"""Vantage points: what this daemon publishes for its peers, and polling theirs.

A peer's report is data from another machine: it is size-capped, schema-checked and
aged. A peer that answers late, with garbage or with a huge body counts as unreachable,
is logged, and is never trusted. So does one that refuses our peer credential (401/403)
or whose certificate does not verify: each failure is logged when it starts or changes,
not at every poll.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentaskit_dr.api.credentials import PeerTokenError, read_peer_tokens
from agentaskit_dr.core import RegionView, Role, Vantage
from agentaskit_dr.ports import PeerFence

log = structlog.get_logger(__name__)

#: The largest report accepted from a peer; real ones are well under 2 KiB.
MAX_REPORT_BYTES = 64 * 1024
#: Reports claiming more regions than this are refused (two plus slack for renames).
MAX_REGIONS = 8


class _WireRegion(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    db_reachable: bool | None = None
    """The database answered (a refusal is an answer). Reports of older versions counted
    a refusal as unreachable; they parse unchanged."""
    db_refusal: str | None = Field(default=None, min_length=1, max_length=64)
    """It answered with an error: its name (``auth_rejected``, ``in_recovery``...)."""
    health_ok: bool | None = None
    watchdog_reached: bool | None = None
    db_age: float | None = Field(default=None, ge=0, le=86400)
    """Seconds between the database probe and the response."""


class WireReport(BaseModel):
    """``GET /v1/observations``: one daemon's latest view, for its peers."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    node: str = Field(min_length=1, max_length=200)
    role: Literal["watchdog", "witness"]
    region: str = Field(min_length=1, max_length=100)
    primary_region: str = Field(min_length=1, max_length=100)
    age: float = Field(ge=0, le=86400)
    """Seconds between the newest observation in the report and the response."""
    regions: dict[str, _WireRegion] = Field(max_length=MAX_REGIONS)
    wal_streaming: bool | None = None
    peers: dict[str, bool] = Field(default_factory=dict, max_length=16)
    failover_epoch: int | None = Field(default=None, ge=0)
    """The epoch of the failover (or planned run) that made ``primary_region`` the
    primary, as this daemon knows it; None: none known. Optional: older daemons omit it."""
    failover_in_progress: bool | None = None
    """This daemon is running a failover now (its promotion may come any moment)."""
    server_held: str | None = Field(default=None, min_length=1, max_length=100)
    """The region whose server this watchdog controls and holds stopped with
    ``standby.signal`` in place (any start comes up in recovery); None otherwise."""

    def vantage(self, label: str, received_at: float | None = None) -> Vantage:
        """The report as a vantage; ``received_at`` (local clock) dates its observations."""
        regions = {
            name: RegionView(
                r.db_reachable, r.health_ok, r.watchdog_reached,
                None if received_at is None or r.db_age is None else received_at - r.db_age,
                db_refusal=r.db_refusal if r.db_reachable else None,
            )
            for name, r in self.regions.items()
        }
        return Vantage(name=f"{self.node} ({label})", role=Role(self.role), region=self.region,
                       fresh=True, regions=regions, wal_streaming=self.wal_streaming)


def parse_report(body: bytes) -> WireReport:
    """The report in ``body``; ValueError naming what is wrong (never a traceback)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    try:
        return WireReport.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "report"
        raise ValueError(f"{where}: {first['msg']}") from None


@dataclass(frozen=True, slots=True)
class _Heard:
    at: float
    report: WireReport


class _Refused(Exception):
    """The peer refused our credential (HTTP 401/403)."""


async def read_report(response: aiohttp.ClientResponse) -> WireReport:
    """A peer's ``/v1/observations`` answer, read up to ``MAX_REPORT_BYTES`` and parsed;
    ValueError naming what is wrong (too large, not a report)."""
    declared = response.content_length
    if declared is not None and declared > MAX_REPORT_BYTES:
        raise ValueError(f"body of {declared} bytes exceeds {MAX_REPORT_BYTES}")
    # read(n) returns what has arrived so far: collect chunks up to the cap.
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_REPORT_BYTES:
            raise ValueError(f"body exceeds {MAX_REPORT_BYTES} bytes")
    return parse_report(bytes(body))


class PeerPoller:
    """Polls each peer's and the witness's ``/v1/observations`` every interval.

    ``vantages()`` returns one Vantage per configured URL: fresh if a valid report arrived
    within ``stale_after`` seconds, else ``fresh=False``. ``ssl`` verifies ``https://``
    peers (and presents a client certificate if it holds one); the first token of
    ``peer_token_file``, read at each poll, is sent as a bearer token.
    """

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        interval: float,
        timeout: float,
        stale_after: float,
        clock: Callable[[], float],
        on_report: Callable[[], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        peer_token_file: Path | None = None,
    ) -> None:
        self.urls = dict(urls)
        self.ssl_context = ssl_context
        self.peer_token_file = peer_token_file
        self.interval = interval
        self.timeout = timeout
        self.stale_after = stale_after
        self.clock = clock
        self.on_report = on_report
        self._heard: dict[str, _Heard] = {}
        self._failing: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        if not self.urls:
            await asyncio.Event().wait()  # nothing to poll; stay alive as a root task
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(ssl=self.ssl_context or True),
        )
        try:
            async with asyncio.TaskGroup() as group:
                for label, url in self.urls.items():
                    group.create_task(self._poll_forever(label, url), name=f"peer:{label}")
        finally:
            await self._session.close()

    async def _poll_forever(self, label: str, url: str) -> None:
        while True:
            started = self.clock()
            await self.poll_once(label, url)
            await asyncio.sleep(max(0.0, self.interval - (self.clock() - started)))

    async def poll_once(self, label: str, url: str) -> None:
        """One poll; outcome stored and logged on change. Never raises (but cancellation)."""
        assert self._session is not None
        try:
            async with asyncio.timeout(self.timeout):
                report = await self._fetch(url)
        except TimeoutError:
            self._failed(label, url, f"no answer within {self.timeout:g}s")
        except _Refused as exc:
            self._failed(label, url, str(exc), event="peer_unauthorized")
        except PeerTokenError as exc:
            self._failed(label, url, f"api.peer_token_file: {exc}",
                         event="peer_credential_unavailable")
        except aiohttp.ClientError as exc:
            self._failed(label, url, f"{type(exc).__name__}: {exc}"[:300])
        except ValueError as exc:
            self._failed(label, url, f"report rejected: {exc}"[:200],
                         event="peer_report_rejected")
        else:
            self._heard[label] = _Heard(self.clock(), report)
            if self._failing.pop(label, None) is not None:
                log.info("peer_reachable", peer=label, url=url, node=report.node)
            if self.on_report is not None:
                self.on_report()

    async def _fetch(self, url: str) -> WireReport:
        assert self._session is not None
        headers = {}
        if self.peer_token_file is not None:
            headers["Authorization"] = f"Bearer {read_peer_tokens(self.peer_token_file)[0]}"
        async with self._session.get(f"{url}/v1/observations", headers=headers) as response:
            if response.status in (401, 403):
                raise _Refused(
                    f"HTTP {response.status}: the peer refused our credential (check "
                    "api.peer_token_file and the client certificate against the peer's)"
                )
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            return await read_report(response)

    def _failed(self, label: str, url: str, reason: str, *,
                event: str = "peer_unreachable") -> None:
        if self._failing.get(label) != reason:
            log.warning(event, peer=label, url=url, reason=reason)
        self._failing[label] = reason

    async def ask_fence(self, region: str, *, epoch: int, failover_id: str,
                        timeout: float) -> PeerFence:  # noqa: ASYNC109 (a bound per call)
        """Ask the watchdog heard from ``region`` to fence its own primary before a
        promotion (``POST /v1/fence-primary``), within ``timeout``; never raises."""
        now = self.clock()
        found = [label for label, heard in self._heard.items()
                 if now - heard.at <= self.stale_after and heard.report.region == region
                 and heard.report.role == Role.WATCHDOG.value]
        if not found or self._session is None:
            return PeerFence(None, f"no watchdog of {region} heard from")
        label = found[0]
        url = f"{self.urls[label]}/v1/fence-primary"
        try:
            headers = {}
            if self.peer_token_file is not None:
                headers["Authorization"] = (
                    f"Bearer {read_peer_tokens(self.peer_token_file)[0]}")
            async with asyncio.timeout(timeout), self._session.post(
                url, json={"epoch": epoch, "failover_id": failover_id}, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status != 200:
                    return PeerFence(None, f"HTTP {response.status}: "
                                     f"{(await response.text())[:200]}", label)
                answer = await response.json()
        except (TimeoutError, aiohttp.ClientError, PeerTokenError, ValueError) as exc:
            return PeerFence(None, f"no answer: {type(exc).__name__}: {exc}"[:300], label)
        if not isinstance(answer, dict) or not isinstance(answer.get("fenced"), bool):
            return PeerFence(None, "answer without a 'fenced' flag", label)
        detail = str(answer.get("detail", ""))[:500]
        if answer["fenced"]:
            return PeerFence(True, detail, label)
        # Its server answers but could not be fenced: no promotion. Silent to it too, or
        # not the primary's watchdog: nothing learnt.
        return PeerFence(False if answer.get("server_answers") is True else None, detail, label)

    def vantages(self) -> list[Vantage]:
        now = self.clock()
        found = []
        for label in self.urls:
            heard = self._heard.get(label)
            if heard is None or now - heard.at > self.stale_after:
                role = Role.WITNESS if label == "witness" else Role.WATCHDOG
                found.append(Vantage(name=label, role=role, region="?", fresh=False))
            else:
                found.append(heard.report.vantage(label, heard.at))
        return found

    def fresh_reports(self) -> dict[str, WireReport]:
        """{label: the report heard within ``stale_after``}, for the peer-failover relay."""
        now = self.clock()
        return {label: heard.report for label, heard in self._heard.items()
                if now - heard.at <= self.stale_after}

    def held_servers(self) -> dict[str, str]:
        """{region: label} of the servers a fresh report from their own region's watchdog
        says are stopped with ``standby.signal`` in place."""
        now = self.clock()
        held: dict[str, str] = {}
        for label in self.urls:
            heard = self._heard.get(label)
            if (heard is not None and now - heard.at <= self.stale_after
                    and heard.report.role == "watchdog"
                    and heard.report.server_held == heard.report.region):
                held[heard.report.region] = f"{heard.report.node} ({label})"
        return held

    def links(self) -> dict[str, bool]:
        """{label: heard from within ``stale_after``?}"""
        now = self.clock()
        return {label: (heard := self._heard.get(label)) is not None
                and now - heard.at <= self.stale_after for label in self.urls}

    def reports(self) -> dict[str, Any]:
        """The latest raw reports by label, with their age, for the status page."""
        now = self.clock()
        out: dict[str, Any] = {}
        for label in self.urls:
            heard = self._heard.get(label)
            out[label] = {
                "url": self.urls[label],
                "age": round(now - heard.at, 3) if heard else None,
                "node": heard.report.node if heard else None,
                "region": heard.report.region if heard else None,
                "error": self._failing.get(label),
            }
        return out

