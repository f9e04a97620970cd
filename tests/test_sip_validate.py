"""validate_request: RFC 3261 §16.3 steps 1-5 on requests built in code."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip.message import Headers, Request, Response
from epcscf.sip.validate import AnswerOptionsLocally, validate_request


def make_request(method: str = "INVITE", uri: str = "sip:bob@biloxi.example.com", **changes: str | None) -> Request:
    headers = {
        "Via": "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK56sdasks;rport",
        "Max-Forwards": "70",
        "To": "<sip:bob@biloxi.example.com>",
        "From": "<sip:alice@atlanta.example.com>;tag=9fxced76sl",
        "Call-ID": "3848276298220188511@atlanta.example.com",
        "CSeq": f"1 {method}",
    }
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    return Request(method, uri, Headers.from_pairs(headers.items()))


class ValidateRequestTests(SynchronousTestCase):
    def assert_status(self, result: object, status: int, reason_part: str = "") -> Response:
        assert isinstance(result, Response), result
        self.assertEqual(result.status, status)
        self.assertIn(reason_part, result.reason)
        return result

    def test_good_request_passes(self) -> None:
        self.assertIsNone(validate_request(make_request()))
        self.assertIsNone(validate_request(make_request(Max_Forwards=None)))  # the proxy adds one
        self.assertIsNone(validate_request(make_request(uri="tel:+15551234567")))

    def test_step1_syntax(self) -> None:
        self.assert_status(validate_request(make_request(Call_ID=None)), 400, "missing Call-ID")
        self.assert_status(validate_request(make_request(Via=None, From=None)), 400, "missing Via, From")
        self.assert_status(validate_request(make_request(CSeq="1 BYE")), 400, "CSeq method does not match")
        self.assert_status(validate_request(make_request(Max_Forwards="lots")), 400, "malformed Max-Forwards")
        self.assert_status(validate_request(make_request(To='"broken <sip:b@c>')), 400, "malformed To")
        self.assert_status(validate_request(make_request(uri="sip:bob@")), 400, "malformed Request-URI")
        request = make_request()
        request.headers.add("To", "<sip:carol@example.com>")
        self.assert_status(validate_request(request), 400, "duplicate To")

    def test_step2_unsupported_scheme_is_416(self) -> None:
        for uri in ["mailto:bob@biloxi.example.com", "urn:service:sos", "http://example.com/"]:
            self.assert_status(validate_request(make_request(uri=uri)), 416)

    def test_step3_max_forwards_zero(self) -> None:
        self.assert_status(validate_request(make_request(Max_Forwards="0")), 483)
        result = validate_request(make_request("OPTIONS", Max_Forwards="0"))
        self.assertIsInstance(result, AnswerOptionsLocally)
        self.assertIsNone(validate_request(make_request(Max_Forwards="1")))

    def test_step5_proxy_require(self) -> None:
        request = make_request(Proxy_Require="sec-agree, foo")
        response = self.assert_status(validate_request(request, ["path"]), 420)
        self.assertEqual(response.headers.get("unsupported"), "sec-agree, foo")
        self.assertIsNone(validate_request(request, ["SEC-AGREE", "foo"]))
        # Require is addressed to the UAS; a proxy does not check it (RFC 3261 §16.3 step 5)
        self.assertIsNone(validate_request(make_request(Require="100rel, nothing")))


def _outcome(result: object) -> object:
    return (result.status, result.reason) if isinstance(result, Response) else type(result)


class ParsedRequestTests(SynchronousTestCase):
    """A request as the parser accepted it skips the checks the parser made (``_as_parsed``);
    the decisions must be those of the full check, and any change of a line brings it back."""

    WIRE = (
        b"REGISTER sip:ims.example.com SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
        b"From: <sip:alice@ims.example.com>;tag=1\r\nTo: <sip:alice@ims.example.com>\r\nCall-ID: c1\r\n"
        b"CSeq: 2 REGISTER\r\nContent-Length: 0\r\n\r\n"
    )

    def parsed(self, wire: bytes | None = None) -> Request:
        from epcscf.sip.parser import parse_message

        request = parse_message(wire or self.WIRE)
        assert isinstance(request, Request)
        return request

    @staticmethod
    def rebuilt(request: Request) -> Request:
        return Request(request.method, request.uri, Headers.from_pairs(list(request.headers)), request.body)

    def test_a_parsed_request_is_marked_and_so_is_its_copy(self) -> None:
        request = self.parsed()
        self.assertTrue(request.headers._as_parsed)
        self.assertTrue(request.copy().headers._as_parsed)
        self.assertFalse(self.rebuilt(request).headers._as_parsed)

    def test_parsed_requests_get_the_decisions_of_the_full_check(self) -> None:
        for replace, by in [
            (b"", b""),
            (b"Max-Forwards: 70", b"Max-Forwards: 0"),
            (b"REGISTER sip:ims", b"REGISTER tel:+1555;x=ims"),
            (b"REGISTER sip:ims", b"REGISTER mailto:ims"),
            (b"Content-Length: 0", b"Proxy-Require: foo\r\nContent-Length: 0"),
        ]:
            request = self.parsed(self.WIRE.replace(replace, by, 1))
            self.assertEqual(_outcome(validate_request(request)), _outcome(validate_request(self.rebuilt(request))), by)

    def test_a_changed_line_is_checked_again(self) -> None:
        changes = {
            "duplicate To": lambda h: h.add("To", "<sip:carol@example.com>"),
            "malformed CSeq": lambda h: h.replace_first("CSeq", "x"),
            "malformed From": lambda h: h.set("From", '"broken <sip:b@c>'),
            "missing Call-ID": lambda h: h.remove("Call-ID"),
            "malformed Via": lambda h: h.insert_first("Via", "SIP/2.0/UDP"),
            "malformed Max-Forwards": lambda h: h.replace_all("Max-Forwards", ["lots"]),
        }
        for problem, change in changes.items():
            request = self.parsed()
            change(request.headers)
            self.assertFalse(request.headers._as_parsed, problem)
            self.assert_bad(validate_request(request), problem)

    def test_a_method_changed_after_parsing_is_checked_against_cseq(self) -> None:
        request = self.parsed()
        request.method = "OPTIONS"
        self.assert_bad(validate_request(request), "CSeq method does not match")

    def assert_bad(self, result: object, reason_part: str) -> None:
        assert isinstance(result, Response), result
        self.assertEqual(result.status, 400)
        self.assertIn(reason_part, result.reason)
