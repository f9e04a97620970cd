"""RFC 3261 §16.3 step 4 / §16.6 step 8: an in-dialog request that passes the eP-CSCF twice
(two WICs on one eP-CSCF, the core in between) is a spiral, not a loop.  Found by the WWSF
demo: JsSIP's hold re-INVITE and BYE between alice and bob got 482 Loop Detected."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.sip.message import Request
from epcscf.sip.proxy_rules import branch_for, is_loop

EDGE = ("127.0.0.1", 5060)


def in_dialog_bye(routes: list[str]) -> Request:
    request = Request("BYE", "sip:bob-contact@x.invalid;transport=ws")
    request.headers.add("Via", "SIP/2.0/WS a.invalid;branch=z9hG4bK-alice")
    for route in routes:
        request.headers.add("Route", route)
    request.headers.add("To", "<sip:bob@ims.localdomain>;tag=b")
    request.headers.add("From", "<sip:alice@ims.localdomain>;tag=a")
    request.headers.add("Call-ID", "dialog-1")
    request.headers.add("CSeq", "2 BYE")
    return request


def own(host: str, port: int | None) -> bool:
    return (host, port) == EDGE


class SpiralTests(unittest.TestCase):
    ROUTES = [
        "<sip:token-alice@127.0.0.1:8080;transport=ws;lr>",
        "<sip:127.0.0.1:5060;transport=udp;lr>",
        "<sip:127.0.0.1:5070;transport=udp;lr>",
        "<sip:127.0.0.1:5060;transport=udp;lr>",
        "<sip:token-bob@127.0.0.1:8080;transport=ws;lr>",
    ]

    def forwarded_by_edge(self, received: Request) -> Request:
        """Our Via on top of what the request looks like when it comes back from the core."""
        back = in_dialog_bye(self.ROUTES[3:])
        back.headers.remove("Via")
        back.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-core")
        back.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={branch_for(received, 0)}")
        back.headers.add("Via", "SIP/2.0/WS a.invalid;branch=z9hG4bK-alice")
        return back

    def test_same_r_uri_with_a_shorter_route_set_is_a_spiral(self):
        first_pass = in_dialog_bye(self.ROUTES)
        self.assertFalse(is_loop(self.forwarded_by_edge(first_pass), own))

    def test_the_same_request_coming_back_unchanged_is_a_loop(self):
        first_pass = in_dialog_bye(self.ROUTES[3:])
        self.assertTrue(is_loop(self.forwarded_by_edge(first_pass), own))
