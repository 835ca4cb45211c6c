"""TLS and peer credentials in the config, and what ``check-config`` says about them.

Errors name the field and exit 2 (the daemon would hear nobody, or could not start);
warnings name the field too but exit 0 (the config runs, not as a cluster should).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.api.credentials import CredentialError, load_credentials
from agentaskit_dr.cli import main
from agentaskit_dr.config import TlsFile, load_config
from agentaskit_dr.runtime.reload import reloadable
from tests.tls_material import TlsMaterial, encrypted_copy, make_tls_material
from tests.unit.test_config_vantage import minimal, problems, write

PEER = "https://127.0.0.1:8788"


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return make_tls_material(tmp_path / "tls")


def secured(tls: TlsMaterial, **api: Any) -> dict[str, Any]:
    """The minimal config as one site of a TLS cluster: mutual TLS, peer token, https peer."""
    data = minimal()
    data.update(peers=[PEER], api={
        "listen": "127.0.0.1:0",
        "peer_token_file": str(tls.peer_token),
        "tls": {"cert_file": str(tls.site.cert), "key_file": str(tls.site.key),
                "client_ca_file": str(tls.ca)},
        **api,
    })
    return data


# ---------------------------------------------------------------- schema rules


def test_an_https_peer_without_a_ca_is_refused_naming_the_peer(tmp_path: Path) -> None:
    lines = problems(tmp_path, lambda d: d.update(peers=["http://127.0.0.1:1", PEER],
                                                  witness="https://127.0.0.1:2"))

    assert lines == [
        f"peers[1]: https:// needs a CA to verify the peer's certificate: set "
        f"peer_tls.ca_file (or api.tls.client_ca_file) (got '{PEER}')",
        "witness: https:// needs a CA to verify the peer's certificate: set "
        "peer_tls.ca_file (or api.tls.client_ca_file) (got 'https://127.0.0.1:2')",
    ]


def test_an_http_peer_while_tls_is_configured_is_refused(tmp_path: Path) -> None:
    lines = problems(tmp_path, lambda d: d.update(peers=["http://127.0.0.1:1"],
                                                  peer_tls={"ca_file": "ca.crt"}))

    assert lines == ["peers[0]: http:// while TLS is configured (api.tls or peer_tls): use "
                     "https://, so the peer token never crosses the network in clear "
                     "(got 'http://127.0.0.1:1')"]


def test_peer_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    lines = problems(tmp_path, lambda d: d.update(peer_tls={"cert_file": "c.crt"}))

    assert lines == ["peer_tls.key_file: cert_file and key_file go together"]


def test_api_tls_needs_a_certificate_and_a_key(tmp_path: Path) -> None:
    lines = problems(tmp_path, lambda d: d.update(api={"tls": {"client_ca_file": "ca.crt"}}))

    assert lines == ["api.tls.cert_file: required key is missing",
                     "api.tls.key_file: required key is missing"]


def test_peer_tls_falls_back_to_api_tls_key_by_key(tls: TlsMaterial, tmp_path: Path) -> None:
    config = load_config(write(tmp_path, secured(tls)))

    client = config.peer_client_tls
    assert client.ca == TlsFile("api.tls.client_ca_file", tls.ca)
    assert client.cert == TlsFile("api.tls.cert_file", tls.site.cert)
    assert client.key == TlsFile("api.tls.key_file", tls.site.key)


def test_peer_tls_keys_override_api_tls(tls: TlsMaterial, tmp_path: Path) -> None:
    data = secured(tls)
    data["peer_tls"] = {"ca_file": "other-ca.crt", "cert_file": "c.crt", "key_file": "c.key"}

    client = load_config(write(tmp_path, data)).peer_client_tls

    assert client.ca == TlsFile("peer_tls.ca_file", tmp_path / "other-ca.crt")
    assert (client.cert, client.key) == (TlsFile("peer_tls.cert_file", tmp_path / "c.crt"),
                                         TlsFile("peer_tls.key_file", tmp_path / "c.key"))


# ---------------------------------------------------------------- files on the host


def credential_problems(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    with pytest.raises(CredentialError) as caught:
        load_credentials(load_config(write(tmp_path, data)))
    return caught.value.problems


def test_good_files_give_a_server_and_a_client_context(
    tls: TlsMaterial, tmp_path: Path
) -> None:
    credentials = load_credentials(load_config(write(tmp_path, secured(tls))))

    assert credentials.server_ssl is not None
    assert credentials.client_ssl is not None
    assert credentials.peer_token_file == tls.peer_token


def test_missing_files_are_named_by_their_field(tls: TlsMaterial, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    data = secured(tls, peer_token_file=str(gone / "token"))
    data["api"]["tls"]["key_file"] = str(gone / "site.key")
    data["peer_tls"] = {"ca_file": str(gone / "ca.crt")}

    assert credential_problems(tmp_path, data) == [
        f"api.tls.key_file: cannot read {gone}/site.key: No such file or directory",
        f"peer_tls.ca_file: cannot read {gone}/ca.crt: No such file or directory",
        f"api.peer_token_file: cannot read {gone}/token: No such file or directory",
    ]


def test_a_key_that_does_not_match_the_certificate_is_named(
    tls: TlsMaterial, tmp_path: Path
) -> None:
    data = secured(tls)
    data["api"]["tls"]["key_file"] = str(tls.other_site.key)

    [line] = credential_problems(tmp_path, data)
    assert line == (f"api.tls.key_file: {tls.other_site.key} does not match the certificate "
                    f"in api.tls.cert_file ({tls.site.cert})")


def test_an_encrypted_key_is_refused_without_prompting(tls: TlsMaterial, tmp_path: Path) -> None:
    data = secured(tls)
    encrypted = encrypted_copy(tls.site.key, tmp_path)
    data["api"]["tls"]["key_file"] = str(encrypted)

    [line] = credential_problems(tmp_path, data)
    assert line.startswith(f"api.tls.key_file: {encrypted} is encrypted")


@pytest.mark.parametrize(("field", "kind"), [
    ("cert_file", "certificate"), ("key_file", "private key"), ("client_ca_file", "CA certificate"),
])
def test_a_file_holding_no_pem_of_its_kind_is_named(
    field: str, kind: str, tls: TlsMaterial, tmp_path: Path
) -> None:
    data = secured(tls)
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM at all\n")
    data["api"]["tls"][field] = str(junk)

    assert f"api.tls.{field}: {junk} holds no PEM {kind}" in credential_problems(tmp_path, data)


def test_an_empty_peer_token_file_is_named(tls: TlsMaterial, tmp_path: Path) -> None:
    tls.peer_token.write_text("\n  \n")

    assert credential_problems(tmp_path, secured(tls)) == [
        f"api.peer_token_file: {tls.peer_token} is empty"]


# ---------------------------------------------------------------- check-config


def test_check_config_of_a_tls_cluster_site_is_valid_without_warnings(
    tls: TlsMaterial, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, secured(tls))

    assert main(["check-config", "--config", str(path)]) == 0

    assert capsys.readouterr() == (f"{path}: valid watchdog configuration\n", "")


def test_check_config_names_a_bad_tls_file_and_exits_2(
    tls: TlsMaterial, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = secured(tls)
    data["api"]["tls"]["key_file"] = str(tls.rogue.key)
    path = write(tmp_path, data)

    assert main(["check-config", "--config", str(path)]) == 2
    assert main(["check-config", "--config", str(path), "--syntax-only"]) == 0

    err = capsys.readouterr().err
    assert err.count(f"  - api.tls.key_file: {tls.rogue.key} does not match") == 1


def test_check_config_of_an_https_peer_without_a_ca_exits_2_naming_the_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = minimal()
    data["peers"] = [PEER]
    path = write(tmp_path, data)

    assert main(["check-config", "--config", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert "  - peers[0]: https:// needs a CA to verify the peer's certificate" in err


def test_check_config_warns_of_single_vantage_mode_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = minimal()
    data["api"] = {"listen": "127.0.0.1:0", "peer_token_file": "peer-token"}
    (tmp_path / "peer-token").write_text("t\n")
    path = write(tmp_path, data)

    assert main(["check-config", "--config", str(path)]) == 0

    out, err = capsys.readouterr()
    assert out == f"{path}: valid watchdog configuration\n"
    assert err == (f"{path}: warning: peers: none and no witness: single-vantage mode, this "
                   "watchdog decides alone and never fences its own primary when isolated\n")


def test_check_config_warns_when_observations_are_open_to_anyone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = minimal()
    data["peers"] = ["http://127.0.0.1:8788"]
    path = write(tmp_path, data)

    assert main(["check-config", "--config", str(path)]) == 0

    assert capsys.readouterr().err == (
        f"{path}: warning: api.peer_token_file: not set and no api.tls.client_ca_file: "
        "/v1/observations answers anyone who reaches api.listen\n")


# ---------------------------------------------------------------- the shipped configs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def shipped_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGENTASKIT_DR_WEST_DB_PASSWORD", "AGENTASKIT_DR_EAST_DB_PASSWORD",
                 "AGENTASKIT_DR_LOCK_PASSWORD"):
        monkeypatch.setenv(name, "s3cret")


@pytest.mark.usefixtures("shipped_secrets")
@pytest.mark.parametrize("name", ["watchdog.yaml", "witness.yaml"])
def test_the_shipped_configs_dial_https_peers_with_the_tls_that_verifies_them(
    name: str,
) -> None:
    config = load_config(CONFIGS / name)

    assert config.vantage_urls
    assert all(url.startswith("https://") for url in config.vantage_urls.values())
    assert config.api.tls is not None
    assert config.api.tls.client_ca_file is not None
    client = config.peer_client_tls
    assert client.ca is not None
    assert client.cert is not None
    files = [config.api.peer_token_file, config.api.tls.cert_file, config.api.tls.key_file,
             client.ca.path, client.cert.path]
    assert all(str(path).startswith("/etc/agentaskit-dr/") for path in files), files
    assert config.warnings() == []


@pytest.mark.usefixtures("shipped_secrets")
def test_check_config_on_a_host_without_the_shipped_files_names_each_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = CONFIGS / "watchdog.yaml"

    assert main(["check-config", "--config", str(path)]) == 2

    err = capsys.readouterr().err
    for field in ("api.tls.cert_file", "api.tls.key_file", "api.tls.client_ca_file",
                  "api.peer_token_file"):
        assert f"  - {field}: cannot read /etc/agentaskit-dr/" in err


# ---------------------------------------------------------------- reload (SIGHUP)


async def test_a_reload_changing_tls_or_peers_keeps_the_running_ones_and_says_restart(
    tls: TlsMaterial, tmp_path: Path
) -> None:
    running = load_config(write(tmp_path, secured(tls)))
    changed = secured(tls)
    changed["api"]["tls"]["cert_file"] = str(tls.other_site.cert)
    changed["peers"] = ["https://127.0.0.1:9999"]
    changed["thresholds"] = {"db_unreachable": "90s"}
    path = write(tmp_path, changed)

    with capture_logs() as events:
        new, _, _ = await reloadable(running, path, running.primary_region, lambda _c: [])

    assert (new.api, new.peers) == (running.api, running.peers)
    assert new.thresholds.db_unreachable == 90.0  # the rest applies
    [partial] = [e for e in events if e["event"] == "config_reload_partial"]
    assert partial["ignored"] == "api, peers"
    assert "restart" in partial["reason"]
