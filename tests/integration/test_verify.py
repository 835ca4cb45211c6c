"""Runbook step 5, verify services, against real HTTP endpoints and a real PostgreSQL pair."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web

from agentaskit_dr.actuators.verify import ServiceVerifier
from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.ports import ActuationFailed, StaleEpoch
from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration

RUN = "failover-2024-0001"


class Services:
    """Health endpoints: /ok and /api answer 200, /broken 500, /warming 503 twice then 200."""

    def __init__(self) -> None:
        self.base = ""
        self.hits: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_get("/{name}", self._health)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    async def _health(self, request: web.Request) -> web.Response:
        hits = self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if request.path == "/broken" or (request.path == "/warming" and hits <= 2):
            return web.Response(status=500 if request.path == "/broken" else 503)
        return web.Response(text="ok")


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    server = Services()
    runner = web.AppRunner(server.app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    server.base = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def verifier(urls: list[str], dsn: str, *, timeout: float = 5.0) -> ServiceVerifier:
    return ServiceVerifier(urls, dsn, timeout=timeout, interval=0.1, check_timeout=0.3)


async def write_check_row(dsn: str) -> tuple[str, int] | None:
    conn = await asyncpg.connect(dsn, timeout=2)
    try:
        if await conn.fetchval("SELECT to_regclass('agentaskit_dr.write_check') IS NULL"):
            return None
        row = await conn.fetchrow("SELECT run, epoch FROM agentaskit_dr.write_check WHERE id = 1")
    finally:
        await conn.close()
    return None if row is None else (row["run"], row["epoch"])


async def test_verify_passes_when_services_answer_and_the_new_primary_takes_writes(
    services: Services, pg_pair: PostgresPair
) -> None:
    step = verifier([services.url("/ok"), services.url("/api")], pg_pair.primary.dsn)
    try:
        outcome = await step.apply(epoch=7, failover_id=RUN)
    finally:
        await step.close()

    assert step.name == "verify_services"
    assert outcome.changed is True
    assert outcome.data["urls"] == {services.url("/ok"): 200, services.url("/api"): 200}
    assert outcome.data["attempts"] == 1
    assert 0 < outcome.data["write_check_ms"] < 1000
    assert await write_check_row(pg_pair.primary.dsn) == (RUN, 7)


async def test_verify_again_under_the_same_epoch_passes_and_an_older_epoch_is_refused(
    services: Services, pg_pair: PostgresPair
) -> None:
    step = verifier([services.url("/ok")], pg_pair.primary.dsn)
    try:
        await step.apply(epoch=7, failover_id=RUN)
        again = await step.apply(epoch=7, failover_id=RUN)
        with pytest.raises(StaleEpoch, match="verified under epoch 7, newer than 6"):
            await step.apply(epoch=6, failover_id="failover-old-leader")
    finally:
        await step.close()
    assert again.data["attempts"] == 1
    assert await write_check_row(pg_pair.primary.dsn) == (RUN, 7)


async def test_verify_waits_for_a_service_that_is_still_warming_up(
    services: Services, pg_pair: PostgresPair
) -> None:
    step = verifier([services.url("/ok"), services.url("/warming")], pg_pair.primary.dsn)
    try:
        outcome = await step.apply(epoch=3, failover_id=RUN)
    finally:
        await step.close()
    assert outcome.data["attempts"] == 3
    assert services.hits["/warming"] == 3


async def test_a_failing_endpoint_fails_the_step_naming_the_url_and_status(
    services: Services, pg_pair: PostgresPair
) -> None:
    step = verifier([services.url("/ok"), services.url("/broken")], pg_pair.primary.dsn,
                    timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(ActuationFailed) as failed:
            await step.apply(epoch=7, failover_id=RUN)
    finally:
        await step.close()
    assert time.monotonic() - started < 2.0
    message = str(failed.value)
    assert re.fullmatch(
        rf"services not verified within 1s \(\d+ rounds\): {services.url('/broken')}: HTTP 500",
        message,
    )
    assert services.hits["/broken"] > 1  # retried in rounds before giving up


async def test_a_read_only_server_fails_the_step_as_read_only(
    services: Services, pg_pair: PostgresPair
) -> None:
    # The replica: a hot standby, as a promotion that never happened would leave it.
    step = verifier([services.url("/ok")], pg_pair.replica.dsn, timeout=0.5)
    try:
        with pytest.raises(ActuationFailed) as failed:
            await step.apply(epoch=7, failover_id=RUN)
    finally:
        await step.close()
    replica = f"127.0.0.1:{pg_pair.replica.port}/postgres"
    assert f"new primary {replica} is read-only (a standby or fenced): cannot execute" in str(
        failed.value
    )
    assert services.url("/ok") not in str(failed.value)


async def test_an_unreachable_primary_and_service_are_both_named(services: Services) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/health"
    dsn = f"postgresql://postgres:s3cr3tpw@127.0.0.1:{free_port()}/postgres"
    step = verifier([dead_url], dsn, timeout=0.5)
    try:
        with pytest.raises(ActuationFailed) as failed:
            await step.apply(epoch=1, failover_id=RUN)
    finally:
        await step.close()
    message = str(failed.value)
    assert f"{dead_url}: connection refused" in message
    assert "new primary 127.0.0.1:" in message
    assert "unreachable" in message
    assert "s3cr3tpw" not in message


async def test_describe_reports_each_check_as_it_stands_without_writing(
    services: Services, pg_pair: PostgresPair
) -> None:
    step = verifier([services.url("/ok"), services.url("/broken")], pg_pair.replica.dsn)
    try:
        text = await step.describe()
    finally:
        await step.close()
    assert f"GET {services.url('/ok')} answers 2xx (now: HTTP 200)" in text
    assert f"GET {services.url('/broken')} answers 2xx (now: HTTP 500)" in text
    assert "(now: in recovery (a standby: the write would fail))" in text
    assert await write_check_row(pg_pair.primary.dsn) is None


@pytest.mark.parametrize(
    ("urls", "options", "message"),
    [
        ([], {}, "at least one health URL"),
        (["ftp://x.example/h"], {}, "not an http(s) URL: ftp://x.example/h"),
        (["https://x.example/h"], {"interval": 0}, "interval must be positive, got 0"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(
    urls: list[str], options: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServiceVerifier(urls, "postgresql://postgres@127.0.0.1:1/postgres", **options)


async def test_a_primary_that_accepts_but_never_answers_fails_within_the_deadline(
    services: Services, pg_pair: PostgresPair
) -> None:
    pg_pair.primary.pause()  # SIGSTOP: the kernel still accepts the TCP connection
    step = verifier([services.url("/ok")], pg_pair.primary.dsn, timeout=0.6)
    started = time.monotonic()
    try:
        with pytest.raises(
            ActuationFailed, match=r"new primary 127\.0\.0\.1:\d+/postgres: no answer within 0\.3s$"
        ):
            await step.apply(epoch=7, failover_id=RUN)
    finally:
        await step.close()
        pg_pair.primary.resume()
    assert time.monotonic() - started < 1.5
