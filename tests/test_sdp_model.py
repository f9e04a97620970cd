"""RFC 8866 model: parse, round trip, helpers, clear errors."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sdp.model import Attribute, Connection, RtpMap, SdpError, SessionDescription

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


class RoundTripTests(SynchronousTestCase):
    def test_every_fixture_round_trips_byte_for_byte_with_crlf(self) -> None:
        names = sorted(p.name for p in FIXTURES.glob("*.sdp"))
        self.assertGreaterEqual(len(names), 9)
        for name in names:
            text = fixture(name)
            self.assertEqual(SessionDescription.parse(text).serialize(), crlf(text), name)

    def test_unknown_attributes_keep_their_values_and_order(self) -> None:
        text = ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
                "a=x-vendor-flag\r\na=x-vendor:one two\r\n"
                "m=audio 4000 RTP/AVP 0\r\na=zzz:1\r\na=rtpmap:0 PCMU/8000\r\na=aaa\r\na=zzz:2\r\n")
        sdp = SessionDescription.parse(text)
        self.assertEqual(sdp.attributes, [Attribute("x-vendor-flag"), Attribute("x-vendor", "one two")])
        self.assertEqual([a.name for a in sdp.media[0].attributes], ["zzz", "rtpmap", "aaa", "zzz"])
        self.assertEqual(sdp.media[0].attribute_values("zzz"), ["1", "2"])
        self.assertEqual(sdp.serialize(), text.encode())

    def test_all_rfc8866_session_lines_survive(self) -> None:
        text = ("v=0\r\no=jdoe 3724394400 3724394405 IN IP4 198.51.100.1\r\ns=Call to John Smith\r\n"
                "i=SDP Offer #1\r\nu=http://www.jdoe.example.com/home.html\r\ne=Jane Doe <jane@jdoe.example.com>\r\n"
                "p=+1 617 555-6011\r\nc=IN IP4 198.51.100.1\r\nb=CT:128\r\nt=0 0\r\nr=7d 1h 0 25h\r\nz=2882844526 -1h\r\n"
                "k=prompt\r\na=recvonly\r\nm=audio 49170 RTP/AVP 0\r\ni=voice\r\nc=IN IP6 2001:db8::2\r\n"
                "b=AS:64\r\nk=prompt\r\nm=video 51372/2 RTP/AVP 99 100\r\na=rtpmap:99 h263-1998/90000\r\n")
        sdp = SessionDescription.parse(text)
        self.assertEqual(sdp.serialize(), text.encode())
        self.assertEqual(sdp.origin.session_version, 3724394405)
        self.assertEqual(sdp.media[1].port_count, 2)
        self.assertEqual(sdp.media[0].connection, Connection("2001:db8::2", "IN", "IP6"))
        self.assertEqual(sdp.media[0].bandwidth("as"), 64)

    def test_lf_only_and_bytes_input_are_accepted(self) -> None:
        sdp = SessionDescription.parse(fixture("ims_offer_2_2.sdp").encode())
        self.assertEqual(sdp.origin.address, "198.51.100.20")
        self.assertIn(b"\r\nm=audio 40000 RTP/AVP 116 107 8 0 118 111\r\n", sdp.serialize())


    def test_trailing_blanks_some_uas_send_are_tolerated(self) -> None:
        sdp = SessionDescription.parse("v=0 \r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"
                                       "t=0 0\r\nm=audio 4000 RTP/AVP 0 \r\na=sendrecv \r\n\r\n")
        self.assertEqual(sdp.media[0].direction, "sendrecv")
        self.assertEqual(sdp.media[0].formats, ["0"])


class HelperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.chrome = SessionDescription.parse(fixture("chrome_offer_2_1.sdp"))
        self.audio = self.chrome.media[0]

    def test_rtpmap_maps_payload_types_including_static_ones_without_rtpmap(self) -> None:
        mapping = self.audio.rtpmap()
        self.assertEqual(mapping["111"], RtpMap("opus", 48000, 2))
        self.assertEqual(mapping["126"], RtpMap("telephone-event", 8000))
        static = SessionDescription.parse("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
                                          "m=audio 4000 RTP/AVP 0 8 18\n").media[0]
        self.assertEqual(static.rtpmap(), {"0": RtpMap("PCMU", 8000, 1), "8": RtpMap("PCMA", 8000, 1),
                                           "18": RtpMap("G729", 8000, 1)})
        self.assertEqual(str(RtpMap("opus", 48000, 2)), "opus/48000/2")

    def test_fmtp(self) -> None:
        self.assertEqual(self.audio.fmtp(), {"111": "minptime=10;useinbandfec=1", "63": "111/111"})

    def test_attribute_lookup(self) -> None:
        self.assertEqual(self.audio.attribute_value("mid"), "0")
        self.assertEqual(self.audio.attribute("rtcp-mux"), Attribute("rtcp-mux"))
        self.assertEqual(self.audio.attribute_value("rtcp-mux"), "")
        self.assertIsNone(self.audio.attribute("nope"))
        self.assertIsNone(self.audio.attribute_value("nope"))
        self.assertEqual(len(self.audio.attributes_named("candidate")), 2)
        self.assertEqual(self.chrome.attribute_value("group"), "BUNDLE 0 1")

    def test_remove_attributes(self) -> None:
        removed = self.audio.remove_attributes(["candidate", "ssrc", "missing"])
        self.assertEqual(removed, 3)
        self.assertFalse(self.audio.has_attribute("candidate"))
        self.assertFalse(self.audio.has_attribute("ssrc"))
        self.assertTrue(self.audio.has_attribute("rtpmap"))

    def test_direction_get_and_set_in_place(self) -> None:
        self.assertEqual(self.audio.direction, "sendrecv")
        position = [a.name for a in self.audio.attributes].index("sendrecv")
        self.audio.direction = "sendonly"
        self.assertEqual([a.name for a in self.audio.attributes].index("sendonly"), position)
        self.assertEqual(self.audio.direction, "sendonly")
        self.assertEqual(sum(a.name in ("sendrecv", "sendonly") for a in self.audio.attributes), 1)
        self.audio.direction = None
        self.assertIsNone(self.audio.direction)
        self.assertEqual(self.chrome.media_direction(self.audio), "sendrecv")
        self.assertRaises(ValueError, setattr, self.audio, "direction", "sideways")

    def test_session_level_fallbacks(self) -> None:
        firefox = SessionDescription.parse(fixture("firefox_offer.sdp"))
        audio = firefox.media[0]
        self.assertIsNone(audio.attribute_value("fingerprint"))
        self.assertTrue(firefox.media_attribute_value(audio, "fingerprint").startswith("sha-256 5D:0B"))
        ims = SessionDescription.parse(fixture("ims_offer_2_2.sdp"))
        self.assertEqual(ims.media_connection(ims.media[0]), Connection("198.51.100.20"))
        self.assertTrue(Connection("0.0.0.0").is_hold_address)
        self.assertFalse(Connection("192.0.2.1").is_hold_address)


class ErrorTests(SynchronousTestCase):
    good = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n"

    def assertSdpError(self, text: str | bytes, fragment: str) -> None:
        error = self.assertRaises(SdpError, SessionDescription.parse, text)
        self.assertIn(fragment, error.reason)

    def test_malformed_inputs_name_the_problem(self) -> None:
        self.assertSdpError("", "empty")
        self.assertSdpError("hello world\n", "not '<type>=<value>'")
        self.assertSdpError(self.good.replace("v=0", "v=1"), "must start with v=0")
        self.assertSdpError(self.good.replace("o=- 1 1 IN IP4 192.0.2.1", "o=- 1 x IN IP4 192.0.2.1"), "line 2: o=")
        self.assertSdpError(self.good.replace("s=-\n", ""), "no s= line")
        self.assertSdpError(self.good.replace("t=0 0\n", ""), "no t= line")
        self.assertSdpError(self.good.replace("4000", "70000"), "not a port number")
        self.assertSdpError(self.good.replace("RTP/AVP 0", "RTP/AVP"), "line 6: m=")
        self.assertSdpError(self.good.replace("c=IN IP4 192.0.2.1\n", ""), "no c=")
        self.assertSdpError(self.good.replace("c=IN IP4 192.0.2.1", "c=IN IP4"), "line 4: c=")
        self.assertSdpError(self.good + "b=AS:lots\n", "b=")
        self.assertSdpError(self.good + "t=0 0\n", "not allowed inside an m= section")
        self.assertSdpError(self.good + "a=bad name\n", "attribute name is not a token")
        self.assertSdpError(self.good + "x=1\n", "not allowed inside")
        self.assertSdpError(self.good.replace("t=0 0", "t=0 0\nx=1"), "unknown SDP line type 'x'")
        self.assertSdpError(b"v=0\r\no=\xff\r\n", "not UTF-8")

    def test_sdp_error_is_a_value_error_with_reason(self) -> None:
        error = SdpError("line 3: broken")
        self.assertIsInstance(error, ValueError)
        self.assertEqual(str(error), "line 3: broken")


class CopyTests(SynchronousTestCase):
    """``copy()`` is the hand-written deep copy the SDP transforms use instead of copy.deepcopy."""

    def test_copy_equals_deepcopy_and_shares_no_mutable_part(self) -> None:
        import copy
        from dataclasses import fields, is_dataclass

        def mutable_parts(value: object) -> list[object]:
            found: list[object] = []
            if isinstance(value, list):
                found.append(value)
                for item in value:
                    found += mutable_parts(item)
            elif is_dataclass(value):
                found.append(value)
                for f in fields(value):
                    found += mutable_parts(getattr(value, f.name))
            return found

        for name in sorted(p.name for p in FIXTURES.glob("*.sdp")):
            sdp = SessionDescription.parse(fixture(name))
            copied = sdp.copy()
            self.assertEqual(copied, copy.deepcopy(sdp), name)
            originals = {id(part) for part in mutable_parts(sdp)}
            self.assertFalse(originals & {id(part) for part in mutable_parts(copied)}, name)

    def test_copy_knows_every_field(self) -> None:
        # A field added to the model must be added to copy() too (else it would be dropped).
        from dataclasses import fields

        from epcscf.sdp.model import MediaDescription

        self.assertEqual(
            [f.name for f in fields(SessionDescription)],
            ["origin", "session_name", "version", "information", "uri", "emails", "phones", "connection",
             "bandwidths", "timings", "time_zones", "key", "attributes", "media"],
        )
        self.assertEqual(
            [f.name for f in fields(MediaDescription)],
            ["media", "port", "proto", "formats", "port_count", "information", "connections", "bandwidths",
             "key", "attributes"],
        )


class RtpMapMemoTests(SynchronousTestCase):
    def test_the_memoised_rtpmap_parse_gives_what_the_parse_gives(self) -> None:
        from epcscf.sdp.model import _parse_rtpmap

        for value in ("111 opus/48000/2", "0 PCMU/8000", " 126  telephone-event/8000 ", "96 VP8/90000",
                      "x opus/48000", "97 H264", "98 /90000", "99 L16/8000/x", ""):
            self.assertEqual(_parse_rtpmap(value), _parse_rtpmap.__wrapped__(value))
            self.assertEqual(_parse_rtpmap(value), _parse_rtpmap(value))  # from the memo this time
        self.assertEqual(_parse_rtpmap("111 opus/48000/2"), ("111", RtpMap("opus", 48000, 2)))
        self.assertLessEqual(_parse_rtpmap.cache_info().maxsize, 256)  # bounded: values from the network


class SplitLinesTests(SynchronousTestCase):
    def test_a_plain_crlf_body_splits_as_the_repairing_split_does(self) -> None:
        from epcscf.sdp.model import _PLAIN_BODY, _split_lines, _split_repairing

        bodies = [crlf(fixture(path.name)).decode("utf-8") for path in sorted(FIXTURES.glob("*.sdp"))]
        bodies += ["v=0\r\ns=\r\n", "v=0\r\na=x:\x0c\r\nb=AS:64\r\n", "é=x\r\n", "v=0\r\ns= \r\n", "v=0\ns=-\n",
                   "v=0\r\n\r\ns=-\r\n", "v=0\r\ns=-", "v=0\r\ns=-\r\r\n", "v=0\r\na=x\t\r\n", "v=0\r\na=\u2028\r\n"]
        plain = 0
        for body in bodies:
            plain += bool(_PLAIN_BODY.fullmatch(body))
            self.assertEqual(_split_lines(body), _split_repairing(body), body)
            self.assertEqual(_split_lines(body.encode("utf-8")), _split_repairing(body), body)
        self.assertGreaterEqual(plain, len(bodies) - 7)  # the fixtures and four others take the plain way

    def test_lines_the_plain_way_refuses_still_get_their_errors(self) -> None:
        for body, line in (("v=0\r\nxx\r\n", 2), ("v=0\r\n=x\r\n", 2), ("v=0\r\n1=x\r\n", 2)):
            with self.assertRaises(SdpError) as raised:
                SessionDescription.parse(body)
            self.assertTrue(raised.exception.reason.startswith(f"line {line}:"), raised.exception.reason)
