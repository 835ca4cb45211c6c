"""Real TLS material for tests, made with ``cryptography`` into a temporary directory.

A private CA signs a certificate for 127.0.0.1 (IP SAN) usable both as the API's server
certificate and as a peer's client certificate (serverAuth + clientAuth), and a second
site certificate. A rogue CA signs one more, which nobody trusts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEER_TOKEN = "peer-token-shared-by-every-site"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsMaterial:
    ca: Path
    site: Pair
    """Signed by ``ca`` for 127.0.0.1 and localhost: server and client usage."""
    other_site: Pair
    """Another site of the same cluster (same CA)."""
    rogue_ca: Path
    rogue: Pair
    """Signed by ``rogue_ca`` for 127.0.0.1: a stranger's certificate."""
    peer_token: Path
    """Holds :data:`PEER_TOKEN`."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(directory: Path, stem: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{stem} test CA"))
        .issuer_name(_name(f"{stem} test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{stem}-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def _leaf(directory: Path, stem: str, issuer: x509.Certificate,
          issuer_key: ec.EllipticCurvePrivateKey) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pair.key.chmod(0o600)
    return pair


def make_tls_material(directory: Path) -> TlsMaterial:
    """A CA, two site certificates, a rogue CA with its certificate, and a peer token file."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_cert, ca_key = _ca(directory, "cluster")
    rogue_ca, rogue_cert, rogue_key = _ca(directory, "rogue")
    token = directory / "peer-token"
    token.write_text(PEER_TOKEN + "\n")
    return TlsMaterial(
        ca=ca,
        site=_leaf(directory, "site", ca_cert, ca_key),
        other_site=_leaf(directory, "other-site", ca_cert, ca_key),
        rogue_ca=rogue_ca,
        rogue=_leaf(directory, "rogue", rogue_cert, rogue_key),
        peer_token=token,
    )


def encrypted_copy(key: Path, directory: Path) -> Path:
    """``key`` encrypted with a passphrase, as an operator might hand it over."""
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    path = directory / f"encrypted-{key.name}"
    path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    return path
