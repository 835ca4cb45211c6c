"""Random requests against the real app: never a 5xx it does not promise, never a crash,
never a state change without the valid token."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import MAX_BODY_BYTES, build_app
from tests.unit.test_api_server import TOKEN, FakeController

CONTROL_PATHS = ["/v1/pause", "/v1/resume", "/v1/ack", "/v1/failover"]
KNOWN_PATHS = [
    "/healthz", "/readyz", "/metrics", "/v1/status", "/v1/observations", *CONTROL_PATHS,
    "/v1/pause/", "/V1/PAUSE", "/v1/pause?reason=x", "/v1/../v1/ack", "/v1/%70ause", "/",
    "/ui/main", "/ui/page.js", "/ui/timeline/failover/fo-1.svg", "/ui/timeline/../../x.svg",
]
#: What the read-only status page (``/`` and ``/ui/...``) answers besides JSON.
PAGE_TYPES = {"text/html", "text/css", "text/javascript", "image/svg+xml"}
HEADER_TEXT = st.text(
    st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@dataclass(frozen=True)
class FuzzedRequest:
    method: str
    path: str
    authorization: str | None
    content_type: str | None
    body: bytes | None

    @property
    def has_valid_token(self) -> bool:
        """A superset of what the server accepts: it must never act outside it."""
        if self.authorization is None:
            return False
        scheme, _, credentials = self.authorization.partition(" ")
        return scheme.lower() == "bearer" and credentials.strip() == TOKEN


def _bodies() -> st.SearchStrategy[bytes | None]:
    control_objects = st.dictionaries(
        st.sampled_from(["reason", "dry_run", "until", ""]), JSON_VALUES, max_size=3
    )
    return st.one_of(
        st.none(),
        st.binary(max_size=200),
        JSON_VALUES.map(lambda value: json.dumps(value).encode()),
        control_objects.map(lambda value: json.dumps(value).encode()),
        st.sampled_from([MAX_BODY_BYTES - 2, MAX_BODY_BYTES + 1]).map(
            lambda size: b"{" + b" " * size + b"}"
        ),
    )


def _authorizations() -> st.SearchStrategy[str | None]:
    # The valid token often, so fuzzed bodies get past authentication to validation.
    return st.one_of(
        st.just(f"Bearer {TOKEN}"),
        st.none(),
        st.sampled_from([f"Bearer {TOKEN}", f"bearer  {TOKEN} ", f"Basic {TOKEN}", "Bearer",
                         f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}{TOKEN}", f"{TOKEN}"]),
        HEADER_TEXT,
        HEADER_TEXT.map(lambda text: f"Bearer {text}"),
    )


REQUESTS = st.builds(
    FuzzedRequest,
    method=st.just("POST") | st.sampled_from(
        ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PURGE"]
    ),
    path=st.one_of(
        st.sampled_from(CONTROL_PATHS),
        st.sampled_from(KNOWN_PATHS),
        # No control characters: a URL parser drops tab, CR and LF, so "/\r/x" would reach
        # the client as "//x", a network-path reference to host "x", not a path.
        st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30).map(
            lambda text: "/" + text.lstrip("/")),
    ),
    authorization=_authorizations(),
    content_type=st.none() | st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded",
         "multipart/form-data; boundary=x", "application/json; charset=latin-1"]
    ),
    body=_bodies(),
)


async def _start(controller: FakeController, token_file: Path | None) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(
        TestServer(build_app(controller, metrics=Metrics(), token_file=token_file))
    )
    await client.start_server()
    return client


async def _send(client: TestClient[Any, Any], request: FuzzedRequest) -> tuple[int, str, bytes]:
    headers = {}
    if request.authorization is not None:
        headers["Authorization"] = request.authorization
    if request.content_type is not None:
        headers["Content-Type"] = request.content_type
    async with client.request(
        request.method, URL(request.path), headers=headers, data=request.body
    ) as response:
        return response.status, response.content_type, await response.read()


@pytest.mark.parametrize("scenario", ["healthy", "broken", "control_disabled", "token_missing"])
def test_fuzzed_requests_never_crash_and_never_act_without_the_token(
    tmp_path: Path, scenario: str
) -> None:
    controller = FakeController()
    controller.broken = scenario == "broken"
    token_file: Path | None = tmp_path / "api-token"
    if scenario == "control_disabled":
        token_file = None
    elif scenario != "token_missing":
        (tmp_path / "api-token").write_text(TOKEN + "\n")

    acted: list[tuple[str, dict[str, Any]]] = []
    with asyncio.Runner() as runner:
        client = runner.run(_start(controller, token_file))
        try:

            @settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(request=REQUESTS)
            @example(request=FuzzedRequest(
                "POST", "/v1/pause", f"Bearer {TOKEN}", None, b'{"reason": "fuzz"}'
            ))
            def one_request(request: FuzzedRequest) -> None:
                controller.calls.clear()
                status, content_type, body = runner.run(_send(client, request))
                acted.extend(controller.calls)

                allowed_5xx = {503} if scenario in ("broken", "token_missing") else set()
                assert status < 500 or status in allowed_5xx, (status, body)
                if controller.calls:
                    assert request.has_valid_token, request
                    assert scenario in ("healthy", "broken")
                    assert len(controller.calls) == 1
                if content_type in PAGE_TYPES:
                    page = URL(request.path).path
                    assert status == 200, (status, body)
                    assert request.method in ("GET", "HEAD")
                    assert page == "/" or page.startswith("/ui/"), page
                elif request.method != "HEAD" and content_type != "text/plain":
                    assert content_type == "application/json", (status, body)
                    payload = json.loads(body)
                    assert isinstance(payload, dict)
                    assert status < 400 or isinstance(payload["error"], str)
                if content_type == "text/plain":
                    assert status == 200
                    assert URL(request.path).path == "/metrics"

            one_request()
        finally:
            runner.run(client.close())
    # The run reached the controller at all, so "never without the token" was tested.
    assert bool(acted) == (scenario in ("healthy", "broken"))
