"""Self-signed TLS material for the mock server.

We mint a tiny private CA and a leaf certificate signed by it, because some verifiers (rustls/webpki,
Python 3.13's VERIFY_X509_STRICT) refuse a CA certificate used as the server certificate, while others
are happy either way. Files written into the state directory:

- ``ca.pem``   the CA certificate (a clean trust anchor)
- ``cert.pem`` leaf followed by the CA: the chain the server presents, and also usable as a CA bundle
               (``curl --cacert cert.pem``, ``NODE_EXTRA_CA_CERTS=cert.pem``, ``ssl`` cafile) since it
               contains the CA
- ``key.pem``  the leaf's private key

The leaf carries SANs ``DNS:localhost`` and ``IP:127.0.0.1`` (and ``IP:::1``).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPaths:
    cert: Path  # leaf + CA chain (PEM)
    key: Path   # leaf private key (PEM, unencrypted)
    ca: Path    # CA certificate only


def _new_key(key_type: str):
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {key_type!r} (use 'ec' or 'rsa')")


def _usable(paths: CertPaths) -> bool:
    """True when existing files load and the leaf is valid for at least another day."""
    try:
        certs = x509.load_pem_x509_certificates(paths.cert.read_bytes())
        serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        if not paths.ca.exists():
            return False
    except (OSError, ValueError):
        return False
    now = _dt.datetime.now(_dt.timezone.utc)
    leaf = certs[0]
    return leaf.not_valid_before_utc <= now and leaf.not_valid_after_utc > now + _dt.timedelta(days=1)


def ensure_certs(state_dir: str | os.PathLike, key_type: str = "ec", reuse: bool = True) -> CertPaths:
    """Write (or reuse, if present and valid) ``cert.pem``/``key.pem``/``ca.pem`` in ``state_dir``."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(cert=d / "cert.pem", key=d / "key.pem", ca=d / "ca.pem")
    if reuse and paths.cert.exists() and paths.key.exists() and _usable(paths):
        return paths

    now = _dt.datetime.now(_dt.timezone.utc)
    not_before = now - _dt.timedelta(days=1)
    not_after = now + _dt.timedelta(days=825)

    ca_key = _new_key(key_type)
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tracer mock"),
        x509.NameAttribute(NameOID.COMMON_NAME, "tracer mock CA"),
    ])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = _new_key(key_type)
    leaf_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tracer mock"),
        x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
    ])
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(leaf_name)
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=(key_type == "rsa"), data_encipherment=False,
                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    _atomic_write(paths.ca, ca_pem)
    _atomic_write(paths.cert, leaf_cert.public_bytes(pem) + ca_pem)
    _atomic_write(paths.key, key_pem, mode=0o600)
    return paths


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
