"""Per-message shortcuts of the tenth pass (docs/performance.md, "Tenth pass: per message")
give what the plain way gave."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from epcscf.sip.parser import parse_message
from epcscf.sip.headers import cseq, from_tag, to_tag, top_via_view
from epcscf.sip.transaction import request_identity
from epcscf.sip.transaction_server import RequestIdentity


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
