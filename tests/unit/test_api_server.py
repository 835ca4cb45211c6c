"""The HTTP API as an operator and a peer meet it, on the real aiohttp app.

Also home to ``FakeController``, the recording controller the fuzz and client tests use.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from agentaskit_dr.api.client import ApiClient
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import (
    MAX_BODY_BYTES,
    ApiServer,
    ControlRefused,
    build_app,
    parse_listen,
)

TOKEN = "s3cret-control-token"
STATE_CHANGING = {"pause", "resume", "acknowledge", "failover"}


class FakeController:
    """Records every state-changing call; knobs make it dead, unready, refusing or broken."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.alive_now = True
        self.readiness = (True, "config loaded, probes running")
        self.refusal: str | None = None
        self.broken = False
        self.status_payload: dict[str, Any] = {
            "region": "us-east-1", "role": "secondary", "phase": "watching",
            "verdict": "healthy", "epoch": 7, "lock_holder": "east-1", "paused": False,
            "last_failover": None,
        }

    def _check(self) -> None:
        if self.broken:
            raise RuntimeError("controller blew up")

    def status(self) -> dict[str, Any]:
        self._check()
        return self.status_payload

    def observations(self) -> dict[str, Any]:
        self._check()
        return {"probes": {"db": {"reachable": True, "latency": 0.004}}}

    def ready(self) -> tuple[bool, str]:
        self._check()
        return self.readiness

    def alive(self) -> bool:
        self._check()
        return self.alive_now

    async def _act(self, action: str, **params: Any) -> dict[str, Any]:
        self.calls.append((action, params))
        self._check()
        if self.refusal is not None:
            raise ControlRefused(self.refusal)
        return {"action": action, "done": True, **params}

    async def pause(self, reason: str | None, by: str | None = None) -> dict[str, Any]:
        return await self._act("pause", reason=reason, **({"by": by} if by else {}))

    async def resume(self, by: str | None = None) -> dict[str, Any]:
        return await self._act("resume", **({"by": by} if by else {}))

    async def acknowledge(self, by: str | None = None) -> dict[str, Any]:
        return await self._act("acknowledge", **({"by": by} if by else {}))

    async def failover(self, *, dry_run: bool, reason: str | None) -> dict[str, Any]:
        return await self._act("failover", dry_run=dry_run, reason=reason)

    async def fence_own_primary(self, *, epoch: int, failover_id: str) -> dict[str, Any]:
        self.calls.append(("fence_own_primary", {"epoch": epoch, "failover_id": failover_id}))
        return {"fenced": True, "server_answers": True, "detail": "stopped"}


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def controller() -> FakeController:
    return FakeController()


def write_token(path: Path, text: str) -> None:
    """Replace the token file as an operator rotating it would (kept sync: a tiny write)."""
    path.write_text(text)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-token"
    write_token(path, TOKEN + "\n")
    return path


@pytest.fixture
async def client(
    controller: FakeController, token_file: Path
) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(controller, metrics=Metrics(), token_file=token_file)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def answer(response: Any) -> dict[str, Any]:
    """The JSON body, after checking the content type says JSON."""
    assert response.content_type == "application/json"
    payload: dict[str, Any] = await response.json()
    return payload


# ---------------------------------------------------------------- reads


async def test_healthz_is_200_while_the_engine_makes_progress_and_503_when_stuck(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await answer(response) == {"ok": True}

    controller.alive_now = False
    response = await client.get("/healthz")
    assert response.status == 503
    assert await answer(response) == {"ok": False}


async def test_readyz_gives_the_reason_it_is_not_ready(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    assert (await answer(response))["ready"] is True

    controller.readiness = (False, "probes not started")
    response = await client.get("/readyz")
    assert response.status == 503
    assert await answer(response) == {"ready": False, "reason": "probes not started"}


async def test_status_and_observations_are_open_to_readers_without_a_token(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    response = await client.get("/v1/status")
    assert response.status == 200
    assert await answer(response) == controller.status_payload

    response = await client.get("/v1/observations")
    assert response.status == 200
    assert (await answer(response))["probes"]["db"]["reachable"] is True


async def test_status_with_an_unmeasured_lag_is_valid_json_with_null(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    controller.status_payload = {"lag_seconds": math.nan, "history": [math.inf, 1.5]}

    response = await client.get("/v1/status")

    text = await response.text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON {c}")) == {
        "lag_seconds": None, "history": [None, 1.5],
    }


async def test_metrics_is_prometheus_text(client: TestClient[Any, Any]) -> None:
    response = await client.get("/metrics")

    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert "agentaskit_dr_lock_held 0.0" in text
    assert 'agentaskit_dr_state{phase="watching"} 0.0' in text


# ---------------------------------------------------------------- control with the token


async def test_pause_with_the_token_pauses_and_is_logged(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    with capture_logs() as events:
        response = await client.post(
            "/v1/pause", json={"reason": "DB maintenance"}, headers=BEARER
        )

    assert response.status == 200
    assert await answer(response) == {"action": "pause", "done": True, "reason": "DB maintenance"}
    assert controller.calls == [("pause", {"reason": "DB maintenance"})]
    [event] = [e for e in events if e["event"] == "api_control"]
    assert event["action"] == "pause"
    assert event["result"] == "ok"
    assert event["reason"] == "DB maintenance"


@pytest.mark.parametrize(
    ("path", "body", "expected_call"),
    [
        ("/v1/pause", None, ("pause", {"reason": None})),
        ("/v1/resume", None, ("resume", {})),
        ("/v1/resume", {}, ("resume", {})),
        ("/v1/ack", None, ("acknowledge", {})),
        ("/v1/failover", None, ("failover", {"dry_run": False, "reason": None})),
        ("/v1/failover", {"dry_run": True, "reason": "drill"},
         ("failover", {"dry_run": True, "reason": "drill"})),
    ],
)
async def test_each_control_call_reaches_the_controller_once(
    client: TestClient[Any, Any],
    controller: FakeController,
    path: str,
    body: dict[str, Any] | None,
    expected_call: tuple[str, dict[str, Any]],
) -> None:
    response = await client.post(path, json=body, headers=BEARER)

    assert response.status == 200, await response.text()
    assert controller.calls == [expected_call]


async def test_a_refused_failover_is_409_with_the_controllers_reason(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    controller.refusal = "not the leader: east-2 holds the lock"

    with capture_logs() as events:
        response = await client.post("/v1/failover", json={}, headers=BEARER)

    assert response.status == 409
    assert await answer(response) == {"error": "not the leader: east-2 holds the lock"}
    [event] = [e for e in events if e["event"] == "api_control"]
    assert event["result"] == "refused"
    assert event["action"] == "failover"
    assert event["dry_run"] is False
    assert event["refusal"] == "not the leader: east-2 holds the lock"


async def test_a_controller_failure_is_503_and_logged_never_500(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    controller.broken = True

    with capture_logs() as events:
        control = await client.post("/v1/ack", headers=BEARER)
        status = await client.get("/v1/status")

    for response in (control, status):
        assert response.status == 503
        assert await answer(response) == {"error": "internal error, see logs"}
    assert [e["path"] for e in events if e["event"] == "api_error"] == ["/v1/ack", "/v1/status"]
    assert [e["result"] for e in events if e["event"] == "api_control"] == ["error"]


# ---------------------------------------------------------------- the token


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", "Bearer wrong-token",
     f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer s3cret-contrôl-token"],
)
async def test_control_without_the_right_token_is_401_and_never_reaches_the_controller(
    client: TestClient[Any, Any], controller: FakeController, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    with capture_logs() as events:
        response = await client.post("/v1/failover", json={}, headers=headers)

    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "unauthorized" in (await answer(response))["error"]
    assert controller.calls == []
    [event] = [e for e in events if e["event"] == "api_unauthorized"]
    assert event["path"] == "/v1/failover"
    assert event["remote"] == "127.0.0.1"
    presented = (authorization or "").partition(" ")[2]
    assert not presented or presented not in repr(event)


async def test_the_scheme_is_case_insensitive(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    response = await client.post("/v1/resume", headers={"Authorization": f"bearer {TOKEN}"})

    assert response.status == 200
    assert controller.calls == [("resume", {})]


async def test_a_rotated_token_file_takes_effect_at_the_next_request(
    client: TestClient[Any, Any], controller: FakeController, token_file: Path
) -> None:
    write_token(token_file, "rotated-token\n")

    old = await client.post("/v1/resume", headers=BEARER)
    new = await client.post("/v1/resume", headers={"Authorization": "Bearer rotated-token"})

    assert (old.status, new.status) == (401, 200)
    assert controller.calls == [("resume", {})]


async def test_without_a_token_file_the_control_api_is_disabled(
    controller: FakeController,
) -> None:
    app = build_app(controller, metrics=Metrics(), token_file=None)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/v1/pause", headers=BEARER)
        reads = await client.get("/v1/status")

        assert response.status == 403
        assert await answer(response) == {
            "error": "control API disabled: set api.token_file"
        }
        assert reads.status == 200
    assert controller.calls == []


@pytest.mark.parametrize("problem", ["missing", "empty", "blank"])
async def test_an_unusable_token_file_refuses_every_token_with_503(
    controller: FakeController, tmp_path: Path, problem: str
) -> None:
    token_file = tmp_path / "api-token"
    if problem != "missing":
        write_token(token_file, "" if problem == "empty" else " \n\t\n")
    app = build_app(controller, metrics=Metrics(), token_file=token_file)

    async with TestClient(TestServer(app)) as client:
        with capture_logs() as events:
            responses = [
                await client.post("/v1/pause", headers=headers)
                for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"})
            ]
        for response in responses:
            assert response.status == 503
            assert "token file is unreadable or empty" in (await answer(response))["error"]
    assert controller.calls == []
    assert {e["file"] for e in events if e["event"] == "api_token_unreadable"} == {
        str(token_file)
    }


# ---------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/v1/pause", b"not json", "body: expected a JSON object"),
        ("/v1/pause", b"[1, 2]", "body: expected a JSON object, got an array"),
        ("/v1/pause", b"\xff\xfe{}", "body: expected a JSON object"),
        ("/v1/pause", b"[" * 5000 + b"]" * 5000, "body: expected a JSON object"),
        ("/v1/pause", b'{"reason": 5}', "reason: expected a string or null, got a number"),
        ("/v1/pause", b'{"reason": "x", "until": 3}', "until: unknown field (allowed: by, reason)"),
        ("/v1/resume", b'{"reason": "x"}', "reason: unknown field (allowed: by)"),
        ("/v1/failover", b'{"dry_run": "yes"}', "dry_run: expected true or false, got a string"),
        ("/v1/failover", b'{"dry_run": 1}', "dry_run: expected true or false, got a number"),
        ("/v1/pause", json.dumps({"reason": "x" * 1001}).encode(), "reason: longer than 1000"),
        ("/v1/pause", b"{" + b" " * MAX_BODY_BYTES + b"}", "request body too large"),
    ],
)
async def test_a_malformed_body_is_400_naming_the_field(
    client: TestClient[Any, Any], controller: FakeController, path: str, body: bytes, named: str
) -> None:
    response = await client.post(path, data=body, headers=BEARER)

    assert response.status == 400
    assert (await answer(response))["error"].startswith(named)
    assert controller.calls == []


async def test_a_too_large_chunked_body_is_400(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    response = await client.post("/v1/pause", data=chunks(), headers=BEARER)

    assert response.status == 400
    assert "too large" in (await answer(response))["error"]
    assert controller.calls == []


async def test_the_body_is_checked_only_after_the_token(
    client: TestClient[Any, Any],
) -> None:
    response = await client.post("/v1/pause", data=b"not json")

    assert response.status == 401


# ---------------------------------------------------------------- routing


async def test_unknown_path_is_404_json(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/nope")

    assert response.status == 404
    assert await answer(response) == {"error": "not found: GET /v1/nope"}


async def test_wrong_method_is_405_json_with_allow(
    client: TestClient[Any, Any], controller: FakeController
) -> None:
    get_control = await client.get("/v1/failover", headers=BEARER)
    post_status = await client.post("/v1/status", headers=BEARER)

    assert get_control.status == 405
    assert get_control.headers["Allow"] == "POST"
    assert (await answer(get_control))["error"].startswith("method not allowed")
    assert post_status.status == 405
    assert controller.calls == []


# ---------------------------------------------------------------- the server


async def test_api_server_serves_on_the_port_it_bound_and_stops(
    controller: FakeController, token_file: Path
) -> None:
    server = ApiServer(controller, metrics=Metrics(), token_file=token_file)
    await server.start("127.0.0.1:0")
    try:
        assert server.port > 0
        status = await ApiClient(f"http://127.0.0.1:{server.port}").get("/v1/status")
        assert status == controller.status_payload
    finally:
        await server.stop()
    await server.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


async def test_api_server_on_a_taken_port_raises_and_can_retry(
    controller: FakeController,
) -> None:
    first = ApiServer(controller, metrics=Metrics(), token_file=None)
    second = ApiServer(controller, metrics=Metrics(), token_file=None)
    await first.start("127.0.0.1:0")
    try:
        with pytest.raises(OSError, match="address already in use"):
            await second.start(f"127.0.0.1:{first.port}")
        await second.start("127.0.0.1:0")
        await second.stop()
    finally:
        await first.stop()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:8787", ("127.0.0.1", 8787)), ("[::1]:0", ("::1", 0)),
     ("localhost:65535", ("localhost", 65535))],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen", ["8787", ":8787", "host:", "host:http", "host:65536", "host:²", "host:-1", ""]
)
def test_parse_listen_names_the_field(listen: str) -> None:
    with pytest.raises(ValueError, match=r"api\.listen: expected 'host:port'"):
        parse_listen(listen)


# ---------------------------------------------------------------- a peer's fence request

PEER_TOKEN = "peer-token-for-fences"


async def test_a_fence_request_needs_a_peer_credential_and_is_off_without_one(
    controller: FakeController, token_file: Path, tmp_path: Path,
) -> None:
    open_app = build_app(controller, metrics=Metrics(), token_file=token_file)
    async with TestClient(TestServer(open_app)) as open_client:
        response = await open_client.post("/v1/fence-primary", json={"epoch": 3},
                                          headers=BEARER)
        assert response.status == 403
        assert "need a peer credential" in (await answer(response))["error"]
    peer_tokens = tmp_path / "peer-token"
    peer_tokens.write_text(PEER_TOKEN + "\n")
    app = build_app(controller, metrics=Metrics(), token_file=token_file,
                    peer_token_file=peer_tokens)
    async with TestClient(TestServer(app)) as peer_client:
        # The operator's token is not a peer credential.
        response = await peer_client.post("/v1/fence-primary", json={"epoch": 3},
                                          headers=BEARER)
        assert response.status == 401
        assert controller.calls == []
        peer = {"Authorization": f"Bearer {PEER_TOKEN}"}
        for body, field in (({"epoch": 0}, "epoch"), ({"epoch": "3"}, "epoch"),
                            ({"epoch": True}, "epoch"), ({"epoch": 3, "x": 1}, "x")):
            response = await peer_client.post("/v1/fence-primary", json=body, headers=peer)
            assert response.status == 400
            assert (await answer(response))["error"].startswith(f"{field}:")
        assert controller.calls == []
        response = await peer_client.post("/v1/fence-primary",
                                          json={"epoch": 3, "failover_id": "fo-1"}, headers=peer)
        assert response.status == 200
        assert (await answer(response))["fenced"] is True
    assert controller.calls == [("fence_own_primary", {"epoch": 3, "failover_id": "fo-1"})]
