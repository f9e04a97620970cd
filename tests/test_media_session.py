"""MediaSession end to end on 127.0.0.1: a WIC simulator (raw pyOpenSSL DTLS + pylibsrtp) on one
side, plain UDP "core" sockets on the other (needs trial --reactor=asyncio for the real sockets;
the DTLS handshake itself needs no timer)."""

from __future__ import annotations

import functools
import os
import socket

from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto
from pylibsrtp import Policy, Session
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from epcscf.ice.ports import PortsExhausted, UdpPortPool
from epcscf.media import (
    Certificate,
    Direction,
    DtlsRole,
    MediaError,
    MediaSession,
    MediaSessionConfig,
)
from tests.support.processes import wait_for

Address = tuple[str, int]
LOCAL = "127.0.0.1"
# Real sockets need real reactor turns: poll often for the visible effect, fail after 5 s.
until = functools.partial(wait_for, timeout=5.0, interval=0.005)

# (key, salt) lengths of the profiles the simulator may offer (RFC 5764 §4.1.2, RFC 7714 §14.2).
PROFILE_SIZES = {
    b"SRTP_AES128_CM_SHA1_80": (16, 14, Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
    b"SRTP_AEAD_AES_128_GCM": (16, 12, Policy.SRTP_PROFILE_AEAD_AES_128_GCM),
    b"SRTP_AEAD_AES_256_GCM": (32, 12, Policy.SRTP_PROFILE_AEAD_AES_256_GCM),
}

SERVER_CERT = Certificate.generate("epcscf")
WIC_CERT = Certificate.generate("wic")
OTHER_CERT = Certificate.generate("other")


def rtp(seq: int, ssrc: int = 0x11223344, pt: int = 0, payload: bytes = b"\xd5" * 160) -> bytes:
    """RFC 3550 §5.1 header (V=2) + payload; timestamp advances 160 per packet (G.711 20 ms)."""
    return bytes([0x80, pt]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload


def rtcp_rr(ssrc: int = 0x11223344) -> bytes:
    """An empty RFC 3550 §6.4.2 receiver report (PT 201)."""
    return bytes([0x80, 201, 0, 1]) + ssrc.to_bytes(4, "big")


def sha256_fingerprint(cert: crypto.X509) -> str:
    return ":".join(f"{b:02X}" for b in cert.to_cryptography().fingerprint(hashes.SHA256()))


class WicSimulator(DatagramProtocol):
    """A browser's media stack in miniature: pyOpenSSL DTLS (client or server) + pylibsrtp."""

    def __init__(self, certificate: Certificate, expected_fingerprint: str, role: str,
                 profiles: bytes = b"SRTP_AES128_CM_SHA1_80") -> None:
        context = SSL.Context(SSL.DTLS_METHOD)
        context.use_certificate(certificate.certificate)
        context.use_privatekey(certificate.private_key)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        context.set_tlsext_use_srtp(profiles)
        context.set_options(SSL.OP_NO_QUERY_MTU)
        self.ssl = SSL.Connection(context, None)
        self.ssl.set_ciphertext_mtu(1200)
        self.role = role
        if role == "client":
            self.ssl.set_connect_state()
        else:
            self.ssl.set_accept_state()
        self.expected_fingerprint = expected_fingerprint
        self.peer: Address | None = None
        self.connected: Deferred[str] = Deferred()
        self.handshake_done = False
        self.closed_by_peer = False
        self.rtp_received: list[bytes] = []
        self.rtcp_received: list[bytes] = []
        self.undecryptable = 0
        self.tx: Session | None = None
        self.rx: Session | None = None

    def _verify(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        return depth != 0 or sha256_fingerprint(cert) == self.expected_fingerprint

    def start(self) -> None:
        if self.role == "client":
            self._step()

    def _flush(self) -> None:
        while True:
            try:
                data = self.ssl.bio_read(65535)
            except SSL.WantReadError:
                return
            assert self.transport is not None and self.peer is not None
            self.transport.write(data, self.peer)

    def _step(self) -> None:
        try:
            self.ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as error:
            self._flush()
            if not self.connected.called:
                self.connected.errback(error)
            return
        self._flush()
        self.handshake_done = True
        profile = self.ssl.get_selected_srtp_profile()
        key_length, salt_length, libsrtp_profile = PROFILE_SIZES[profile]
        m = self.ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (key_length + salt_length))
        k, s = key_length, salt_length
        client = m[:k] + m[2 * k : 2 * k + s]
        server = m[k : 2 * k] + m[2 * k + s :]
        mine, theirs = (client, server) if self.role == "client" else (server, client)
        self.tx = Session(Policy(key=mine, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=libsrtp_profile))
        self.rx = Session(Policy(key=theirs, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=libsrtp_profile))
        self.connected.callback(profile.decode())

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802
        first = datagram[0]
        if 20 <= first <= 63:
            self.ssl.bio_write(datagram)
            if not self.handshake_done:
                self._step()
                return
            try:
                self.ssl.recv(65535)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                self.closed_by_peer = True
            self._flush()
        elif 128 <= first <= 191 and self.rx is not None:
            try:
                if 192 <= datagram[1] <= 223:
                    self.rtcp_received.append(self.rx.unprotect_rtcp(datagram))
                else:
                    self.rtp_received.append(self.rx.unprotect(datagram))
            except Exception:
                self.undecryptable += 1

    def send_rtp(self, packet: bytes) -> None:
        assert self.tx is not None and self.transport is not None
        self.transport.write(self.tx.protect(packet), self.peer)

    def send_rtcp(self, packet: bytes) -> None:
        assert self.tx is not None and self.transport is not None
        self.transport.write(self.tx.protect_rtcp(packet), self.peer)

    def send_raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data, self.peer)


class UdpWicTransport(DatagramProtocol):
    """The session's WIC side over a plain UDP socket (`DatagramTransportLike`), standing in
    for the ICE agent's selected pair."""

    def __init__(self) -> None:
        self.peer: Address | None = None
        self.session: MediaSession | None = None

    def send(self, data: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        self.transport.write(data, self.peer)

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802
        if self.session is not None:
            self.session.datagram_received(datagram)


class CoreEndpoint(DatagramProtocol):
    """A plain RTP/RTCP socket of the IMS core (e.g. an MGW)."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Address]] = []

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802
        self.received.append((datagram, addr))

    @property
    def packets(self) -> list[bytes]:
        return [data for data, _ in self.received]

    def send(self, data: bytes, to: Address) -> None:
        assert self.transport is not None
        self.transport.write(data, to)


@inlineCallbacks
def settle():  # type: ignore[no-untyped-def]
    """Give in-flight loopback datagrams time to arrive (used before asserting an absence)."""
    yield deferLater(global_reactor, 0.1, lambda: None)


class MediaSessionTestCase(unittest.TestCase):
    # The reactor whose sockets the sessions use: the global one reads the core-side sockets
    # straight from its asyncio loop; a reactor without one gets Twisted UDP ports instead.
    session_reactor: object = global_reactor

    def setUp(self) -> None:
        self.listening: list[object] = []
        self.sessions: list[MediaSession] = []

    @inlineCallbacks
    def tearDown(self):  # type: ignore[no-untyped-def]
        for session in self.sessions:
            yield session.close()
        for port in self.listening:
            yield port.stopListening()  # type: ignore[attr-defined]

    def listen(self, protocol: DatagramProtocol) -> Address:
        port = global_reactor.listenUDP(0, protocol, interface=LOCAL)
        self.listening.append(port)
        return (LOCAL, port.getHost().port)

    def make_session(self, config: MediaSessionConfig | None = None, pool: UdpPortPool | None = None,
                     ) -> tuple[MediaSession, UdpWicTransport]:
        wic_side = UdpWicTransport()
        self.listen(wic_side)
        session = MediaSession(
            self.session_reactor, global_reactor, config or MediaSessionConfig(), SERVER_CERT, wic_side, pool  # type: ignore[arg-type]
        )
        wic_side.session = session
        self.sessions.append(session)
        return session, wic_side

    def make_wic(self, wic_side: UdpWicTransport, role: str = "client", cert: Certificate = WIC_CERT,
                 profiles: bytes = b"SRTP_AES128_CM_SHA1_80") -> WicSimulator:
        wic = WicSimulator(cert, SERVER_CERT.fingerprint.value, role, profiles)
        wic_address = self.listen(wic)
        wic_side.peer = wic_address
        assert wic_side.transport is not None
        wic.peer = (LOCAL, wic_side.transport.getHost().port)
        return wic

    @inlineCallbacks
    def connected_call(self, config: MediaSessionConfig | None = None, session_role: str = "server",
                       profiles: bytes = b"SRTP_AES128_CM_SHA1_80"):  # type: ignore[no-untyped-def]
        """A session whose DTLS is up with a WIC simulator, and a core RTP/RTCP socket pair."""
        session, wic_side = self.make_session(config)
        wic = self.make_wic(wic_side, "client" if session_role == "server" else "server", profiles=profiles)
        core_rtp, core_rtcp = CoreEndpoint(), CoreEndpoint()
        rtp_address, rtcp_address = self.listen(core_rtp), self.listen(core_rtcp)
        session.set_core_remote(LOCAL, rtp_address[1], rtcp_address[1])
        up: list[bool] = []
        session.on_connected = lambda: up.append(True)
        session.start_dtls(DtlsRole(session_role), WIC_CERT.fingerprint)
        wic.start()
        profile = yield wic.connected
        yield until(lambda: bool(up))
        return session, wic, core_rtp, core_rtcp, profile


class RelayTests(MediaSessionTestCase):
    @inlineCallbacks
    def test_srtp_from_wic_arrives_as_rtp_at_core_and_back(self):  # type: ignore[no-untyped-def]
        session, wic, core_rtp, core_rtcp, profile = yield self.connected_call()
        self.assertEqual(profile, "SRTP_AES128_CM_SHA1_80")
        sent_up = [rtp(seq, payload=bytes([seq]) * 160) for seq in range(1, 11)]
        for packet in sent_up:
            wic.send_rtp(packet)
        yield until(lambda: len(core_rtp.received) == 10)
        # SSRC, sequence, timestamp and payload untouched (RFC 3711); sent from our RTP port.
        self.assertEqual(core_rtp.packets, sent_up)
        self.assertEqual({addr for _, addr in core_rtp.received}, {(LOCAL, session.core_rtp_port)})

        sent_down = [rtp(seq, ssrc=0xCAFE, pt=8) for seq in range(100, 110)]
        for packet in sent_down:
            core_rtp.send(packet, (LOCAL, session.core_rtp_port))
        yield until(lambda: len(wic.rtp_received) == 10)
        self.assertEqual(wic.rtp_received, sent_down)
        self.assertEqual(wic.undecryptable, 0)

        stats = session.stats()
        self.assertEqual((stats.wic_to_core.packets, stats.core_to_wic.packets), (10, 10))
        self.assertEqual(stats.wic_to_core.bytes, 10 * 172)
        self.assertEqual((stats.wic_to_core.lost, stats.core_to_wic.lost), (0, 0))
        self.assertEqual((stats.wic_to_core.dropped, stats.core_to_wic.dropped), (0, 0))
        self.assertEqual(stats.srtp_profile, "SRTP_AES128_CM_SHA1_80")
        self.assertEqual(stats.dtls_state, "connected")
        self.assertLessEqual(stats.wic_to_core.first_packet_time, stats.wic_to_core.last_packet_time)

    @inlineCallbacks
    def test_gcm_with_session_as_dtls_client(self):  # type: ignore[no-untyped-def]
        session, wic, core_rtp, _, profile = yield self.connected_call(
            session_role="client", profiles=b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"
        )
        self.assertEqual(profile, "SRTP_AEAD_AES_128_GCM")
        wic.send_rtp(rtp(1))
        core_rtp.send(rtp(7, ssrc=5), (LOCAL, session.core_rtp_port))
        yield until(lambda: len(core_rtp.received) == 1 and len(wic.rtp_received) == 1)
        self.assertEqual((core_rtp.packets[0], wic.rtp_received[0]), (rtp(1), rtp(7, ssrc=5)))

    @inlineCallbacks
    def test_rtcp_is_translated_both_ways(self):  # type: ignore[no-untyped-def]
        session, wic, core_rtp, core_rtcp, _ = yield self.connected_call()
        wic.send_rtcp(rtcp_rr(1))  # SRTCP, multiplexed on the WIC's single port (RFC 5761)
        yield until(lambda: len(core_rtcp.received) == 1)
        self.assertEqual(core_rtcp.received[0], (rtcp_rr(1), (LOCAL, session.core_rtcp_port)))
        self.assertEqual(core_rtp.received, [])
        core_rtcp.send(rtcp_rr(2), (LOCAL, session.core_rtcp_port))
        yield until(lambda: len(wic.rtcp_received) == 1)
        self.assertEqual(wic.rtcp_received, [rtcp_rr(2)])
        self.assertEqual(wic.rtp_received, [])
        stats = session.stats()
        self.assertEqual((stats.wic_to_core.rtcp_packets, stats.core_to_wic.rtcp_packets), (1, 1))

    @inlineCallbacks
    def test_core_with_rtcp_mux_gets_rtcp_on_its_rtp_port(self):  # type: ignore[no-untyped-def]
        session, wic, core_rtp, core_rtcp, _ = yield self.connected_call()
        rtp_port = core_rtp.transport.getHost().port  # type: ignore[union-attr]
        session.set_core_remote(LOCAL, rtp_port, rtcp_mux=True)
        wic.send_rtcp(rtcp_rr(1))
        wic.send_rtp(rtp(1))
        yield until(lambda: len(core_rtp.received) == 2)
        self.assertEqual(sorted(core_rtp.packets), sorted([rtcp_rr(1), rtp(1)]))
        core_rtp.send(rtcp_rr(3), (LOCAL, session.core_rtp_port))
        yield until(lambda: len(wic.rtcp_received) == 1)
        self.assertEqual(wic.rtcp_received, [rtcp_rr(3)])
        self.assertEqual(core_rtcp.received, [])

    @inlineCallbacks
    def test_telephone_events_and_repeated_packets_pass_unchanged(self):  # type: ignore[no-untyped-def]
        # RFC 4733 events (here PT 101, marker set) and CN are opaque to the relay.
        session, wic, core_rtp, _, _ = yield self.connected_call()
        event = bytes([0x80, 0x80 | 101]) + rtp(50)[2:12] + bytes([5, 0x8A, 0x03, 0x20])
        comfort_noise = bytes([0x80, 13]) + rtp(51)[2:12] + b"\x40"
        for packet in (event, comfort_noise, event):  # the same packet twice from the core
            core_rtp.send(packet, (LOCAL, session.core_rtp_port))
        yield until(lambda: len(wic.rtp_received) == 2)
        yield settle()
        # The WIC's replay protection drops the repeat; the relay re-encrypted it all the same.
        self.assertEqual(wic.rtp_received, [event, comfort_noise])
        self.assertEqual(wic.undecryptable, 1)
        self.assertEqual(session.stats().srtp_errors.protect, 0)
        self.assertEqual(session.stats().core_to_wic.packets, 3)
        wic.send_rtp(event)
        yield until(lambda: len(core_rtp.received) == 1)
        self.assertEqual(core_rtp.packets, [event])

    @inlineCallbacks
    def test_loss_counted_from_sequence_gaps(self):  # type: ignore[no-untyped-def]
        session, wic, core_rtp, _, _ = yield self.connected_call()
        for seq in (1, 2, 5, 6, 10):
            wic.send_rtp(rtp(seq))
        yield until(lambda: len(core_rtp.received) == 5)
        self.assertEqual(session.stats().wic_to_core.lost, 5)  # 3, 4, 7, 8, 9

    @inlineCallbacks
    def test_forged_srtp_and_foreign_protocols_are_dropped_and_counted(self):  # type: ignore[no-untyped-def]
        session, wic, core_rtp, _, _ = yield self.connected_call()
        wic.send_raw(rtp(1) + b"\x00" * 10)  # RTP with a bogus auth tag
        wic.send_raw(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12))  # STUN (the ICE agent's business)
        wic.send_raw(b"\x40\x00\x00\x04abcd")  # TURN ChannelData
        wic.send_raw(b"\x10zrtp")  # ZRTP
        wic.send_rtp(rtp(2))
        yield until(lambda: len(core_rtp.received) == 1)
        yield settle()
        self.assertEqual(core_rtp.packets, [rtp(2)])
        stats = session.stats()
        self.assertEqual(stats.srtp_errors.unprotect, 1)
        self.assertEqual(stats.wic_to_core.dropped, 4)


class GatingTests(MediaSessionTestCase):
    @inlineCallbacks
    def test_no_media_toward_wic_or_core_before_dtls(self):  # type: ignore[no-untyped-def]
        session, wic_side = self.make_session()
        wic = self.make_wic(wic_side)
        core_rtp = CoreEndpoint()
        core = self.listen(core_rtp)
        session.set_core_remote(*core)
        core_rtp.send(rtp(1), (LOCAL, session.core_rtp_port))
        wic_side.session = None  # nothing reaches the session from the WIC yet
        yield settle()
        self.assertEqual(wic.rtp_received, [])
        stats = session.stats()
        self.assertEqual((stats.core_to_wic.dropped, stats.core_to_wic.packets), (1, 0))
        self.assertEqual(stats.dtls_state, "new")
        # SRTP-looking data from the WIC before keys exist goes nowhere either.
        session.datagram_received(rtp(1))
        self.assertEqual(session.stats().wic_to_core.dropped, 1)

    @inlineCallbacks
    def test_direction_gates_rtp_but_not_rtcp(self):  # type: ignore[no-untyped-def]
        session, wic, core_rtp, core_rtcp, _ = yield self.connected_call()
        to_session = (LOCAL, session.core_rtp_port)

        session.set_direction("sendonly")  # WIC holds the core: only WIC → core RTP
        wic.send_rtp(rtp(1))
        core_rtp.send(rtp(1, ssrc=9), to_session)
        wic.send_rtcp(rtcp_rr(1))
        core_rtcp.send(rtcp_rr(2), (LOCAL, session.core_rtcp_port))
        yield until(lambda: len(core_rtp.received) == 1 and len(core_rtcp.received) == 1 and len(wic.rtcp_received) == 1)
        yield settle()
        self.assertEqual(wic.rtp_received, [])

        session.set_direction(Direction.RECVONLY)  # core holds the WIC: only core → WIC
        wic.send_rtp(rtp(2))
        core_rtp.send(rtp(2, ssrc=9), to_session)
        yield until(lambda: len(wic.rtp_received) == 1)
        yield settle()
        self.assertEqual(len(core_rtp.received), 1)

        session.set_direction("inactive")
        wic.send_rtp(rtp(3))
        core_rtp.send(rtp(3, ssrc=9), to_session)
        yield settle()
        self.assertEqual((len(core_rtp.received), len(wic.rtp_received)), (1, 1))

        session.set_direction("sendrecv")  # resume
        wic.send_rtp(rtp(4))
        core_rtp.send(rtp(4, ssrc=9), to_session)
        yield until(lambda: len(core_rtp.received) == 2 and len(wic.rtp_received) == 2)
        self.assertEqual(core_rtp.packets, [rtp(1), rtp(4)])
        self.assertEqual(wic.rtp_received, [rtp(2, ssrc=9), rtp(4, ssrc=9)])
        stats = session.stats()
        self.assertEqual((stats.wic_to_core.dropped, stats.core_to_wic.dropped), (2, 2))
        self.assertEqual(stats.direction, "sendrecv")

    def test_unknown_direction_and_role_are_refused(self) -> None:
        session, _ = self.make_session()
        with self.assertRaises(ValueError):
            session.set_direction("sideways")
        with self.assertRaises(MediaError) as caught:
            session.start_dtls("actpass", None)
        self.assertIn("'client' or 'server'", str(caught.exception))
        session.start_dtls("server", None)
        with self.assertRaises(MediaError):
            session.start_dtls("server", None)

    @inlineCallbacks
    def test_fingerprint_mismatch_fails_the_session_and_relays_nothing(self):  # type: ignore[no-untyped-def]
        session, wic_side = self.make_session()
        wic = self.make_wic(wic_side, cert=OTHER_CERT)  # presents a certificate the SDP did not announce
        core_rtp = CoreEndpoint()
        session.set_core_remote(*self.listen(core_rtp))
        failures: list[str] = []
        session.on_failed = failures.append
        session.start_dtls("server", WIC_CERT.fingerprint)
        wic.start()
        yield self.assertFailure(wic.connected, SSL.Error)
        yield until(lambda: bool(failures))
        self.assertIn("does not match", failures[0])
        self.assertIn(OTHER_CERT.fingerprint.value, failures[0])
        self.assertEqual(session.state, "failed")
        core_rtp.send(rtp(1), (LOCAL, session.core_rtp_port))
        yield settle()
        self.assertEqual(session.stats().core_to_wic.dropped, 1)

    @inlineCallbacks
    def test_client_hello_before_start_dtls_is_kept(self):  # type: ignore[no-untyped-def]
        # RFC 5763 §5: with a=setup:actpass the WIC's ClientHello can beat the SDP answer.
        session, wic_side = self.make_session()
        wic = self.make_wic(wic_side, "client")
        wic.start()
        yield settle()
        self.assertEqual(session.state, "new")
        session.start_dtls("server", WIC_CERT.fingerprint)
        profile = yield wic.connected
        self.assertEqual(profile, "SRTP_AES128_CM_SHA1_80")
        yield until(lambda: session.connected)


class LatchingTests(MediaSessionTestCase):
    @inlineCallbacks
    def test_latches_to_the_real_source_and_ignores_others(self):  # type: ignore[no-untyped-def]
        session, wic, core_sdp, _, _ = yield self.connected_call()
        real_source, intruder = CoreEndpoint(), CoreEndpoint()
        real_address = self.listen(real_source)
        self.listen(intruder)
        real_source.send(rtp(1, ssrc=7), (LOCAL, session.core_rtp_port))
        yield until(lambda: len(wic.rtp_received) == 1)
        self.assertEqual(session.stats().core_rtp_target, real_address)
        wic.send_rtp(rtp(1))
        yield until(lambda: len(real_source.received) == 1)  # RFC 4961: back to where it came from
        intruder.send(rtp(2, ssrc=66), (LOCAL, session.core_rtp_port))
        real_source.send(rtp(2, ssrc=7), (LOCAL, session.core_rtp_port))
        yield until(lambda: len(wic.rtp_received) == 2)
        yield settle()
        self.assertEqual(wic.rtp_received, [rtp(1, ssrc=7), rtp(2, ssrc=7)])
        self.assertEqual(core_sdp.received, [])
        self.assertEqual(session.stats().core_to_wic.dropped, 1)

    @inlineCallbacks
    def test_without_latching_media_goes_to_the_sdp_address(self):  # type: ignore[no-untyped-def]
        session, wic, core_sdp, _, _ = yield self.connected_call(MediaSessionConfig(latching=False))
        other = CoreEndpoint()
        self.listen(other)
        other.send(rtp(1, ssrc=7), (LOCAL, session.core_rtp_port))
        yield until(lambda: len(wic.rtp_received) == 1)
        wic.send_rtp(rtp(1))
        yield until(lambda: len(core_sdp.received) == 1)
        yield settle()
        self.assertEqual(other.received, [])

    @inlineCallbacks
    def test_new_core_remote_restarts_latching(self):  # type: ignore[no-untyped-def]
        session, wic, core_sdp, _, _ = yield self.connected_call()
        first, second = CoreEndpoint(), CoreEndpoint()
        self.listen(first)
        second_address = self.listen(second)
        first.send(rtp(1), (LOCAL, session.core_rtp_port))
        yield until(lambda: len(wic.rtp_received) == 1)
        session.set_core_remote(*second_address)  # re-INVITE: the core moved
        second.send(rtp(2), (LOCAL, session.core_rtp_port))
        yield until(lambda: len(wic.rtp_received) == 2)
        wic.send_rtp(rtp(5))
        yield until(lambda: len(second.received) == 1)
        self.assertEqual(first.received, [])

    def test_core_remote_must_be_an_ip_address(self) -> None:
        session, _ = self.make_session()
        with self.assertRaises(MediaError) as caught:
            session.set_core_remote("mgw.example.net", 4000)
        self.assertIn("mgw.example.net", str(caught.exception))
        with self.assertRaises(MediaError):
            session.set_core_remote(LOCAL, 70000)


def free_even_port_pair() -> int:
    """An even port p with p and p+1 currently free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOCAL, 0))
            port = probe.getsockname()[1] & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind((LOCAL, port))
                b.bind((LOCAL, port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no free port pair found")


def can_bind(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOCAL, port))
        return True
    except OSError:
        return False


class LifecycleTests(MediaSessionTestCase):
    @inlineCallbacks
    def test_ports_are_even_odd_and_free_after_close(self):  # type: ignore[no-untyped-def]
        session, wic, _, _, _ = yield self.connected_call()
        rtp_port, rtcp_port = session.core_rtp_port, session.core_rtcp_port
        self.assertEqual((rtp_port % 2, rtcp_port), (0, rtp_port + 1))  # RFC 3550 §11
        self.assertFalse(can_bind(rtp_port))
        yield session.close()
        self.assertTrue(can_bind(rtp_port))
        self.assertTrue(can_bind(rtcp_port))
        self.assertEqual(session.state, "closed")
        yield until(lambda: wic.closed_by_peer)  # close_notify reached the WIC
        yield session.close()  # idempotent

    @inlineCallbacks
    def test_pool_ports_go_back_to_the_pool(self):  # type: ignore[no-untyped-def]
        low = free_even_port_pair()
        pool = UdpPortPool(low, low + 1)
        session, _ = self.make_session(pool=pool)
        self.assertEqual((session.core_rtp_port, session.core_rtcp_port), (low, low + 1))
        self.assertEqual(pool.free_count, 0)
        with self.assertRaises(PortsExhausted):
            self.make_session(pool=pool)
        session.start_dtls("server", WIC_CERT.fingerprint)
        closing = session.close()
        second = session.close()
        yield closing
        yield second
        self.assertEqual(pool.free_count, 2)
        self.assertTrue(can_bind(low) and can_bind(low + 1))
        again, _ = self.make_session(pool=pool)
        self.assertEqual(again.core_rtp_port, low)

    @inlineCallbacks
    def test_busy_pool_port_is_skipped(self):  # type: ignore[no-untyped-def]
        low = free_even_port_pair()
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(blocker.close)
        blocker.bind((LOCAL, low + 1))  # another process holds the RTCP port of the first pair
        second = free_even_port_pair()
        pool = UdpPortPool(min(low, second), max(low, second) + 1)
        session, _ = self.make_session(pool=pool)
        self.assertNotEqual(session.core_rtp_port, low)
        self.assertTrue(pool.is_used(session.core_rtp_port))
        self.assertFalse(pool.is_used(low))
        yield session.close()

    @inlineCallbacks
    def test_close_before_anything_and_start_after_close(self):  # type: ignore[no-untyped-def]
        session, _ = self.make_session()
        yield session.close()
        with self.assertRaises(MediaError):
            session.start_dtls("client", WIC_CERT.fingerprint)
        session.datagram_received(b"\x16\xfe\xfd")  # late datagrams are ignored quietly
        self.assertEqual(session.state, "closed")

    @inlineCallbacks
    def test_dtls_timers_stop_at_close(self):  # type: ignore[no-untyped-def]
        session, wic_side = self.make_session()
        wic_side.peer = ("127.0.0.1", 9)  # nobody answers
        session.start_dtls("client", WIC_CERT.fingerprint)
        dtls = session._dtls
        assert dtls is not None
        self.assertIsNotNone(dtls._timer)
        yield session.close()
        self.assertIsNone(dtls._timer)
        self.assertIsNone(dtls._handshake_timer)


class PlainSocketReactor:
    """The global reactor's socket API without its asyncio loop (as under the epoll reactor)."""

    def adoptDatagramPort(self, *args: object, **kwargs: object) -> object:  # noqa: N802
        return global_reactor.adoptDatagramPort(*args, **kwargs)  # type: ignore[attr-defined]


class TwistedPortRelayTests(RelayTests):
    """The whole relay suite again with the core side on Twisted UDP ports."""

    session_reactor = PlainSocketReactor()


class TwistedPortLifecycleTests(LifecycleTests):
    session_reactor = PlainSocketReactor()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class CycleTests(MediaSessionTestCase):
    @inlineCallbacks
    def test_many_call_cycles_leave_pool_and_descriptors_unchanged(self):  # type: ignore[no-untyped-def]
        # Ports, DTLS contexts and timers are freed whatever the path.
        low = free_even_port_pair()
        pool = UdpPortPool(low, low + 1)
        wic_side = UdpWicTransport()
        self.listen(wic_side)
        wic_side.peer = (LOCAL, 9)
        descriptors = 0
        for cycle in range(303):
            if cycle == 3:
                # After one cycle of each kind: whatever the reactor creates once (a waker
                # pipe under some reactors) is not a per-call leak.
                descriptors = open_descriptors()
            session = MediaSession(
                self.session_reactor, global_reactor, MediaSessionConfig(), SERVER_CERT, wic_side, pool  # type: ignore[arg-type]
            )
            if cycle % 3 == 0:
                session.start_dtls("client", WIC_CERT.fingerprint)  # DTLS timers running
            elif cycle % 3 == 1:
                session.start_dtls("server", None)
                session.set_core_remote(LOCAL, 9)
            yield session.close()
        self.assertEqual(pool.free_count, 2)
        self.assertEqual(open_descriptors(), descriptors)
        self.assertEqual([call for call in global_reactor.getDelayedCalls() if call.active() and "Dtls" in repr(call.func)], [])


class TwistedPortCycleTests(CycleTests):
    session_reactor = PlainSocketReactor()


class StatsSnapshotTests(unittest.SynchronousTestCase):
    def test_a_snapshot_is_what_copy_copy_gave_and_does_not_follow_the_live_counters(self) -> None:
        import copy

        from epcscf.media.session import DirectionStats, _snapshot
        from epcscf.media.srtp import SrtpErrorCounts

        live = DirectionStats(packets=5, bytes=800, lost=1, first_packet_time=3.5)
        live._ssrc, live._highest_seq = 0x1234, 77
        errors = SrtpErrorCounts(unprotect=2, last_error="replay")
        for counters in (live, errors, DirectionStats()):
            snapshot = _snapshot(counters)
            self.assertIs(type(snapshot), type(counters))
            self.assertEqual(snapshot, copy.copy(counters))
            self.assertEqual(vars(snapshot), vars(copy.copy(counters)))
            self.assertIsNot(snapshot, counters)
        snapshot = _snapshot(live)
        live.packets += 1
        self.assertEqual((snapshot.packets, live.packets), (5, 6))
