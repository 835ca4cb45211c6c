"""The API across regions, over real TLS on 127.0.0.1: certificates made for the test by
``cryptography``, the real ``ApiServer``, the real poller and the real CLI client.

A peer with the right token or certificate is heard; a wrong or missing credential gets
401 and the poller counts that peer unreachable, logging it once, not at every poll.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from agentaskit_dr.api.client import ApiClient, ApiError
from agentaskit_dr.api.commands import add_api_commands, run_api_command
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import ApiServer
from agentaskit_dr.api.tls import client_context, server_context
from agentaskit_dr.config import ApiTlsConfig, PeerClientTls, TlsFile
from agentaskit_dr.runtime.peers import PeerPoller
from tests.tls_material import PEER_TOKEN, Pair, TlsMaterial, make_tls_material
from tests.unit.test_api_server import FakeController
from tests.unit.test_peers import report

STALE_AFTER = 60.0


class PeerController(FakeController):
    """A controller whose observations are a valid peer report."""

    def observations(self) -> dict[str, Any]:
        return report()


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return make_tls_material(tmp_path / "tls")


def server_ssl(tls: TlsMaterial, *, mutual: bool = True) -> ssl.SSLContext:
    return server_context(ApiTlsConfig(cert_file=tls.site.cert, key_file=tls.site.key,
                                       client_ca_file=tls.ca if mutual else None))


def peer_ssl(ca: Path, pair: Pair | None = None) -> ssl.SSLContext:
    context = client_context(PeerClientTls(
        TlsFile("peer_tls.ca_file", ca),
        None if pair is None else TlsFile("peer_tls.cert_file", pair.cert),
        None if pair is None else TlsFile("peer_tls.key_file", pair.key),
    ))
    assert context is not None
    return context


StartApi = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_api(tls: TlsMaterial) -> AsyncIterator[StartApi]:
    """Starts real API servers on 127.0.0.1 over TLS; the base URL of each."""
    servers: list[ApiServer] = []

    async def start(*, peer_token_file: Path | None = None, mutual: bool = True,
                    token_file: Path | None = None) -> str:
        server = ApiServer(PeerController(), metrics=Metrics(), token_file=token_file,
                           peer_token_file=peer_token_file,
                           ssl_context=server_ssl(tls, mutual=mutual), shutdown_timeout=1.0)
        await server.start("127.0.0.1:0")
        servers.append(server)
        return f"https://127.0.0.1:{server.port}"

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()


async def observations(url: str, context: ssl.SSLContext, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/observations", ssl=context, headers=headers) as response,
    ):
        return response.status


# ---------------------------------------------------------------- the server


async def test_the_api_serves_https_that_verifies_against_the_cluster_ca(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api()

    status = await ApiClient(url, ssl_context=peer_ssl(tls.ca)).get("/v1/status")

    assert status["phase"] == "watching"


async def test_a_client_that_does_not_trust_the_ca_is_told_the_certificate_does_not_verify(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api()

    with pytest.raises(ApiError, match=r"certificate does not verify.*--ca-file"):
        await ApiClient(url, ssl_context=peer_ssl(tls.rogue_ca)).get("/v1/status")


async def test_plain_http_to_the_tls_port_gets_no_answer(start_api: StartApi) -> None:
    url = await start_api()

    with pytest.raises(ApiError):
        await ApiClient(url.replace("https://", "http://"), timeout=2).get("/v1/status")


@pytest.mark.parametrize(("token", "expected"), [
    (PEER_TOKEN, 200), ("wrong-token", 401), (None, 401),
])
async def test_observations_need_the_peer_token(
    token: str | None, expected: int, tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token, mutual=False)

    assert await observations(url, peer_ssl(tls.ca), token) == expected


async def test_an_unreadable_peer_token_file_refuses_every_peer_with_503(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token, mutual=False)
    tls.peer_token.unlink()

    with capture_logs() as events:
        assert await observations(url, peer_ssl(tls.ca), PEER_TOKEN) == 503
        assert await observations(url, peer_ssl(tls.ca), PEER_TOKEN) == 503

    assert [e["event"] for e in events] == ["peer_token_unreadable"]


async def test_the_operator_token_is_not_a_peer_token(
    tls: TlsMaterial, start_api: StartApi, tmp_path: Path
) -> None:
    operator = tmp_path / "api-token"
    operator.write_text("operator-token\n")
    url = await start_api(peer_token_file=tls.peer_token, token_file=operator, mutual=False)

    assert await observations(url, peer_ssl(tls.ca), "operator-token") == 401


async def test_any_line_of_the_peer_token_file_is_accepted_for_rotation(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    tls.peer_token.write_text(f"new-token\n{PEER_TOKEN}\n")
    url = await start_api(peer_token_file=tls.peer_token, mutual=False)

    assert await observations(url, peer_ssl(tls.ca), PEER_TOKEN) == 200
    assert await observations(url, peer_ssl(tls.ca), "new-token") == 200


async def test_a_verified_client_certificate_is_a_peer_credential(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token)

    assert await observations(url, peer_ssl(tls.ca, tls.other_site)) == 200
    assert await observations(url, peer_ssl(tls.ca)) == 401


async def test_a_client_certificate_from_another_ca_is_refused_at_the_handshake(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token)

    with pytest.raises(aiohttp.ClientError):
        await observations(url, peer_ssl(tls.ca, tls.rogue), PEER_TOKEN)


async def test_with_mutual_tls_clients_without_a_certificate_still_read_status(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token)

    assert (await ApiClient(url, ssl_context=peer_ssl(tls.ca)).get("/healthz"))["ok"] is True


async def test_a_refused_peer_is_logged_once_per_remote_not_at_every_poll(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token, mutual=False)

    with capture_logs() as events:
        for _ in range(3):
            assert await observations(url, peer_ssl(tls.ca), "wrong") == 401
        assert await observations(url, peer_ssl(tls.ca), PEER_TOKEN) == 200
        assert await observations(url, peer_ssl(tls.ca), "wrong") == 401

    names = [e["event"] for e in events if e["event"].startswith("observations_")]
    assert names == ["observations_unauthorized", "observations_authorized",
                     "observations_unauthorized"]
    assert events[0]["why"] == "wrong peer token"


# ---------------------------------------------------------------- the poller


def poller(url: str, context: ssl.SSLContext, token_file: Path | None) -> PeerPoller:
    loop = asyncio.get_running_loop()
    return PeerPoller({"peer1": url}, interval=0.05, timeout=2.0, stale_after=STALE_AFTER,
                      clock=loop.time, ssl_context=context, peer_token_file=token_file)


async def poll(peers: PeerPoller, times: int) -> None:
    """Run the poller for ``times`` polls of its one peer."""
    label, url = next(iter(peers.urls.items()))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=peers.ssl_context or True),
        timeout=aiohttp.ClientTimeout(total=peers.timeout),
    ) as session:
        peers._session = session  # the session run() would open
        for _ in range(times):
            await peers.poll_once(label, url)


async def test_the_poller_hears_a_tls_peer_with_the_right_token(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token, mutual=False)
    peers = poller(url, peer_ssl(tls.ca), tls.peer_token)

    await poll(peers, 1)

    assert peers.links() == {"peer1": True}
    assert peers.vantages()[0].fresh


async def test_the_poller_hears_a_mutual_tls_peer_with_its_certificate_alone(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token)
    peers = poller(url, peer_ssl(tls.ca, tls.other_site), None)

    await poll(peers, 1)

    assert peers.links() == {"peer1": True}


@pytest.mark.parametrize("credential", ["wrong_token", "no_token"])
async def test_a_peer_refusing_our_credential_is_unreachable_and_logged_once(
    credential: str, tls: TlsMaterial, start_api: StartApi, tmp_path: Path
) -> None:
    url = await start_api(peer_token_file=tls.peer_token, mutual=False)
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-peer-token\n")
    peers = poller(url, peer_ssl(tls.ca), wrong if credential == "wrong_token" else None)

    with capture_logs() as events:
        await poll(peers, 3)

    assert peers.links() == {"peer1": False}
    assert not peers.vantages()[0].fresh
    refused = [e for e in events if e["event"] == "peer_unauthorized"]
    assert len(refused) == 1, events
    assert "HTTP 401" in refused[0]["reason"]
    assert "not-the-peer-token" not in str(events)
    assert peers.reports()["peer1"]["error"] == refused[0]["reason"]


async def test_a_peer_whose_certificate_does_not_verify_is_unreachable(
    tls: TlsMaterial, start_api: StartApi
) -> None:
    url = await start_api(peer_token_file=tls.peer_token, mutual=False)
    peers = poller(url, peer_ssl(tls.rogue_ca), tls.peer_token)

    with capture_logs() as events:
        await poll(peers, 2)

    assert peers.links() == {"peer1": False}
    unreachable = [e for e in events if e["event"] == "peer_unreachable"]
    assert len(unreachable) == 1
    assert "certificate verify failed" in unreachable[0]["reason"]


async def test_an_unreadable_own_peer_token_makes_the_peer_unreachable_and_says_why(
    tls: TlsMaterial, start_api: StartApi, tmp_path: Path
) -> None:
    url = await start_api(peer_token_file=tls.peer_token, mutual=False)
    peers = poller(url, peer_ssl(tls.ca), tmp_path / "missing-token")

    with capture_logs() as events:
        await poll(peers, 2)

    assert peers.links() == {"peer1": False}
    [event] = [e for e in events if e["event"] == "peer_credential_unavailable"]
    assert event["reason"].startswith("api.peer_token_file: cannot read ")


# ---------------------------------------------------------------- the CLI


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_api_commands(parser.add_subparsers(dest="command"))
    return run_api_command(parser.parse_args(list(argv)))


async def test_the_status_command_speaks_https_with_the_ca_of_the_config(
    tls: TlsMaterial, start_api: StartApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = await start_api()
    port = url.rpartition(":")[2]
    config = tmp_path / "watchdog.yaml"
    config.write_text(yaml.safe_dump({"api": {
        "listen": f"127.0.0.1:{port}",
        "tls": {"cert_file": str(tls.site.cert), "key_file": str(tls.site.key),
                "client_ca_file": str(tls.ca)},
    }}))

    code = await asyncio.to_thread(cli, "status", "--config", str(config), "--json")

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert '"phase": "watching"' in out


async def test_the_status_command_with_the_wrong_ca_exits_1_naming_the_flag(
    tls: TlsMaterial, start_api: StartApi, capsys: pytest.CaptureFixture[str]
) -> None:
    url = await start_api()

    code = await asyncio.to_thread(cli, "status", "--url", url, "--ca-file", str(tls.rogue_ca))

    assert code == 1
    assert "certificate does not verify" in capsys.readouterr().err


async def test_the_status_command_with_an_unreadable_ca_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.crt"

    code = await asyncio.to_thread(cli, "status", "--url", "https://127.0.0.1:1",
                                   "--ca-file", str(missing))

    assert code == 2
    assert f"--ca-file: cannot read {missing}: No such file or directory" in (
        capsys.readouterr().err)


async def test_the_cli_presents_a_client_certificate_only_as_a_pair(
    tls: TlsMaterial, start_api: StartApi, capsys: pytest.CaptureFixture[str]
) -> None:
    url = await start_api(peer_token_file=tls.peer_token)

    half = await asyncio.to_thread(cli, "status", "--url", url, "--ca-file", str(tls.ca),
                                   "--cert-file", str(tls.other_site.cert))
    whole = await asyncio.to_thread(cli, "status", "--url", url, "--ca-file", str(tls.ca),
                                    "--cert-file", str(tls.other_site.cert),
                                    "--key-file", str(tls.other_site.key))

    assert (half, whole) == (2, 0)
    assert "--cert-file and --key-file go together" in capsys.readouterr().err
