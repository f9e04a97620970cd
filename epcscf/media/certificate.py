"""The DTLS certificate the eIMS-AGW role presents to WICs, and SDP fingerprints (RFC 8122).

One self-signed ECDSA P-256 certificate is generated when the service starts (WebRTC peers
authenticate it only through the `a=fingerprint` in the SDP, RFC 5763 §5), so nothing needs
to be provisioned.  `Certificate` is immutable and shared by every `DtlsEndpoint`.
"""

from __future__ import annotations

import datetime
import functools
import re
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# RFC 8122 §5 hash function names as written in `a=fingerprint`, mapped to cryptography hashes.
# RFC 8122 §5: "sha-256" is what an endpoint MUST support; md5/md2 are not accepted (RFC 8122 §5).
FINGERPRINT_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}

DEFAULT_VALIDITY = datetime.timedelta(days=30)
# RFC 8122 §5: fingerprint = 2UHEX *(":" 2UHEX), compared case-insensitively (upper-cased first).
_HEX_OCTETS = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2})*")


class FingerprintError(ValueError):
    """An `a=fingerprint` value we cannot use (unknown hash, malformed hex)."""


@dataclass(frozen=True)
class Fingerprint:
    """One `a=fingerprint:<algorithm> <value>` (RFC 8122 §5), normalised: lowercase
    algorithm, uppercase colon-separated hex."""

    algorithm: str
    value: str

    @classmethod
    def parse(cls, algorithm: str, value: str) -> Fingerprint:
        name = algorithm.strip().lower()
        if name not in FINGERPRINT_HASHES:
            known = ", ".join(FINGERPRINT_HASHES)
            raise FingerprintError(f"unsupported fingerprint hash {algorithm!r} (supported: {known})")
        text = value.strip().upper()
        octets = text.split(":")
        size = FINGERPRINT_HASHES[name].digest_size
        if len(octets) != size or _HEX_OCTETS.fullmatch(text) is None:
            raise FingerprintError(f"{name} fingerprint must be {size} colon-separated hex octets, got {value!r}")
        return cls(name, ":".join(octets))

    @classmethod
    def from_sdp(cls, attribute_value: str) -> Fingerprint:
        """The value of `a=fingerprint:` ("sha-256 AB:CD:…")."""
        parts = attribute_value.split()
        if len(parts) != 2:
            raise FingerprintError(f"a=fingerprint must be '<hash> <hex>', got {attribute_value!r}")
        return cls.parse(parts[0], parts[1])

    def to_sdp(self) -> str:
        return f"{self.algorithm} {self.value}"

    def matches(self, certificate: x509.Certificate) -> bool:
        return secrets.compare_digest(certificate_fingerprint(certificate, self.algorithm).value, self.value)


def certificate_fingerprint(certificate: x509.Certificate, algorithm: str = "sha-256") -> Fingerprint:
    """RFC 8122 §5: hash of the DER certificate, uppercase hex octets joined by colons."""
    hash_class = FINGERPRINT_HASHES.get(algorithm.lower())
    if hash_class is None:
        raise FingerprintError(f"unsupported fingerprint hash {algorithm!r}")
    digest = certificate.fingerprint(hash_class())
    return Fingerprint(algorithm.lower(), ":".join(f"{octet:02X}" for octet in digest))


@dataclass(frozen=True)
class Certificate:
    """Our certificate and key (cryptography objects; pyOpenSSL contexts accept them as-is)."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, common_name: str = "epcscf", validity: datetime.timedelta = DEFAULT_VALIDITY) -> Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        # Backdate a day: peers with a slow clock must not see a not-yet-valid certificate.
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + validity)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @functools.cached_property
    def fingerprint(self) -> Fingerprint:
        """Our `a=fingerprint` (sha-256, RFC 8122 §5), worked out once: every call's answer
        carries it (a hash of the DER certificate and 32 hex octets each time before)."""
        return certificate_fingerprint(self.certificate, "sha-256")
