"""The eP-CSCF policy on a registration, message by message (TS 24.229 §5.2.2, RFC 3327, RFC 5626)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.edge import EdgeAddresses, PcscfPolicy
from epcscf.pcscf.edge_collaborators import EdgeCollaborators
from epcscf.pcscf.flows import FlowTable, FlowTokenCodec
from epcscf.pcscf.registration import Registrations
from epcscf.sip.message import Request, Response
from epcscf.sip.parser import parse_message
from epcscf.sip.proxy_policy import Forward, ProxiedRequest, Reject
from epcscf.sip.resolver import Target
from tests.support.fakes import FakeServerTransaction, FakeWsFlow

INSTANCE = '"<urn:uuid:ea2e7ade-0000-4000-8000-f41af516a1d8>"'
CONTACT = f"<sip:alice@dee12855.invalid;transport=ws;ob>;reg-id=1;+sip.instance={INSTANCE};expires=600"
CORE = [Target("TCP", "127.0.0.1", 39915)]


def parse(lines: list[str]) -> Any:
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


def register(cseq: int = 1, contact: str = CONTACT, extra: tuple[str, ...] = ("Supported: path, outbound, gruu",)) -> Request:
    return parse(
        [
            "REGISTER sip:ims.localdomain SIP/2.0",
            f"Via: SIP/2.0/WS dee12855.invalid;branch=z9hG4bK24efcd9af2{cseq}",
            "Max-Forwards: 70",
            "From: <sip:alice@ims.localdomain>;tag=ce83997d",
            "To: <sip:alice@ims.localdomain>",
            "Call-ID: 5c91d5616f570b8e",
            f"CSeq: {cseq} REGISTER",
            f"Contact: {contact}",
            *extra,
            "Content-Length: 0",
        ]
    )


def challenge(cseq: int = 1) -> Response:
    return parse(
        [
            "SIP/2.0 401 Unauthorized",
            f"Via: SIP/2.0/WS dee12855.invalid;branch=z9hG4bK24efcd9af2{cseq};received=127.0.0.1",
            "From: <sip:alice@ims.localdomain>;tag=ce83997d",
            "To: <sip:alice@ims.localdomain>;tag=461478c09baa",
            "Call-ID: 5c91d5616f570b8e",
            f"CSeq: {cseq} REGISTER",
            'WWW-Authenticate: Digest realm="ims.localdomain", nonce="AAAB", algorithm=SHA-256, qop="auth"',
            "P-Charging-Vector: icid-value=core1;icid-generated-at=10.0.0.1",
            "Content-Length: 0",
        ]
    )


def accepted(cseq: int = 2, contact: str = CONTACT, service_route: str = "<sip:orig@127.0.0.1:39915;transport=tcp;lr>") -> Response:
    return parse(
        [
            "SIP/2.0 200 OK",
            f"Via: SIP/2.0/WS dee12855.invalid;branch=z9hG4bK24efcd9af2{cseq};received=127.0.0.1",
            "From: <sip:alice@ims.localdomain>;tag=ce83997d",
            "To: <sip:alice@ims.localdomain>;tag=48a718759859",
            "Call-ID: 5c91d5616f570b8e",
            f"CSeq: {cseq} REGISTER",
            f"Contact: {contact}",
            f"Service-Route: {service_route}",
            "P-Associated-URI: <sip:alice@ims.localdomain>, <tel:+15551234>",
            "Content-Length: 0",
        ]
    )


class EdgeRegisterTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.flows = FlowTable(self.clock, FlowTokenCodec(bytes(range(32))))
        self.registrations = Registrations(self.clock)
        self.addresses = EdgeAddresses("127.0.0.1", 40800, "tcp", "127.0.0.1", 40801, "ws")
        self.statuses: list[int] = []
        self.policy = PcscfPolicy(
            self.addresses, self.flows, self.registrations, CORE, network_id="ims.localdomain",
            collaborators=EdgeCollaborators(on_register_response=self.statuses.append),
        )
        self.wic = FakeWsFlow("ws-test-1")
        self.flows.open(self.wic)
        self.token = self.flows.token_for(self.wic)

    def context(self, request: Request, connection: Any = None) -> ProxiedRequest:
        connection = connection or self.wic
        return ProxiedRequest(request.copy(), connection, FakeServerTransaction(request))

    def route(self, context: ProxiedRequest) -> Forward:
        decision = self.policy.route_request(context)
        self.assertIsInstance(decision, Forward)
        return decision

    def test_register_gets_path_with_flow_token_and_ob_supported_visited_network_and_icid(self) -> None:
        context = self.context(register(extra=("Supported: outbound, gruu", "P-Charging-Vector: icid-value=forged")))
        forward = self.route(context)
        headers = forward.request.headers
        # RFC 3327 §5.1 / RFC 5626 §5.1: our Path first, naming the flow, ;ob since the WIC uses outbound.
        self.assertEqual([name for name, _ in headers][0], "Path")
        self.assertEqual(headers.get_all("Path"), [f"<{self.addresses.core_uri(self.token, ob=True)}>"])
        self.assertEqual(headers.get_all("Path"), [f"<sip:{self.token}@127.0.0.1:40800;transport=tcp;lr;ob>"])
        self.assertEqual(headers.get_all("Supported"), ["outbound, gruu", "path"])  # RFC 3327 §5.2
        self.assertEqual(headers.get_all("P-Visited-Network-ID"), ['"ims.localdomain"'])
        [vector] = headers.get_all("P-Charging-Vector")  # the WIC's one is gone, ours is alone
        self.assertRegex(vector, r"\Aicid-value=[0-9a-f]{32};icid-generated-at=127\.0\.0\.1\Z")
        self.assertEqual((forward.destination, forward.record_route, forward.via_sent_by), (CORE, (), "127.0.0.1:40800"))

    def test_path_without_ob_when_the_wic_does_not_use_outbound_and_supported_path_not_repeated(self) -> None:
        forward = self.route(self.context(register(contact="<sip:alice@dee12855.invalid;transport=ws>", extra=("Supported: path",))))
        self.assertEqual(forward.request.headers.get_all("Path"), [f"<sip:{self.token}@127.0.0.1:40800;transport=tcp;lr>"])
        self.assertEqual(forward.request.headers.get_all("Supported"), ["path"])

    def test_every_register_gets_a_fresh_icid(self) -> None:
        vectors = {self.route(self.context(register(cseq))).request.headers.get("P-Charging-Vector") for cseq in range(1, 50)}
        self.assertEqual(len(vectors), 49)

    def test_trust_domain_headers_of_any_spelling_are_stripped(self) -> None:
        request = register(extra=("p-charging-vector: icid-value=x", "P-ASSERTED-IDENTITY: <sip:admin@ims.localdomain>", "Subject: kept"))
        headers = self.route(self.context(request)).request.headers
        self.assertNotIn("P-Asserted-Identity", headers)
        self.assertEqual(len(headers.get_all("P-Charging-Vector")), 1)
        self.assertTrue(headers.get("P-Charging-Vector").startswith("icid-value="))
        self.assertEqual(headers.get("Subject"), "kept")

    def test_challenge_goes_back_unchanged_but_for_charging_and_binds_nothing(self) -> None:
        context = self.context(register())
        self.route(context)
        response = challenge()
        before = [(n, v) for n, v in response.headers if n != "P-Charging-Vector"]
        self.assertIs(self.policy.response_to_forward(context, response), response)
        self.assertEqual(list(response.headers), before)  # TS 24.229 §5.2.7.4: charging stays in the core
        self.assertEqual(self.statuses, [401])
        self.assertEqual(self.registrations.all(), [])

    def test_2xx_binds_identities_service_route_contact_and_expiry_then_refreshes(self) -> None:
        context = self.context(register(2))
        self.route(context)
        self.policy.response_to_forward(context, accepted())
        [binding] = self.registrations.all()
        self.assertEqual(binding.associated_uris, ("<sip:alice@ims.localdomain>", "<tel:+15551234>"))
        self.assertEqual(binding.service_route, ("<sip:orig@127.0.0.1:39915;transport=tcp;lr>",))
        self.assertEqual((binding.flow_id, binding.origin, binding.outbound), ("ws-test-1", "http://127.0.0.1:8081", True))
        self.assertEqual((binding.instance_id, binding.reg_id, binding.expires_at), (INSTANCE, "1", 600))
        self.clock.advance(300)
        context = self.context(register(3))
        self.route(context)
        self.policy.response_to_forward(context, accepted(3))
        [refreshed] = self.registrations.all()
        self.assertEqual((refreshed.contact, refreshed.registered_at, refreshed.expires_at), (binding.contact, 300, 900))
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [900])
        context = self.context(register(4))
        self.route(context)
        self.policy.response_to_forward(context, accepted(4, service_route="<sip:orig2@127.0.0.1:39915;lr>"))
        [changed] = self.registrations.all()
        self.assertEqual(changed.service_route, ("<sip:orig2@127.0.0.1:39915;lr>",))
        self.assertEqual(self.statuses, [200, 200, 200])

    def test_registered_wic_request_gets_identity_service_route_and_icid(self) -> None:
        context = self.context(register(2))
        self.route(context)
        self.policy.response_to_forward(context, accepted())
        message = parse(
            [
                "MESSAGE sip:bob@ims.localdomain SIP/2.0",
                "Via: SIP/2.0/WS dee12855.invalid;branch=z9hG4bKm1",
                "Max-Forwards: 70",
                "From: <sip:alice@ims.localdomain>;tag=m1",
                "To: <sip:bob@ims.localdomain>",
                "Call-ID: m1",
                "CSeq: 1 MESSAGE",
                "P-Asserted-Identity: <sip:admin@ims.localdomain>",
                "Content-Length: 0",
            ]
        )
        forward = self.route(self.context(message))
        headers = forward.request.headers
        self.assertEqual(headers.get_all("P-Asserted-Identity"), ["<sip:alice@ims.localdomain>"])
        self.assertEqual(headers.get_all("Route"), ["<sip:orig@127.0.0.1:39915;transport=tcp;lr>"])
        self.assertEqual(len(headers.get_all("P-Charging-Vector")), 1)
        self.assertEqual((forward.destination, forward.via_sent_by), (None, "127.0.0.1:40800"))

    def test_unregistered_flow_gets_403(self) -> None:
        other = FakeWsFlow("ws-test-2")
        self.flows.open(other)
        message = parse(
            [
                "MESSAGE sip:bob@ims.localdomain SIP/2.0",
                "Via: SIP/2.0/WS x.invalid;branch=z9hG4bKm2",
                "From: <sip:alice@ims.localdomain>;tag=m2",
                "To: <sip:bob@ims.localdomain>",
                "Call-ID: m2",
                "CSeq: 1 MESSAGE",
                "Content-Length: 0",
            ]
        )
        decision = self.policy.route_request(self.context(message, other))
        self.assertIsInstance(decision, Reject)
        self.assertEqual(decision.response.status, 403)

    def test_register_waits_for_the_resolved_core_when_no_fixed_next_hop(self) -> None:
        resolved: defer.Deferred = defer.Deferred()
        policy = PcscfPolicy(self.addresses, self.flows, self.registrations, None, "ims.localdomain", next_hop_resolver=lambda: resolved)
        decided = policy.route_request(self.context(register()))
        results: list[Forward] = []
        decided.addCallback(results.append)
        resolved.callback(CORE)
        [forward] = results
        self.assertEqual((forward.destination, forward.via_sent_by), (CORE, "127.0.0.1:40800"))

    def test_register_is_routed_at_once_when_the_core_targets_are_known(self) -> None:
        # Numeric [core] next_hop: the node hands over the targets themselves, and the
        # decision is a Forward, not a Deferred (no Deferred machinery per REGISTER).
        policy = PcscfPolicy(self.addresses, self.flows, self.registrations, None, "ims.localdomain", next_hop_resolver=lambda: list(CORE))
        forward = policy.route_request(self.context(register()))
        self.assertIsInstance(forward, Forward)
        assert isinstance(forward, Forward)
        self.assertEqual((forward.destination, forward.via_sent_by), (CORE, "127.0.0.1:40800"))
        self.assertEqual(forward.request.headers.get_all("Path"), [f"<sip:{self.token}@127.0.0.1:40800;transport=tcp;lr;ob>"])


class _RecordingCalls:
    """The call manager as the edge sees it: records the Forward it is handed for an INVITE."""

    def __init__(self) -> None:
        self.forwards: list[Forward] = []

    def originating_invite(self, context: ProxiedRequest, identity: str, forward: Forward) -> Forward:
        self.forwards.append(forward)
        return forward


def initial(method: str, extra: tuple[str, ...] = ()) -> Request:
    return parse(
        [
            f"{method} sip:uas@ims.localdomain SIP/2.0",
            f"Via: SIP/2.0/WS dee12855.invalid;branch=z9hG4bK{method}1",
            "Max-Forwards: 70",
            "From: <sip:alice@ims.localdomain>;tag=i1",
            "To: <sip:uas@ims.localdomain>",
            f"Call-ID: initial-{method}",
            f"CSeq: 1 {method}",
            *extra,
            "Content-Length: 0",
        ]
    )


class InitialRequestRouteTests(unittest.TestCase):
    """TS 24.229 §5.2.6.3.3 / RFC 3608 §6: every initial request of a registered WIC takes one
    route to the core, whatever its method — the Service-Route, else ``[core] next_hop``."""

    METHODS = ("INVITE", "MESSAGE", "SUBSCRIBE", "OPTIONS", "REFER")
    PRELOADED = ("Route: <sip:attacker.example.net:5060;lr>",)

    def setUp(self) -> None:
        self.clock = Clock()
        self.flows = FlowTable(self.clock, FlowTokenCodec(bytes(range(32))))
        self.registrations = Registrations(self.clock)
        self.addresses = EdgeAddresses("127.0.0.1", 40800, "tcp", "127.0.0.1", 40801, "ws")
        self.calls = _RecordingCalls()
        self.wic = FakeWsFlow("ws-test-1")
        self.flows.open(self.wic)

    def registered_policy(self, service_route: str | None, next_hop: Any = CORE, resolver: Any = None) -> PcscfPolicy:
        policy = PcscfPolicy(
            self.addresses, self.flows, self.registrations, next_hop, "ims.localdomain",
            calls=self.calls, next_hop_resolver=resolver,
        )  # type: ignore[arg-type]
        context = ProxiedRequest(register(2).copy(), self.wic, FakeServerTransaction(register(2)))
        policy.route_request(context)
        response = accepted()
        if service_route is None:
            response.headers.remove("Service-Route")
        else:
            response.headers.set("Service-Route", service_route)
        policy.response_to_forward(context, response)
        return policy

    def route_initial(self, policy: PcscfPolicy, method: str) -> Any:
        request = initial(method, self.PRELOADED)
        return policy.route_request(ProxiedRequest(request.copy(), self.wic, FakeServerTransaction(request)))

    def test_without_service_route_every_method_goes_to_the_configured_next_hop(self) -> None:
        policy = self.registered_policy(None)
        for method in self.METHODS:
            forward = self.route_initial(policy, method)
            self.assertIsInstance(forward, Forward, method)
            self.assertEqual(forward.destination, CORE, method)
            self.assertEqual(forward.request.headers.get_all("Route"), [], method)  # the preloaded one is gone
        self.assertEqual([f.destination for f in self.calls.forwards], [CORE])  # the INVITE went through the call manager

    def test_with_service_route_every_method_follows_it_and_never_the_wic_route(self) -> None:
        policy = self.registered_policy("<sip:orig@127.0.0.1:39915;transport=tcp;lr>")
        for method in self.METHODS:
            forward = self.route_initial(policy, method)
            self.assertIsNone(forward.destination, method)  # the proxy resolves the top Route
            self.assertEqual(forward.request.headers.get_all("Route"), ["<sip:orig@127.0.0.1:39915;transport=tcp;lr>"], method)

    def test_without_service_route_an_invite_waits_for_the_resolved_next_hop(self) -> None:
        lookups: list[defer.Deferred] = []
        policy = self.registered_policy(None, next_hop=None, resolver=lambda: lookups.append(defer.Deferred()) or lookups[-1])
        decided = self.route_initial(policy, "INVITE")
        resolved = lookups[-1]
        self.assertIsInstance(decided, defer.Deferred)
        results: list[Forward] = []
        decided.addCallback(results.append)
        self.assertEqual(self.calls.forwards, [])  # nothing goes to the call manager before the core is known
        resolved.callback(CORE)
        [forward] = results
        self.assertEqual(forward.destination, CORE)
        self.assertEqual(self.calls.forwards, [forward])
