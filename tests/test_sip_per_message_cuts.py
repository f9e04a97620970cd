"""Per-message shortcuts of the tenth pass (docs/performance.md, "Tenth pass: per message")
give what the plain way gave."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip.headers import cseq, from_tag, has_option_tag, option_tags, to_tag, top_via_view
from epcscf.sip.message import Request
from epcscf.sip.parser import parse_message
from epcscf.sip.transaction import request_identity
from epcscf.sip.transaction_server import RequestIdentity
from epcscf.ws.frames import DataFrame, read_data_frame
from tests.support.properties import BOUNDED


def identity_by_keywords(request: object) -> RequestIdentity:
    """``RequestIdentity`` as ``request_identity`` built it before: by field name."""
    via = top_via_view(request)  # type: ignore[arg-type]
    sequence = cseq(request)  # type: ignore[arg-type]
    assert via is not None and sequence is not None
    return RequestIdentity(
        branch=via.branch,
        sent_by=f"{via.host.lower()}:{via.port}" if via.port is not None else via.host.lower(),
        method="INVITE" if request.method == "ACK" else request.method,  # type: ignore[attr-defined]
        request_uri=request.uri,  # type: ignore[attr-defined]
        to_tag=to_tag(request),  # type: ignore[arg-type]
        from_tag=from_tag(request),  # type: ignore[arg-type]
        call_id=request.headers.get("call-id"),  # type: ignore[attr-defined]
        cseq_number=sequence.number,
        cseq_method=sequence.method,
        via=via,
    )


class RequestIdentityTests(SynchronousTestCase):
    def test_each_field_is_the_one_named_as_before(self) -> None:
        for method, via, to in (
            ("REGISTER", "SIP/2.0/WS H.invalid;branch=z9hG4bK1", "<sip:a@x>"),
            ("ACK", "SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK2", "<sip:a@x>;tag=t2"),
            ("INVITE", "SIP/2.0/TCP host;branch=1", "<sip:a@x>;tag=t3"),
        ):
            request = parse_message(
                (f"{method} sip:a@x SIP/2.0\r\nVia: {via}\r\nFrom: <sip:b@x>;tag=f1\r\nTo: {to}\r\n"
                 f"Call-ID: c@x\r\nCSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n").encode()
            )
            identity = request_identity(request)
            self.assertIsInstance(identity, RequestIdentity)
            self.assertEqual(identity._asdict(), identity_by_keywords(request)._asdict())


class ContentLengthZeroTests(SynchronousTestCase):
    def test_a_zero_length_reads_as_the_general_reading_did(self) -> None:
        for written, extra in (("0", b""), ("0", b"junk after the message"), (" 0 ", b"x"), ("00", b"yz"), ("0", b"\r\n")):
            data = (
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:a@x>;tag=2\r\n"
                f"Call-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: {written}\r\n\r\n"
            ).encode() + extra
            response = parse_message(data)
            self.assertEqual(response.body, b"", (written, extra))  # RFC 3261 §18.3: octets past it are dropped
            self.assertEqual(response.headers.get("content-length"), written.strip())


class HasOptionTagTests(SynchronousTestCase):
    @BOUNDED
    @given(st.lists(st.lists(st.sampled_from(["path", "Path", "xpath", "outbound", "gruu", "", " ", "path ", "\tpath"]),
                             max_size=4).map(",".join), max_size=3),
           st.sampled_from(["path", "outbound", "gruu"]))
    def test_as_the_list_of_option_tags_says(self, lines: list[str], tag: str) -> None:
        request = Request("REGISTER", "sip:x")
        for line in lines:
            request.headers.add("Supported", line)
        self.assertEqual(has_option_tag(request, "supported", tag), tag in option_tags(request, "supported"), lines)


class DataFrameTests(SynchronousTestCase):
    def test_a_frame_read_is_a_data_frame_with_its_named_fields(self) -> None:
        payload = b"REGISTER sip:x SIP/2.0\r\n\r\n"
        mask = b"\x01\x02\x03\x04"
        masked = bytes(octet ^ mask[i % 4] for i, octet in enumerate(payload))
        frame = read_data_frame(b"\x81" + bytes((0x80 | len(payload),)) + mask + masked + b"rest", 0, 0)
        self.assertIsInstance(frame, DataFrame)
        assert frame is not None
        self.assertEqual(frame, DataFrame(payload=payload, binary=False, end=6 + len(payload)))
        self.assertEqual((frame.payload, frame.binary, frame.end), (payload, False, 6 + len(payload)))
