"""Property tests (hypothesis, bounded and derandomized) for SDP from either side: the model's
parser and the TS 24.371 §7.4 transformations.

``SessionDescription.parse`` raises only ``SdpError`` on any text and round-trips what it
reads; generated WebRTC offers (and mutations of real browser offers) make the transforms
toward the core raise only ``SdpError``/``SdpRejected``, and whatever they build parses again.
The same holds for generated IMS offers toward the WIC.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from epcscf.sdp.extract import extract_core_media_params, extract_wic_media_params
from epcscf.sdp.model import Origin, SdpError, SessionDescription
from epcscf.sdp.params import CodecPolicy, CoreLeg, IceCredentials, SdpRejected, WicLeg, WicTransport
from epcscf.sdp.sdpfrag import parse_sdpfrag
from epcscf.sdp.transform import answer_toward_wic, offer_toward_core, offer_toward_wic
from tests.support.properties import BOUNDED, raises_only

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
BROWSER_OFFERS = [
    (FIXTURES / name).read_text(encoding="utf-8")
    for name in ("chrome_offer_2_1.sdp", "chrome_offer_real.sdp", "chrome_offer_datachannel.sdp", "firefox_offer.sdp")
]
IMS_OFFERS = [(FIXTURES / name).read_text(encoding="utf-8") for name in ("ims_offer_2_2.sdp", "ims_offer_amrwb_only.sdp")]
OURS = (SdpError, SdpRejected)

CODECS = [("opus", "48000/2"), ("G722", "8000"), ("PCMU", "8000"), ("PCMA", "8000"), ("AMR-WB", "16000"),
          ("AMR", "8000"), ("telephone-event", "8000"), ("red", "48000/2"), ("CN", "8000"), ("VP8", "90000")]
HEX = "0123456789ABCDEF"
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def core_leg(media_count: int) -> CoreLeg:
    return CoreLeg(origin=Origin("epcscf", "4000", 1, "IN", "IP4", "192.0.2.10"), address="192.0.2.10",
                   ports=tuple(30000 + 2 * i for i in range(media_count)))


def wic_leg(media_count: int) -> WicLeg:
    transports = tuple(
        WicTransport(IceCredentials("q8Zr", "N3v7qXs0pLk2Wm9cRt5yHb1e"), (f"1 1 udp 2130706431 192.0.2.11 {20000 + 2 * i} typ host",))
        for i in range(media_count)
    )
    return WicLeg(origin=Origin("epcscf", "4001", 1, "IN", "IP4", "192.0.2.11"), transports=transports,
                  fingerprint="sha-256 " + ":".join(["7A"] * 32))


@st.composite
def webrtc_media(draw: st.DrawFn, index: int) -> list[str]:
    kind = draw(st.sampled_from(["audio", "audio", "video", "application"]))
    if kind == "application":
        lines = [f"m=application {draw(st.integers(0, 65535))} UDP/DTLS/SCTP webrtc-datachannel", "a=sctp-port:5000"]
    else:
        codecs = draw(st.lists(st.sampled_from(CODECS), min_size=1, max_size=5, unique=True))
        pts = draw(st.lists(st.integers(0, 127), min_size=len(codecs), max_size=len(codecs), unique=True))
        proto = draw(st.sampled_from(["UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVPF", "RTP/SAVPF", "RTP/AVP"]))
        port = draw(st.sampled_from([9, 0, 54400, 65535]))
        lines = [f"m={kind} {port} {proto} {' '.join(map(str, pts))}"]
        for (name, rate), pt in zip(codecs, pts):
            if draw(st.booleans()) or pt >= 96:
                lines.append(f"a=rtpmap:{pt} {name}/{rate}")
            if draw(st.integers(0, 3)) == 0:
                lines.append(f"a=fmtp:{pt} " + draw(st.sampled_from(["minptime=10;useinbandfec=1", "0-15", f"{pt}/{pt}", "x"])))
            if draw(st.integers(0, 3)) == 0:
                lines.append(f"a=rtcp-fb:{pt} " + draw(st.sampled_from(["transport-cc", "nack", "nack pli", "goog-remb"])))
    lines.append(draw(st.sampled_from(["c=IN IP4 0.0.0.0", "c=IN IP4 203.0.113.7", "c=IN IP6 ::1", ""])))
    if draw(st.integers(0, 5)):
        lines.append(f"a=ice-ufrag:{draw(st.text(ALNUM, min_size=1, max_size=8))}")
    if draw(st.integers(0, 5)):
        lines.append(f"a=ice-pwd:{draw(st.text(ALNUM, min_size=1, max_size=32))}")
    if draw(st.integers(0, 5)):
        lines.append("a=fingerprint:" + draw(st.sampled_from(["sha-256", "sha-1", "md5", "bogus"])) + " "
                     + ":".join(draw(st.lists(st.text(HEX, min_size=2, max_size=2), min_size=1, max_size=32))))
    if draw(st.integers(0, 5)):
        lines.append("a=setup:" + draw(st.sampled_from(["actpass", "active", "passive", "holdconn", "x"])))
    for _ in range(draw(st.integers(0, 2))):
        lines.append(f"a=candidate:{draw(st.integers(0, 9))} 1 udp {draw(st.integers(0, 2**31))} "
                     + draw(st.sampled_from(["192.0.2.5", "::1", "abc.local", "x"])) + f" {draw(st.integers(0, 65535))} typ "
                     + draw(st.sampled_from(["host", "srflx raddr 0.0.0.0 rport 9", "relay", "bogus"])))
    lines.append(f"a=mid:{index}")
    for attribute in draw(st.lists(st.sampled_from(
            ["a=rtcp-mux", "a=rtcp:9 IN IP4 0.0.0.0", "a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive",
             "a=ptime:20", "a=maxptime:120", "a=ssrc:1 cname:x", "a=msid:a b", "a=ice-options:trickle",
             "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=end-of-candidates", "b=AS:64"]),
            max_size=5)):
        lines.append(attribute)
    return [line for line in lines if line]


@st.composite
def webrtc_offers(draw: st.DrawFn) -> str:
    count = draw(st.integers(1, 3))
    head = ["v=0", f"o=- {draw(st.integers(0, 2**63))} {draw(st.integers(0, 2**32))} IN IP4 127.0.0.1", "s=-", "t=0 0"]
    if draw(st.booleans()):
        head.append("a=group:BUNDLE " + " ".join(str(i) for i in range(count)))
    if draw(st.booleans()):
        head.append("a=ice-lite")
    body = [line for i in range(count) for line in draw(webrtc_media(i))]
    return "\r\n".join(head + body) + "\r\n"


@st.composite
def mutated_lines(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    """Line-level mutations of an SDP: drop, duplicate, swap, truncate, garble one value."""
    lines = draw(texts).split("\r\n")
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["drop", "dup", "swap", "cut", "garble"]))
        if kind == "drop":
            del lines[at]
        elif kind == "dup":
            lines.insert(at, lines[at])
        elif kind == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif kind == "cut":
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
        else:
            lines[at] = lines[at] + draw(st.sampled_from([" ", "x", " 99999999999999999999", "\x00", "é", ":", "/"]))
    return "\r\n".join(lines)


class ModelProperties(SynchronousTestCase):
    @BOUNDED
    @given(st.text(max_size=300) | st.text("vosctmab=:/ \r\n0123456789IPN4", max_size=300))
    @example("v=0\r\nm=audio 99999999999999999999 RTP/AVP 0\r\n")
    def test_any_text_parses_or_raises_sdp_error(self, text: str) -> None:
        raises_only(lambda: SessionDescription.parse(text), SdpError)

    @BOUNDED
    @given(mutated_lines(st.sampled_from(BROWSER_OFFERS + IMS_OFFERS)))
    def test_mutated_real_sdp_parses_or_raises_sdp_error_and_round_trips(self, text: str) -> None:
        sdp = raises_only(lambda: SessionDescription.parse(text), SdpError)
        if sdp is not None:
            self.assertEqual(SessionDescription.parse(sdp.to_text()).to_text(), sdp.to_text())

    @BOUNDED
    @given(webrtc_offers())
    def test_generated_offers_round_trip(self, text: str) -> None:
        sdp = raises_only(lambda: SessionDescription.parse(text), SdpError)
        if sdp is not None:
            again = SessionDescription.parse(sdp.to_text())
            self.assertEqual(again.to_text(), sdp.to_text())
            self.assertEqual(len(again.media), len(sdp.media))

    @BOUNDED
    @given(st.text(max_size=200) | mutated_lines(st.just((FIXTURES / "trickle_info.sdpfrag").read_text(encoding="utf-8"))))
    def test_trickle_fragments_parse_or_raise_sdp_error(self, text: str) -> None:
        raises_only(lambda: parse_sdpfrag(text), SdpError)


class TransformProperties(SynchronousTestCase):
    def toward_core(self, text: str) -> None:
        offer = raises_only(lambda: SessionDescription.parse(text), SdpError)
        if offer is None:
            return
        raises_only(lambda: extract_wic_media_params(offer), *OURS)
        out = raises_only(lambda: offer_toward_core(offer, core_leg(len(offer.media)), CodecPolicy()), *OURS)
        if out is not None:
            self.assertEqual(len(SessionDescription.parse(out.to_text()).media), len(offer.media))

    @BOUNDED
    @given(webrtc_offers())
    def test_generated_webrtc_offers_toward_the_core(self, text: str) -> None:
        self.toward_core(text)

    @BOUNDED
    @given(mutated_lines(st.sampled_from(BROWSER_OFFERS)))
    def test_mutated_browser_offers_toward_the_core(self, text: str) -> None:
        self.toward_core(text)

    @BOUNDED
    @given(mutated_lines(st.sampled_from(IMS_OFFERS)), st.data())
    def test_mutated_ims_offers_toward_the_wic_and_answers_back(self, text: str, data: st.DataObject) -> None:
        offer = raises_only(lambda: SessionDescription.parse(text), SdpError)
        if offer is None:
            return
        raises_only(lambda: extract_core_media_params(offer), *OURS)
        leg = wic_leg(len(offer.media))
        out = raises_only(lambda: offer_toward_wic(offer, leg, CodecPolicy()), *OURS)
        if out is None:
            return
        self.assertEqual(len(SessionDescription.parse(out.to_text()).media), len(offer.media))
        # The core's answer to a browser offer, mutated: the WebRTC answer is ours or an error of ours.
        browser = SessionDescription.parse(BROWSER_OFFERS[0])
        answer = raises_only(lambda: SessionDescription.parse(data.draw(mutated_lines(st.sampled_from(IMS_OFFERS)))), SdpError)
        if answer is not None:
            built = raises_only(lambda: answer_toward_wic(answer, browser, wic_leg(len(browser.media))), *OURS)
            if built is not None:
                SessionDescription.parse(built.to_text())
