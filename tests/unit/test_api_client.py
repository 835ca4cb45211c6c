"""The API client and the on-call commands against real local servers: what an operator
sees when the watchdog answers, refuses, hangs, or is not there."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agentaskit_dr.api.client import ApiClient, ApiError, render_status
from agentaskit_dr.api.commands import add_api_commands, run_api_command
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import ApiServer, build_app
from agentaskit_dr.cluster_cli import operator
from agentaskit_dr.local_servers.tcp import free_port
from tests.unit.test_api_server import TOKEN, FakeController

# Who the CLI says asked: the controls are the cluster's, so the record names the operator.
OPERATOR = operator()

# ---------------------------------------------------------------- the client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, FakeController]]:
    """The real app on a loopback port, and the controller behind it."""
    controller = FakeController()
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN)
    server = TestServer(build_app(controller, metrics=Metrics(), token_file=token_file))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), controller
    finally:
        await server.close()


async def test_get_and_post_return_the_json_object(api: tuple[str, FakeController]) -> None:
    url, controller = api
    client = ApiClient(url, token=TOKEN)

    assert await client.get("/v1/status") == controller.status_payload
    assert await client.post("/v1/pause", {"reason": "maintenance"}) == {
        "action": "pause", "done": True, "reason": "maintenance",
    }
    assert controller.calls == [("pause", {"reason": "maintenance"})]


async def test_a_refused_connection_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(ApiError) as caught:
        await ApiClient(url).get("/v1/status")

    assert str(caught.value) == (
        f"GET {url}/v1/status: cannot connect (connection refused); is the watchdog "
        "running and is the URL right?"
    )
    assert caught.value.status is None


async def test_a_server_that_does_not_answer_times_out() -> None:
    release = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/status", hang)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("/v1/status"))
        with pytest.raises(ApiError, match=rf"^GET {url}: no answer within 0.2s$"):
            await ApiClient(str(server.make_url("")), timeout=0.2).get("/v1/status")
    finally:
        release.set()
        await server.close()


async def test_a_wrong_token_is_401_without_the_token_in_the_message(
    api: tuple[str, FakeController],
) -> None:
    url, controller = api

    with pytest.raises(ApiError) as caught:
        await ApiClient(url, token="guessed-token").post("/v1/ack", {})

    assert caught.value.status == 401
    assert str(caught.value).startswith(f"POST {url}/v1/ack: 401 unauthorized")
    assert "guessed-token" not in str(caught.value)
    assert controller.calls == []


@pytest.mark.parametrize(
    ("setup", "path", "expected"),
    [
        ("refuse", "/v1/failover", "409 not the leader"),
        ("broken", "/v1/resume", "503 internal error, see logs"),
        ("none", "/v1/nowhere", "404 not found: POST /v1/nowhere"),
    ],
)
async def test_4xx_and_5xx_carry_the_servers_message(
    api: tuple[str, FakeController], setup: str, path: str, expected: str
) -> None:
    url, controller = api
    controller.refusal = "not the leader" if setup == "refuse" else None
    controller.broken = setup == "broken"

    with pytest.raises(ApiError) as caught:
        await ApiClient(url, token=TOKEN).post(path, {})

    assert str(caught.value) == f"POST {url}{path}: {expected}"
    assert caught.value.status == int(expected[:3])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (web.Response(text="<html>proxy</html>", content_type="text/html"),
         "200 with a non-JSON body (text/html), expected a JSON object"),
        (web.json_response([1, 2]),
         "200 with an unexpected body (application/json), expected a JSON object"),
        (web.Response(text="bad gateway", status=502),
         "502 (text/plain body)"),
    ],
)
async def test_an_answer_that_is_not_a_json_object_is_an_error(
    answer: web.Response, expected: str
) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return answer

    app = web.Application()
    app.router.add_get("/v1/status", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        with pytest.raises(ApiError) as caught:
            await ApiClient(base).get("/v1/status")
    finally:
        await server.close()

    assert str(caught.value) == f"GET {base}/v1/status: {expected}"


@pytest.mark.parametrize("token", ["", "two words", "tab\there", "naïve", "line\nbreak"])
def test_a_token_that_cannot_be_sent_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ValueError, match=r"^token: must be non-empty printable ASCII") as caught:
        ApiClient("http://127.0.0.1:8787", token=token)

    assert not token or token not in str(caught.value)


# ---------------------------------------------------------------- the status table


def test_render_status_aligns_rows_and_lists_nested_verdicts() -> None:
    table = render_status({
        "phase": "watching",
        "region": "us-east-1",
        "paused": False,
        "verdicts": {"db": "healthy", "region_health": "degraded"},
        "lag_seconds": float("nan"),
        "unreachable": ["witness", "west"],
        "zz_extra": 3,
    })

    assert table.splitlines() == [
        "region           us-east-1",
        "phase            watching",
        "paused           no",
        "verdicts",
        "  db             healthy",
        "  region_health  degraded",
        "lag_seconds      -",
        "unreachable      witness, west",
        "zz_extra         3",
    ]


def test_render_status_copes_with_missing_empty_and_odd_values() -> None:
    assert render_status({}) == "(empty status)"
    table = render_status({
        "last_failover": None,
        "history": [{"id": "f-1", "epoch": 4}, "free text"],
        "detail": {},
    })

    assert table.splitlines() == [
        "last_failover  -",
        "detail         -",
        "history",
        "  [0]",
        "    epoch      4",
        "    id         f-1",
        "  [1]          free text",
    ]


# ---------------------------------------------------------------- the commands


@dataclass
class Served:
    url: str
    port: int
    controller: FakeController
    token_file: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """An ApiServer in a thread of its own, so the commands' ``asyncio.run`` can call it."""
    controller = FakeController()
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    server = ApiServer(controller, metrics=Metrics(), token_file=token_file)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start("127.0.0.1:0"), loop).result(10)
        yield Served(f"http://127.0.0.1:{server.port}", server.port, controller, token_file)
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(autouse=True)
def _no_api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTASKIT_DR_API_URL", raising=False)
    monkeypatch.delenv("AGENTASKIT_DR_API_TOKEN_FILE", raising=False)


def command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="agentaskit-dr")
    add_api_commands(parser.add_subparsers(dest="command", required=True))
    return run_api_command(parser.parse_args(argv))


def test_status_prints_the_table(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert command("status", "--url", served.url) == 0

    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "region         us-east-1",
        "role           secondary",
        "phase          watching",
        "paused         no",
        "verdict        healthy",
        "lock_holder    east-1",
        "epoch          7",
        "last_failover  -",
    ]
    assert err == ""


def test_status_json_prints_what_the_api_returned(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert command("status", "--json", "--url", served.url) == 0

    assert json.loads(capsys.readouterr().out) == served.controller.status_payload


def test_pause_sends_the_reason_with_the_token(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code = command("pause", "--reason", "DB upgrade", "--url", served.url,
                   "--token-file", str(served.token_file))

    assert code == 0
    assert served.controller.calls == [("pause", {"reason": "DB upgrade", "by": OPERATOR})]
    assert "reason  DB upgrade" in capsys.readouterr().out


def test_request_failover_posts_dry_run_and_reason_with_the_token(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code = command("request-failover", "--dry-run", "--reason", "drill", "--url", served.url,
                   "--token-file", str(served.token_file))

    assert code == 0
    assert served.controller.calls == [("failover", {"dry_run": True, "reason": "drill"})]
    assert "drill" in capsys.readouterr().out


def test_resume_takes_url_and_token_file_from_the_environment(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTASKIT_DR_API_URL", served.url)
    monkeypatch.setenv("AGENTASKIT_DR_API_TOKEN_FILE", str(served.token_file))

    assert command("resume") == 0
    assert served.controller.calls == [("resume", {"by": OPERATOR})]


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_ack_takes_listen_and_token_file_from_the_config(
    served: Served, tmp_path: Path, host: str
) -> None:
    config = tmp_path / "watchdog.yaml"
    config.write_text(
        f"region: us-east-1\napi:\n  listen: '{host}:{served.port}'\n"
        f"  token_file: {served.token_file}\n"
    )

    assert command("ack", "--config", str(config)) == 0
    assert served.controller.calls == [("acknowledge", {"by": OPERATOR})]


def test_a_refused_token_exits_1_with_one_line(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("guessed-token")

    assert command("ack", "--url", served.url, "--token-file", str(wrong)) == 1

    err = capsys.readouterr().err
    assert err.startswith(f"agentaskit-dr ack: POST {served.url}/v1/ack: 401 unauthorized")
    assert err.count("\n") == 1
    assert "guessed-token" not in err
    assert served.controller.calls == []


def test_a_refusal_exits_1_with_the_watchdogs_reason(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    served.controller.refusal = "no failover to acknowledge"

    code = command("ack", "--url", served.url, "--token-file", str(served.token_file))

    assert code == 1
    assert capsys.readouterr().err.endswith("409 no failover to acknowledge\n")


def test_no_watchdog_listening_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert command("status", "--url", f"http://127.0.0.1:{free_port()}") == 1

    assert "cannot connect (connection refused)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config_text", "args", "expected"),
    [
        (None, ["pause"], "needs the control token: pass --token-file"),
        (None, ["pause", "--token-file", "/nonexistent/token"],
         "token file /nonexistent/token (from --token-file): cannot read"),
        ("api: [1]", ["status"], "api: expected a mapping"),
        ("api: {listen: 8787}", ["status"], "api.listen: expected a string"),
        ("api: {listen: 'localhost'}", ["status"], "api.listen: expected 'host:port'"),
        ("api: {listen: [unclosed", ["status"], "not valid YAML at line 1, column 24: expected"),
        (None, ["status", "--url", "127.0.0.1:8787"], "--url: expected http://host:port"),
    ],
)
def test_bad_input_exits_2_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config_text: str | None,
    args: list[str],
    expected: str,
) -> None:
    if config_text is not None:
        config = tmp_path / "watchdog.yaml"
        config.write_text(config_text)
        args = [*args, "--config", str(config)]

    assert command(*args) == 2

    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1


def test_an_empty_token_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")

    assert command("resume", "--token-file", str(empty)) == 2
    assert capsys.readouterr().err == f"agentaskit-dr resume: token file {empty} (from " \
        "--token-file) is empty\n"


def test_a_missing_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert command("status", "--config", str(tmp_path / "nope.yaml")) == 2
    assert "nope.yaml: cannot read" in capsys.readouterr().err


def test_timeout_must_be_positive() -> None:
    with pytest.raises(SystemExit) as exited:
        command("status", "--timeout", "0")
    assert exited.value.code == 2

