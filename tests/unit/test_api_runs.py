"""``POST /v1/failback`` and ``POST /v1/switchover`` on the real aiohttp app (issue 9)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.runs_routes import RunAnswer, RunBadRequest, RunRefused
from agentaskit_dr.api.server import build_app
from tests.unit.test_api_server import BEARER, FakeController, write_token


class FakeRuns:
    """Records calls; ``refusal`` makes it refuse like a non-holder or a busy daemon."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refusal: str | None = None

    async def failback(self, *, to: str | None, dry_run: bool) -> RunAnswer:
        return self._answer("failback", to=to, dry_run=dry_run)

    async def switchover(self, *, to: str, dry_run: bool) -> RunAnswer:
        if to == "mars-1":
            raise RunBadRequest("to: must be one of the regions: us-east-1, us-west-2")
        return self._answer("switchover", to=to, dry_run=dry_run)

    def _answer(self, kind: str, **params: Any) -> RunAnswer:
        self.calls.append((kind, params))
        if self.refusal is not None:
            raise RunRefused(self.refusal)
        if params["dry_run"]:
            return 200, {"dry_run": True, "plan": ["a", "b"]}
        return 202, {"started": True, "run_id": f"{kind}-1"}


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], FakeRuns]]:
    token = tmp_path / "token"
    write_token(token, "s3cret-control-token")
    runs = FakeRuns()
    app = build_app(FakeController(), metrics=Metrics(), token_file=token, runs=runs)
    async with TestClient(TestServer(app)) as client:
        yield client, runs


async def test_a_started_run_is_202_with_its_id_and_a_dry_run_200_with_the_plan(
    setup: tuple[TestClient[Any, Any], FakeRuns],
) -> None:
    client, runs = setup

    started = await client.post("/v1/failback", json={}, headers=BEARER)
    planned = await client.post("/v1/switchover", json={"to": "us-east-1", "dry_run": True},
                                headers=BEARER)

    assert started.status == 202
    assert await started.json() == {"started": True, "run_id": "failback-1"}
    assert planned.status == 200
    assert (await planned.json())["plan"] == ["a", "b"]
    assert runs.calls == [("failback", {"to": None, "dry_run": False}),
                          ("switchover", {"to": "us-east-1", "dry_run": True})]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_without_the_operator_token_nothing_starts(
    setup: tuple[TestClient[Any, Any], FakeRuns], headers: dict[str, str],
) -> None:
    client, runs = setup

    for path in ("/v1/failback", "/v1/switchover"):
        response = await client.post(path, json={"to": "us-east-1"}, headers=headers)
        assert response.status == 401
    assert runs.calls == []


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/switchover", {}, "to: required"),
    ("/v1/switchover", {"to": 3}, "to: expected a region name"),
    ("/v1/switchover", {"to": "us-east-1", "dry_run": "yes"}, "dry_run: expected true or"),
    ("/v1/failback", {"dry_run": 1}, "dry_run: expected true or false"),
    ("/v1/failback", {"reason": "x"}, "reason: unknown field"),
    ("/v1/failback", [1], "body: expected a JSON object"),
    ("/v1/switchover", {"to": "mars-1"}, "to: must be one of the regions"),
])
async def test_a_bad_body_is_400_naming_the_field(
    setup: tuple[TestClient[Any, Any], FakeRuns], path: str, body: Any, field: str,
) -> None:
    client, _ = setup

    response = await client.post(path, json=body, headers=BEARER)

    assert response.status == 400
    assert (await response.json())["error"].startswith(field)


async def test_a_refusal_is_409_with_its_reason(
    setup: tuple[TestClient[Any, Any], FakeRuns],
) -> None:
    client, runs = setup
    runs.refusal = "run failback-1 (failback) is active"

    response = await client.post("/v1/switchover", json={"to": "us-east-1"}, headers=BEARER)

    assert response.status == 409
    assert await response.json() == {"error": "run failback-1 (failback) is active"}


async def test_without_planned_runs_the_endpoints_do_not_exist(tmp_path: Path) -> None:
    token = tmp_path / "token"
    write_token(token, "s3cret-control-token")
    app = build_app(FakeController(), metrics=Metrics(), token_file=token)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/v1/failback", json={}, headers=BEARER)
    assert response.status == 404
