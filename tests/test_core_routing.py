"""Embedded core routing decisions (TS 24.229 §5.4.3, RFC 3327 §5.4, RFC 3608)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.core.location import Binding, LocationService
from epcscf.core.routing import CoreRouter, Destination, FollowRoute, ForwardTo, Refuse, is_originating_route
from epcscf.sip.message import Headers, Request

DOMAIN = "ims.localdomain"
ALICE = f"sip:alice@{DOMAIN}"
BOB = f"sip:bob@{DOMAIN}"


def invite(uri: str, to_tag: str | None = None, route: str | None = None) -> Request:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-1")
    if route:
        headers.add("Route", route)
    headers.add("To", f"<{uri}>" + (f";tag={to_tag}" if to_tag else ""))
    headers.add("From", f"<{ALICE}>;tag=a")
    headers.add("Call-ID", "c")
    headers.add("CSeq", "1 INVITE")
    return Request("INVITE", uri, headers)


class RoutingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.location = LocationService(self.clock)
        identities = {ALICE: ALICE, BOB: BOB, "tel:+15550002": BOB}
        self.router = CoreRouter(DOMAIN, self.location, identities.get)

    def bind(self, aor: str, contact: str, path: tuple[str, ...], at: float, expires: float = 300) -> None:
        self.location.put(
            Binding(aor, contact, "", path, None, None, f"call-{contact}", 1, at + expires, at)
        )

    def test_unknown_user_in_home_domain_is_404(self) -> None:
        self.assertEqual(self.router.route(invite(f"sip:carol@{DOMAIN}"), originating=True), Refuse(404, "Not Found"))

    def test_known_user_without_binding_is_480(self) -> None:
        decision = self.router.route(invite(BOB), originating=True)
        self.assertIsInstance(decision, Refuse)
        self.assertEqual(decision.status, 480)

    def test_registered_user_is_reached_at_contact_through_stored_path(self) -> None:
        self.bind(BOB, "sip:bob@x.invalid;transport=ws", ("<sip:tok@127.0.0.1:5060;lr;ob>",), at=0)
        decision = self.router.route(invite(BOB), originating=True)
        self.assertEqual(
            decision,
            ForwardTo(
                (Destination("sip:bob@x.invalid;transport=ws", ("<sip:tok@127.0.0.1:5060;lr;ob>",)),),
                called_party=BOB,
            ),
        )

    def test_tel_identity_reaches_its_user(self) -> None:
        self.bind(BOB, "sip:bob@x.invalid", (), at=0)
        decision = self.router.route(invite("tel:+15550002"), originating=True)
        self.assertIsInstance(decision, ForwardTo)
        self.assertEqual(decision.destinations[0].request_uri, "sip:bob@x.invalid")

    def test_several_bindings_fork_most_recent_first(self) -> None:
        self.bind(BOB, "sip:bob@old.invalid", (), at=0)
        self.clock.advance(10)
        self.bind(BOB, "sip:bob@new.invalid", (), at=10)
        decision = self.router.route(invite(BOB), originating=False)
        self.assertEqual([d.request_uri for d in decision.destinations], ["sip:bob@new.invalid", "sip:bob@old.invalid"])

    def test_expired_binding_gives_480(self) -> None:
        self.bind(BOB, "sip:bob@x.invalid", (), at=0, expires=60)
        self.clock.advance(60)
        self.assertEqual(self.router.route(invite(BOB), originating=True).status, 480)

    def test_originating_request_to_foreign_uri_goes_to_that_uri(self) -> None:
        decision = self.router.route(invite("sip:service@127.0.0.1:5099"), originating=True)
        self.assertEqual(decision, ForwardTo((Destination("sip:service@127.0.0.1:5099"),)))

    def test_foreign_uri_from_elsewhere_is_not_relayed(self) -> None:
        decision = self.router.route(invite("sip:service@127.0.0.1:5099"), originating=False)
        self.assertEqual(decision.status, 403)

    def test_in_dialog_request_follows_its_route_set(self) -> None:
        request = invite("sip:service@127.0.0.1:5099", to_tag="t", route="<sip:127.0.0.1:5060;lr>")
        self.assertEqual(self.router.route(request, originating=False), FollowRoute())

    def test_bad_request_uri_is_a_400(self) -> None:
        decision = self.router.route(invite("nonsense"), originating=True)
        self.assertEqual(decision.status, 400)


class OriginatingRouteTests(unittest.TestCase):
    OWN = {("127.0.0.1", 5070)}

    def test_service_route_uri_is_recognised(self) -> None:
        self.assertTrue(is_originating_route("<sip:orig@127.0.0.1:5070;lr>", self.OWN))

    def test_other_user_part_or_address_is_not(self) -> None:
        self.assertFalse(is_originating_route("<sip:127.0.0.1:5070;lr>", self.OWN))
        self.assertFalse(is_originating_route("<sip:orig@127.0.0.1:5071;lr>", self.OWN))
        self.assertFalse(is_originating_route("<sip:orig@127.0.0.1:5070>", self.OWN))
