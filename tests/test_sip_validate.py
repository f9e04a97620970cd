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
