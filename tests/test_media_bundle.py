"""RFC 8843 BUNDLE: the demultiplexer (§9.2), the WIC SDP's bundled lines (RFC 8859), and two
relay sessions on one DTLS-SRTP transport with real sockets (each m= line its own core port)."""

from __future__ import annotations

import socket
import struct

from twisted.internet import defer, reactor
from twisted.trial import unittest

from epcscf.media import Certificate, DtlsRole, MediaSession, MediaSessionConfig
from epcscf.media.dtls import DtlsEndpoint
from epcscf.media.srtp import SrtpContext
from epcscf.media.bundle import BundleDemux, BundleLine, rtp_header_extension
from epcscf.pcscf.call_bundle import wic_bundle_lines
from epcscf.sdp import SessionDescription
from epcscf.sdp.bundle import add_bundle_group, bundle_group, resolve_bundled_lines
from tests.support.processes import wait_for
from tests.support.wic import as_deferred

AUDIO_SSRC, VIDEO_SSRC, RTX_SSRC = 1111, 2222, 3333


def rtp(pt: int, ssrc: int, seq: int = 1, extension: bytes | None = None) -> bytes:
    first = 0x90 if extension is not None else 0x80
    header = struct.pack("!BBHII", first, pt, seq, 0, ssrc)
    return header + (extension or b"") + b"payload"


def one_byte_extension(*elements: tuple[int, bytes]) -> bytes:
    body = b"".join(bytes([(element << 4) | (len(value) - 1)]) + value for element, value in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def rtcp(kind: int, sender: int, body: bytes = b"", count: int = 0) -> bytes:
    return struct.pack("!BBHI", 0x80 | count, kind, (8 + len(body)) // 4 - 1, sender) + body


def report_block(ssrc: int) -> bytes:
    return struct.pack("!I", ssrc) + bytes(20)


def demux(mid_extension_id: int | None = None) -> BundleDemux:
    return BundleDemux((BundleLine(0, "0", (AUDIO_SSRC,), (111, 0, 126)),
                        BundleLine(1, "1", (VIDEO_SSRC, RTX_SSRC), (96, 97, 0))), mid_extension_id)


class DemuxTests(unittest.TestCase):
    def test_signalled_ssrc_then_unique_payload_type_then_nothing(self) -> None:
        router = demux()
        self.assertEqual(router.route_rtp(rtp(111, AUDIO_SSRC)), 0)
        self.assertEqual(router.route_rtp(rtp(96, RTX_SSRC)), 1)
        # An unsignalled SSRC: the payload type decides and binds the SSRC (RFC 8843 §9.2).
        self.assertEqual(router.route_rtp(rtp(97, 4444)), 1)
        self.assertEqual(router.route_rtp(rtp(111, 4444)), 1, "the SSRC is bound now")
        # PT 0 is on both lines: it names none, the packet belongs to no line.
        self.assertIsNone(router.route_rtp(rtp(0, 5555)))
        self.assertIsNone(router.route_rtp(rtp(50, 5555)))

    def test_mid_header_extension_comes_first_when_negotiated(self) -> None:
        router = demux(mid_extension_id=4)
        packet = rtp(111, AUDIO_SSRC, extension=one_byte_extension((1, b"\x12\x34"), (4, b"1")))
        self.assertEqual(rtp_header_extension(packet, 4), b"1")
        self.assertEqual(router.route_rtp(packet), 1, "MID 1 outranks the SSRC signalled on line 0")
        self.assertEqual(router.route_rtp(rtp(111, AUDIO_SSRC)), 1, "and rebinds that SSRC")
        # Not negotiated: the extension is ignored.
        self.assertEqual(demux().route_rtp(packet), 0)
        # An unknown MID falls back to the SSRC.
        self.assertEqual(router.route_rtp(rtp(96, VIDEO_SSRC, extension=one_byte_extension((4, b"9")))), 1)

    def test_two_byte_header_extension(self) -> None:
        body = bytes([4, 1]) + b"0" + bytes(1)
        packet = rtp(96, 9, extension=struct.pack("!HH", 0x1000, 1) + body)
        self.assertEqual(rtp_header_extension(packet, 4), b"0")
        self.assertIsNone(rtp_header_extension(packet[:-10], 4), "truncated")

    def test_rtcp_by_sender_then_by_reported_source_else_the_first_line(self) -> None:
        router = demux()
        router.bind_core_ssrc(7777, 1)  # the core sends video with SSRC 7777
        # SR from the WIC's audio sender.
        self.assertEqual(router.route_rtcp(rtcp(200, AUDIO_SSRC, bytes(20))), 0)
        # A receive-only WIC (sender SSRC 1) reports on the core's video: RR + PLI compound.
        compound = rtcp(201, 1, report_block(7777), count=1) + rtcp(206, 1, struct.pack("!I", 7777), count=1)
        self.assertEqual(router.route_rtcp(compound), 1)
        # Reduced-size (RFC 5506): a lone NACK about the core's video.
        self.assertEqual(router.route_rtcp(rtcp(205, 1, struct.pack("!I", 7777) + bytes(4), count=1)), 1)
        # Nothing known: the group's first line.
        self.assertEqual(router.route_rtcp(rtcp(201, 42, report_block(43), count=1)), 0)
        self.assertEqual(router.route_rtcp(b"\x80\xc9"), 0)


OFFER = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
m=audio 50000 UDP/TLS/RTP/SAVPF 111 0
c=IN IP4 127.0.0.1
a=mid:0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 AA:BB
a=setup:actpass
a=rtcp-mux
a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host
a=rtpmap:111 opus/48000/2
a=ssrc:1111 cname:x
m=video 0 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 0.0.0.0
a=mid:1
a=bundle-only
a=rtpmap:96 VP8/90000
a=rtpmap:97 rtx/90000
a=ssrc-group:FID 2222 3333
a=ssrc:2222 cname:x
a=ssrc:3333 cname:x
"""


class SdpBundleTests(unittest.TestCase):
    def test_bundle_only_line_takes_the_tagged_lines_transport(self) -> None:
        offer = SessionDescription.parse(OFFER)
        self.assertEqual(bundle_group(offer), (0, 1))
        resolved, group = resolve_bundled_lines(offer)
        self.assertEqual(group, (0, 1))
        video = resolved.media[1]
        self.assertEqual(video.port, 50000)
        for name in ("ice-ufrag", "ice-pwd", "fingerprint", "setup", "rtcp-mux", "candidate"):
            self.assertEqual(video.attribute_value(name), resolved.media[0].attribute_value(name), name)
        self.assertEqual(offer.media[1].port, 0, "the input is not changed")

    def test_a_rejected_line_stays_rejected_and_no_group_is_no_change(self) -> None:
        offer = SessionDescription.parse(OFFER.replace("a=bundle-only\n", ""))
        resolved, group = resolve_bundled_lines(offer)
        self.assertEqual((group, resolved.media[1].port), ((0,), 0))
        plain = SessionDescription.parse(OFFER.replace("a=group:BUNDLE 0 1\n", ""))
        self.assertEqual(resolve_bundled_lines(plain), (plain, ()))

    def test_a_group_of_the_tagged_line_alone_is_no_change(self) -> None:
        # One audio line in "a=group:BUNDLE 0", as a browser offers an audio call.
        offer = SessionDescription.parse(OFFER.replace("a=group:BUNDLE 0 1\n", "a=group:BUNDLE 0\n"))
        text = offer.to_text()
        resolved, group = resolve_bundled_lines(offer)
        self.assertEqual(group, (0,))
        self.assertEqual(resolved.to_text(), text)
        self.assertEqual(resolved.media[1].port, 0)  # the line outside the group is left alone

    def test_group_written_from_mids_and_lines_read_for_the_demultiplexer(self) -> None:
        offer = SessionDescription.parse(OFFER)
        offer.attributes = []
        add_bundle_group(offer, (1, 0))
        self.assertEqual(offer.attribute_values("group"), ["BUNDLE 1 0"])
        lines = wic_bundle_lines(offer, (0, 1))
        self.assertEqual(lines, (BundleLine(0, "0", (1111,), (111, 0)), BundleLine(1, "1", (2222, 3333), (96, 97))))


class BundledSessionsTests(unittest.TestCase):
    """Two sessions of one group: the owner's DTLS keys serve both; each line its core port."""

    def test_packets_reach_the_core_port_of_their_line_and_back(self) -> defer.Deferred:
        return as_deferred(self._relay())

    async def _relay(self) -> None:
        certificate = Certificate.generate()
        peer_certificate = Certificate.generate()
        wic = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        wic.bind(("127.0.0.1", 0))
        wic.setblocking(False)
        self.addCleanup(wic.close)
        relay_wic = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay_wic.bind(("127.0.0.1", 0))
        self.addCleanup(relay_wic.close)

        class ToWic:
            def send(self, data: bytes) -> None:
                relay_wic.sendto(data, wic.getsockname())

        config = MediaSessionConfig()
        audio = MediaSession(reactor, reactor, config, certificate, ToWic())
        video = MediaSession(reactor, reactor, config, certificate, ToWic())
        self.addCleanup(video.close)
        self.addCleanup(audio.close)
        audio.bundle(demux(), {0: audio, 1: video})
        cores = []
        for session in (audio, video):
            core = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            core.bind(("127.0.0.1", 0))
            core.setblocking(False)
            self.addCleanup(core.close)
            session.set_core_remote("127.0.0.1", core.getsockname()[1])
            cores.append(core)

        # The WIC's side of DTLS-SRTP: our own endpoint as the client, over the two sockets.
        keys: list = []
        peer = DtlsEndpoint(DtlsRole.CLIENT, peer_certificate, certificate.fingerprint, reactor,
                            lambda data: wic.sendto(data, relay_wic.getsockname()), on_connected=keys.append,
                            on_failed=lambda reason: None)
        audio.start_dtls(DtlsRole.SERVER, peer_certificate.fingerprint)
        peer.start()
        self.addCleanup(peer.close)

        def pump() -> bool:
            while True:
                try:
                    data = relay_wic.recv(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                audio.datagram_received(data)
            while True:
                try:
                    data = wic.recv(65535)
                except BlockingIOError:
                    break
                peer.datagram_received(data)
            return bool(keys) and audio.connected

        await wait_for(pump, 10, what="DTLS between the test's WIC and the owner session")
        self.assertTrue(video.connected, "the member shares the owner's SRTP keys")
        srtp = SrtpContext(keys[0])
        for packet in (rtp(111, AUDIO_SSRC, 1), rtp(96, VIDEO_SSRC, 1), rtp(97, 6666, 1), rtp(0, 7777, 1)):
            audio.datagram_received(srtp.protect(packet))
        received: list[list[bytes]] = [[], []]

        def drain() -> bool:
            for index, core in enumerate(cores):
                while True:
                    try:
                        received[index].append(core.recv(65535))
                    except BlockingIOError:
                        break
            return len(received[0]) >= 1 and len(received[1]) >= 2

        await wait_for(drain, 5, what="both core ports received their line's RTP")
        self.assertEqual([int.from_bytes(p[8:12], "big") for p in received[0]], [AUDIO_SSRC])
        self.assertEqual([int.from_bytes(p[8:12], "big") for p in received[1]], [VIDEO_SSRC, 6666])
        self.assertEqual(audio.stats().wic_to_core.dropped, 1, "PT 0 on both lines: no line claims it")

        # Back: the video core port's RTP goes out through the owner's transport with its keys.
        cores[1].sendto(rtp(96, 8888, 5), ("127.0.0.1", video.core_rtp_port))
        got: list[bytes] = []

        def back() -> bool:
            try:
                got.append(wic.recv(65535))
            except BlockingIOError:
                pass
            return any(128 <= data[0] <= 191 for data in got)

        await wait_for(back, 5, what="SRTP toward the WIC from the member's core port")
        plain = srtp.unprotect([data for data in got if 128 <= data[0] <= 191][0])
        self.assertEqual(int.from_bytes(plain[8:12], "big"), 8888)
