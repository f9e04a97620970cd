"""DtlsEndpoint: DTLS-SRTP handshakes (RFC 5763/5764) over memory and over UDP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable

from pylibsrtp import Policy, Session
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.media.certificate import Certificate, Fingerprint, certificate_fingerprint
from epcscf.media.dtls import (
    EXPORTER_LABEL,
    SRTP_PROFILES,
    DtlsEndpoint,
    DtlsError,
    DtlsRole,
    DtlsState,
    SrtpKeys,
)
from epcscf.media.srtp import SrtpContext

RTP = bytes.fromhex("80000001000000a012345678") + b"\xd5" * 160

CERT_A = Certificate.generate("a")
CERT_B = Certificate.generate("b")
CERT_OTHER = Certificate.generate("other")


def assert_near(test: unittest.TestCase, actual: float, expected: float, tolerance: float) -> None:
    # trial's assertAlmostEqual has no delta= (it rounds to places).
    test.assertTrue(abs(actual - expected) <= tolerance, f"{actual} is not within {tolerance} of {expected}")


class Outcome:
    """What the callbacks of one endpoint reported."""

    def __init__(self) -> None:
        self.keys: list[SrtpKeys] = []
        self.failures: list[str] = []

    def connected(self, keys: SrtpKeys) -> None:
        self.keys.append(keys)

    def failed(self, reason: str) -> None:
        self.failures.append(reason)


def endpoint(
    role: DtlsRole,
    cert: Certificate,
    peer: Fingerprint | None,
    clock: Clock,
    sent: list[bytes],
    outcome: Outcome,
    **kwargs: object,
) -> DtlsEndpoint:
    return DtlsEndpoint(
        role, cert, peer, clock, sent.append, on_connected=outcome.connected, on_failed=outcome.failed, **kwargs  # type: ignore[arg-type]
    )


def pump(a: DtlsEndpoint, a_out: list[bytes], b: DtlsEndpoint, b_out: list[bytes], limit: int = 50) -> int:
    """Deliver queued datagrams both ways until both queues are empty; returns how many."""
    delivered = 0
    while (a_out or b_out) and delivered < limit:
        while a_out:
            b.datagram_received(a_out.pop(0))
            delivered += 1
        while b_out:
            a.datagram_received(b_out.pop(0))
            delivered += 1
    return delivered


class MemoryPair:
    def __init__(
        self,
        client_kwargs: dict[str, object] | None = None,
        server_kwargs: dict[str, object] | None = None,
        client_expects: Fingerprint | None = CERT_B.fingerprint,
        server_expects: Fingerprint | None = CERT_A.fingerprint,
    ) -> None:
        self.clock = Clock()
        self.client_out: list[bytes] = []
        self.server_out: list[bytes] = []
        self.client_outcome = Outcome()
        self.server_outcome = Outcome()
        self.client = endpoint(
            DtlsRole.CLIENT, CERT_A, client_expects, self.clock, self.client_out, self.client_outcome, **(client_kwargs or {})
        )
        self.server = endpoint(
            DtlsRole.SERVER, CERT_B, server_expects, self.clock, self.server_out, self.server_outcome, **(server_kwargs or {})
        )

    def run(self) -> None:
        self.server.start()
        self.client.start()
        pump(self.client, self.client_out, self.server, self.server_out)


class HandshakeOverMemoryTests(unittest.TestCase):
    def test_client_and_server_connect_with_matching_keys(self) -> None:
        pair = MemoryPair()
        pair.run()
        self.assertEqual(pair.client.state, DtlsState.CONNECTED)
        self.assertEqual(pair.server.state, DtlsState.CONNECTED)
        [client_keys] = pair.client_outcome.keys
        [server_keys] = pair.server_outcome.keys
        self.assertEqual(client_keys.role, DtlsRole.CLIENT)
        self.assertEqual(server_keys.role, DtlsRole.SERVER)
        # RFC 5764 §4.2: what one side sends with is what the other receives with.
        self.assertEqual(client_keys.local_master, server_keys.remote_master)
        self.assertEqual(client_keys.remote_master, server_keys.local_master)
        self.assertNotEqual(client_keys.local_master, client_keys.remote_master)
        self.assertEqual(pair.client_outcome.failures + pair.server_outcome.failures, [])
        self.assertEqual(pair.clock.getDelayedCalls(), [])  # handshake timer cancelled, no retransmit pending

    def test_keys_are_the_rfc5764_split_of_the_exporter_output(self) -> None:
        pair = MemoryPair()
        pair.run()
        keys = pair.client_outcome.keys[0]
        material = pair.client._ssl.export_keying_material(EXPORTER_LABEL, 2 * (32 + 12))
        self.assertEqual(keys.profile.name, "SRTP_AEAD_AES_256_GCM")
        # client key | server key | client salt | server salt
        self.assertEqual(keys.client_key, material[:32])
        self.assertEqual(keys.server_key, material[32:64])
        self.assertEqual(keys.client_salt, material[64:76])
        self.assertEqual(keys.server_salt, material[76:])
        self.assertNotIn(keys.client_key.hex(), repr(keys))

    def test_profiles_negotiated_by_server_preference(self) -> None:
        cases = [
            ((), (), "SRTP_AEAD_AES_256_GCM"),
            ((), ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"), "SRTP_AEAD_AES_128_GCM"),
            ((), ("SRTP_AES128_CM_SHA1_80",), "SRTP_AES128_CM_SHA1_80"),
            (("SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"), ("SRTP_AEAD_AES_128_GCM",), "SRTP_AEAD_AES_128_GCM"),
            (("SRTP_AES128_CM_SHA1_32",), ("SRTP_AES128_CM_SHA1_80", "SRTP_AES128_CM_SHA1_32"), "SRTP_AES128_CM_SHA1_32"),
        ]
        for client_profiles, server_profiles, expected in cases:
            pair = MemoryPair(
                {"srtp_profiles": client_profiles} if client_profiles else None,
                {"srtp_profiles": server_profiles} if server_profiles else None,
            )
            pair.run()
            [client_keys] = pair.client_outcome.keys
            [server_keys] = pair.server_outcome.keys
            self.assertEqual((client_keys.profile.name, server_keys.profile.name), (expected, expected))
            profile = SRTP_PROFILES[expected]
            self.assertEqual(len(client_keys.local_master), profile.key_length + profile.salt_length)
            # The keys really work together: SRTP and SRTCP both ways.
            client_srtp, server_srtp = SrtpContext(client_keys), SrtpContext(server_keys)
            self.assertEqual(server_srtp.unprotect(client_srtp.protect(RTP)), RTP)
            self.assertEqual(client_srtp.unprotect(server_srtp.protect(RTP)), RTP)
            rtcp = bytes.fromhex("80c80006000000a0") + bytes(20)
            self.assertEqual(server_srtp.unprotect_rtcp(client_srtp.protect_rtcp(rtcp)), rtcp)

    def test_no_common_profile_fails_both_sides(self) -> None:
        pair = MemoryPair({"srtp_profiles": ("SRTP_AES128_CM_SHA1_32",)}, {"srtp_profiles": ("SRTP_AEAD_AES_128_GCM",)})
        pair.run()
        self.assertEqual(pair.client.state, DtlsState.FAILED)
        self.assertIn("no SRTP profile negotiated", pair.client_outcome.failures[0])
        self.assertEqual(pair.client_outcome.keys + pair.server_outcome.keys, [])

    def test_unknown_profile_is_refused_up_front(self) -> None:
        with self.assertRaises(DtlsError) as caught:
            DtlsEndpoint(DtlsRole.CLIENT, CERT_A, None, Clock(), lambda data: None, srtp_profiles=("SRTP_NULL",))
        self.assertIn("SRTP_NULL", str(caught.exception))

    def test_fingerprint_mismatch_fails_with_both_fingerprints_named(self) -> None:
        pair = MemoryPair(client_expects=CERT_OTHER.fingerprint)
        pair.run()
        self.assertEqual(pair.client.state, DtlsState.FAILED)
        [reason] = pair.client_outcome.failures
        self.assertIn(CERT_B.fingerprint.value, reason)  # what the peer presented
        self.assertIn(CERT_OTHER.fingerprint.value, reason)  # what the SDP said
        self.assertIn("does not match", reason)
        # The server heard our fatal alert and failed too (abort).
        self.assertEqual(pair.server.state, DtlsState.FAILED)
        self.assertIn("alert", pair.server_outcome.failures[0])
        self.assertEqual(pair.client_outcome.keys + pair.server_outcome.keys, [])
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_server_rejects_a_client_with_the_wrong_certificate(self) -> None:
        pair = MemoryPair(server_expects=CERT_OTHER.fingerprint)
        pair.run()
        self.assertEqual(pair.server.state, DtlsState.FAILED)
        self.assertIn("does not match", pair.server_outcome.failures[0])
        self.assertEqual(pair.client.state, DtlsState.FAILED)

    def test_every_sdp_hash_algorithm_is_checked(self) -> None:
        for algorithm in ("sha-1", "sha-256", "sha-384", "sha-512"):
            good = certificate_fingerprint(CERT_B.certificate, algorithm)
            pair = MemoryPair(client_expects=good)
            pair.run()
            self.assertEqual(pair.client.state, DtlsState.CONNECTED, algorithm)
            wrong = certificate_fingerprint(CERT_OTHER.certificate, algorithm)
            pair = MemoryPair(client_expects=wrong)
            pair.run()
            self.assertEqual(pair.client.state, DtlsState.FAILED, algorithm)
            self.assertIn(f"a=fingerprint:{algorithm} ", pair.client_outcome.failures[0])

    def test_server_without_fingerprint_waits_then_verifies(self) -> None:
        # RFC 5763 §5: as offerer (actpass) the ClientHello may come before the SDP answer.
        pair = MemoryPair(server_expects=None)
        pair.run()
        self.assertEqual(pair.server.state, DtlsState.CONNECTING)
        self.assertEqual(pair.server_outcome.keys, [])
        pair.server.set_remote_fingerprint(CERT_A.fingerprint)
        self.assertEqual(pair.server.state, DtlsState.CONNECTED)
        self.assertEqual(pair.server_outcome.keys[0].remote_master, pair.client_outcome.keys[0].local_master)

    def test_late_fingerprint_mismatch_fails(self) -> None:
        pair = MemoryPair(server_expects=None)
        pair.run()
        pair.server.set_remote_fingerprint(CERT_OTHER.fingerprint)
        self.assertEqual(pair.server.state, DtlsState.FAILED)
        self.assertIn("does not match", pair.server_outcome.failures[0])

    def test_reoffer_fingerprint_must_match_the_running_association(self) -> None:
        pair = MemoryPair()
        pair.run()
        pair.client.set_remote_fingerprint(certificate_fingerprint(CERT_B.certificate, "sha-512"))  # same cert
        with self.assertRaises(DtlsError) as caught:
            pair.client.set_remote_fingerprint(CERT_OTHER.fingerprint)
        self.assertIn("new association", str(caught.exception))
        self.assertEqual(pair.client.state, DtlsState.CONNECTED)

    def test_closing_from_inside_the_callbacks_is_safe(self) -> None:
        pair = MemoryPair(client_expects=CERT_OTHER.fingerprint)
        pair.client.on_failed = lambda reason: pair.client.close()
        pair.server.on_failed = lambda reason: pair.server.close()
        pair.run()
        self.assertEqual((pair.client.state, pair.server.state), (DtlsState.CLOSED, DtlsState.CLOSED))
        good = MemoryPair()
        good.server.on_connected = lambda keys: good.server.close()
        good.run()
        self.assertEqual(good.server.state, DtlsState.CLOSED)
        self.assertEqual(good.clock.getDelayedCalls(), [])

    def test_server_started_by_an_early_client_hello(self) -> None:
        pair = MemoryPair()
        pair.client.start()  # the server's start() is never called
        pump(pair.client, pair.client_out, pair.server, pair.server_out)
        self.assertEqual((pair.client.state, pair.server.state), (DtlsState.CONNECTED, DtlsState.CONNECTED))

    def test_close_notify_fails_the_peer(self) -> None:
        pair = MemoryPair()
        pair.run()
        pair.client.close()
        self.assertEqual(pair.client.state, DtlsState.CLOSED)
        self.assertEqual(len(pair.client_out), 1)  # the close_notify alert
        pump(pair.client, pair.client_out, pair.server, pair.server_out)
        self.assertEqual(pair.server.state, DtlsState.FAILED)
        self.assertEqual(pair.server_outcome.failures, ["peer closed the DTLS association (close_notify)"])
        self.assertEqual(pair.client_outcome.failures, [])  # closing locally is not a failure
        pair.client.close()  # idempotent
        pair.server.close()
        self.assertEqual(pair.server.state, DtlsState.CLOSED)

    def test_garbage_during_the_handshake_does_not_break_it(self) -> None:
        pair = MemoryPair()
        pair.server.start()
        pair.client.start()
        pair.server.datagram_received(b"\x16\xfe\xfd" + b"\x00" * 20)
        pair.server.datagram_received(b"\x17garbage")
        pump(pair.client, pair.client_out, pair.server, pair.server_out)
        self.assertEqual((pair.client.state, pair.server.state), (DtlsState.CONNECTED, DtlsState.CONNECTED))

    def test_start_twice_is_an_error(self) -> None:
        pair = MemoryPair()
        pair.client.start()
        with self.assertRaises(DtlsError):
            pair.client.start()
        pair.client.close()


class TimerTests(unittest.TestCase):
    def test_client_arms_its_retransmission_timer_at_one_second(self) -> None:
        # RFC 6347 §4.2.4.1: initial retransmission timer 1 s, driven by us on the clock.
        pair = MemoryPair(client_kwargs={"handshake_timeout": 30.0})
        pair.client.start()
        self.assertEqual(len(pair.client_out), 1)  # the ClientHello
        times = sorted(call.getTime() for call in pair.clock.getDelayedCalls())
        self.assertEqual(len(times), 2)
        assert_near(self, times[0], 1.0, 0.05)
        self.assertEqual(times[1], 30.0)
        pair.client.close()
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_clock_ahead_of_openssl_rearms_for_the_remainder_without_spinning(self) -> None:
        # OpenSSL checks its deadline on the real clock: a timer that fires early (here a Clock
        # advanced without real time passing) must neither retransmit nor busy-loop.
        pair = MemoryPair()
        pair.client.start()
        pair.client_out.clear()
        pair.clock.advance(1.0)
        self.assertEqual(pair.client_out, [])
        self.assertEqual(pair.client.retransmissions, 0)
        retransmit_times = [c.getTime() for c in pair.clock.getDelayedCalls() if c.getTime() < 30.0]
        self.assertEqual(len(retransmit_times), 1)
        self.assertTrue(1.0 < retransmit_times[0] <= 2.0, retransmit_times)
        pair.client.close()

    def test_handshake_timeout_fails_and_clears_timers(self) -> None:
        pair = MemoryPair(client_kwargs={"handshake_timeout": 5.0})
        pair.client.start()
        pair.client_out.clear()  # the peer never hears anything
        pair.clock.advance(4.99)
        self.assertEqual(pair.client_outcome.failures, [])
        pair.clock.advance(0.01)
        self.assertEqual(pair.client_outcome.failures, ["DTLS handshake not complete within 5 s"])
        self.assertEqual(pair.client.state, DtlsState.FAILED)
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_server_waiting_for_fingerprint_times_out(self) -> None:
        pair = MemoryPair(server_expects=None, server_kwargs={"handshake_timeout": 3.0})
        pair.run()
        pair.clock.advance(3.0)
        self.assertEqual(pair.server.state, DtlsState.FAILED)
        self.assertIn("no a=fingerprint", pair.server_outcome.failures[0])


class UdpEndpoint(DatagramProtocol):
    """A DtlsEndpoint on a real UDP socket; `drop` decides which outgoing datagrams get lost."""

    def __init__(self, drop: Callable[[bytes], bool] = lambda data: False) -> None:
        self.dtls: DtlsEndpoint | None = None
        self.peer: tuple[str, int] | None = None
        self.drop = drop
        self.sent: list[tuple[float, bytes]] = []

    def send(self, data: bytes) -> None:
        self.sent.append((global_reactor.seconds(), data))
        if not self.drop(data):
            assert self.transport is not None and self.peer is not None
            self.transport.write(data, self.peer)

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        assert self.dtls is not None
        self.dtls.datagram_received(datagram)


def is_client_hello(data: bytes) -> bool:
    # Record type 22 (handshake), epoch 0, handshake type 1 at offset 13 (RFC 6347 §4.1, §4.2.2).
    return data[0] == 22 and data[3:5] == b"\x00\x00" and data[13] == 1


class HandshakeOverUdpTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ports: list[object] = []

    @inlineCallbacks
    def tearDown(self):  # type: ignore[no-untyped-def]
        for port in self.ports:
            yield port.stopListening()  # type: ignore[attr-defined]

    def udp_pair(
        self, client_drop: Callable[[bytes], bool] = lambda data: False
    ) -> tuple[UdpEndpoint, UdpEndpoint, Deferred[SrtpKeys], Deferred[SrtpKeys]]:
        client, server = UdpEndpoint(client_drop), UdpEndpoint()
        for proto in (client, server):
            self.ports.append(global_reactor.listenUDP(0, proto, interface="127.0.0.1"))
        client.peer = ("127.0.0.1", self.ports[1].getHost().port)  # type: ignore[attr-defined]
        server.peer = ("127.0.0.1", self.ports[0].getHost().port)  # type: ignore[attr-defined]
        client_done: Deferred[SrtpKeys] = Deferred()
        server_done: Deferred[SrtpKeys] = Deferred()

        def failed(done: Deferred[SrtpKeys]) -> Callable[[str], None]:
            return lambda reason: done.errback(AssertionError(reason))

        client.dtls = DtlsEndpoint(
            DtlsRole.CLIENT, CERT_A, CERT_B.fingerprint, global_reactor, client.send,
            on_connected=client_done.callback, on_failed=failed(client_done), handshake_timeout=10,
        )
        server.dtls = DtlsEndpoint(
            DtlsRole.SERVER, CERT_B, CERT_A.fingerprint, global_reactor, server.send,
            on_connected=server_done.callback, on_failed=failed(server_done), handshake_timeout=10,
        )
        self.addCleanup(client.dtls.close)
        self.addCleanup(server.dtls.close)
        return client, server, client_done, server_done

    @inlineCallbacks
    def test_handshake_over_udp_both_roles(self):  # type: ignore[no-untyped-def]
        client, server, client_done, server_done = self.udp_pair()
        server.dtls.start()  # type: ignore[union-attr]
        client.dtls.start()  # type: ignore[union-attr]
        client_keys = yield client_done
        server_keys = yield server_done
        self.assertEqual(client_keys.local_master, server_keys.remote_master)
        # The keys interoperate with a plain pylibsrtp session built by hand.
        rx = Session(Policy(key=server_keys.remote_master, ssrc_type=Policy.SSRC_ANY_INBOUND,
                            srtp_profile=server_keys.profile.libsrtp_profile))
        self.assertEqual(rx.unprotect(SrtpContext(client_keys).protect(RTP)), RTP)

    @inlineCallbacks
    def test_dropped_client_hellos_are_retransmitted_after_1s_then_2s(self):  # type: ignore[no-untyped-def]
        # RFC 6347 §4.2.4.1: 1 s initial timer, doubled on each expiry.  OpenSSL measures its
        # deadline on the real clock, so this runs on the real reactor (about 3 s).
        dropped: list[bytes] = []

        def drop_first_two_hellos(data: bytes) -> bool:
            if is_client_hello(data) and len(dropped) < 2:
                dropped.append(data)
                return True
            return False

        client, server, client_done, server_done = self.udp_pair(drop_first_two_hellos)
        client.dtls.start()  # type: ignore[union-attr]
        yield client_done
        yield server_done
        hellos = [when for when, data in client.sent if is_client_hello(data)]
        self.assertEqual(len(hellos), 3)
        assert_near(self, hellos[1] - hellos[0], 1.0, 0.25)
        assert_near(self, hellos[2] - hellos[1], 2.0, 0.25)
        self.assertEqual(client.dtls.retransmissions, 2)  # type: ignore[union-attr]
