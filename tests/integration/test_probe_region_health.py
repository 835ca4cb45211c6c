"""RegionHealthProbe against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.ports import HttpAnswer, Probe
from agentaskit_dr.probes import RegionHealthProbe

pytestmark = pytest.mark.integration


class HealthServer:
    """Endpoints a region may answer with; counts the requests each path received."""

    def __init__(self) -> None:
        self.base = ""
        self.hits: dict[str, int] = {}
        # The client port of every request: one port per connection the probe opened.
        self.client_ports: list[int] = []
        # Set at teardown so /slow handlers end and the server shuts down at once.
        self.release_slow = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/ok", self.ok)
        self.app.router.add_get("/ok-too", self.ok)
        self.app.router.add_get("/fail", self.fail)
        self.app.router.add_get("/slow", self.slow)
        self.app.router.add_get("/redirect", self.redirect)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def _hit(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        assert request.transport is not None
        self.client_ports.append(request.transport.get_extra_info("peername")[1])

    async def ok(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(text="ok")

    async def fail(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(status=503, text="draining")

    async def slow(self, request: web.Request) -> web.Response:
        self._hit(request)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release_slow.wait(), 5.0)
        return web.Response(text="late")

    async def redirect(self, request: web.Request) -> web.Response:
        self._hit(request)
        raise web.HTTPFound(self.url("/ok"))


@pytest.fixture
async def health_server() -> AsyncIterator[HealthServer]:
    server = HealthServer()
    runner = web.AppRunner(server.app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    server.base = f"http://{host}:{port}"
    try:
        yield server
    finally:
        server.release_slow.set()
        await runner.cleanup()


def make_probe(
    urls: list[str], *, timeout: float = 2.0, fraction: float = 0.5
) -> RegionHealthProbe:
    return RegionHealthProbe("us-west-2", urls, timeout=timeout, healthy_fraction=fraction)


async def test_region_with_two_of_three_urls_answering_2xx_is_healthy_at_half(
    health_server: HealthServer,
) -> None:
    probe = make_probe([health_server.url(p) for p in ("/ok", "/ok-too", "/fail")])
    try:
        assert isinstance(probe, Probe)
        observation = await probe.observe()
    finally:
        await probe.close()

    assert observation.healthy
    assert observation.region == "us-west-2"
    statuses = [(c.ok, c.status) for c in observation.checks]
    assert statuses == [(True, 200), (True, 200), (False, 503)]
    assert observation.checks[2].error == "HTTP 503"
    assert observation.detail == "2/3 health URLs of us-west-2 answered 2xx (1 answered badly)"


async def test_region_with_one_of_three_urls_answering_2xx_is_unhealthy_at_half(
    health_server: HealthServer,
) -> None:
    probe = make_probe([health_server.url(p) for p in ("/ok", "/fail", "/fail")])
    try:
        observation = await probe.observe()
    finally:
        await probe.close()

    assert not observation.healthy
    assert [c.ok for c in observation.checks] == [True, False, False]


async def test_slow_url_fails_after_the_timeout_not_after_it_answers(
    health_server: HealthServer,
) -> None:
    probe = make_probe([health_server.url("/ok"), health_server.url("/slow")], timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        observation = await probe.observe()
    finally:
        await probe.close()
    took = loop.time() - started

    ok_check, slow_check = observation.checks
    assert ok_check.ok
    assert not slow_check.ok
    assert slow_check.status is None
    assert slow_check.error == "timeout after 0.5s"
    assert 0.4 < slow_check.latency < 1.5
    assert took < 1.5, "checks run concurrently and each stops at the timeout"
    assert health_server.hits["/slow"] == 1
    assert observation.healthy, "1 of 2 meets the 0.5 fraction"


async def test_closed_port_counts_as_a_failed_url(health_server: HealthServer) -> None:
    closed = f"http://127.0.0.1:{free_port()}/health"
    probe = make_probe([health_server.url("/ok"), closed], fraction=1.0)
    try:
        observation = await probe.observe()
    finally:
        await probe.close()

    assert not observation.healthy
    failed = observation.checks[1]
    assert (failed.ok, failed.status, failed.error) == (False, None, "connection refused")


async def test_a_load_balancer_answering_503_and_one_silent_are_both_failures_kept_apart(
    health_server: HealthServer,
) -> None:
    """A 5xx is the plan's trigger as much as silence, but they are different faults: an
    answer means the load balancer is up and its backends are not."""
    closed = f"http://127.0.0.1:{free_port()}/health"
    probe = make_probe([health_server.url("/fail"), closed, health_server.url("/slow")],
                       timeout=0.3)
    try:
        observation = await probe.observe()
    finally:
        await probe.close()

    assert not observation.healthy
    answers = [(c.answer, c.status) for c in observation.checks]
    assert answers == [(HttpAnswer.ANSWERED_BADLY, 503), (HttpAnswer.NO_ANSWER, None),
                       (HttpAnswer.NO_ANSWER, None)]
    assert observation.count(HttpAnswer.ANSWERED_BADLY) == 1
    assert observation.count(HttpAnswer.NO_ANSWER) == 2
    assert observation.detail == ("0/3 health URLs of us-west-2 answered 2xx "
                                  "(1 answered badly, 2 did not answer)")


async def test_redirect_is_not_followed_and_counts_as_failed(health_server: HealthServer) -> None:
    probe = make_probe([health_server.url("/redirect")], fraction=1.0)
    try:
        observation = await probe.observe()
    finally:
        await probe.close()

    (check,) = observation.checks
    assert not observation.healthy
    assert (check.ok, check.status) == (False, 302)
    assert check.error == "HTTP 302: redirect not followed"
    assert "/ok" not in health_server.hits


async def test_credentials_in_a_health_url_are_never_reported(health_server: HealthServer) -> None:
    with_secret = health_server.url("/ok").replace("http://", "http://monitor:s3cret-pw@")
    probe = make_probe([with_secret, f"http://monitor:s3cret-pw@127.0.0.1:{free_port()}/"])
    try:
        observation = await probe.observe()
    finally:
        await probe.close()

    assert observation.checks[0].ok
    for check in observation.checks:
        assert "s3cret-pw" not in check.url
        assert "s3cret-pw" not in (check.error or "")


async def test_session_passed_in_is_used_and_left_open(health_server: HealthServer) -> None:
    async with aiohttp.ClientSession() as session:
        probe = RegionHealthProbe(
            "us-east-1",
            [health_server.url("/ok")],
            timeout=1.0,
            healthy_fraction=1.0,
            session=session,
        )
        observation = await probe.observe()
        await probe.close()
        assert not session.closed
    assert observation.healthy


def kept_probe(url: str, session_max_age: float) -> RegionHealthProbe:
    """One URL, healthy only when it answers 2xx, connections kept ``session_max_age``."""
    return RegionHealthProbe("us-east-1", [url], timeout=1.0, healthy_fraction=1.0,
                             session_max_age=session_max_age)


async def serve_on(server: HealthServer, port: int) -> web.AppRunner:
    """``server``'s endpoints on a fixed port (so a restart keeps its URL)."""
    runner = web.AppRunner(server.app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.base = f"http://127.0.0.1:{port}"
    return runner


async def test_checks_share_a_kept_connection_until_it_ages_out(
    health_server: HealthServer,
) -> None:
    probe = kept_probe(health_server.url("/ok"), 0.6)
    try:
        for _ in range(3):
            assert (await probe.observe()).healthy
        await asyncio.sleep(0.7)
        assert (await probe.observe()).healthy
    finally:
        await probe.close()
    first, second, third, after_age = health_server.client_ports
    assert first == second == third  # one kept connection
    assert after_age != first  # aged out: a new connection, as a new client would open


async def test_session_max_age_zero_opens_a_new_connection_per_check(
    health_server: HealthServer,
) -> None:
    probe = kept_probe(health_server.url("/ok"), 0)
    try:
        for _ in range(3):
            assert (await probe.observe()).healthy
    finally:
        await probe.close()
    assert len(set(health_server.client_ports)) == 3


async def test_a_kept_connection_the_server_closed_is_not_an_outage() -> None:
    """The server restarts between two checks (its kept connection is gone): the check
    goes out again on a new connection and the region stays healthy."""
    port, server = free_port(), HealthServer()
    runner = await serve_on(server, port)
    probe = kept_probe(server.url("/ok"), 60)
    try:
        assert (await probe.observe()).healthy
        await runner.cleanup()  # closes the kept connection from the server's side
        runner = await serve_on(server, port)
        observation = await probe.observe()
    finally:
        await probe.close()
        await runner.cleanup()
    assert observation.healthy, observation.checks
    assert len(server.client_ports) == 2
    assert server.client_ports[0] != server.client_ports[1]


async def test_a_stopped_server_behind_a_kept_connection_is_a_failure() -> None:
    server = HealthServer()
    runner = await serve_on(server, free_port())
    probe = kept_probe(server.url("/ok"), 60)
    try:
        assert (await probe.observe()).healthy
        await runner.cleanup()
        observation = await probe.observe()
    finally:
        await probe.close()
    assert not observation.healthy
    assert observation.checks[0].error == "connection refused"


@pytest.mark.parametrize(
    ("urls", "fraction", "timeout"),
    [
        ([], 0.5, 1.0),
        (["ftp://127.0.0.1/health"], 0.5, 1.0),
        (["http://127.0.0.1/ok"], 0.0, 1.0),
        (["http://127.0.0.1/ok"], 1.5, 1.0),
        (["http://127.0.0.1/ok"], 0.5, 0.0),
    ],
)
def test_bad_settings_are_refused_at_construction(
    urls: list[str], fraction: float, timeout: float
) -> None:
    with pytest.raises(ValueError, match="region us-west-2"):
        RegionHealthProbe("us-west-2", urls, timeout=timeout, healthy_fraction=fraction)
    with pytest.raises(ValueError, match="region us-west-2: session_max_age"):
        RegionHealthProbe("us-west-2", ["http://127.0.0.1/ok"], timeout=1.0,
                          healthy_fraction=0.5, session_max_age=-1)


def test_failure_reports_every_url_failed_without_credentials() -> None:
    probe = make_probe(["http://monitor:s3cret-pw@127.0.0.1:1/ok", "http://127.0.0.1:1/live"])

    observation = probe.failure("probe overran its deadline", 3.0)

    assert not observation.healthy
    assert [(c.url, c.ok, c.error) for c in observation.checks] == [
        ("http://127.0.0.1:1/ok", False, "probe overran its deadline"),
        ("http://127.0.0.1:1/live", False, "probe overran its deadline"),
    ]
