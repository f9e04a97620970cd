"""What the media layer reads from SDP: WIC ICE/DTLS parameters, core RTP addresses, trickle fragments."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sdp.extract import (
    CoreMediaParams,
    Fingerprint,
    IceCandidate,
    extract_core_media_params,
    extract_wic_media_params,
)
from epcscf.sdp.model import SdpError, SessionDescription
from epcscf.sdp.sdpfrag import parse_sdpfrag

from tests.test_sdp_transform import fixture, parse


class WicParamsTests(SynchronousTestCase):
    def test_chrome_offer(self) -> None:
        audio, video = extract_wic_media_params(parse("chrome_offer_2_1.sdp"))
        self.assertEqual((audio.index, audio.media, audio.mid, audio.port), (0, "audio", "0", 54400))
        self.assertEqual((audio.ice_ufrag, audio.ice_pwd), ("Ep9W", "Lk3ll9AbOLM1XbHSzn0BldiN"))
        self.assertEqual(audio.ice_options, ("trickle",))
        self.assertEqual(audio.fingerprint, Fingerprint("sha-256", "19:E2:1C:3B:…:88:A2"))
        self.assertEqual((audio.setup, audio.rtcp_mux, audio.direction, audio.ice_lite), ("actpass", True, "sendrecv", False))
        self.assertFalse(audio.end_of_candidates)
        self.assertEqual([c.raw for c in audio.candidates], [
            "1 1 udp 2122260223 192.168.1.20 54400 typ host generation 0",
            "2 1 udp 1686052607 203.0.113.7 54400 typ srflx raddr 192.168.1.20 rport 54400 generation 0"])
        srflx = audio.candidates[1]
        self.assertEqual((srflx.foundation, srflx.component, srflx.transport, srflx.priority, srflx.host,
                          srflx.port, srflx.type, srflx.related_address, srflx.related_port, srflx.extensions),
                         ("2", 1, "udp", 1686052607, "203.0.113.7", 54400, "srflx", "192.168.1.20", 54400,
                          (("generation", "0"),)))
        self.assertEqual(video.mid, "1")

    def test_firefox_offer_uses_session_level_fingerprint_and_signals_end_of_candidates(self) -> None:
        (audio,) = extract_wic_media_params(parse("firefox_offer.sdp"))
        self.assertEqual(audio.fingerprint.algorithm, "sha-256")  # type: ignore[union-attr]
        self.assertTrue(audio.fingerprint.value.startswith("5D:0B:91"))  # type: ignore[union-attr]
        self.assertTrue(audio.end_of_candidates)
        self.assertEqual([(c.component, c.transport, c.type) for c in audio.candidates],
                         [(1, "UDP", "host"), (1, "TCP", "host"), (1, "UDP", "srflx"), (2, "UDP", "host")])
        self.assertEqual(audio.candidates[1].extensions, (("tcptype", "active"),))
        self.assertEqual(audio.ice_ufrag, "3f2a91c7")

    def test_session_level_ice_credentials_and_lite(self) -> None:
        sdp = SessionDescription.parse(
            "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\na=ice-lite\na=ice-ufrag:abcd\n"
            "a=ice-pwd:N3v7qXs0pLk2Wm9cRt5yHb1e\na=setup:active\n"
            "m=audio 4000 UDP/TLS/RTP/SAVPF 0\nc=IN IP4 192.0.2.1\na=recvonly\n")
        (audio,) = extract_wic_media_params(sdp)
        self.assertEqual((audio.ice_ufrag, audio.ice_lite, audio.setup, audio.direction, audio.mid),
                         ("abcd", True, "active", "recvonly", None))
        self.assertIsNone(audio.fingerprint)

    def test_malformed_candidate_raises_sdp_error(self) -> None:
        sdp = parse("chrome_offer_2_1.sdp")
        sdp.media[0].add_attribute("candidate", "1 1 udp notanumber 192.0.2.1 4000 typ host")
        error = self.assertRaises(SdpError, extract_wic_media_params, sdp)
        self.assertIn("malformed ICE candidate", error.reason)
        self.assertRaises(SdpError, IceCandidate.parse, "1 1 udp 1 192.0.2.1 4000 host")
        self.assertRaises(SdpError, IceCandidate.parse, "1 1 udp 1 192.0.2.1 4000 typ host generation")
        self.assertRaises(SdpError, Fingerprint.parse, "sha-256")

    def test_candidate_parse_accepts_prefixes(self) -> None:
        candidate = IceCandidate.parse("a=candidate:7 1 udp 5 x.local 9 typ host")
        self.assertEqual((candidate.host, candidate.raw), ("x.local", "7 1 udp 5 x.local 9 typ host"))


class CoreParamsTests(SynchronousTestCase):
    def test_ims_answer(self) -> None:
        audio, video = extract_core_media_params(parse("ims_answer_2_3.sdp"))
        self.assertEqual(audio, CoreMediaParams(
            index=0, media="audio", address="198.51.100.20", rtp_port=40000, rtcp_address="198.51.100.20",
            rtcp_port=40001, rtcp_mux=False, proto="RTP/AVP", payload_types=("8", "126"), direction="sendrecv",
            on_hold_address=False))
        self.assertEqual(audio.payload_type, "8")
        self.assertTrue(audio.core_sends and audio.core_receives)
        self.assertTrue(video.rejected)
        self.assertEqual(video.rtcp_port, 0)
        self.assertFalse(video.core_sends or video.core_receives)

    def test_rtcp_attribute_and_media_level_connection(self) -> None:
        sdp = SessionDescription.parse(
            "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
            "m=audio 4000 RTP/AVP 0\nc=IN IP4 192.0.2.2\na=rtcp:5001 IN IP4 192.0.2.3\na=sendonly\n"
            "m=audio 4002 RTP/AVP 0\na=rtcp:4009\na=rtcp-mux\n")
        first, second = extract_core_media_params(sdp)
        self.assertEqual((first.address, first.rtcp_address, first.rtcp_port, first.direction),
                         ("192.0.2.2", "192.0.2.3", 5001, "sendonly"))
        self.assertFalse(first.core_receives)
        self.assertEqual((second.address, second.rtcp_address, second.rtcp_port, second.rtcp_mux),
                         ("192.0.2.1", "192.0.2.1", 4009, True))

    def test_zero_address_hold(self) -> None:
        sdp = parse("ims_offer_2_2.sdp")
        sdp.connection.address = "0.0.0.0"  # type: ignore[union-attr]
        (audio,) = extract_core_media_params(sdp)
        self.assertTrue(audio.on_hold_address)
        self.assertTrue(audio.core_sends)
        self.assertFalse(audio.core_receives)

    def test_malformed_rtcp_attribute(self) -> None:
        sdp = parse("ims_answer_2_3.sdp")
        sdp.media[0].add_attribute("rtcp", "port")
        self.assertRaises(SdpError, extract_core_media_params, sdp)


class SdpfragTests(SynchronousTestCase):
    def test_rfc8840_fragment_from_info(self) -> None:
        fragment = parse_sdpfrag(fixture("trickle_info.sdpfrag").replace("\n", "\r\n").encode())
        self.assertEqual((fragment.ice_ufrag, fragment.ice_pwd), ("Ep9W", "Lk3ll9AbOLM1XbHSzn0BldiN"))
        self.assertEqual([(e.mid, e.mline_index, e.candidate.port if e.candidate else None, e.end_of_candidates)
                          for e in fragment.entries],
                         [("0", 0, 54410, False), ("0", 0, None, True), ("1", 1, 54412, False)])

    def test_session_level_end_of_candidates_applies_to_all_streams(self) -> None:
        fragment = parse_sdpfrag("a=ice-ufrag:abcd\na=end-of-candidates\n")
        self.assertEqual(len(fragment.entries), 1)
        entry = fragment.entries[0]
        self.assertEqual((entry.mid, entry.mline_index, entry.end_of_candidates), (None, None, True))

    def test_mid_after_candidates_still_labels_them(self) -> None:
        fragment = parse_sdpfrag("m=audio 9 RTP/AVP 0\na=candidate:1 1 udp 5 192.0.2.1 9 typ host\na=mid:a\n")
        self.assertEqual(fragment.entries[0].mid, "a")

    def test_bad_fragments(self) -> None:
        error = self.assertRaises(SdpError, parse_sdpfrag, "a=candidate:1 1 udp 5 192.0.2.1 9 typ host\n")
        self.assertIn("outside an m= section", error.reason)
        error = self.assertRaises(SdpError, parse_sdpfrag, "m=audio 9 RTP/AVP 0\na=candidate:garbage\n")
        self.assertIn("sdpfrag line 2: malformed ICE candidate", error.reason)
        self.assertRaises(SdpError, parse_sdpfrag, "hello\n")
        self.assertRaises(SdpError, parse_sdpfrag, b"a=ice-ufrag:\xff\n")
