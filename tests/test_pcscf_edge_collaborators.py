"""The edge policy's collaborators (``epcscf.pcscf.edge_collaborators``): what a bare policy does
with the no-op defaults, and that each hook given at construction is the one consulted."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.edge import EdgeAddresses, PcscfPolicy
from epcscf.pcscf.edge_collaborators import EdgeCollaborators
from epcscf.pcscf.flows import FlowTable, FlowTokenCodec
from epcscf.pcscf.guard import TrustedSources
from epcscf.pcscf.registration import Registrations
from epcscf.sip.connection import Address
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_policy import Forward, ProxiedRequest, Reject
from epcscf.sip.proxy_rules import make_local_response
from tests.support.fakes import FakeConnection, FakeServerTransaction, FakeWsFlow
from tests.test_pcscf_edge_register import CORE, accepted, parse, register

CORE_SOURCE = FakeConnection("UDP", Address("127.0.0.1", 39915))
STRANGER = FakeConnection("UDP", Address("192.0.2.7", 5060))


def notify_to_us() -> Request:
    """A NOTIFY of a reg-event subscription of ours: to our core-facing URI, no flow token."""
    return parse(
        [
            "NOTIFY sip:127.0.0.1:40800;transport=tcp SIP/2.0",
            "Via: SIP/2.0/UDP 127.0.0.1:39915;branch=z9hG4bKnotify1",
            "Max-Forwards: 70",
            "From: <sip:alice@ims.localdomain>;tag=scscf1",
            "To: <sip:pcscf@127.0.0.1>;tag=ours1",
            "Call-ID: reg-event-1",
            "CSeq: 1 NOTIFY",
            "Event: reg",
            "Subscription-State: active;expires=600",
            "Content-Length: 0",
        ]
    )


class EdgeCollaboratorsTests(unittest.TestCase):
    def policy(self, collaborators: EdgeCollaborators = EdgeCollaborators()) -> PcscfPolicy:
        self.flows = FlowTable(Clock(), FlowTokenCodec(bytes(range(32))))
        addresses = EdgeAddresses("127.0.0.1", 40800, "tcp", "127.0.0.1", 40801, "ws")
        return PcscfPolicy(addresses, self.flows, Registrations(Clock()), CORE, "ims.localdomain", collaborators=collaborators)

    def context(self, request: Request, connection: Any) -> ProxiedRequest:
        return ProxiedRequest(request.copy(), connection, FakeServerTransaction(request))

    def test_without_subscriptions_of_ours_a_notify_to_us_is_404_like_any_request_without_a_token(self) -> None:
        decision = self.policy().route_request(self.context(notify_to_us(), CORE_SOURCE))
        assert isinstance(decision, Reject)
        self.assertEqual((decision.response.status, decision.response.reason), (404, "Not Found (no flow token)"))

    def test_own_notify_answers_a_notify_to_us(self) -> None:
        seen: list[Request] = []

        def own_notify(notify: Request) -> Response:
            seen.append(notify)
            return make_local_response(notify, 200)

        decision = self.policy(EdgeCollaborators(own_notify=own_notify)).route_request(self.context(notify_to_us(), CORE_SOURCE))
        assert isinstance(decision, Reject)
        self.assertEqual(decision.response.status, 200)
        self.assertEqual([n.headers.get("Call-ID") for n in seen], ["reg-event-1"])

    def test_admission_refusal_comes_before_routing(self) -> None:
        refusal = Reject(make_local_response(register(), 503))
        policy = self.policy(EdgeCollaborators(admission=lambda context: refusal))
        self.assertIs(policy.route_request(self.context(register(), FakeWsFlow("ws-1"))), refusal)

    def test_untrusted_source_is_refused_and_observed_only_with_trusted_sources(self) -> None:
        refused: list[tuple[str, str]] = []
        policy = self.policy(EdgeCollaborators(trusted_sources=TrustedSources(), on_refused=lambda *why: refused.append(why)))
        decision = policy.route_request(self.context(notify_to_us(), STRANGER))
        assert isinstance(decision, Reject)
        self.assertEqual(decision.response.status, 403)
        self.assertEqual(refused, [("core", "untrusted_source")])
        # A bare policy (trusted_sources None) has no border: the same NOTIFY gets the tokenless 404.
        decision = self.policy().route_request(self.context(notify_to_us(), STRANGER))
        assert isinstance(decision, Reject)
        self.assertEqual(decision.response.status, 404)

    def test_register_observers_and_on_registered_see_the_2xx(self) -> None:
        statuses: list[int] = []
        finals: list[int] = []
        registered: list[str] = []
        policy = self.policy(
            EdgeCollaborators(
                on_register_response=statuses.append,
                on_register_final=lambda context, response: finals.append(response.status),
                on_registered=lambda bindings: registered.extend(binding.aor for binding in bindings),
            )
        )
        wic = FakeWsFlow("ws-1")
        self.flows.open(wic)
        context = self.context(register(2), wic)
        self.assertIsInstance(policy.route_request(context), Forward)
        policy.response_to_forward(context, accepted())
        self.assertEqual((statuses, finals, registered), ([200], [200], ["sip:alice@ims.localdomain"]))
