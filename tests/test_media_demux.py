"""RFC 7983 demultiplexing, RFC 8122 fingerprints, and the relay's per-direction counters."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from twisted.trial import unittest

from epcscf.media.certificate import Certificate, Fingerprint, FingerprintError, certificate_fingerprint
from epcscf.media.demux import PacketKind, classify, is_rtcp
from epcscf.media.session import Direction, DirectionStats


def rtp(seq: int, ssrc: int = 1, pt: int = 0, marker: bool = False) -> bytes:
    return bytes([0x80, pt | (0x80 if marker else 0)]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + b"x"


class DemuxTests(unittest.TestCase):
    def test_first_byte_ranges_of_rfc7983(self) -> None:
        cases = {
            0: PacketKind.STUN, 1: PacketKind.STUN, 3: PacketKind.STUN,
            4: PacketKind.OTHER, 16: PacketKind.OTHER, 19: PacketKind.OTHER,  # ZRTP
            20: PacketKind.DTLS, 22: PacketKind.DTLS, 63: PacketKind.DTLS,
            64: PacketKind.OTHER, 79: PacketKind.OTHER,  # TURN channels
            127: PacketKind.OTHER, 192: PacketKind.OTHER, 255: PacketKind.OTHER,
        }
        for first, kind in cases.items():
            self.assertEqual(classify(bytes([first]) + bytes(20)), kind, first)

    def test_rtp_and_rtcp_share_128_to_191_and_split_on_packet_type(self) -> None:
        self.assertEqual(classify(rtp(1)), PacketKind.RTP)
        self.assertEqual(classify(rtp(1, pt=111, marker=True)), PacketKind.RTP)  # second byte 239
        self.assertEqual(classify(bytes([0xBF, 0]) + bytes(10)), PacketKind.RTP)  # first byte 191
        for packet_type in (192, 200, 201, 205, 206, 207, 223):  # RFC 5761 §4
            packet = bytes([0x81, packet_type, 0, 1]) + bytes(4)
            self.assertEqual(classify(packet), PacketKind.RTCP, packet_type)
            self.assertTrue(is_rtcp(packet))
        self.assertEqual(classify(rtp(1, pt=96, marker=True)), PacketKind.RTP)  # 224: outside the RTCP range

    def test_runts_and_empty_datagrams_are_other(self) -> None:
        self.assertEqual(classify(b""), PacketKind.OTHER)
        self.assertEqual(classify(b"\x80"), PacketKind.OTHER)
        self.assertEqual(classify(rtp(1)[:11]), PacketKind.OTHER)
        self.assertEqual(classify(bytes([0x80, 200, 0])), PacketKind.OTHER)


class CertificateTests(unittest.TestCase):
    def test_generated_certificate_is_ecdsa_p256_with_sha256_fingerprint(self) -> None:
        cert = Certificate.generate("epcscf")
        self.assertEqual(cert.private_key.curve.name, "secp256r1")
        fingerprint = cert.fingerprint
        self.assertEqual(fingerprint.algorithm, "sha-256")
        octets = fingerprint.value.split(":")
        self.assertEqual(len(octets), 32)
        self.assertEqual(fingerprint.value, fingerprint.value.upper())
        self.assertEqual(bytes.fromhex("".join(octets)), cert.certificate.fingerprint(hashes.SHA256()))
        self.assertEqual(fingerprint.to_sdp(), f"sha-256 {fingerprint.value}")
        self.assertTrue(fingerprint.matches(cert.certificate))

    def test_pyopenssl_context_accepts_it(self) -> None:
        cert = Certificate.generate()
        context = SSL.Context(SSL.DTLS_METHOD)
        context.use_certificate(cert.certificate)
        context.use_privatekey(cert.private_key)
        context.check_privatekey()

    def test_parse_normalises_case_and_checks_length(self) -> None:
        cert = Certificate.generate()
        value = cert.fingerprint.value
        parsed = Fingerprint.from_sdp(f"SHA-256 {value.lower()}")
        self.assertEqual(parsed, cert.fingerprint)
        sha1 = certificate_fingerprint(cert.certificate, "sha-1")
        self.assertEqual(len(sha1.value.split(":")), 20)
        self.assertEqual(Fingerprint.parse("sha-1", sha1.value), sha1)

    def test_bad_fingerprints_give_clear_errors(self) -> None:
        for text, words in [
            ("md5 AB:CD", "unsupported fingerprint hash"),
            ("sha-256 AB:CD", "32 colon-separated hex octets"),
            ("sha-256 " + ":".join(["ZZ"] * 32), "hex octets"),
            ("sha-256", "'<hash> <hex>'"),
        ]:
            with self.assertRaises(FingerprintError) as caught:
                Fingerprint.from_sdp(text)
            self.assertIn(words, str(caught.exception))


class DirectionStatsTests(unittest.TestCase):
    def test_sequence_gaps_wraparound_late_packets_and_restarts(self) -> None:
        stats = DirectionStats()
        for seq in (65533, 65534, 1, 2):  # wraps; 65535 and 0 missing
            stats.count_rtp(rtp(seq), now=10.0)
        self.assertEqual(stats.lost, 2)
        stats.count_rtp(rtp(0), now=10.1)  # one of them arrives late
        self.assertEqual(stats.lost, 1)
        stats.count_rtp(rtp(20000), now=10.2)  # RFC 3550 A.1: a big jump is a restart, not loss
        stats.count_rtp(rtp(20001), now=10.3)
        self.assertEqual(stats.lost, 1)
        stats.count_rtp(rtp(5, ssrc=2), now=10.4)  # a new SSRC starts its own sequence
        stats.count_rtp(rtp(7, ssrc=2), now=10.5)
        self.assertEqual(stats.lost, 2)
        self.assertEqual((stats.packets, stats.first_packet_time, stats.last_packet_time), (9, 10.0, 10.5))
        self.assertEqual(stats.bytes, 9 * 13)

    def test_direction_flags(self) -> None:
        self.assertEqual(
            [(d.to_core, d.to_wic) for d in Direction],
            [(True, True), (True, False), (False, True), (False, False)],
        )
