"""Rules for how the vantage points reach each other: schemes, TLS and peer credentials.

Kept apart from ``_models`` so the watchdog schema stays readable. Problems here are
errors (the daemon would hear nobody, or send its peer token in clear); warnings are
advice that leaves the config usable (``check-config`` prints them, the daemon logs them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from agentaskit_dr.config._base import Problem
from agentaskit_dr.config._sections import ApiConfig, PeerTlsConfig


class TlsFile(NamedTuple):
    """A TLS file and the config key it was written under (for error messages)."""

    field: str
    path: Path


@dataclass(frozen=True, slots=True)
class PeerClientTls:
    """What the poller (and the CLI) use to dial ``https://`` peers."""

    ca: TlsFile | None
    cert: TlsFile | None
    key: TlsFile | None


def peer_client_tls(api: ApiConfig, peer_tls: PeerTlsConfig | None) -> PeerClientTls:
    """``peer_tls``, each key left out taken from ``api.tls`` (see PeerTlsConfig)."""
    own = peer_tls or PeerTlsConfig()
    server = api.tls

    def pick(key: str, value: Path | None, fallback: str) -> TlsFile | None:
        if value is not None:
            return TlsFile(f"peer_tls.{key}", value)
        inherited = getattr(server, fallback) if server is not None else None
        return None if inherited is None else TlsFile(f"api.tls.{fallback}", inherited)

    # cert_file and key_file come as a pair (PeerTlsConfig checks it): both from one place.
    return PeerClientTls(pick("ca_file", own.ca_file, "client_ca_file"),
                         pick("cert_file", own.cert_file, "cert_file"),
                         pick("key_file", own.key_file, "key_file"))


def vantage_url_problems(
    urls: Mapping[str, str], api: ApiConfig, peer_tls: PeerTlsConfig | None
) -> list[Problem]:
    """Errors in how ``urls`` ({config key: URL}) are dialled with this TLS setup."""
    client = peer_client_tls(api, peer_tls)
    tls_configured = api.tls is not None or peer_tls is not None
    problems = []
    for field, url in urls.items():
        scheme = url.partition("://")[0].lower()
        if scheme == "https" and client.ca is None:
            problems.append(Problem((field,), (
                "https:// needs a CA to verify the peer's certificate: set peer_tls.ca_file "
                "(or api.tls.client_ca_file)"), got=repr(url)))
        elif scheme == "http" and tls_configured:
            # Every site serves one scheme; a plain peer would get the peer token in clear
            # and a TLS site cannot be polled over http anyway.
            problems.append(Problem((field,), (
                "http:// while TLS is configured (api.tls or peer_tls): use https://, so the "
                "peer token never crosses the network in clear"), got=repr(url)))
    return problems


def vantage_warnings(
    *, role: str, peers: tuple[str, ...], witness: str | None, api: ApiConfig
) -> list[str]:
    """Advice lines ``"field: message"``: the config runs, but not as a cluster should."""
    warnings = []
    if not peers and witness is None:
        if role == "witness":
            warnings.append("peers: none: this witness observes for nobody; list the watchdogs")
        else:
            warnings.append(
                "peers: none and no witness: single-vantage mode, this watchdog decides "
                "alone and never fences its own primary when isolated"
            )
    has_credential = api.peer_token_file is not None or (
        api.tls is not None and api.tls.client_ca_file is not None
    )
    if api.listen is not None and not has_credential:
        warnings.append(
            "api.peer_token_file: not set and no api.tls.client_ca_file: /v1/observations "
            "answers anyone who reaches api.listen"
        )
    return warnings
