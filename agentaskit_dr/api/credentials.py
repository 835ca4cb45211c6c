"""The peer token, and the check of every credential file a daemon needs before it starts.

The peer token is one secret shared by every site: ``/v1/observations`` requires it (or a
verified client certificate) and the poller sends it. Its file holds one token per line:
any line is accepted, the first is sent, so a new token can be rolled out site by site
(add it as a second line everywhere, move it first everywhere, drop the old one). The
file is read at each use, so rotating it needs no restart.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from agentaskit_dr.api.tls import TlsSetupError, client_context, server_context
from agentaskit_dr.config import WatchdogConfig


class PeerTokenError(Exception):
    """The peer token file cannot be used; the message names the file, never its content."""


def read_peer_tokens(path: Path) -> list[str]:
    """The tokens in ``path``, one per non-blank line; PeerTokenError if none or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PeerTokenError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise PeerTokenError(f"{path} is not UTF-8 text") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens:
        raise PeerTokenError(f"{path} is empty")
    if any(not token.isascii() or not token.isprintable() or " " in token for token in tokens):
        raise PeerTokenError(f"{path}: a token must be printable ASCII without spaces")
    return tokens


@dataclass(frozen=True, slots=True)
class DaemonCredentials:
    """What the API server and the poller are built with."""

    server_ssl: ssl.SSLContext | None
    """The API's context; None serves plain HTTP."""
    client_ssl: ssl.SSLContext | None
    """The poller's context for ``https://`` vantages; None when no CA is configured."""
    peer_token_file: Path | None


class CredentialError(Exception):
    """Credential files that stop the daemon from starting: one ``"key: what"`` per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def load_credentials(config: WatchdogConfig) -> DaemonCredentials:
    """Read and check every TLS file and the peer token; CredentialError lists all problems."""
    problems: list[str] = []
    server_ssl = client_ssl = None
    if config.api.tls is not None:
        try:
            server_ssl = server_context(config.api.tls)
        except TlsSetupError as exc:
            problems += exc.problems
    try:
        client_ssl = client_context(config.peer_client_tls)
    except TlsSetupError as exc:
        # A file inherited from api.tls was reported just above: say it once.
        problems += [problem for problem in exc.problems if problem not in problems]
    token_file = config.api.peer_token_file
    if token_file is not None:
        try:
            read_peer_tokens(token_file)
        except PeerTokenError as exc:
            problems.append(f"api.peer_token_file: {exc}")
    if problems:
        raise CredentialError(problems)
    return DaemonCredentials(server_ssl, client_ssl, token_file)
