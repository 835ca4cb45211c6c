"""TLS contexts for the API server, the peer poller and the CLI, from PEM files.

Every file problem is a :class:`TlsSetupError` naming the config key it was written
under and what is wrong (missing, unreadable, not PEM, encrypted, key does not match the
certificate), never an OpenSSL traceback. ``check-config`` and ``run`` build the
contexts before anything starts, so a bad file stops the daemon at the door.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from agentaskit_dr.config import ApiTlsConfig, PeerClientTls, TlsFile


class TlsSetupError(Exception):
    """A TLS file cannot be used; ``problems`` are ``"config.key: what"`` lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class _EncryptedKey(Exception):
    """OpenSSL asked for a passphrase: we have none to give."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, and a daemon has none.
    raise _EncryptedKey


def server_context(tls: ApiTlsConfig) -> ssl.SSLContext:
    """The API's context: its certificate, and with ``client_ca_file`` optional client
    certificates (verified when presented; ``/v1/observations`` then counts them)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    problems = _load_pair(context, TlsFile("api.tls.cert_file", tls.cert_file),
                          TlsFile("api.tls.key_file", tls.key_file))
    if tls.client_ca_file is not None:
        problems += _load_ca(context, TlsFile("api.tls.client_ca_file", tls.client_ca_file))
        # Optional, not required: operators' CLIs and liveness probes carry no certificate.
        context.verify_mode = ssl.CERT_OPTIONAL
    if problems:
        raise TlsSetupError(problems)
    return context


def client_context(tls: PeerClientTls) -> ssl.SSLContext | None:
    """The context to dial ``https://`` peers with; None when no CA is configured."""
    if tls.ca is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    problems = _load_ca(context, tls.ca)
    if tls.cert is not None and tls.key is not None:
        problems += _load_pair(context, tls.cert, tls.key)
    if problems:
        raise TlsSetupError(problems)
    return context


def cli_context(
    ca_file: TlsFile | None, cert_file: TlsFile | None, key_file: TlsFile | None
) -> ssl.SSLContext | None:
    """The CLI's context: verify with ``ca_file`` (None: the system's CAs), present an
    optional client certificate."""
    if ca_file is None and cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    problems = [] if ca_file is None else _load_ca(context, ca_file)
    if cert_file is not None and key_file is not None:
        problems += _load_pair(context, cert_file, key_file)
    if problems:
        raise TlsSetupError(problems)
    return context


def _readable(file: TlsFile, marker: bytes, kind: str) -> str | None:
    """A problem line when ``file`` cannot be read or holds no PEM ``kind``."""
    try:
        content = file.path.read_bytes()
    except OSError as exc:
        return f"{file.field}: cannot read {file.path}: {exc.strerror or type(exc).__name__}"
    if marker not in content:
        return f"{file.field}: {file.path} holds no PEM {kind}"
    return None


def _load_pair(context: ssl.SSLContext, cert: TlsFile, key: TlsFile) -> list[str]:
    problems = [problem for problem in (
        _readable(cert, b"-----BEGIN CERTIFICATE-----", "certificate"),
        _readable(key, b"PRIVATE KEY-----", "private key"),
    ) if problem is not None]
    if problems:
        return problems
    try:
        context.load_cert_chain(cert.path, key.path, password=_no_passphrase)
    except _EncryptedKey:
        return [f"{key.field}: {key.path} is encrypted; give an unencrypted key and protect "
                "it with file permissions"]
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return [f"{key.field}: {key.path} does not match the certificate in {cert.field} "
                    f"({cert.path})"]
        return [f"{cert.field}: {cert.path} with {key.field} cannot be loaded: "
                f"{exc.reason or exc}"]
    except OSError as exc:  # removed between the read above and the load
        return [f"{cert.field}: cannot load {cert.path}: {exc.strerror or exc}"]
    return []


def _load_ca(context: ssl.SSLContext, ca: TlsFile) -> list[str]:
    problem = _readable(ca, b"-----BEGIN CERTIFICATE-----", "CA certificate")
    if problem is not None:
        return [problem]
    try:
        context.load_verify_locations(cafile=ca.path)
    except ssl.SSLError as exc:
        return [f"{ca.field}: {ca.path} holds no usable CA certificate: {exc.reason or exc}"]
    except OSError as exc:
        return [f"{ca.field}: cannot load {ca.path}: {exc.strerror or exc}"]
    return []
