"""Self-signed certificates for TLS/WSS tests, made with ``cryptography``."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def self_signed_certificate(directory: str, name: str = "localhost") -> tuple[str, str, bytes]:
    """An ECDSA P-256 certificate for ``name`` and 127.0.0.1: (cert path, key path, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    with open(cert_path, "wb") as handle:
        handle.write(pem)
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path, pem


@dataclass(frozen=True)
class CertificateChain:
    """A test PKI: a root CA, an intermediate CA and a server certificate it issued."""

    #: the server certificate, then the intermediate (what a server's certificate file holds)
    chain_path: str
    key_path: str
    #: the root alone: what a client trusts
    root_path: str
    root_pem: bytes


def certificate_chain(directory: str, name: str = "localhost") -> CertificateChain:
    """A root CA → intermediate CA → server certificate for ``name`` and 127.0.0.1 (ECDSA P-256).

    A client that trusts only the root verifies the server only if the server sends the
    intermediate too (RFC 8446 §4.4.2)."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, intermediate_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = issue("epcscf test root CA", root_key, "epcscf test root CA", root_key, ca=True)
    intermediate = issue("epcscf test intermediate CA", intermediate_key, "epcscf test root CA", root_key, ca=True)
    server = issue(name, server_key, "epcscf test intermediate CA", intermediate_key, ca=False)

    os.makedirs(directory, exist_ok=True)
    paths = {part: os.path.join(directory, f"{part}.pem") for part in ("chain", "key", "root")}
    pem = serialization.Encoding.PEM
    root_pem = root.public_bytes(pem)
    with open(paths["chain"], "wb") as handle:
        handle.write(server.public_bytes(pem) + intermediate.public_bytes(pem))
    with open(paths["key"], "wb") as handle:
        handle.write(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(paths["root"], "wb") as handle:
        handle.write(root_pem)
    return CertificateChain(paths["chain"], paths["key"], paths["root"], root_pem)
