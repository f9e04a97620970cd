"""Server-side TLS for every listener: SIP over TLS toward the core, WSS toward WICs and the
https WWSF page.  One place builds the TLS context, so the three listeners cannot drift apart.

Theory of operation
-------------------
``load_credentials`` reads a PEM certificate file (the leaf first, then any intermediates: the
server sends the whole chain, RFC 8446 §4.4.2) and a PEM private key, and checks that they
belong together, so that a wrong file is a one-line configuration error at start rather than a
handshake failure later.  ``server_tls`` turns credentials into a ``ServerTLS``, which
``reactor.listenSSL`` takes as its context factory (an ``IOpenSSLServerConnectionCreator``).

Twisted's ``CertificateOptions`` builds the context (its cipher list, no compression, server
cipher preference, minimum TLS 1.2 as BCP 195 / RFC 9325 §3.1.1 asks), and then we install our
own ALPN select callback on it.  Twisted (26.10) installs one on every server context, even
without ``acceptableProtocols``, and it answers "nothing in common" with ``b""``, which
pyOpenSSL documents as "terminate the connection": OpenSSL sends an ``internal_error`` alert.
Every browser offers ALPN (``http/1.1`` for a WebSocket, ``h2, http/1.1`` for a page), so with
Twisted's callback no browser could connect.

Ours (``select_protocol``) picks the first of our protocols the client offers.  When it offers
none of them the callback returns ``NO_OVERLAPPING_PROTOCOLS`` and the handshake continues
without ALPN, as with a server that does not implement it (RFC 7301 §3.1: the server MAY return
a selection).  RFC 7301 §3.2 would have a server that negotiates send ``no_application_protocol``
instead; we do not, on purpose: the WebSocket and the page each speak exactly one protocol on
their port, so there is nothing for ALPN to choose, and a client that needed another protocol
fails at the HTTP layer with a response it can read instead of at the handshake.  SIP has no
ALPN identifier: its listener selects nothing and ignores offers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

#: RFC 7301 §6 (IANA "TLS Application-Layer Protocol Negotiation (ALPN) Protocol IDs"): HTTP/1.1,
#: what a WebSocket opening handshake (RFC 6455 §4.1) and the WWSF page are served over
HTTP_1_1 = b"http/1.1"
#: what the WSS and https listeners negotiate; the SIP TLS listener negotiates nothing
HTTP_PROTOCOLS: tuple[bytes, ...] = (HTTP_1_1,)
#: BCP 195 (RFC 9325 §3.1.1): TLS 1.0 and 1.1 MUST NOT be negotiated
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

#: the signing keys TLS 1.3 certificates use (RFC 8446 §4.2.3)
SIGNING_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey]


class CredentialsError(ValueError):
    """A certificate or key file that cannot serve TLS; the message names the file and what to fix."""

    def __init__(self, culprit: str, message: str) -> None:
        super().__init__(message)
        #: "certificate" or "private_key": the file to fix
        self.culprit = culprit


@dataclass(frozen=True)
class ServerCredentials:
    certificate: x509.Certificate
    #: intermediates sent after the leaf, in the file's order
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey


def load_credentials(certificate_path: str, private_key_path: str) -> ServerCredentials:
    """The certificate chain and key from two PEM files (they may be the same file)."""
    certificates = _load_certificates(certificate_path)
    key = _load_private_key(private_key_path)
    if _public_bytes(key.public_key()) != _public_bytes(certificates[0].public_key()):
        raise CredentialsError(
            "private_key",
            f"the private key in {private_key_path} does not belong to the first certificate in {certificate_path}",
        )
    return ServerCredentials(certificates[0], tuple(certificates[1:]), key)


def _read(path: str, culprit: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise CredentialsError(culprit, f"cannot read {path}: {error.strerror}") from None


def _load_certificates(path: str) -> list[x509.Certificate]:
    text = _read(path, "certificate")
    try:
        certificates = x509.load_pem_x509_certificates(text)
    except ValueError:
        raise CredentialsError("certificate", f"{path} holds no PEM certificate (BEGIN CERTIFICATE)") from None
    return certificates


def _load_private_key(path: str) -> PrivateKey:
    text = _read(path, "private_key")
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except TypeError:
        raise CredentialsError("private_key", f"the private key in {path} is encrypted: store it unencrypted") from None
    except ValueError:
        raise CredentialsError("private_key", f"{path} holds no PEM private key (BEGIN PRIVATE KEY)") from None
    except UnsupportedAlgorithm as error:
        raise CredentialsError("private_key", f"the private key in {path} cannot be used: {error}") from None
    if not isinstance(key, SIGNING_KEYS):
        raise CredentialsError("private_key", f"the private key in {path} is not an RSA, ECDSA or EdDSA key")
    return key


def _public_bytes(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def describe_tls_error(error: BaseException) -> str:
    """OpenSSL's reasons in one line ("unsupported protocol"), not the error queue's repr."""
    queue = error.args[0] if isinstance(error, SSL.Error) and error.args else None
    if isinstance(queue, list) and queue and all(isinstance(entry, tuple) and entry for entry in queue):
        return "; ".join(str(entry[-1]) for entry in queue)
    return str(error) or type(error).__name__


def select_protocol(ours: Sequence[bytes]) -> Callable[[SSL.Connection, list[bytes]], Any]:
    """An ALPN select callback: our first protocol the client offers (RFC 7301 §3.2: the
    server's preference), else ``NO_OVERLAPPING_PROTOCOLS`` (continue without ALPN)."""

    def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in ours:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The context factory of one TLS listener: every connection uses the same context."""

    def __init__(self, context: SSL.Context, protocols: Sequence[bytes]) -> None:
        self.context = context
        #: the ALPN protocols this listener selects, in preference order (empty: none)
        self.protocols = tuple(protocols)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802 (Twisted's interface)
        return SSL.Connection(self.context, None)


def server_tls(credentials: ServerCredentials, protocols: Sequence[bytes] = ()) -> ServerTLS:
    """The context factory for a TLS listener that selects ``protocols`` by ALPN when offered."""
    options = ssl.CertificateOptions(
        privateKey=credentials.private_key,
        certificate=credentials.certificate,
        extraCertChain=list(credentials.chain),
        raiseMinimumTo=MINIMUM_VERSION,
    )
    # The context is ours from here: no connection has used it yet, so the callback can still
    # be replaced (pyOpenSSL refuses to change a context once a connection used it).
    context = options.getContext()
    context.set_alpn_select_callback(select_protocol(protocols))
    return ServerTLS(context, protocols)


def server_tls_from_files(certificate_path: str, private_key_path: str, protocols: Sequence[bytes] = ()) -> ServerTLS:
    return server_tls(load_credentials(certificate_path, private_key_path), protocols)
