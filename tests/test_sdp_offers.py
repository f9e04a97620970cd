"""WebRTC offers toward the core: real Chrome/Firefox offers, datachannel, codec policy, rejections,
re-INVITE versioning (RFC 3264 §8)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sdp.model import Origin, SessionDescription
from epcscf.sdp.params import CodecPolicy, CoreLeg, IceCredentials, OriginVersioner, SdpRejected, WicLeg, WicTransport
from epcscf.sdp.transform import (
    answer_toward_wic,
    offer_toward_core,
    offer_toward_wic,
    plan_offer_toward_core,
    plan_offer_toward_wic,
)

from tests.test_sdp_transform import CoreBoundLeakMixin, core_leg, lines, parse, wic_transport


class RealBrowserOfferTests(SynchronousTestCase, CoreBoundLeakMixin):
    def test_real_chrome_offer(self) -> None:
        offer = parse("chrome_offer_real.sdp")
        result = offer_toward_core(offer, core_leg(), CodecPolicy())
        self.assertEqual(lines(result)[5:], [
            "m=audio 30000 RTP/AVP 9 0 8 126", "b=AS:80",
            "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:126 telephone-event/8000", "a=ptime:20", "a=sendrecv"])
        self.assertNothingLeaks(result, offer)

    def test_firefox_offer_with_session_level_fingerprint(self) -> None:
        offer = parse("firefox_offer.sdp")
        result = offer_toward_core(offer, core_leg(), CodecPolicy())
        self.assertEqual(lines(result)[5:], [
            "m=audio 30000 RTP/AVP 9 0 8 101", "b=AS:80",
            "a=rtpmap:9 G722/8000/1", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000/1", "a=fmtp:101 0-15", "a=ptime:20", "a=sendrecv"])
        self.assertNothingLeaks(result, offer)

    def test_firefox_answer_echoes_its_mid_and_uses_firefox_rtpmaps(self) -> None:
        offer = parse("firefox_offer.sdp")
        core_answer = SessionDescription.parse(
            "v=0\no=- 1 1 IN IP4 198.51.100.20\ns=-\nc=IN IP4 198.51.100.20\nt=0 0\n"
            "m=audio 40000 RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\n"
            "a=fmtp:101 0-15\na=ptime:20\n")
        leg = WicLeg(Origin("epcscf", "77", 1, "IN", "IP4", "192.0.2.11"), (wic_transport(20000),), "sha-256 AB:CD")
        result = answer_toward_wic(core_answer, offer, leg)
        self.assertEqual(lines(result)[-6:], [
            "a=rtcp-mux", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000/1", "a=fmtp:101 0-15",
            "a=ptime:20", "a=sendrecv"])
        self.assertEqual(result.media[0].attribute_value("mid"), "0")

    def test_datachannel_and_vp8_video_keep_their_place_with_port_zero(self) -> None:
        offer = parse("chrome_offer_datachannel.sdp")
        result = offer_toward_core(offer, core_leg(), CodecPolicy())
        self.assertEqual([" ".join(line.split()[:3]) for line in lines(result) if line.startswith("m=")], [
            "m=audio 30000 RTP/AVP", "m=video 0 RTP/AVP", "m=application 0 UDP/DTLS/SCTP"])
        self.assertEqual(result.media[1].formats, ["96"])
        self.assertEqual(result.media[2].formats, ["webrtc-datachannel"])
        self.assertEqual(result.media[1].attributes + result.media[2].attributes, [])
        self.assertNothingLeaks(result, offer)
        # ... and the answer back rejects both, echoing the mids.
        core_answer = SessionDescription.parse(
            "v=0\no=- 1 1 IN IP4 198.51.100.20\ns=-\nc=IN IP4 198.51.100.20\nt=0 0\n"
            "m=audio 40000 RTP/AVP 8\nm=video 0 RTP/AVP 96\nm=application 0 UDP/DTLS/SCTP webrtc-datachannel\n")
        leg = WicLeg(Origin("epcscf", "9", 1, "IN", "IP4", "192.0.2.11"), (wic_transport(20000),), "sha-256 AB:CD")
        answer = answer_toward_wic(core_answer, offer, leg)
        self.assertEqual(lines(answer)[-6:], [
            "m=video 0 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 192.0.2.11", "a=mid:1",
            "m=application 0 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 192.0.2.11", "a=mid:2"])


class CodecPolicyTests(SynchronousTestCase, CoreBoundLeakMixin):
    def test_opus_when_enabled_brings_its_48k_telephone_event_but_never_red(self) -> None:
        result = offer_toward_core(parse("chrome_offer_2_1.sdp"), core_leg(), CodecPolicy.with_opus())
        self.assertEqual(result.media[0].formats, ["111", "9", "0", "8", "110", "126"])
        self.assertIn("111 minptime=10;useinbandfec=1", result.media[0].attribute_values("fmtp"))
        self.assertNotIn("63", result.media[0].formats)

    def test_comfort_noise_only_when_allowed(self) -> None:
        result = offer_toward_core(parse("chrome_offer_2_1.sdp"), core_leg(), CodecPolicy(comfort_noise=True))
        self.assertEqual(result.media[0].formats, ["9", "0", "8", "13", "126"])

    def test_telephone_event_only_with_a_kept_codec_of_the_same_clock(self) -> None:
        result = offer_toward_core(parse("chrome_offer_2_1.sdp"), core_leg(), CodecPolicy(audio=("opus",)))
        self.assertEqual(result.media[0].formats, ["111", "110"])
        result = offer_toward_core(parse("chrome_offer_2_1.sdp"), core_leg(), CodecPolicy(telephone_event=False))
        self.assertEqual(result.media[0].formats, ["9", "0", "8"])

    def test_h264_video_when_enabled_uses_avpf_with_nack_and_pli_only(self) -> None:
        offer = parse("chrome_offer_2_1.sdp")
        offer.media[1].add_attribute("rtcp-fb", "102 nack")
        offer.media[1].add_attribute("rtcp-fb", "102 goog-remb")
        result = offer_toward_core(offer, core_leg(), CodecPolicy(video=("H264",)))
        self.assertEqual(lines(result)[13:], [
            "m=video 30002 RTP/AVPF 102", "b=AS:2000", "a=rtpmap:102 H264/90000",
            "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            "a=rtcp-fb:102 nack", "a=sendrecv"])
        self.assertNothingLeaks(result, offer)


class VideoAnswerTests(SynchronousTestCase):
    def test_h264_answer_from_the_core_echoes_the_feedback_both_sides_support(self) -> None:
        offer = parse("chrome_offer_2_1.sdp")
        offer.media[1].add_attribute("rtcp-fb", "102 nack")
        offer.media[1].add_attribute("rtcp-fb", "102 nack pli")
        offer.media[1].add_attribute("rtcp-fb", "102 transport-cc")
        core_answer = SessionDescription.parse(
            "v=0\no=- 1 1 IN IP4 198.51.100.20\ns=-\nc=IN IP4 198.51.100.20\nt=0 0\n"
            "m=audio 40000 RTP/AVP 8\na=rtpmap:8 PCMA/8000\n"
            "m=video 40002 RTP/AVPF 102\na=rtpmap:102 H264/90000\na=fmtp:102 profile-level-id=42e01f;packetization-mode=1\n"
            "a=rtcp-fb:102 nack pli\na=rtcp-fb:102 ccm fir\n")
        leg = WicLeg(Origin("epcscf", "9", 1, "IN", "IP4", "192.0.2.11"),
                     (wic_transport(20000), wic_transport(20002)), "sha-256 AB:CD")
        answer = answer_toward_wic(core_answer, offer, leg)
        video = answer.media[1]
        self.assertEqual((video.port, video.proto, video.formats), (20002, "UDP/TLS/RTP/SAVPF", ["102"]))
        self.assertEqual(video.attribute_values("rtcp-fb"), ["102 nack pli"])
        self.assertEqual(video.fmtp(), {"102": "profile-level-id=42e01f;packetization-mode=1"})
        self.assertEqual(answer.media[0].attribute_values("rtcp-fb"), [])


class RejectionTests(SynchronousTestCase):
    def assertRejected(self, offer: SessionDescription, warn_code: int, fragment: str,
                       policy: CodecPolicy | None = None) -> None:
        error = self.assertRaises(SdpRejected, offer_toward_core, offer, core_leg(), policy or CodecPolicy())
        self.assertEqual((error.status, error.warn_code), (488, warn_code))
        self.assertIn(fragment, error.warning)

    def test_missing_ice_credentials(self) -> None:
        offer = parse("chrome_offer_2_1.sdp")
        offer.media[0].remove_attributes(["ice-pwd"])
        self.assertRejected(offer, 399, "m=audio line 0: no a=ice-ufrag/a=ice-pwd")

    def test_missing_fingerprint(self) -> None:
        offer = parse("chrome_offer_2_1.sdp")
        for media in offer.media:
            media.remove_attributes(["fingerprint"])
        self.assertRejected(offer, 399, "no a=fingerprint")

    def test_plain_rtp_profile_from_the_wic(self) -> None:
        offer = parse("chrome_offer_2_1.sdp")
        offer.media[0].proto = "RTP/AVP"
        self.assertRejected(offer, 302, "profile RTP/AVP is not UDP/TLS/RTP/SAVP(F)")

    def test_no_common_codec_lists_what_was_offered(self) -> None:
        offer = parse("chrome_offer_2_1.sdp")
        offer.media[0].formats = ["111", "63", "110"]
        self.assertRejected(offer, 305, "offered: opus/48000/2, red/48000/2, VP8/90000, rtx/90000, H264/90000")

    def test_offer_without_rtcp_mux(self) -> None:
        offer = parse("chrome_offer_2_1.sdp")
        offer.media[0].remove_attributes(["rtcp-mux"])
        self.assertRejected(offer, 399, "m=audio line 0: no a=rtcp-mux")

    def test_plans_say_which_lines_need_ports_and_fail_before_allocation(self) -> None:
        self.assertEqual(plan_offer_toward_core(parse("chrome_offer_datachannel.sdp"), CodecPolicy()), (0,))
        self.assertEqual(plan_offer_toward_core(parse("chrome_offer_2_1.sdp"), CodecPolicy(video=("H264",))), (0, 1))
        self.assertEqual(plan_offer_toward_wic(parse("ims_offer_2_2.sdp"), CodecPolicy()), (0,))
        self.assertRaises(SdpRejected, plan_offer_toward_wic, parse("ims_offer_amrwb_only.sdp"), CodecPolicy())
        offer = parse("chrome_offer_2_1.sdp")
        offer.media[0].remove_attributes(["ice-ufrag"])
        self.assertRaises(SdpRejected, plan_offer_toward_core, offer, CodecPolicy())

    def test_sdes_lines_from_the_core_are_not_offered_to_the_wic(self) -> None:
        core_offer = parse("ims_offer_2_2.sdp")
        core_offer.media[0].proto = "RTP/SAVP"
        error = self.assertRaises(SdpRejected, plan_offer_toward_wic, core_offer, CodecPolicy())
        self.assertEqual(error.warn_code, 305)

    def test_a_leg_without_a_transport_for_an_accepted_line_is_a_caller_bug(self) -> None:
        leg = WicLeg(Origin("e", "1", 1), (None,), "sha-256 AB:CD")
        self.assertRaises(ValueError, offer_toward_wic, parse("ims_offer_2_2.sdp"), leg, CodecPolicy())

    def test_a_leg_without_a_port_for_an_accepted_line_is_a_caller_bug(self) -> None:
        self.assertRaises(ValueError, offer_toward_core, parse("chrome_offer_2_1.sdp"),
                          core_leg((None, None)), CodecPolicy())

    def test_leg_parameters_are_validated(self) -> None:
        self.assertRaises(ValueError, IceCredentials, "abc", "N3v7qXs0pLk2Wm9cRt5yHb1e")
        self.assertRaises(ValueError, IceCredentials, "abcd", "short")
        self.assertRaises(ValueError, CoreLeg, Origin("e", "1", 1), "192.0.2.10", (30001,))
        self.assertRaises(ValueError, WicTransport, IceCredentials("abcd", "N3v7qXs0pLk2Wm9cRt5yHb1e"), ())
        self.assertRaises(ValueError, WicLeg, Origin("e", "1", 1), (), "sha-256")
        self.assertRaises(ValueError, WicLeg, Origin("e", "1", 1), (), "sha-256 AA", answer_setup="actpass")


class ReInviteTests(SynchronousTestCase):
    """RFC 3264 §8: same o= username/session id per leg; version bumps only when the SDP changes."""

    def setUp(self) -> None:
        self.versioner = OriginVersioner("epcscf", session_id="4000", address="192.0.2.10")
        self.leg = CoreLeg(self.versioner.origin, "192.0.2.10", (30000, 30002))

    def offer(self, direction: str | None = None) -> SessionDescription:
        wic_offer = parse("chrome_offer_2_1.sdp")
        if direction is not None:
            wic_offer.media[0].direction = direction
        return self.versioner.stamp(offer_toward_core(wic_offer, self.leg, CodecPolicy()))

    def test_hold_then_resume_bumps_the_version_and_keeps_ports(self) -> None:
        initial = self.offer()
        hold = self.offer("sendonly")
        resume = self.offer("sendrecv")
        self.assertEqual([s.origin.session_version for s in (initial, hold, resume)], [1, 2, 3])
        self.assertEqual({(s.origin.username, s.origin.session_id) for s in (initial, hold, resume)},
                         {("epcscf", "4000")})
        self.assertEqual(hold.media[0].direction, "sendonly")
        self.assertEqual([m.port for m in hold.media], [30000, 0])
        self.assertIn("o=epcscf 4000 2 IN IP4 192.0.2.10", hold.to_text())

    def test_identical_resend_keeps_the_version(self) -> None:
        first = self.offer()
        again = self.offer()
        self.assertEqual(first.serialize(), again.serialize())
        self.assertEqual(again.origin.session_version, 1)

    def test_stamp_does_not_modify_its_input(self) -> None:
        unstamped = offer_toward_core(parse("chrome_offer_2_1.sdp"), core_leg(session_id="x"), CodecPolicy())
        self.versioner.stamp(unstamped)
        self.assertEqual(unstamped.origin.session_id, "x")

    def test_stamped_copy_is_independent_of_its_input(self) -> None:
        unstamped = offer_toward_core(parse("chrome_offer_2_1.sdp"), self.leg, CodecPolicy())
        stamped = self.versioner.stamp(unstamped)
        unstamped.media[0].direction = "inactive"
        self.assertEqual(stamped.media[0].direction, "sendrecv")

    def test_ipv6_address_gives_ip6_origin(self) -> None:
        self.assertEqual(OriginVersioner("e", "1", "2001:db8::1").origin.addrtype, "IP6")
        self.assertIn("c=IN IP6 2001:db8::1", offer_toward_core(
            parse("chrome_offer_2_1.sdp"), CoreLeg(Origin("e", "1", 1), "2001:db8::1", (30000,)),
            CodecPolicy()).to_text())


class StampSerializedTests(SynchronousTestCase):
    """``OriginVersioner.stamp_serialized`` gives the octets of ``stamp(...).serialize()``, with
    the same version bumps (RFC 3264 §8), for a sequence of changed and repeated offers."""

    def test_same_octets_and_versions_as_stamp_then_serialize(self) -> None:
        by_copy = OriginVersioner("epcscf", session_id="4000", address="192.0.2.10")
        at_once = OriginVersioner("epcscf", session_id="4000", address="192.0.2.10")
        leg = CoreLeg(by_copy.origin, "192.0.2.10", (30000, 30002))
        for direction in (None, None, "sendonly", "sendonly", "sendrecv", "inactive"):
            wic_offer = parse("chrome_offer_2_1.sdp")
            if direction is not None:
                wic_offer.media[0].direction = direction
            offer = offer_toward_core(wic_offer, leg, CodecPolicy())
            before = offer.to_text()
            self.assertEqual(at_once.stamp_serialized(offer), by_copy.stamp(offer).serialize(), direction)
            self.assertEqual(at_once.origin, by_copy.origin)
            self.assertEqual(offer.to_text(), before)  # the input is left as it was
        self.assertEqual(at_once.origin.session_version, 4)
