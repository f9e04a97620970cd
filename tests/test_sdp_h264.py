"""H.264 without transcoding (RFC 6184 §8.2.2): packetization mode and profile must match, the
level may differ; an offer's mode-0 variants of a profile also offered in mode 1 are dropped."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.sdp import CodecPolicy, SessionDescription
from epcscf.sdp import h264
from epcscf.sdp.codecs import same_format, select_payload_types

VIDEO = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=video 9 UDP/TLS/RTP/SAVPF 96 102 103 104 106
a=rtpmap:96 VP8/90000
a=rtpmap:102 H264/90000
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:103 H264/90000
a=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f
a=rtpmap:104 H264/90000
a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f
a=rtpmap:106 H264/90000
a=fmtp:106 packetization-mode=1;profile-level-id=42e01f
"""


def line(text: str) -> object:
    return SessionDescription.parse(text).media[0]


class H264Tests(unittest.TestCase):
    def test_mode_0_dropped_only_where_the_profile_is_offered_in_mode_1(self) -> None:
        kept = select_payload_types(line(VIDEO), CodecPolicy(video=("H264", "VP8")))
        self.assertEqual(kept, ["96", "102", "104", "106"])

    def test_answer_must_keep_mode_and_profile_but_may_change_level(self) -> None:
        offer = line(VIDEO)
        level = line(VIDEO.replace("profile-level-id=42001f", "profile-level-id=42000d"))
        self.assertTrue(same_format(offer, level, "102"))
        mode = line(VIDEO.replace("packetization-mode=1;profile-level-id=42001f", "packetization-mode=0;profile-level-id=42001f"))
        self.assertFalse(same_format(offer, mode, "102"))
        other = line(VIDEO.replace("profile-level-id=42001f", "profile-level-id=64001f"))
        self.assertFalse(same_format(offer, other, "102"))
        self.assertTrue(same_format(offer, offer, "96"))

    def test_defaults_of_rfc_6184(self) -> None:
        self.assertEqual(h264.packetization_mode(None), "0")
        self.assertEqual(h264.profile(""), "4200")
        self.assertTrue(h264.compatible("", "profile-level-id=42000A"))
