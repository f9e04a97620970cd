"""Embedded core routing decisions (TS 24.229 §5.4.3, RFC 3327 §5.4, RFC 3608)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.core.location import Binding, LocationService
from epcscf.core.routing import (
    CoreProxyPolicy,
    CoreRouter,
    Destination,
    FollowRoute,
    ForwardTo,
    Refuse,
    is_originating_route,
)
from epcscf.sip import proxy_rules
from epcscf.sip.connection import Address
from epcscf.sip.message import Headers, Request, Response
from epcscf.sip.proxy import ProxiedRequest
from epcscf.sip.proxy_policy import Forward, Reject
from epcscf.sip.resolver import Target
from tests.support.fakes import FakeConnection

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
                aor=BOB,
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


class FakeTransports:
    def local_address(self, transport: str):
        return Address("127.0.0.1", 5070) if transport == "UDP" else None


class FakeResolver:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolve_uri(self, uri):
        self.asked.append(str(uri))
        return defer.succeed([Target((uri.transport or "udp").upper(), uri.host, uri.port or 5060)])


class ProxyPolicyTests(unittest.TestCase):
    """CoreProxyPolicy turns decisions into the proxy's Forward/Reject."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.location = LocationService(self.clock)
        self.resolver = FakeResolver()
        router = CoreRouter(DOMAIN, self.location, {ALICE: ALICE, BOB: BOB}.get)
        self.policy = CoreProxyPolicy(router, FakeTransports(), self.resolver, lambda: {("127.0.0.1", 5070)})

    def decide(self, request: Request):
        working = request.copy()
        proxy_rules.process_own_routes(working, self.policy.is_own_uri)
        context = ProxiedRequest(working, FakeConnection(), None, original=request)
        results = []
        defer.maybeDeferred(self.policy.route_request, context).addBoth(results.append)
        return results[0]

    def test_terminating_invite_goes_to_contact_via_path_and_is_record_routed(self) -> None:
        self.location.put(
            Binding(BOB, "sip:bob@x.invalid;transport=ws", "", ("<sip:tok@127.0.0.1:5060;lr;ob>",), None, None, "c", 1, 300, 0)
        )
        forward = self.decide(invite(BOB, route="<sip:orig@127.0.0.1:5070;lr>"))
        self.assertIsInstance(forward, Forward)
        self.assertEqual(forward.request.uri, "sip:bob@x.invalid;transport=ws")
        self.assertEqual(forward.request.headers.get_all("route"), ["<sip:tok@127.0.0.1:5060;lr;ob>"])
        self.assertEqual(forward.request.headers.get("p-called-party-id"), f"<{BOB}>")
        self.assertEqual(self.resolver.asked, ["sip:tok@127.0.0.1:5060;lr;ob"])
        self.assertEqual(list(forward.record_route), ["sip:127.0.0.1:5070;transport=udp;lr"])

    def test_unregistered_user_is_rejected_with_480(self) -> None:
        reject = self.decide(invite(BOB, route="<sip:orig@127.0.0.1:5070;lr>"))
        self.assertIsInstance(reject, Reject)
        self.assertEqual(reject.response.status, 480)
        self.assertIn(";tag=", reject.response.headers.get("to"))

    def test_originating_request_to_foreign_uri_is_resolved_from_the_request_uri(self) -> None:
        forward = self.decide(invite("sip:service@127.0.0.1:5099", route="<sip:orig@127.0.0.1:5070;lr>"))
        self.assertEqual(forward.request.uri, "sip:service@127.0.0.1:5099")
        self.assertEqual(forward.request.headers.get_all("route"), [])
        self.assertEqual([(t.host, t.port) for t in forward.destination], [("127.0.0.1", 5099)])

    def test_foreign_uri_without_service_route_is_refused(self) -> None:
        reject = self.decide(invite("sip:service@127.0.0.1:5099"))
        self.assertEqual(reject.response.status, 403)

    def test_in_dialog_request_follows_route_without_record_route(self) -> None:
        request = invite("sip:service@127.0.0.1:5099", to_tag="x", route="<sip:127.0.0.1:5070;transport=udp;lr>, <sip:p@127.0.0.1:5060;lr>")
        request.method = "BYE"
        forward = self.decide(request)
        self.assertEqual(forward.request.headers.get_all("route"), ["<sip:p@127.0.0.1:5060;lr>"])
        self.assertEqual(list(forward.record_route), [])
        self.assertEqual([(t.host, t.port) for t in forward.destination], [("127.0.0.1", 5060)])

    def test_430_from_the_edge_drops_the_binding_and_becomes_480(self) -> None:
        self.location.put(Binding(BOB, "sip:bob@x.invalid", "", ("<sip:tok@127.0.0.1:5060;lr;ob>",), None, None, "c", 1, 300, 0))
        request = invite(BOB, route="<sip:orig@127.0.0.1:5070;lr>")
        working = request.copy()
        proxy_rules.process_own_routes(working, self.policy.is_own_uri)
        context = ProxiedRequest(working, FakeConnection(), None, original=request)
        self.policy.route_request(context)
        flow_failed = Response(430, "Flow Failed")
        upstream = self.policy.response_to_forward(context, flow_failed)
        self.assertEqual(upstream.status, 480)
        self.assertEqual(self.location.bindings(BOB), [])

    def test_two_bindings_fork_in_parallel_each_through_its_own_path(self) -> None:
        self.location.put(Binding(BOB, "sip:bob@old.invalid", "", ("<sip:t1@127.0.0.1:5061;lr;ob>",), None, None, "c1", 1, 300, 0))
        self.clock.advance(1)
        self.location.put(Binding(BOB, "sip:bob@new.invalid", "", ("<sip:t2@127.0.0.1:5062;lr;ob>",), None, None, "c2", 1, 300, 1))
        forwards = self.decide(invite(BOB, route="<sip:orig@127.0.0.1:5070;lr>"))
        self.assertIsInstance(forwards, list)
        self.assertEqual([f.request.uri for f in forwards], ["sip:bob@new.invalid", "sip:bob@old.invalid"])
        self.assertEqual([f.request.headers.get_all("route") for f in forwards],
                         [["<sip:t2@127.0.0.1:5062;lr;ob>"], ["<sip:t1@127.0.0.1:5061;lr;ob>"]])
        self.assertEqual([[(t.host, t.port) for t in f.destination] for f in forwards], [[("127.0.0.1", 5062)], [("127.0.0.1", 5061)]])
        self.assertIsNot(forwards[0].request, forwards[1].request)
