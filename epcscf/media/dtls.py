"""DTLS-SRTP toward the WIC (RFC 5763/5764) on pyOpenSSL memory BIOs, sans-IO-ish.

Theory of operation.  A `DtlsEndpoint` owns one `SSL.Connection` with no socket: datagrams from
the WIC are written into its read BIO (`datagram_received`), and whatever OpenSSL wants to send
is read from its write BIO and handed to the injected `send` callable (the ICE agent's
selected pair).  Twisted has no DTLS transport; this is the aiortc `RTCDtlsTransport` design.

Timers are ours: OpenSSL only *reports* its retransmission deadline
(`DTLSv1_get_timeout`, RFC 6347 §4.2.4.1: 1 s, doubling, at most 60 s) and retransmits when
asked (`DTLSv1_handle_timeout`).  After every step we re-arm one `callLater` on the injected
`IReactorTime`.  OpenSSL measures the deadline on the real clock, so a timer that fires early
(or a `task.Clock` running ahead of real time) only re-arms for the remainder.

The peer is authenticated only by the `a=fingerprint` of its SDP (RFC 5763 §5 / RFC 8122 §5):
the verify callback accepts the self-signed certificate iff its digest, computed with the hash
the SDP names, equals the signalled value; a mismatch aborts the handshake (OpenSSL sends a
bad_certificate alert) and `on_failed` gets a reason naming both fingerprints.  As offerer with
`a=setup:actpass` a ClientHello may arrive before the answer (RFC 5763 §5): an endpoint may start
without the fingerprint; the check then happens in `set_remote_fingerprint`.

On success the SRTP master keys are exported (RFC 5764 §4.2) for the profile negotiated from
`use_srtp` (RFC 5764 §4.1.2) and `on_connected(SrtpKeys)` fires once.  A close_notify or a
fatal alert from the peer, the handshake timeout, or a local error fire `on_failed(reason)`
once (RFC 7675 §5.2: the call then ends).

States (`DtlsState`, transitions in `DTLS_TRANSITIONS`):
NEW →start→ CONNECTING →handshake done + fingerprint ok→ CONNECTED;
CONNECTING/CONNECTED →error, alert, timeout→ FAILED; any →close→ CLOSED.
"""

from __future__ import annotations

import enum
import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL, crypto
from pylibsrtp import Policy
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from epcscf.media.certificate import Certificate, Fingerprint, certificate_fingerprint

log = Logger()

# RFC 5705 / RFC 5764 §4.2: the exporter label for SRTP keying material.
EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"

# Path MTU we assume toward a WebRTC peer: 1200 bytes keeps certificate flights unfragmented
# at IP level on every path browsers care about (what libwebrtc uses for DTLS).
DEFAULT_MTU = 1200

# Give up when the handshake has not finished in this time (RFC 6347 leaves the total to us).
DEFAULT_HANDSHAKE_TIMEOUT = 30.0

# Largest DTLS record we read from the write BIO in one go.
MAX_DATAGRAM = 65535

# Never spin: an OpenSSL deadline already passed on the real clock is re-checked this soon.
MIN_TIMER_DELAY = 0.001


class DtlsRole(enum.Enum):
    """RFC 5763 §5: `a=setup:active` is the DTLS client, `passive` the server."""

    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    CLIENT = "client"
    SERVER = "server"


class DtlsState(enum.Enum):
    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


DTLS_TRANSITIONS: dict[DtlsState, frozenset[DtlsState]] = {
    DtlsState.NEW: frozenset({DtlsState.CONNECTING, DtlsState.FAILED, DtlsState.CLOSED}),
    DtlsState.CONNECTING: frozenset({DtlsState.CONNECTED, DtlsState.FAILED, DtlsState.CLOSED}),
    DtlsState.CONNECTED: frozenset({DtlsState.FAILED, DtlsState.CLOSED}),
    DtlsState.FAILED: frozenset({DtlsState.CLOSED}),
    DtlsState.CLOSED: frozenset(),
}


class DtlsError(Exception):
    """Misuse of a `DtlsEndpoint` (wrong state, unknown profile)."""


@dataclass(frozen=True)
class SrtpProfile:
    """A DTLS-SRTP protection profile (RFC 5764 §4.1.2, RFC 7714 §14.2) as libsrtp knows it."""

    name: str  # OpenSSL's name, as offered in use_srtp
    key_length: int
    salt_length: int
    libsrtp_profile: int


SRTP_PROFILES: dict[str, SrtpProfile] = {
    profile.name: profile
    for profile in (
        SrtpProfile("SRTP_AEAD_AES_256_GCM", 32, 12, Policy.SRTP_PROFILE_AEAD_AES_256_GCM),
        SrtpProfile("SRTP_AEAD_AES_128_GCM", 16, 12, Policy.SRTP_PROFILE_AEAD_AES_128_GCM),
        SrtpProfile("SRTP_AES128_CM_SHA1_80", 16, 14, Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
        SrtpProfile("SRTP_AES128_CM_SHA1_32", 16, 14, Policy.SRTP_PROFILE_AES128_CM_SHA1_32),
    )
}

# Our preference, strongest first.  As DTLS server OpenSSL picks by *our* order among what the
# client offers; as client we offer these.  AES128_CM_SHA1_80 (RFC 5764 §4.1.2) is what every
# WIC supports.
DEFAULT_SRTP_PROFILES: tuple[str, ...] = ("SRTP_AEAD_AES_256_GCM", "SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")


@dataclass(frozen=True)
class SrtpKeys:
    """SRTP master keys of one DTLS association, split per RFC 5764 §4.2.

    `local_master` protects what we send, `remote_master` unprotects what we receive; each is
    key || salt, the layout libsrtp expects.
    """

    profile: SrtpProfile
    role: DtlsRole
    # Secrets: kept out of repr() so logs never show them.
    client_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    client_salt: bytes = field(repr=False)
    server_salt: bytes = field(repr=False)

    @classmethod
    def from_keying_material(cls, profile: SrtpProfile, role: DtlsRole, material: bytes) -> SrtpKeys:
        # RFC 5764 §4.2: client_write_key | server_write_key | client_write_salt | server_write_salt.
        k, s = profile.key_length, profile.salt_length
        if len(material) != 2 * (k + s):
            raise DtlsError(f"expected {2 * (k + s)} bytes of keying material, got {len(material)}")
        return cls(profile, role, material[:k], material[k : 2 * k], material[2 * k : 2 * k + s], material[2 * k + s :])

    @property
    def local_master(self) -> bytes:
        if self.role is DtlsRole.CLIENT:
            return self.client_key + self.client_salt
        return self.server_key + self.server_salt

    @property
    def remote_master(self) -> bytes:
        if self.role is DtlsRole.CLIENT:
            return self.server_key + self.server_salt
        return self.client_key + self.client_salt


def _ssl_error_text(error: Exception) -> str:
    """pyOpenSSL errors carry [(lib, func, reason), …]; keep the readable reasons."""
    parts = error.args[0] if error.args else None
    if isinstance(parts, list) and parts:
        reasons = [str(item[-1]) for item in parts if isinstance(item, tuple) and item]
        if reasons:
            return "; ".join(reasons)
    return str(error) or type(error).__name__


@functools.lru_cache(maxsize=8)
def _context(certificate: Certificate, srtp_profiles: tuple[str, ...]) -> SSL.Context:
    """One OpenSSL context per certificate and profile list, shared by every association:
    a context of its own cost each call 0.4 ms of CPU and 24 KiB of C heap (loading the
    certificate and key again), memory glibc then keeps after the call (``epcscf.ops.heap``)."""
    context = SSL.Context(SSL.DTLS_METHOD)
    context.use_certificate(certificate.certificate)
    context.use_privatekey(certificate.private_key)
    # RFC 5763 §5: both sides present a certificate; the server must ask for the client's.
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_for_endpoint)
    context.set_tlsext_use_srtp(":".join(srtp_profiles).encode("ascii"))
    # With OP_NO_QUERY_MTU the MTU must be set, or the handshake dies with an unexpected EOF.
    context.set_options(SSL.OP_NO_QUERY_MTU)
    return context


def _verify_for_endpoint(connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    endpoint = connection.get_app_data()()
    return endpoint is not None and endpoint._verify(connection, certificate, errno, depth, ok)


class DtlsEndpoint:
    """One DTLS-SRTP association toward the WIC.

    `send` is called with each outgoing DTLS datagram; feed every incoming DTLS datagram
    (RFC 7983 first byte 20..63) to `datagram_received`.
    """

    def __init__(
        self,
        role: DtlsRole,
        certificate: Certificate,
        expected_fingerprint: Fingerprint | None,
        clock: IReactorTime,
        send: Callable[[bytes], object],
        *,
        on_connected: Callable[[SrtpKeys], object] | None = None,
        on_failed: Callable[[str], object] | None = None,
        srtp_profiles: Sequence[str] = DEFAULT_SRTP_PROFILES,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        unknown = [name for name in srtp_profiles if name not in SRTP_PROFILES]
        if unknown or not srtp_profiles:
            raise DtlsError(f"unknown SRTP profiles {unknown} (known: {', '.join(SRTP_PROFILES)})")
        self.role = DtlsRole(role)
        self.expected_fingerprint = expected_fingerprint
        self.on_connected = on_connected
        self.on_failed = on_failed
        self.failure_reason: str | None = None
        self.keys: SrtpKeys | None = None
        self.peer_certificate: x509.Certificate | None = None
        self._clock = clock
        self._send = send
        self._handshake_timeout = handshake_timeout
        self._state = DtlsState.NEW
        #: the peer ended the association in order (close_notify), as a WIC does at hang-up
        self.closed_by_peer = False
        self._timer: IDelayedCall | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._handshake_done = False
        self._verify_failure: str | None = None
        self.retransmissions = 0

        self._ssl = SSL.Connection(_context(certificate, tuple(srtp_profiles)), None)
        # The shared context's verify callback finds this endpoint through the connection
        # (a weak reference: the endpoint owns the connection, not the other way round).
        self._ssl.set_app_data(weakref.ref(self))
        self._ssl.set_ciphertext_mtu(mtu)
        if self.role is DtlsRole.CLIENT:
            self._ssl.set_connect_state()
        else:
            self._ssl.set_accept_state()

    def __repr__(self) -> str:
        return f"<DtlsEndpoint {self.role.value} {self._state.value}>"

    @property
    def state(self) -> DtlsState:
        return self._state

    # -- driving ---------------------------------------------------------------------------

    def start(self) -> None:
        """Begin: the client sends its ClientHello, the server waits for one."""
        if self._state is not DtlsState.NEW:
            raise DtlsError(f"start() in state {self._state.value}")
        self._transition(DtlsState.CONNECTING)
        self._handshake_timer = self._clock.callLater(self._handshake_timeout, self._handshake_timed_out)
        if self.role is DtlsRole.CLIENT:
            self._handshake_step()

    def datagram_received(self, data: bytes) -> None:
        """One DTLS record datagram from the peer."""
        state = self._state
        if state is DtlsState.NEW and self.role is DtlsRole.SERVER:
            # A ClientHello before start(): the server has nothing to wait for.
            self.start()
            state = self._state
        if state is not DtlsState.CONNECTING and state is not DtlsState.CONNECTED:
            return
        try:
            self._ssl.bio_write(data)
        except SSL.Error as error:
            self._fail(f"DTLS input rejected: {_ssl_error_text(error)}")
            return
        if not self._handshake_done:
            self._handshake_step()
        else:
            self._read_after_handshake()

    def set_remote_fingerprint(self, fingerprint: Fingerprint) -> None:
        """The peer's `a=fingerprint` arrived (answer after an early ClientHello, or a re-offer).

        Once connected, a fingerprint that no longer matches the peer's certificate cannot be
        applied to this association: DtlsError (RFC 8842 §5.5: a new association is needed)."""
        if self._state is DtlsState.CONNECTED and self.peer_certificate is not None:
            if not fingerprint.matches(self.peer_certificate):
                raise DtlsError(
                    f"a=fingerprint:{fingerprint.to_sdp()} does not match the certificate of the running "
                    "DTLS association; a new association is needed (RFC 8842 §5.5)"
                )
        self.expected_fingerprint = fingerprint
        if self._handshake_done and self._state is DtlsState.CONNECTING:
            self._finish_handshake()

    def close(self, notify: bool = True) -> None:
        """Send close_notify if connected (and ``notify``), stop timers, free the context
        (idempotent).  ``notify=False``: the peer is gone (a replaced association, RFC 8842
        §5.5), an alert would only reach its successor."""
        if self._state is DtlsState.CLOSED:
            return
        if notify and self._state is DtlsState.CONNECTED:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._flush()
        self._cancel_timers()
        self._transition(DtlsState.CLOSED)
        self.on_connected = None
        self.on_failed = None

    # -- OpenSSL steps ----------------------------------------------------------------------

    def _handshake_step(self) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            self._arm_timer()
            return
        except SSL.Error as error:
            self._flush()  # the alert OpenSSL queued for the peer
            self._fail(self._verify_failure or f"DTLS handshake failed: {_ssl_error_text(error)}")
            return
        self._flush()
        self._handshake_done = True
        self._arm_timer()
        self._finish_handshake()

    def _finish_handshake(self) -> None:
        certificate = self._ssl.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            self._fail("peer presented no certificate (RFC 5763 §5 requires one)")
            return
        self.peer_certificate = certificate
        if self.expected_fingerprint is None:
            return  # wait for set_remote_fingerprint
        if not self.expected_fingerprint.matches(certificate):
            self._fail(self._mismatch_reason(certificate))
            return
        profile_name = self._ssl.get_selected_srtp_profile().decode("ascii", "replace")
        profile = SRTP_PROFILES.get(profile_name)
        if profile is None:
            self._fail(f"no SRTP profile negotiated (use_srtp, RFC 5764 §4.1.2): {profile_name or 'none'}")
            return
        size = 2 * (profile.key_length + profile.salt_length)
        material = self._ssl.export_keying_material(EXPORTER_LABEL, size)
        self.keys = SrtpKeys.from_keying_material(profile, self.role, material)
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self._transition(DtlsState.CONNECTED)
        callback = self.on_connected
        if callback is not None:
            callback(self.keys)

    def _read_after_handshake(self) -> None:
        """DTLS-SRTP carries no application data; reading processes alerts and lets OpenSSL
        answer a retransmitted final flight of the peer (RFC 6347 §4.2.4)."""
        while self._state is DtlsState.CONNECTED or self._state is DtlsState.CONNECTING:
            try:
                self._ssl.recv(MAX_DATAGRAM)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._flush()
                self.closed_by_peer = True
                self._fail("peer closed the DTLS association (close_notify)")
                return
            except SSL.Error as error:
                self._flush()
                self._fail(f"DTLS fatal alert or error: {_ssl_error_text(error)}")
                return
        self._flush()
        self._arm_timer()

    def _verify(self, connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        # Called from the chain's top down to the leaf (depth 0); only the leaf is pinned.
        if depth != 0:
            return True
        expected = self.expected_fingerprint
        if expected is None:
            return True  # checked later, in set_remote_fingerprint
        leaf = certificate.to_cryptography()
        if expected.matches(leaf):
            return True
        self._verify_failure = self._mismatch_reason(leaf)
        return False

    def _mismatch_reason(self, certificate: x509.Certificate) -> str:
        expected = self.expected_fingerprint
        assert expected is not None
        actual = certificate_fingerprint(certificate, expected.algorithm)
        return (
            f"peer certificate fingerprint {actual.to_sdp()} does not match the SDP "
            f"a=fingerprint:{expected.to_sdp()} (RFC 5763 §5)"
        )

    def _flush(self) -> None:
        while True:
            try:
                data = self._ssl.bio_read(MAX_DATAGRAM)
            except SSL.WantReadError:
                return
            except SSL.Error:
                return
            if not data:
                return
            self._send(data)

    # -- timers -----------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._state is not DtlsState.CONNECTING and self._state is not DtlsState.CONNECTED:
            return
        timeout = self._ssl.DTLSv1_get_timeout()
        if timeout is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(timeout, MIN_TIMER_DELAY)
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._retransmit_timer_fired)

    def _retransmit_timer_fired(self) -> None:
        self._timer = None
        try:
            # RFC 6347 §4.2.4.1: retransmit the last flight; OpenSSL doubles its timer.
            if self._ssl.DTLSv1_handle_timeout():
                self.retransmissions += 1
        except SSL.Error as error:
            self._flush()
            self._fail(f"DTLS retransmission limit reached: {_ssl_error_text(error)}")
            return
        self._flush()
        self._arm_timer()

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self._handshake_done and self.expected_fingerprint is None:
            self._fail(f"no a=fingerprint for the peer within {self._handshake_timeout:g} s of the DTLS handshake")
        else:
            self._fail(f"DTLS handshake not complete within {self._handshake_timeout:g} s")

    def _cancel_timers(self) -> None:
        for call in (self._timer, self._handshake_timer):
            if call is not None and call.active():
                call.cancel()
        self._timer = None
        self._handshake_timer = None

    # -- state ------------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self._state not in (DtlsState.NEW, DtlsState.CONNECTING, DtlsState.CONNECTED):
            return
        self.failure_reason = reason
        self._cancel_timers()
        self._transition(DtlsState.FAILED)
        log.info("DTLS {role} failed: {reason}", role=self.role.value, reason=reason)
        callback = self.on_failed
        if callback is not None:
            callback(reason)

    def _transition(self, new: DtlsState) -> None:
        if new not in DTLS_TRANSITIONS[self._state]:
            raise DtlsError(f"DTLS endpoint cannot go from {self._state.value} to {new.value}")
        self._state = new
