"""AWS in a box: moto in server mode over real HTTP, and a counting proxy in front of it.

Fixtures (import the ``*_fixture`` functions into a test module; each is registered
under the name without the suffix): ``aws_credentials`` (dummy keys, no shared
files, no instance metadata), ``moto_server`` (the endpoint URL of a moto server reset
before each test) and ``route53_counter`` (a :class:`Route53Counter` in front of moto
that counts record changes and can fail the next calls the way Route 53 fails).
Helpers create zones and read or write records with a plain aiobotocore client.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiobotocore.session import get_session  # type: ignore[import-untyped,unused-ignore]
from aiohttp import web

from agentaskit_dr.local_servers.tcp import free_port, wait_for_port

#: What moto's account looks like to the code under test; moto checks no signature.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Headers that describe one hop of HTTP, not the message: the proxy must not pass them on.
_HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
     "content-encoding"}
)


@pytest.fixture(name="aws_credentials")
def aws_credentials_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy keys in the environment, and nothing else the AWS chain could find.

    Shared config files point at nothing and instance metadata is off, so a developer's
    real ~/.aws is never read and no request leaves the machine for 169.254.169.254.
    """
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module", name="moto_process")
def moto_process_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``moto.server`` process per test module (it starts in about half a second)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=20.0, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(name="moto_server")
def moto_server_fixture(moto_process: str, aws_credentials: None) -> str:
    """The endpoint URL of a moto server holding nothing: reset before each test."""
    request = urllib.request.Request(f"{moto_process}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200, f"moto reset answered {answer.status}"
    return moto_process


@dataclass
class _Failure:
    status: int
    code: str
    on: Literal["change", "read"]
    before: Callable[[], Awaitable[None]] | None
    forward: bool


class Route53Counter:
    """A reverse proxy in front of moto that counts ChangeResourceRecordSets calls.

    ``changes`` counts the record changes moto accepted (a POST to ``.../rrset``),
    ``failed`` the calls this proxy answered with an injected error instead.
    ``fail_next`` makes the next matching calls fail as Route 53 fails: a 5xx, or a 400
    with an error code (Throttling, InvalidChangeBatch). ``before`` runs first, to play a
    rival writer between the actuator's read and its write. ``forward`` passes the call
    on to moto and answers with the error anyway: an answer lost after the change landed.
    ``after_next_change`` runs a callback once the next accepted change has landed.
    ``changes_pending`` makes GetChange answer PENDING, as while Route 53 propagates.
    ``batches`` keeps the XML body of each accepted change: what one batch carried.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.changes = 0
        self.batches: list[str] = []
        self.failed = 0
        self._failures: list[_Failure] = []
        self._after_change: list[Callable[[], Awaitable[None]]] = []
        self.changes_pending = False
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def fail_next(
        self, status: int, code: str = "", *, times: int = 1,
        on: Literal["change", "read"] = "change",
        before: Callable[[], Awaitable[None]] | None = None, forward: bool = False,
    ) -> None:
        """Answer the next ``times`` change (or read) calls with ``status``/``code``."""
        self._failures.extend(
            _Failure(status, code, on, before, forward) for _ in range(times)
        )

    def after_next_change(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` right after the next change moto accepts, before answering."""
        self._after_change.append(callback)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = _kind(request)
        if kind == "get_change" and self.changes_pending:
            return _pending_change(request.path.rsplit("/", 1)[-1])
        failure = next((f for f in self._failures if f.on == kind), None)
        if failure is not None:
            self._failures.remove(failure)
            self.failed += 1
            if failure.before is not None:
                await failure.before()
            if failure.forward:
                await self._forward(request, kind)
            return _error_response(failure.status, failure.code)
        return await self._forward(request, kind)

    async def _forward(self, request: web.Request, kind: str) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        sent = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=sent,
        ) as upstream:
            body = await upstream.read()
        if kind == "change" and upstream.status < 300:
            self.changes += 1
            self.batches.append(sent.decode())
            if self._after_change:
                await self._after_change.pop(0)()
        return web.Response(
            status=upstream.status, body=body,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS},
        )


def _kind(request: web.Request) -> str:
    path = request.path.rstrip("/")
    if "/change/" in path:
        return "get_change"
    if not path.endswith("/rrset"):
        return "other"
    return "change" if request.method == "POST" else "read"


def _pending_change(change_id: str) -> web.Response:
    body = (
        '<?xml version="1.0"?>\n<GetChangeResponse xmlns="https://route53.amazonaws.com/doc/'
        f'2013-04-01/"><ChangeInfo><Id>/change/{change_id}</Id><Status>PENDING</Status>'
        "<SubmittedAt>2026-01-01T00:00:00Z</SubmittedAt></ChangeInfo></GetChangeResponse>"
    )
    return web.Response(text=body, content_type="text/xml")


def _error_response(status: int, code: str) -> web.Response:
    if not code:
        return web.Response(status=status, text="Service Unavailable")
    body = (
        '<?xml version="1.0"?>\n<ErrorResponse xmlns="https://route53.amazonaws.com/doc/'
        f'2013-04-01/"><Error><Type>Sender</Type><Code>{code}</Code><Message>injected '
        f"by the test proxy</Message></Error><RequestId>test</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, text=body, content_type="text/xml")


# One session for every helper client: a new session parses the service model again.
_session = get_session()


@pytest.fixture(name="route53_counter")
async def route53_counter_fixture(moto_server: str) -> AsyncIterator[Route53Counter]:
    """A started :class:`Route53Counter` in front of ``moto_server``."""
    counter = Route53Counter(moto_server)
    await counter.start()
    try:
        yield counter
    finally:
        await counter.stop()


@contextlib.asynccontextmanager
async def route53(endpoint_url: str) -> AsyncIterator[Any]:
    """A plain aiobotocore Route 53 client, for test setup and checks."""
    async with _session.create_client(
        "route53", region_name="us-east-1", endpoint_url=endpoint_url
    ) as client:
        yield client


async def create_zone(endpoint_url: str, name: str) -> str:
    """Create a public hosted zone; its id without the ``/hostedzone/`` prefix."""
    async with route53(endpoint_url) as client:
        answer = await client.create_hosted_zone(Name=name, CallerReference=name)
    return str(answer["HostedZone"]["Id"]).removeprefix("/hostedzone/")


async def upsert(
    endpoint_url: str, zone_id: str, name: str, record_type: str, *values: str,
    ttl: int = 60, **extra: Any,
) -> None:
    """UPSERT one record set (``extra``: SetIdentifier, Weight, Failover)."""
    rrset = {"Name": name, "Type": record_type, "TTL": ttl,
             "ResourceRecords": [{"Value": value} for value in values], **extra}
    async with route53(endpoint_url) as client:
        await client.change_resource_record_sets(
            HostedZoneId=zone_id,
            ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": rrset}]},
        )


async def record_sets(endpoint_url: str, zone_id: str, name: str) -> list[dict[str, Any]]:
    """Every record set named ``name`` (any type), as Route 53 lists them."""
    async with route53(endpoint_url) as client:
        answer = await client.list_resource_record_sets(HostedZoneId=zone_id)
    return [r for r in answer["ResourceRecordSets"] if r["Name"].rstrip(".") == name]
