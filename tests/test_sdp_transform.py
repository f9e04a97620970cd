"""TS 24.371 §7.4 transformations against worked examples (``fixtures/sdp/*_2_*.sdp``), real offers."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sdp.model import Origin, SessionDescription
from epcscf.sdp.params import CodecPolicy, CoreLeg, IceCredentials, SdpRejected, WicLeg, WicTransport
from epcscf.sdp.transform import answer_toward_core, answer_toward_wic, offer_toward_core, offer_toward_wic

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
FINGERPRINT = "sha-256 7A:01:…:C4"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def parse(name: str) -> SessionDescription:
    return SessionDescription.parse(fixture(name))


def lines(sdp: SessionDescription) -> list[str]:
    return sdp.to_text().split("\r\n")[:-1]


def core_leg(ports: tuple[int | None, ...] = (30000, 30002, 30004), session_id: str = "4000") -> CoreLeg:
    return CoreLeg(origin=Origin("epcscf", session_id, 1, "IN", "IP4", "192.0.2.10"), address="192.0.2.10",
                   ports=ports)


def wic_transport(port: int, ufrag: str = "q8Zr", pwd: str = "N3v7qXs0pLk2Wm9cRt5yHb1e") -> WicTransport:
    return WicTransport(IceCredentials(ufrag, pwd), (f"1 1 udp 2130706431 192.0.2.11 {port} typ host",))


def wic_leg(*transports: WicTransport | None, session_id: str = "4001", **options: object) -> WicLeg:
    return WicLeg(origin=Origin("epcscf", session_id, 1, "IN", "IP4", "192.0.2.11"), transports=transports,
                  fingerprint=FINGERPRINT, **options)  # type: ignore[arg-type]


# TS 23.228 Annex U.1: nothing of the WebRTC access edge may reach the core.
WEBRTC_ATTRIBUTE = re.compile(
    r"^a=(ice-ufrag|ice-pwd|ice-options|ice-lite|candidate|end-of-candidates|remote-candidates|fingerprint|"
    r"setup|tls-id|group|bundle-only|rtcp-mux|rtcp-mux-only|rtcp-rsize|rtcp|msid|msid-semantic|ssrc|"
    r"ssrc-group|extmap|extmap-allow-mixed|mid|sctp-port|max-message-size)(:|$)", re.M)
ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


class CoreBoundLeakMixin:
    def assertNothingLeaks(self, core_sdp: SessionDescription, wic_sdp: SessionDescription) -> None:
        text = core_sdp.to_text()
        self.assertEqual(WEBRTC_ATTRIBUTE.findall(text), [])  # type: ignore[attr-defined]
        audio_lines = [m for m in core_sdp.media if m.proto == "RTP/AVP"]
        for media in audio_lines:
            self.assertEqual(media.attributes_named("rtcp-fb"), [])  # type: ignore[attr-defined]
        browser_addresses = set(ADDRESS.findall(wic_sdp.to_text())) - {"0.0.0.0", "127.0.0.1"}
        self.assertTrue(browser_addresses)  # type: ignore[attr-defined]
        self.assertEqual(set(ADDRESS.findall(text)), {"192.0.2.10"})  # type: ignore[attr-defined]
        self.assertNotIn("UDP/TLS/RTP", text)  # type: ignore[attr-defined]


class WicOriginatedExampleTests(SynchronousTestCase, CoreBoundLeakMixin):
    """Fixtures ``*_2_1``, ``*_2_3``: Chrome offer → IMS offer; IMS answer → WebRTC answer."""

    def test_chrome_offer_becomes_the_example_ims_offer(self) -> None:
        offer = parse("chrome_offer_2_1.sdp")
        result = offer_toward_core(offer, core_leg((30000, None)), CodecPolicy())
        self.assertEqual(result.to_text(), fixture("expected_core_offer_2_3.sdp").replace("\n", "\r\n"))
        self.assertNothingLeaks(result, offer)

    def test_core_answer_becomes_the_example_webrtc_answer(self) -> None:
        result = answer_toward_wic(parse("ims_answer_2_3.sdp"), parse("chrome_offer_2_1.sdp"),
                                   wic_leg(wic_transport(20000), None))
        self.assertEqual(result.to_text(), fixture("expected_wic_answer_2_3.sdp").replace("\n", "\r\n"))

    def test_answer_never_carries_bundle_or_trickle_and_media_address_is_the_default_candidate(self) -> None:
        result = answer_toward_wic(parse("ims_answer_2_3.sdp"), parse("chrome_offer_2_1.sdp"),
                                   wic_leg(wic_transport(20000), None))
        text = result.to_text()
        self.assertNotIn("a=group", text)
        self.assertNotIn("ice-options", text)
        audio = result.media[0]
        self.assertEqual((audio.connection.host, audio.port), ("192.0.2.11", 20000))  # type: ignore[union-attr]
        self.assertEqual(result.attribute_value("ice-lite"), "")
        self.assertIsNone(audio.attribute("ice-lite"))

    def test_every_answer_of_the_call_repeats_the_same_ice_and_dtls_lines(self) -> None:
        # The 183 answer and the 200 answer (another codec) share ICE/DTLS parameters.
        offer = parse("chrome_offer_2_1.sdp")
        leg = wic_leg(wic_transport(20000), None)
        early = answer_toward_wic(parse("ims_answer_2_3.sdp"), offer, leg)
        final_core = parse("ims_answer_2_3.sdp")
        final_core.media[0].formats = ["0", "126"]
        final = answer_toward_wic(final_core, offer, leg)
        transport_names = {"ice-ufrag", "ice-pwd", "candidate", "end-of-candidates", "fingerprint", "setup", "rtcp-mux"}
        pick = lambda sdp: [a for a in sdp.media[0].attributes if a.name in transport_names]  # noqa: E731
        self.assertEqual(pick(early), pick(final))
        self.assertEqual(final.media[0].formats, ["0", "126"])

    def test_answer_setup_and_lite_come_from_the_leg(self) -> None:
        leg = wic_leg(wic_transport(20000), None, answer_setup="active", ice_lite=False, tls_id="abc123")
        result = answer_toward_wic(parse("ims_answer_2_3.sdp"), parse("chrome_offer_2_1.sdp"), leg)
        self.assertEqual(result.media[0].attribute_value("setup"), "active")
        self.assertEqual(result.media[0].attribute_value("tls-id"), "abc123")
        self.assertFalse(result.has_attribute("ice-lite"))

    def test_core_answer_with_another_number_of_lines_is_rejected(self) -> None:
        core_answer = parse("ims_answer_2_3.sdp")
        del core_answer.media[1]
        error = self.assertRaises(SdpRejected, answer_toward_wic, core_answer, parse("chrome_offer_2_1.sdp"),
                                  wic_leg(wic_transport(20000), None))
        self.assertEqual(error.status, 488)
        self.assertIn("1 m= lines, the offer had 2", error.warning)

    def test_core_answer_choosing_a_codec_the_wic_never_offered_rejects_that_line(self) -> None:
        core_answer = parse("ims_answer_2_3.sdp")
        core_answer.media[0].formats = ["18"]
        result = answer_toward_wic(core_answer, parse("chrome_offer_2_1.sdp"), wic_leg(wic_transport(20000), None))
        self.assertEqual(result.media[0].port, 0)
        self.assertEqual(result.media[0].attribute_value("mid"), "0")

    def test_core_answer_holding_with_zero_address_becomes_sendonly_toward_the_wic(self) -> None:
        core_answer = parse("ims_answer_2_3.sdp")
        core_answer.connection.address = "0.0.0.0"  # type: ignore[union-attr]
        result = answer_toward_wic(core_answer, parse("chrome_offer_2_1.sdp"), wic_leg(wic_transport(20000), None))
        self.assertEqual(result.media[0].direction, "sendonly")


class WicTerminatedExampleTests(SynchronousTestCase, CoreBoundLeakMixin):
    """Fixtures ``*_2_2``, ``*_2_4``: IMS offer → WebRTC offer; Chrome answer → IMS answer."""

    def test_ims_offer_becomes_the_example_webrtc_offer(self) -> None:
        result = offer_toward_wic(parse("ims_offer_2_2.sdp"), wic_leg(
            wic_transport(20002, "Hh2k", "Qp0xZ7mWvB3nL8sT4kR6yJ1c"), session_id="5000"), CodecPolicy())
        expected = fixture("expected_wic_offer_2_4.sdp").split("\n")[:-1]
        # Two deliberate additions to the example: b=AS stays (the brief: "keep b=AS"; 2.4 says it
        # "may stay") and the fmtp of kept telephone-event 111 is copied like every kept PT's fmtp.
        expected.insert(expected.index("c=IN IP4 192.0.2.11") + 1, "b=AS:80")
        expected.insert(expected.index("a=rtpmap:111 telephone-event/8000") + 1, "a=fmtp:111 0-15")
        self.assertEqual(lines(result), expected)

    def test_chrome_answer_becomes_the_example_ims_answer(self) -> None:
        answer = parse("chrome_answer_2_4.sdp")
        result = answer_toward_core(answer, parse("ims_offer_2_2.sdp"), core_leg((30002,), session_id="6000"))
        self.assertEqual(result.to_text(), fixture("expected_core_answer_2_4.sdp").replace("\n", "\r\n"))
        self.assertNothingLeaks(result, answer)

    def test_ims_only_attributes_never_reach_the_wic(self) -> None:
        core_offer = parse("ims_offer_2_2.sdp")
        for name, value in [("curr", "qos local none"), ("des", "qos mandatory local sendrecv"),
                            ("conf", "qos remote sendrecv"), ("tcap", "1 RTP/AVPF"), ("acap", "1 foo"),
                            ("pcfg", "1 t=1"), ("3ge2ae", "requested"), ("maxptime", "240")]:
            core_offer.media[0].add_attribute(name, value)
        result = offer_toward_wic(core_offer, wic_leg(wic_transport(20002)), CodecPolicy())
        text = result.to_text()
        self.assertIsNone(re.search(r"^a=(curr|des|conf|tcap|acap|pcfg|3ge2ae|maxptime)", text, re.M))
        self.assertNotIn("198.51.100.20", text)
        self.assertNotIn("a=ice-options", text)  # we never trickle

    def test_amr_wb_only_core_offer_is_rejected_with_488_naming_the_codec(self) -> None:
        error = self.assertRaises(SdpRejected, offer_toward_wic, parse("ims_offer_amrwb_only.sdp"),
                                  wic_leg(wic_transport(20002)), CodecPolicy())
        self.assertEqual((error.status, error.warn_code), (488, 305))
        self.assertIn("AMR-WB/16000/1", error.warning)
        self.assertNotIn("telephone-event", error.warning)
        self.assertEqual(error.warning_header("pcscf.example.net"),
                         '305 pcscf.example.net "no codec usable toward the WebRTC client without '
                         'transcoding (offered: AMR-WB/16000/1)"')

    def test_zero_address_hold_from_the_core_becomes_a_direction_toward_the_wic(self) -> None:
        for declared, expected in [("sendrecv", "sendonly"), ("sendonly", "sendonly"),
                                   ("recvonly", "inactive"), ("inactive", "inactive")]:
            core_offer = parse("ims_offer_2_2.sdp")
            core_offer.connection.address = "0.0.0.0"  # type: ignore[union-attr]
            core_offer.media[0].direction = declared
            result = offer_toward_wic(core_offer, wic_leg(wic_transport(20002)), CodecPolicy())
            self.assertEqual(result.media[0].direction, expected, declared)
            self.assertEqual(result.media[0].connection.host, "192.0.2.11")  # type: ignore[union-attr]

    def test_core_hold_reoffer_keeps_ice_dtls_and_mids(self) -> None:
        leg = wic_leg(wic_transport(20002))
        first = offer_toward_wic(parse("ims_offer_2_2.sdp"), leg, CodecPolicy())
        hold_offer = parse("ims_offer_2_2.sdp")
        hold_offer.media[0].direction = "sendonly"
        hold = offer_toward_wic(hold_offer, leg, CodecPolicy())
        self.assertEqual(hold.media[0].direction, "sendonly")
        same = [a for a in first.media[0].attributes if a.name not in ("sendrecv",)]
        self.assertEqual(same, [a for a in hold.media[0].attributes if a.name != "sendonly"])
        self.assertEqual(hold.media[0].attribute_value("setup"), "actpass")

    def test_video_and_other_lines_keep_order_and_are_rejected_toward_the_wic(self) -> None:
        core_offer = SessionDescription.parse(
            fixture("ims_offer_2_2.sdp")
            + "m=video 40002 RTP/AVP 99\na=rtpmap:99 H264/90000\nm=image 40004 udptl t38\n")
        result = offer_toward_wic(core_offer, wic_leg(wic_transport(20002), wic_transport(20004)), CodecPolicy())
        self.assertEqual([(m.media, m.port, m.proto, m.formats, m.attribute_value("mid")) for m in result.media], [
            ("audio", 20002, "UDP/TLS/RTP/SAVPF", ["8", "0", "111"], "0"),
            ("video", 0, "UDP/TLS/RTP/SAVPF", ["99"], "1"),
            ("image", 0, "udptl", ["t38"], "2")])

    def test_wic_answer_without_fingerprint_or_with_actpass_is_rejected(self) -> None:
        answer = parse("chrome_answer_2_4.sdp")
        answer.media[0].remove_attributes(["fingerprint"])
        error = self.assertRaises(SdpRejected, answer_toward_core, answer, parse("ims_offer_2_2.sdp"),
                                  core_leg((30002,)))
        self.assertIn("no a=fingerprint", error.warning)
        answer = parse("chrome_answer_2_4.sdp")
        answer.media[0].attribute("setup").value = "actpass"  # type: ignore[union-attr]
        error = self.assertRaises(SdpRejected, answer_toward_core, answer, parse("ims_offer_2_2.sdp"),
                                  core_leg((30002,)))
        self.assertIn("a=setup:actpass is not allowed in an answer", error.warning)

    def test_wic_rejecting_a_line_rejects_it_toward_the_core(self) -> None:
        answer = parse("chrome_answer_2_4.sdp")
        answer.media[0].port = 0
        result = answer_toward_core(answer, parse("ims_offer_2_2.sdp"), core_leg((30002,)))
        self.assertEqual(lines(result)[-1], "m=audio 0 RTP/AVP 116")

    def test_wic_hold_answer_keeps_its_direction(self) -> None:
        answer = parse("chrome_answer_2_4.sdp")
        answer.media[0].direction = "recvonly"
        result = answer_toward_core(answer, parse("ims_offer_2_2.sdp"), core_leg((30002,)))
        self.assertEqual(result.media[0].direction, "recvonly")


class OfferTowardCoreWithParamsTests(SynchronousTestCase):
    """The WIC offer's parameters read once per offer (``params``) give the same plan and offer
    as reading them again in each step."""

    def test_same_plan_and_offer_with_params_given(self) -> None:
        from epcscf.sdp.extract import extract_wic_media_params
        from epcscf.sdp.transform import plan_offer_toward_core

        for name in ("chrome_offer_2_1.sdp", "chrome_offer_real.sdp"):
            offer = parse(name)
            params = extract_wic_media_params(offer)
            self.assertEqual(plan_offer_toward_core(offer, CodecPolicy(), params), plan_offer_toward_core(offer, CodecPolicy()))
            leg = core_leg((30000, 30002, 30004)[:len(offer.media)])
            self.assertEqual(offer_toward_core(offer, leg, CodecPolicy(), params).to_text(),
                             offer_toward_core(offer, leg, CodecPolicy()).to_text())

    def test_same_offer_with_the_planned_payload_types_given(self) -> None:
        from epcscf.sdp.extract import extract_wic_media_params
        from epcscf.sdp.transform import accepted_lines, core_bound_payload_types, plan_offer_toward_core

        policies = (CodecPolicy(), CodecPolicy.with_opus(), CodecPolicy(video=("H264",)), CodecPolicy(telephone_event=False))
        for name in ("chrome_offer_2_1.sdp", "chrome_offer_real.sdp", "chrome_offer_datachannel.sdp", "firefox_offer.sdp"):
            for policy in policies:
                offer = parse(name)
                params = extract_wic_media_params(offer)
                try:
                    planned = core_bound_payload_types(offer, policy, params)
                except SdpRejected:
                    self.assertRaises(SdpRejected, offer_toward_core, offer, core_leg(), policy)
                    continue
                self.assertEqual(accepted_lines(planned), plan_offer_toward_core(offer, policy))
                leg = core_leg((30000, 30002, 30004, 30006)[:len(offer.media)])
                self.assertEqual(offer_toward_core(offer, leg, policy, params, planned).to_text(),
                                 offer_toward_core(offer, leg, policy).to_text())
