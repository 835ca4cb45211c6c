"""``POST /v1/host-steps/{step}``: peers only, the body checked field by field, and the
answer of the host steps passed through (the jobs themselves: test_host_steps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import build_app
from agentaskit_dr.runtime.host_steps import HostStepAnswer
from tests.unit.test_api_server import BEARER, PEER_TOKEN, FakeController, answer

PEER = {"Authorization": f"Bearer {PEER_TOKEN}"}
GOOD = {"run_id": "failback-20261129T120000Z-e3", "epoch": 3, "holder": "op/cli:root",
        "region": "us-west-2", "params": {"timeout": 60}}


@dataclass
class Steps:
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def request(self, step: str, **body: Any) -> HostStepAnswer:
        self.calls.append((step, body))
        return HostStepAnswer(202, {"state": "running", "progress": []})


def app(tmp_path: Path, steps: Steps | None, *, peers: bool = True) -> TestServer:
    tokens = tmp_path / "peer-token"
    tokens.write_text(PEER_TOKEN + "\n")
    return TestServer(build_app(FakeController(), metrics=Metrics(), token_file=None,
                                peer_token_file=tokens if peers else None, host_steps=steps))


async def test_only_peers_may_ask_and_the_body_is_checked(tmp_path: Path) -> None:
    steps = Steps()
    async with TestClient(app(tmp_path, steps, peers=False)) as open_client:
        response = await open_client.post("/v1/host-steps/sync-primary", json=GOOD,
                                          headers=PEER)
        assert response.status == 403
    async with TestClient(app(tmp_path, steps)) as client:
        response = await client.post("/v1/host-steps/sync-primary", json=GOOD, headers=BEARER)
        assert response.status == 401
        response = await client.post("/v1/host-steps/rm-rf", json=GOOD, headers=PEER)
        assert response.status == 404
        assert "known: sync-primary, switchover" in (await answer(response))["error"]
        for bad, name in (({**GOOD, "epoch": 0}, "epoch"), ({**GOOD, "epoch": True}, "epoch"),
                          ({**GOOD, "run_id": "a b"}, "run_id"), ({**GOOD, "x": 1}, "x"),
                          ({**GOOD, "params": []}, "params"),
                          ({**GOOD, "params": {"timeout": -1}}, "params.timeout")):
            response = await client.post("/v1/host-steps/sync-primary", json=bad,
                                         headers=PEER)
            assert response.status == 400
            assert (await answer(response))["error"].startswith(f"{name}:")
        response = await client.post("/v1/host-steps/switchover", json=GOOD, headers=PEER)
        assert response.status == 400
        assert (await answer(response))["error"].startswith("params.to:")
        assert steps.calls == []

        response = await client.post("/v1/host-steps/sync-primary", json=GOOD, headers=PEER)

        assert response.status == 202
        assert (await answer(response))["state"] == "running"
    assert steps.calls == [("sync-primary", GOOD)]


async def test_a_daemon_without_host_steps_says_so(tmp_path: Path) -> None:
    async with TestClient(app(tmp_path, None)) as client:
        response = await client.post("/v1/host-steps/sync-primary", json=GOOD, headers=PEER)
        assert response.status == 503
        assert "runs no host steps" in (await answer(response))["error"]
