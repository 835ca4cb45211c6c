"""Who may call what: the operator token for control, a peer credential for observations.

Tokens are compared as bytes in constant time and never logged. The operator token
(``api.token_file``) and the peer token (``api.peer_token_file``) are distinct secrets:
a site that can read its peers' observations cannot pause or fail them over.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import structlog
from aiohttp import web

from agentaskit_dr.api._answers import error_answer
from agentaskit_dr.api.credentials import PeerTokenError, read_peer_tokens

log = structlog.get_logger(__name__)

#: Remote addresses whose refusal was logged; past this many, the memory starts afresh.
_MAX_REMEMBERED = 1024


def bearer(request: web.Request) -> bytes:
    """The bearer token the request presents (empty when none)."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    token = presented.strip() if scheme.lower() == "bearer" else ""
    # Bytes: compare_digest rejects non-ASCII str, and headers may carry any byte.
    return token.encode("utf-8", "surrogateescape")


def control_refusal(request: web.Request, token_file: Path | None) -> web.Response | None:
    """None when the request carries the current operator token, else the refusal to send."""
    if token_file is None:
        return error_answer(403, "control API disabled: set api.token_file")
    try:
        token = token_file.read_bytes().strip()
        problem = "" if token else "the file is empty"
    except OSError as exc:
        token, problem = b"", str(exc)
    if problem:
        log.error("api_token_unreadable", file=str(token_file), error=problem)
        return error_answer(503, "control API unavailable: the token file is unreadable or "
                            "empty, see logs")
    presented = bearer(request)
    if presented and hmac.compare_digest(presented, token):
        return None
    log.warning("api_unauthorized", path=request.path, remote=request.remote,
                why="wrong bearer token" if presented else "no bearer token")
    return error_answer(401, "unauthorized: send 'Authorization: Bearer <token>'",
                        headers={"WWW-Authenticate": "Bearer"})


class PeerGate:
    """Guards ``/v1/observations``: a peer token, or a client certificate that the TLS
    handshake verified against ``api.tls.client_ca_file``.

    With neither configured the observations are open (``check-config`` warns): turning
    an upgrade into "every peer refused", and so into self-fencing, is worse. A refusal
    is logged once per remote address and reason, not at every poll.
    """

    def __init__(self, token_file: Path | None, *, client_certificates: bool) -> None:
        self.token_file = token_file
        self.client_certificates = client_certificates
        self._logged: dict[str, str] = {}

    @property
    def open(self) -> bool:
        """No peer credential is configured: anyone may read."""
        return self.token_file is None and not self.client_certificates

    def refusal(self, request: web.Request) -> web.Response | None:
        """None when the request comes from a peer, else the answer to send."""
        if self.open or (self.client_certificates and _verified_certificate(request)):
            self._allowed(request)
            return None
        presented = bearer(request)
        if self.token_file is not None:
            try:
                tokens = read_peer_tokens(self.token_file)
            except PeerTokenError as exc:
                self._log_once(request, "peer_token_unreadable", str(exc), level="error")
                return error_answer(503, "observations unavailable: the peer token file is "
                                    "unreadable or empty, see logs")
            if presented and any(hmac.compare_digest(presented, token.encode())
                                 for token in tokens):
                self._allowed(request)
                return None
        why = "wrong peer token" if presented else "no peer token or client certificate"
        self._log_once(request, "observations_unauthorized", why)
        return error_answer(401, "unauthorized: send 'Authorization: Bearer <peer token>'"
                            " or a client certificate", headers={"WWW-Authenticate": "Bearer"})

    def _allowed(self, request: web.Request) -> None:
        if self._logged.pop(request.remote or "?", None) is not None:
            log.info("observations_authorized", path=request.path, remote=request.remote)

    def _log_once(self, request: web.Request, event: str, why: str,
                  level: str = "warning") -> None:
        remote = request.remote or "?"
        if self._logged.get(remote) == why:
            return
        if len(self._logged) >= _MAX_REMEMBERED:
            self._logged.clear()
        self._logged[remote] = why
        getattr(log, level)(event, path=request.path, remote=remote, why=why)


def _verified_certificate(request: web.Request) -> bool:
    """The connection presented a client certificate (only a verified one gets this far:
    with a client CA configured, the handshake refuses any other)."""
    transport = request.transport
    return transport is not None and bool(transport.get_extra_info("peercert"))
