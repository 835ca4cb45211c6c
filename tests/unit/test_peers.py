"""Peer reports: parsed strictly, fetched with a bound, aged by the clock, never trusted blindly.

The poller runs against real aiohttp servers on 127.0.0.1 (port 0: the kernel picks a free
one). Each bad answer a peer can give counts as "not fresh" and is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from agentaskit_dr.core import RegionView, Role
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.runtime.peers import MAX_REGIONS, MAX_REPORT_BYTES, PeerPoller, parse_report

WEST, EAST = "us-west-2", "us-east-1"
STALE_AFTER = 12.0
TIMEOUT = 0.3


def report(**changes: Any) -> dict[str, Any]:
    """A report as the west watchdog publishes it (``outlook.wire_report``)."""
    body: dict[str, Any] = {
        "node": "watchdog-west",
        "role": "watchdog",
        "region": WEST,
        "primary_region": WEST,
        "age": 0.8,
        "regions": {
            WEST: {"db_reachable": True, "health_ok": True, "watchdog_reached": None},
            EAST: {"db_reachable": True, "health_ok": False, "watchdog_reached": True},
        },
        "wal_streaming": None,
        "peers": {"peer1": True, "witness": False},
        "probes": {"db:primary": {"target": "west-db:5432/app", "ok": True}},
    }
    body.update(changes)
    return body


def encode(body: object) -> bytes:
    return json.dumps(body).encode()


# ---------------------------------------------------------------- parse_report


def test_a_valid_report_parses_into_a_fresh_vantage() -> None:
    parsed = parse_report(encode(report(wal_streaming=True)))

    vantage = parsed.vantage("peer1")
    assert (vantage.name, vantage.role, vantage.region, vantage.fresh) == (
        "watchdog-west (peer1)", Role.WATCHDOG, WEST, True
    )
    assert vantage.view_of(WEST) == RegionView(db_reachable=True, health_ok=True)
    assert vantage.view_of(EAST) == RegionView(True, False, True)
    assert vantage.wal_streaming is True
    assert parsed.peers == {"peer1": True, "witness": False}


def test_a_peer_refused_by_the_primary_reports_it_reachable_with_the_refusal() -> None:
    regions = {WEST: {"db_reachable": True, "db_refusal": "too_many_connections",
                      "health_ok": True},
               EAST: {"db_reachable": False, "db_refusal": None, "health_ok": True}}

    vantage = parse_report(encode(report(regions=regions))).vantage("peer1")

    assert vantage.view_of(WEST) == RegionView(True, True, db_refusal="too_many_connections")
    assert vantage.view_of(EAST) == RegionView(False, True)


def test_a_report_without_refusals_from_an_older_peer_still_parses() -> None:
    vantage = parse_report(encode(report())).vantage("peer1")

    assert vantage.view_of(WEST).db_refusal is None
    assert vantage.view_of(WEST).db_reachable is True


def test_a_refusal_claimed_for_a_database_that_did_not_answer_is_ignored() -> None:
    regions = {WEST: {"db_reachable": False, "db_refusal": "auth_rejected"}}

    vantage = parse_report(encode(report(regions=regions))).vantage("peer1")

    assert vantage.view_of(WEST) == RegionView(db_reachable=False)


def test_a_witness_report_is_a_witness_vantage() -> None:
    parsed = parse_report(encode(report(role="witness", region="witness-site", node="w")))

    assert parsed.vantage("witness").role is Role.WITNESS


def test_extra_keys_anywhere_are_ignored() -> None:
    body = report(version="2.0", probes={"anything": [1, 2]})
    body["regions"][WEST]["replication_lag"] = 12
    parsed = parse_report(encode(body))

    assert parsed.vantage("peer1").view_of(WEST) == RegionView(True, True, None)


@pytest.mark.parametrize("body", [
    b"<html>502 Bad Gateway</html>", b"", b"\xff\xfe", b'{"node": "w"', b"[" * 100_000,
])
def test_a_body_that_is_not_json_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"^not JSON$"):
        parse_report(body)


@pytest.mark.parametrize(("body", "where"), [
    (report(age="0.8"), "age"),
    (report(age=True), "age"),
    (report(role="primary"), "role"),
    (report(node=""), "node"),
    (report(node=7), "node"),
    (report(regions=[WEST, EAST]), "regions"),
    (report(regions={WEST: {"db_reachable": "yes"}}), f"regions.{WEST}.db_reachable"),
    (report(regions={WEST: {"db_reachable": 1}}), f"regions.{WEST}.db_reachable"),
    (report(wal_streaming="streaming"), "wal_streaming"),
    (report(peers={"peer1": "up"}), "peers.peer1"),
    ([report()], "report"),
    ("a string", "report"),
])
def test_wrong_types_are_refused_naming_the_field(body: object, where: str) -> None:
    with pytest.raises(ValueError, match=rf"^{where}: ") as caught:
        parse_report(encode(body))

    assert "Traceback" not in str(caught.value)


def test_a_missing_field_is_refused_naming_it() -> None:
    body = report()
    del body["primary_region"]

    with pytest.raises(ValueError, match=r"^primary_region: Field required$"):
        parse_report(encode(body))


def test_too_many_regions_are_refused() -> None:
    regions = {f"region-{i}": {"db_reachable": True} for i in range(MAX_REGIONS + 1)}

    with pytest.raises(ValueError, match=r"^regions: "):
        parse_report(encode(report(regions=regions)))


def test_as_many_regions_as_allowed_are_accepted() -> None:
    regions = {f"region-{i}": {"db_reachable": True} for i in range(MAX_REGIONS)}

    assert len(parse_report(encode(report(regions=regions))).regions) == MAX_REGIONS


@pytest.mark.parametrize("age", [-0.001, -5, 86400.5])
def test_an_age_out_of_range_is_refused(age: float) -> None:
    with pytest.raises(ValueError, match=r"^age: "):
        parse_report(encode(report(age=age)))


def test_a_nan_age_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^age: "):
        parse_report(b'{"node": "w", "role": "watchdog", "region": "a", '
                     b'"primary_region": "a", "age": NaN, "regions": {}}')


# ---------------------------------------------------------------- peers on loopback


class FakePeer:
    """A peer's API on 127.0.0.1 whose ``/v1/observations`` behaves as ``mode`` says."""

    def __init__(self) -> None:
        self.mode = "good"
        self.body = report()
        self.requests = 0
        self._counted = asyncio.Condition()
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/v1/observations", self.observations)
        self.url = ""

    async def requested(self, times: int) -> None:
        """Returns once ``/v1/observations`` was asked for ``times`` times."""
        async with self._counted:
            await self._counted.wait_for(lambda: self.requests >= times)

    async def observations(self, request: web.Request) -> web.StreamResponse:
        async with self._counted:
            self.requests += 1
            self._counted.notify_all()
        if self.mode == "good":
            return web.json_response(self.body)
        if self.mode == "garbage":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if self.mode == "error":
            return web.Response(status=500, text="internal server error")
        if self.mode == "huge":
            padded = encode(report(pad="x" * MAX_REPORT_BYTES))
            return web.Response(body=padded, content_type="application/json")
        if self.mode == "hang":
            await self.release.wait()
            return web.json_response(self.body)
        return await self._chunked(request)

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        """No Content-Length: "huge_chunked" streams past the cap, "split" sends a valid
        report in two chunks a moment apart."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        # The poller hangs up once it has seen enough; that is its job, not our failure.
        with contextlib.suppress(ConnectionError):
            if self.mode == "huge_chunked":
                chunk = b" " * 8192
                for _ in range(2 * MAX_REPORT_BYTES // len(chunk)):
                    await response.write(chunk)
            else:
                body = encode(self.body)
                await response.write(body[:40])
                await asyncio.sleep(0.05)  # a second TCP segment, as a slow network makes it
                await response.write(body[40:])
            await response.write_eof()
        return response


StartPeer = Callable[[], Awaitable[FakePeer]]


@pytest.fixture
async def start_peer() -> AsyncIterator[StartPeer]:
    """Starts FakePeers on free loopback ports; all are stopped after the test."""
    runners: list[tuple[FakePeer, web.AppRunner]] = []

    async def start() -> FakePeer:
        peer = FakePeer()
        runner = web.AppRunner(peer.app, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        peer.url = f"http://{host}:{port}"
        runners.append((peer, runner))
        return peer

    try:
        yield start
    finally:
        for peer, runner in runners:
            peer.release.set()
            await runner.cleanup()


class FakeClock:
    """The poller's clock, moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def poller_for(urls: dict[str, str], clock: FakeClock | None = None,
               on_report: Callable[[], None] | None = None) -> PeerPoller:
    return PeerPoller(urls, interval=0.05, timeout=TIMEOUT, stale_after=STALE_AFTER,
                      clock=clock or FakeClock(), on_report=on_report)


@contextlib.asynccontextmanager
async def polling(poller: PeerPoller) -> AsyncIterator[PeerPoller]:
    """Gives the poller the HTTP session ``run()`` would open, so ``poll_once`` can be
    driven step by step."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=poller.timeout))
    poller._session = session
    try:
        yield poller
    finally:
        await session.close()


async def poll_all(poller: PeerPoller, times: int = 1) -> None:
    for _ in range(times):
        for label, url in poller.urls.items():
            await poller.poll_once(label, url)


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]



@pytest.mark.integration
async def test_a_good_peer_becomes_a_fresh_vantage(start_peer: StartPeer) -> None:
    peer = await start_peer()
    heard: list[None] = []
    poller = poller_for({"peer1": peer.url}, on_report=lambda: heard.append(None))

    async with polling(poller):
        await poll_all(poller)

    [vantage] = poller.vantages()
    assert (vantage.name, vantage.role, vantage.region, vantage.fresh) == (
        "watchdog-west (peer1)", Role.WATCHDOG, WEST, True
    )
    assert vantage.view_of(EAST) == RegionView(True, False, True)
    assert poller.links() == {"peer1": True}
    assert len(heard) == 1


@pytest.mark.integration
@pytest.mark.parametrize(("mode", "event", "reason"), [
    ("garbage", "peer_report_rejected", "report rejected: not JSON"),
    ("error", "peer_report_rejected", "report rejected: HTTP 500"),
    ("huge", "peer_report_rejected", "report rejected: body of "),
    ("huge_chunked", "peer_report_rejected", "report rejected: "),
    ("hang", "peer_unreachable", f"no answer within {TIMEOUT:g}s"),
])
async def test_a_peer_answering_badly_is_not_fresh_and_logged_once(
    start_peer: StartPeer, mode: str, event: str, reason: str
) -> None:
    peer = await start_peer()
    peer.mode = mode
    heard: list[None] = []
    poller = poller_for({"peer1": peer.url}, on_report=lambda: heard.append(None))

    with capture_logs() as logs:
        async with polling(poller):
            await poll_all(poller, times=2)

    assert peer.requests == 2
    [vantage] = poller.vantages()
    assert (vantage.name, vantage.fresh, vantage.regions) == ("peer1", False, {})
    assert poller.links() == {"peer1": False}
    assert heard == [], "a rejected report must never count as news"
    [logged] = events(logs, event)
    assert logged["log_level"] == "warning"
    assert logged["peer"] == "peer1"
    assert logged["url"] == peer.url
    assert logged["reason"].startswith(reason)
    assert poller.reports()["peer1"]["error"] == logged["reason"]


@pytest.mark.integration
async def test_a_body_over_the_cap_with_content_length_is_refused_before_reading(
    start_peer: StartPeer,
) -> None:
    peer = await start_peer()
    peer.mode = "huge"
    poller = poller_for({"peer1": peer.url})

    async with polling(poller):
        await poll_all(poller)

    error = poller.reports()["peer1"]["error"]
    assert error.startswith("report rejected: body of ")
    assert error.endswith(f"bytes exceeds {MAX_REPORT_BYTES}")


@pytest.mark.integration
async def test_a_valid_report_arriving_in_two_chunks_is_accepted(
    start_peer: StartPeer,
) -> None:
    peer = await start_peer()
    peer.mode = "split"
    poller = poller_for({"peer1": peer.url})

    async with polling(poller):
        await poll_all(poller)

    assert poller.links() == {"peer1": True}, (
        "a well-formed report sent in more than one chunk was rejected: "
        f"{poller.reports()['peer1']['error']!r}; PeerPoller._fetch reads the body with a "
        "single content.read(n), which returns whatever has arrived so far"
    )


@pytest.mark.integration
async def test_a_peer_nobody_listens_for_is_unreachable_and_logged_once() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    poller = poller_for({"peer1": url})

    with capture_logs() as logs:
        async with polling(poller):
            await poll_all(poller, times=2)

    [logged] = events(logs, "peer_unreachable")
    assert logged["reason"].startswith("ClientConnectorError")
    assert poller.links() == {"peer1": False}


@pytest.mark.integration
async def test_a_peer_that_recovers_is_fresh_again_and_logged_once(start_peer: StartPeer) -> None:
    peer = await start_peer()
    peer.mode = "error"
    poller = poller_for({"peer1": peer.url})

    with capture_logs() as logs:
        async with polling(poller):
            await poll_all(poller)
            peer.mode = "good"
            await poll_all(poller, times=2)

    assert [e["event"] for e in logs] == ["peer_report_rejected", "peer_reachable"]
    assert events(logs, "peer_reachable")[0]["node"] == "watchdog-west"
    assert poller.links() == {"peer1": True}
    assert poller.reports()["peer1"]["error"] is None


@pytest.mark.integration
async def test_a_report_older_than_stale_after_is_no_longer_fresh(start_peer: StartPeer) -> None:
    peer = await start_peer()
    clock = FakeClock(1000.0)
    poller = poller_for({"peer1": peer.url}, clock)
    async with polling(poller):
        await poll_all(poller)

    clock.now = 1000.0 + STALE_AFTER
    assert poller.vantages()[0].fresh
    assert poller.reports()["peer1"]["age"] == STALE_AFTER

    clock.now = 1000.0 + STALE_AFTER + 0.01
    [vantage] = poller.vantages()
    assert (vantage.name, vantage.fresh) == ("peer1", False)
    assert poller.links() == {"peer1": False}


@pytest.mark.integration
async def test_the_last_good_report_of_a_peer_gone_bad_ages_out(start_peer: StartPeer) -> None:
    peer = await start_peer()
    clock = FakeClock(1000.0)
    poller = poller_for({"peer1": peer.url}, clock)
    async with polling(poller):
        await poll_all(poller)
        peer.mode = "garbage"
        clock.now = 1005.0
        await poll_all(poller)

    # The garbage is not trusted; the good report from 1000 still is, until it is stale.
    assert poller.links() == {"peer1": True}
    clock.now = 1000.0 + STALE_AFTER + 0.01
    assert poller.links() == {"peer1": False}


@pytest.mark.integration
async def test_links_and_reports_cover_every_configured_vantage(start_peer: StartPeer) -> None:
    good, bad = await start_peer(), await start_peer()
    bad.mode = "garbage"
    witness = await start_peer()
    witness.body = report(node="witness-1", role="witness", region="witness-site")
    clock = FakeClock(500.0)
    poller = poller_for({"peer1": good.url, "peer2": bad.url, "witness": witness.url}, clock)
    never = poller_for({"witness": f"http://127.0.0.1:{free_port()}"}, clock)

    async with polling(poller):
        await poll_all(poller)
    clock.now = 502.5

    assert poller.links() == {"peer1": True, "peer2": False, "witness": True}
    assert [(v.name, v.fresh) for v in poller.vantages()] == [
        ("watchdog-west (peer1)", True), ("peer2", False), ("witness-1 (witness)", True),
    ]
    assert poller.vantages()[2].role is Role.WITNESS
    reports = poller.reports()
    assert reports["peer1"] == {"url": good.url, "age": 2.5, "node": "watchdog-west",
                                "region": WEST, "error": None}
    assert reports["peer2"] == {"url": bad.url, "age": None, "node": None, "region": None,
                                "error": "report rejected: not JSON"}
    assert reports["witness"]["node"] == "witness-1"
    # Never heard from: not fresh, and a witness keeps its role.
    [unheard] = never.vantages()
    assert (unheard.name, unheard.role, unheard.fresh) == ("witness", Role.WITNESS, False)
    assert never.links() == {"witness": False}


# ---------------------------------------------------------------- run()


@pytest.mark.integration
async def test_run_polls_every_vantage_repeatedly_and_closes_its_session_when_cancelled(
    start_peer: StartPeer,
) -> None:
    peer, witness = await start_peer(), await start_peer()
    loop = asyncio.get_running_loop()
    poller = PeerPoller({"peer1": peer.url, "witness": witness.url}, interval=0.05,
                        timeout=TIMEOUT, stale_after=STALE_AFTER, clock=loop.time)
    running = asyncio.create_task(poller.run(), name="peer-poller")
    try:
        async with asyncio.timeout(5):
            await peer.requested(3)
            await witness.requested(3)
        assert poller.links() == {"peer1": True, "witness": True}
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    assert running.cancelled()
    assert poller._session is not None
    assert poller._session.closed


async def test_run_without_vantages_idles_until_cancelled() -> None:
    poller = poller_for({})
    running = asyncio.create_task(poller.run(), name="peer-poller")
    await asyncio.sleep(0.02)
    assert not running.done()

    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert running.cancelled()
    assert poller.vantages() == []
    assert poller.links() == {}
    assert poller.reports() == {}
