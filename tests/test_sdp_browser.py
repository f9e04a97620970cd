"""A real headless Chromium accepts the SDP we build (TS 24.371 §7.4.2, §7.4.3).

Chromium offers audio + video + a datachannel; we run offer_toward_core, play an IMS core that
answers PCMA, and give Chromium answer_toward_wic's result.  Then we offer the IMS example
(ims_offer_2_2.sdp) through offer_toward_wic, let Chromium answer, and turn that into the IMS
answer.  Only SDP is checked here (setRemoteDescription succeeds); media flow is the media
layer's end-to-end test.

`python -m tests.test_sdp_browser <mode>` is the transformation step the Node driver calls.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from twisted.trial.unittest import TestCase

from tests.support.node_peer import require_node_modules
from tests.support.processes import require_program

from epcscf.sdp.codecs import main_payload_types
from epcscf.sdp.model import Origin, SessionDescription
from epcscf.sdp.params import CodecPolicy, CoreLeg, IceCredentials, WicLeg, WicTransport
from epcscf.sdp.transform import (
    answer_toward_core,
    answer_toward_wic,
    offer_toward_core,
    offer_toward_wic,
    plan_offer_toward_core,
)

from tests.support.processes import TOP, run
from tests.test_sdp_transform import WEBRTC_ATTRIBUTE, fixture

DRIVER = os.path.join(TOP, "tests", "fixtures", "sdp", "browser_check.js")
CHROMIUM = "/usr/bin/chromium"
# A well-formed SHA-256 fingerprint (Chromium checks the syntax when the description is applied;
# the certificate itself only matters once DTLS runs).
FINGERPRINT = "sha-256 " + ":".join(f"{(i * 37) % 256:02X}" for i in range(32))


def _wic_leg(indexes: tuple[int, ...], count: int) -> WicLeg:
    transports: list[WicTransport | None] = [None] * count
    for i in indexes:
        transports[i] = WicTransport(IceCredentials(f"ufr{i}x", f"PasswordForLine{i}abcdefghij"),
                                     (f"1 1 udp 2130706431 127.0.0.1 {20000 + 2 * i} typ host",))
    return WicLeg(Origin("epcscf", "4001", 1, "IN", "IP4", "127.0.0.1"), tuple(transports), FINGERPRINT)


def _core_answer_for(core_offer: SessionDescription) -> str:
    """An IMS UE answering with the first codec offered plus telephone-event (as ims_answer_2_3.sdp)."""
    text = "v=0\r\no=- 1027 1027 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    for index, media in enumerate(core_offer.media):
        if media.port == 0:
            text += f"m={media.media} 0 {media.proto} {' '.join(media.formats)}\r\n"
            continue
        codecs = media.rtpmap()
        chosen = main_payload_types(media, media.formats)[:1]
        chosen += [pt for pt in media.formats if codecs.get(pt) and codecs[pt].encoding == "telephone-event"
                   and codecs[pt].clock_rate == codecs[chosen[0]].clock_rate]
        text += f"m={media.media} {40000 + 2 * index} {media.proto} {' '.join(chosen)}\r\n"
        text += "".join(f"a=rtpmap:{pt} {codecs[pt]}\r\n" for pt in chosen)
    return text


def transform(mode: str, text: str) -> str:
    policy = CodecPolicy()
    if mode == "answer-wic-offer":
        offer = SessionDescription.parse(text)
        accepted = plan_offer_toward_core(offer, policy)
        ports = tuple(30000 + 2 * i if i in accepted else None for i in range(len(offer.media)))
        core_leg = CoreLeg(Origin("epcscf", "4000", 1, "IN", "IP4", "127.0.0.1"), "127.0.0.1", ports)
        core_offer = offer_toward_core(offer, core_leg, policy)
        core_answer = SessionDescription.parse(_core_answer_for(core_offer))
        return answer_toward_wic(core_answer, offer, _wic_leg(accepted, len(offer.media))).to_text()
    ims_offer = SessionDescription.parse(fixture("ims_offer_2_2.sdp"))
    if mode == "offer-to-wic":
        return offer_toward_wic(ims_offer, _wic_leg((0,), 1), policy).to_text()
    if mode == "answer-to-core":
        core_leg = CoreLeg(Origin("epcscf", "6000", 1, "IN", "IP4", "127.0.0.1"), "127.0.0.1", (30002,))
        return answer_toward_core(SessionDescription.parse(text), ims_offer, core_leg).to_text()
    raise SystemExit(f"unknown mode {mode!r}")


class ChromiumAcceptsOurSdpTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        require_program(self, CHROMIUM, "chromium")
        require_node_modules(self, "playwright-core")

    async def test_chromium_accepts_our_answer_and_our_offer(self) -> None:
        node = shutil.which("node")
        assert node is not None
        out, err, code = await run([node, DRIVER, sys.executable])
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        result = json.loads(out)
        self.assertEqual(result["errors"], [], json.dumps(result, indent=1)[:4000])

        wic_offer = SessionDescription.parse(result["wicOffer"])
        wic_answer = SessionDescription.parse(result["wicAnswer"])
        self.assertEqual([m.media for m in wic_offer.media], ["audio", "video", "application"])
        self.assertEqual([m.attribute_value("mid") for m in wic_answer.media],
                         [m.attribute_value("mid") for m in wic_offer.media])
        self.assertEqual([m.port for m in wic_answer.media], [20000, 0, 0])
        self.assertNotIn("a=group", result["wicAnswer"])

        core_answer = SessionDescription.parse(result["coreAnswer"])
        self.assertEqual(core_answer.media[0].port, 30002)
        self.assertEqual(core_answer.media[0].proto, "RTP/AVP")
        self.assertTrue(set(core_answer.media[0].formats) <= {"8", "0", "111"})
        self.assertEqual(WEBRTC_ATTRIBUTE.findall(result["coreAnswer"]), [])


if __name__ == "__main__":
    sys.stdout.write(transform(sys.argv[1], sys.stdin.read()))
