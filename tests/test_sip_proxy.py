"""RFC 3261 §16 proxy rules, with fake transactions/connections and ``task.Clock``."""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from epcscf.sip import proxy_rules as rules
from epcscf.sip.connection import Address
from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.parser import parse_message
from epcscf.sip.proxy import ProxiedRequest, ProxySettings, StatefulProxy
from epcscf.sip.proxy_policy import DefaultRoutingPolicy, Forward, Reject
from epcscf.sip.resolver import NextHopResolver, Target
from tests.support.fakes import FakeConnection, FakeServerTransaction
from tests.test_sip_resolver import MemoryAuthority

PROXY_UDP = Address("127.0.0.1", 5060)
PROXY_TCP = Address("127.0.0.1", 5062)
UAC = Address("192.0.2.10", 5070)
UAS = Target("UDP", "192.0.2.20", 5080)
UAS2 = Target("UDP", "192.0.2.21", 5080)


class FakeClientTransaction:
    def __init__(self, request: Request, connection: Any, user: Any) -> None:
        self.request = request
        self.connection = connection
        self.user = user
        self.is_invite = request.method == "INVITE"

    def reply(self, status: int, **headers: str) -> Response:
        """Have the next hop answer this transaction (our Via is on top, as on the wire)."""
        response = make_response(self.request, status, to_tag="uas" if status > 100 else None)
        for name, value in headers.items():
            response.headers.add(name.replace("_", "-"), value)
        self.user.response_received(response, self)
        return response


class FakeTransactions:
    def __init__(self) -> None:
        self.sent: list[FakeClientTransaction] = []
        self.servers: list[FakeServerTransaction] = []

    def send_request(
        self, request: Request, connection: Any, user: Any, timers: Any = None, *, wire: bytes | None = None
    ) -> FakeClientTransaction:
        transaction = FakeClientTransaction(request, connection, user)
        self.sent.append(transaction)
        return transaction

    def find_invite_server_transaction(self, cancel: Request) -> FakeServerTransaction | None:
        branch = rules.via_param(rules.list_values(cancel.headers, "via")[0], "branch")
        for tx in self.servers:
            top = rules.list_values(tx.request.headers, "via")[0]
            if tx.request.method == "INVITE" and rules.via_param(top, "branch") == branch:
                return tx
        return None

    def of(self, method: str) -> list[FakeClientTransaction]:
        return [tx for tx in self.sent if tx.request.method == method]


class FakeConnector:
    def __init__(self) -> None:
        self.connections: dict[Target, FakeConnection] = {}
        self.refuse: set[Target] = set()
        self.listeners = {"UDP": PROXY_UDP, "TCP": PROXY_TCP}

    def connect(self, target: Target) -> defer.Deferred:
        if target in self.refuse:
            return defer.fail(ConnectionRefusedError())
        if target not in self.connections:
            local = self.listeners.get(target.transport, PROXY_UDP)
            self.connections[target] = FakeConnection(target.transport, target.address, local)
        return defer.succeed(self.connections[target])

    def local_address(self, transport: str) -> Address | None:
        return self.listeners.get(transport.upper())


def request_text(
    method: str = "INVITE",
    uri: str = "sip:bob@192.0.2.20:5080",
    *,
    via: str = "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-uac-1",
    extra: Sequence[str] = (),
    max_forwards: str | None = "70",
    call_id: str = "call-1",
) -> Request:
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:bob@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        "Contact: <sip:alice@192.0.2.10:5070>",
        *extra,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


class StaticPolicy:
    """A scriptable policy: fixed destination/record-route, or a custom decide function."""

    def __init__(self, destination: Any = None, record_route: Sequence[str] = ()) -> None:
        self.destination = destination
        self.record_route = list(record_route)
        self.decide: Any = None
        self.rewrite: Any = None
        self.ended: list[ProxiedRequest] = []
        self.cancels: list[Request] = []
        self.own = {"sip:127.0.0.1:5060;transport=udp;lr", "sip:127.0.0.1:5062;transport=tcp;lr"}

    def is_own_uri(self, uri: str) -> bool:
        return uri in self.own or uri.startswith("sip:127.0.0.1:5060") or uri.startswith("sip:127.0.0.1:5062")

    def route_request(self, context: ProxiedRequest) -> Any:
        if self.decide is not None:
            return self.decide(context)
        return Forward(context.request, self.destination, self.record_route)

    def response_to_forward(self, context: Any, response: Response) -> Any:
        return self.rewrite(context, response) if self.rewrite else response

    def response_destination(self, response: Response) -> None:
        return None

    def transaction_ended(self, context: ProxiedRequest) -> None:
        self.ended.append(context)

    def cancel_received(self, context: ProxiedRequest, cancel: Request) -> None:
        self.cancels.append(cancel)


class ProxyTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.connector = FakeConnector()
        self.resolver = NextHopResolver(MemoryAuthority([]))
        self.policy = StaticPolicy(UAS)
        self.proxy = StatefulProxy(self.clock, self.connector, self.resolver, self.policy, ProxySettings(), secret=b"k")
        self.transactions = FakeTransactions()
        self.proxy.transactions = self.transactions
        self.inbound = FakeConnection(remote=UAC, local=PROXY_UDP)

    def receive(self, request: Request, connection: FakeConnection | None = None) -> FakeServerTransaction:
        tx = FakeServerTransaction(request, connection or self.inbound)
        self.transactions.servers.append(tx)
        self.proxy.request_received(request, tx)
        return tx

    def forwarded(self, method: str = "INVITE") -> FakeClientTransaction:
        sent = self.transactions.of(method)
        self.assertEqual(len(sent), 1, f"expected one forwarded {method}, got {len(sent)}")
        return sent[0]


class ValidationTests(ProxyTestCase):
    def test_max_forwards_zero_gives_483(self) -> None:
        tx = self.receive(request_text("MESSAGE", max_forwards="0"))
        self.assertEqual(tx.statuses, [483])
        self.assertIn(";tag=", tx.responses[0].headers.get("to"))
        self.assertEqual(self.transactions.sent, [])

    def test_options_with_max_forwards_zero_is_answered_by_us(self) -> None:
        tx = self.receive(request_text("OPTIONS", max_forwards="0"))
        self.assertEqual(tx.statuses, [200])

    def test_unsupported_scheme_gives_416(self) -> None:
        tx = self.receive(request_text("MESSAGE", uri="http://example.com/x"))
        self.assertEqual(tx.statuses, [416])

    def test_unsupported_proxy_require_gives_420_with_unsupported(self) -> None:
        tx = self.receive(request_text("MESSAGE", extra=["Proxy-Require: foo, sec-agree"]))
        self.assertEqual(tx.statuses, [420])
        self.assertEqual(tx.responses[0].headers.get("unsupported"), "foo, sec-agree")

    def test_supported_proxy_require_is_forwarded(self) -> None:
        self.proxy.settings = ProxySettings(supported_option_tags=frozenset({"sec-agree"}))
        self.receive(request_text("MESSAGE", extra=["Proxy-Require: sec-agree"]))
        self.forwarded("MESSAGE")

    def test_invite_gets_100_trying_at_once(self) -> None:
        # RFC 3261 §16.2
        self.policy.decide = lambda context: defer.Deferred()  # the policy takes its time
        tx = self.receive(request_text())
        self.assertEqual(tx.statuses, [100])
        self.assertNotIn(";tag=", tx.responses[0].headers.get("to"))

    def test_non_invite_gets_no_100(self) -> None:
        tx = self.receive(request_text("MESSAGE"))
        self.assertEqual(tx.statuses, [])


class ForwardingTests(ProxyTestCase):
    def test_via_branch_max_forwards_and_received_rport(self) -> None:
        via = "SIP/2.0/UDP uac.example.com:5070;branch=z9hG4bK-uac-1;rport"
        self.receive(request_text(via=via))
        sent = self.forwarded().request
        vias = rules.list_values(sent.headers, "via")
        self.assertEqual(len(vias), 2)
        # RFC 3261 §16.6 step 8: our Via on top, unique magic-cookie branch, our listener.
        self.assertTrue(vias[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK"))
        # RFC 3581 §4: rport filled in, received added.
        self.assertIn("rport=5070", vias[1])
        self.assertIn("received=192.0.2.10", vias[1])
        self.assertEqual(sent.headers.get("max-forwards"), "69")  # §16.6 step 3
        self.assertEqual(sent.uri, "sip:bob@192.0.2.20:5080")
        self.assertEqual(self.transactions.sent[0].connection.remote, UAS.address)

    def test_received_added_when_sent_by_differs_and_not_otherwise(self) -> None:
        self.receive(request_text("MESSAGE", via="SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bK-x"))
        self.assertIn("received=192.0.2.10", rules.list_values(self.forwarded("MESSAGE").request.headers, "via")[1])
        self.transactions.sent.clear()
        self.receive(request_text("MESSAGE", via="SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-y", call_id="c2"))
        self.assertNotIn("received=", rules.list_values(self.forwarded("MESSAGE").request.headers, "via")[1])

    def test_absent_max_forwards_becomes_70(self) -> None:
        self.receive(request_text("MESSAGE", max_forwards=None))
        self.assertEqual(self.forwarded("MESSAGE").request.headers.get("max-forwards"), "70")

    def test_branches_are_unique_per_transaction(self) -> None:
        self.receive(request_text("MESSAGE", via="SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-a"))
        self.receive(request_text("MESSAGE", via="SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-b"))
        branches = {rules.via_param(rules.list_values(t.request.headers, "via")[0], "branch") for t in self.transactions.sent}
        self.assertEqual(len(branches), 2)

    def test_loop_is_detected_with_482(self) -> None:
        # RFC 3261 §16.3 step 4: our forwarded request comes back unchanged.
        self.receive(request_text("MESSAGE"))
        looped = self.forwarded("MESSAGE").request.copy()
        tx = self.receive(looped)
        self.assertEqual(tx.statuses, [482])

    def test_spiral_is_forwarded(self) -> None:
        # Same request back with a different R-URI (e.g. after an S-CSCF's retargeting).
        self.receive(request_text("MESSAGE"))
        spiral = self.forwarded("MESSAGE").request.copy()
        spiral.uri = "sip:bob-new@192.0.2.20:5080"
        tx = self.receive(spiral)
        self.assertEqual(tx.statuses, [])
        self.assertEqual(len(self.transactions.of("MESSAGE")), 2)

    def test_single_record_route(self) -> None:
        self.policy.record_route = ["sip:127.0.0.1:5060;transport=udp;lr"]
        self.receive(request_text())
        self.assertEqual(
            self.forwarded().request.headers.get_all("record-route"), ["<sip:127.0.0.1:5060;transport=udp;lr>"]
        )

    def test_default_policy_double_record_route_when_transport_changes(self) -> None:
        # RFC 5658 §4: in over UDP, out over TCP → two entries, the outbound-facing one on top.
        policy = DefaultRoutingPolicy(self.connector, self.resolver)
        self.proxy.policy = policy
        self.receive(request_text(uri="sip:bob@192.0.2.20:5080;transport=tcp", extra=["Record-Route: <sip:up.example;lr>"]))
        sent = self.forwarded()
        self.assertEqual(sent.connection.transport, "TCP")
        self.assertEqual(
            rules.list_values(sent.request.headers, "record-route"),
            ["<sip:127.0.0.1:5062;transport=tcp;lr>", "<sip:127.0.0.1:5060;transport=udp;lr>", "<sip:up.example;lr>"],
        )
        self.assertTrue(rules.list_values(sent.request.headers, "via")[0].startswith("SIP/2.0/TCP 127.0.0.1:5062;"))

    def test_default_policy_single_record_route_same_transport_and_none_for_register(self) -> None:
        policy = DefaultRoutingPolicy(self.connector, self.resolver)
        self.proxy.policy = policy
        self.receive(request_text())
        self.assertEqual(self.forwarded().request.headers.get_all("record-route"), ["<sip:127.0.0.1:5060;transport=udp;lr>"])
        self.receive(request_text("REGISTER", uri="sip:192.0.2.20:5080", call_id="r1"))
        self.assertEqual(self.forwarded("REGISTER").request.headers.get_all("record-route"), [])

    def test_default_policy_static_next_hop(self) -> None:
        policy = DefaultRoutingPolicy(self.connector, self.resolver, ["sip:192.0.2.30:5090;transport=tcp"])
        self.proxy.policy = policy
        self.receive(request_text("MESSAGE", uri="sip:bob@ims.example"))
        sent = self.forwarded("MESSAGE")
        self.assertEqual((sent.connection.transport, sent.connection.remote), ("TCP", Address("192.0.2.30", 5090)))
        self.assertEqual(sent.request.uri, "sip:bob@ims.example")  # R-URI untouched

    def test_default_policy_in_dialog_request_follows_r_uri_not_static_next_hop(self) -> None:
        # A BYE from the callee reaches us through our Record-Route: after removing our Route
        # it goes to its R-URI (the caller's Contact), not to the configured next hop.
        policy = DefaultRoutingPolicy(self.connector, self.resolver, ["sip:192.0.2.30:5090"])
        self.proxy.policy = policy
        self.receive(request_text("BYE", uri="sip:alice@192.0.2.10:5070", extra=["Route: <sip:127.0.0.1:5060;transport=udp;lr>"]))
        sent = self.forwarded("BYE")
        self.assertEqual(sent.connection.remote, Address("192.0.2.10", 5070))
        self.assertEqual(sent.request.headers.get_all("route"), [])

    def test_loose_routing_removes_our_route_and_follows_the_next(self) -> None:
        # RFC 3261 §16.4 (and RFC 5658: both of our double-RR entries come back as Routes).
        policy = DefaultRoutingPolicy(self.connector, self.resolver)
        self.proxy.policy = policy
        request = request_text(
            "BYE",
            extra=[
                "Route: <sip:127.0.0.1:5060;transport=udp;lr>, <sip:127.0.0.1:5062;transport=tcp;lr>",
                "Route: <sip:192.0.2.40:5060;lr>",
            ],
        )
        self.receive(request)
        sent = self.forwarded("BYE")
        self.assertEqual(rules.list_values(sent.request.headers, "route"), ["<sip:192.0.2.40:5060;lr>"])
        self.assertEqual(sent.connection.remote, Address("192.0.2.40", 5060))
        self.assertEqual(sent.request.uri, "sip:bob@192.0.2.20:5080")

    def test_strict_router_before_us_is_undone(self) -> None:
        # RFC 3261 §16.4: R-URI is ours → the last Route is the real R-URI.
        policy = DefaultRoutingPolicy(self.connector, self.resolver)
        self.proxy.policy = policy
        request = request_text(
            "BYE", uri="sip:127.0.0.1:5060;transport=udp;lr", extra=["Route: <sip:192.0.2.40:5060;lr>, <sip:bob@192.0.2.20:5080>"]
        )
        self.receive(request)
        sent = self.forwarded("BYE")
        self.assertEqual(sent.request.uri, "sip:bob@192.0.2.20:5080")
        self.assertEqual(rules.list_values(sent.request.headers, "route"), ["<sip:192.0.2.40:5060;lr>"])

    def test_strict_next_hop_gets_the_request_uri_swapped(self) -> None:
        # RFC 3261 §16.6 step 6: top Route without lr.
        policy = DefaultRoutingPolicy(self.connector, self.resolver)
        self.proxy.policy = policy
        self.receive(request_text("BYE", extra=["Route: <sip:192.0.2.50:5060>, <sip:192.0.2.51;lr>"]))
        sent = self.forwarded("BYE")
        self.assertEqual(sent.request.uri, "sip:192.0.2.50:5060")
        self.assertEqual(
            rules.list_values(sent.request.headers, "route"), ["<sip:192.0.2.51;lr>", "<sip:bob@192.0.2.20:5080>"]
        )
        self.assertEqual(sent.connection.remote, Address("192.0.2.50", 5060))


class ResponseTests(ProxyTestCase):
    def test_provisionals_forwarded_except_100_and_our_via_popped(self) -> None:
        tx = self.receive(request_text())
        client = self.forwarded()
        client.reply(100)
        client.reply(180)
        self.assertEqual(tx.statuses, [100, 180])
        self.assertEqual(len(rules.list_values(tx.responses[1].headers, "via")), 1)  # §16.7 step 3
        self.assertIn("z9hG4bK-uac-1", tx.responses[1].headers.get("via"))

    def test_2xx_forwarded_at_once_and_policy_told(self) -> None:
        tx = self.receive(request_text())
        client = self.forwarded()
        client.reply(200)
        self.assertEqual(tx.statuses, [100, 200])
        self.assertEqual(len(self.policy.ended), 1)
        # Nothing is kept once the request is answered; a 2xx retransmitted through the
        # client transaction (RFC 6026) is forwarded statelessly.
        self.assertEqual((self.proxy._by_client, self.proxy._by_server), ({}, {}))
        client.reply(200)
        upstream = self.connector.connections[Target("UDP", "192.0.2.10", 5070, "192.0.2.10")]
        self.assertEqual([m.status for m in upstream.sent], [200])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_is_kept_after_a_non_invite_completes(self) -> None:
        for index in range(3):
            tx = self.receive(request_text("MESSAGE", call_id=f"m{index}", via=f"SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-{index}"))
            self.transactions.of("MESSAGE")[-1].reply(200)
            self.assertEqual(tx.statuses, [200])
        self.assertEqual((self.proxy._by_client, self.proxy._by_server), ({}, {}))

    def test_final_non_2xx_forwarded_and_503_becomes_500(self) -> None:
        tx = self.receive(request_text("MESSAGE"))
        self.forwarded("MESSAGE").reply(503, Retry_After="10")
        self.assertEqual(tx.statuses, [500])  # RFC 3261 §16.7 step 6
        self.assertIsNone(tx.responses[0].headers.get("retry-after"))

    def fork(self, count: int) -> tuple[FakeServerTransaction, list[FakeClientTransaction]]:
        targets = [Target("UDP", f"192.0.2.{60 + i}", 5060) for i in range(count)]
        self.policy.decide = lambda context: [Forward(context.request.copy(), target) for target in targets]
        tx = self.receive(request_text())
        clients = self.transactions.of("INVITE")
        self.assertEqual(len(clients), count)
        return tx, clients

    def test_best_response_is_lowest_class_after_all_branches(self) -> None:
        tx, (a, b, c) = self.fork(3)
        a.reply(486)
        b.reply(302)
        self.assertEqual(tx.statuses, [100])  # §16.7 step 5: wait for every branch
        c.reply(404)
        self.assertEqual(tx.statuses, [100, 302])

    def test_6xx_wins_and_cancels_the_other_branches(self) -> None:
        tx, (a, b, c) = self.fork(3)
        a.reply(180)
        a.reply(404)
        b.reply(180)
        b.reply(603)
        # §16.7 step 5/10: pending branch c (no provisional yet) gets its CANCEL after one.
        self.assertEqual(self.transactions.of("CANCEL"), [])
        c.reply(183)
        cancels = self.transactions.of("CANCEL")
        self.assertEqual(len(cancels), 1)
        self.assertEqual(cancels[0].request.headers.get("via"), rules.list_values(c.request.headers, "via")[0])
        c.reply(487)
        self.assertEqual(tx.statuses[-1], 603)

    def test_401_and_407_challenges_are_merged(self) -> None:
        tx, (a, b) = self.fork(2)
        a.reply(401, WWW_Authenticate='Digest realm="a", nonce="1"')
        b.reply(407, Proxy_Authenticate='Digest realm="b", nonce="2"')
        best = tx.responses[-1]
        self.assertIn(best.status, (401, 407))
        self.assertEqual(best.headers.get_all("www-authenticate"), ['Digest realm="a", nonce="1"'])
        self.assertEqual(best.headers.get_all("proxy-authenticate"), ['Digest realm="b", nonce="2"'])

    def test_2xx_on_one_branch_cancels_the_others(self) -> None:
        tx, (a, b) = self.fork(2)
        b.reply(180)
        a.reply(200)
        self.assertEqual(tx.statuses, [100, 180, 200])
        self.assertEqual([c.request.headers.get("cseq") for c in self.transactions.of("CANCEL")], ["1 CANCEL"])
        # A late 2xx from the other branch still goes upstream, statelessly (RFC 3261 §16.7 step 5).
        b.reply(200)
        upstream = self.connector.connections[Target("UDP", "192.0.2.10", 5070, "192.0.2.10")]
        self.assertEqual([m.status for m in upstream.sent], [200])
        self.assertEqual(tx.statuses, [100, 180, 200])

    def test_policy_rewrites_responses_in_order_even_when_deferred(self) -> None:
        pending: list[defer.Deferred] = []

        def rewrite(context: Any, response: Response) -> Any:
            if response.status == 183:
                d: defer.Deferred = defer.Deferred()
                pending.append(d)
                return d
            return response

        self.policy.rewrite = rewrite
        tx = self.receive(request_text())
        client = self.forwarded()
        client.reply(183)
        client.reply(200)
        self.assertEqual(tx.statuses, [100])  # the 200 waits for the rewritten 183
        rewritten = make_response(tx.request, 183, to_tag="uas")
        rewritten.body = b"v=0\r\n"
        pending[0].callback(rewritten)
        self.assertEqual(tx.statuses, [100, 183, 200])
        self.assertEqual(tx.responses[1].body, b"v=0\r\n")


class CancelAndTimerTests(ProxyTestCase):
    def cancel_for(self, invite: Request) -> Request:
        cancel = invite.copy()
        cancel.method = "CANCEL"
        cancel.headers.set("CSeq", "1 CANCEL")
        return cancel

    def test_cancel_gets_200_branch_cancel_and_487_upstream(self) -> None:
        invite = request_text()
        tx = self.receive(invite)
        client = self.forwarded()
        client.reply(180)
        cancel_tx = self.receive(self.cancel_for(invite))
        self.assertEqual(cancel_tx.statuses, [200])  # §16.10
        self.assertEqual(len(self.policy.cancels), 1)
        (cancel,) = self.transactions.of("CANCEL")
        # §16.10 / §9.1: same branch (Via), R-URI, Call-ID, From, To, CSeq number.
        self.assertEqual(cancel.request.headers.get_all("via"), [rules.list_values(client.request.headers, "via")[0]])
        self.assertEqual(cancel.request.uri, client.request.uri)
        self.assertEqual(cancel.connection, client.connection)
        client.reply(487)
        self.assertEqual(tx.statuses, [100, 180, 487])

    def test_cancel_before_any_provisional_waits_for_one(self) -> None:
        invite = request_text()
        tx = self.receive(invite)
        client = self.forwarded()
        self.receive(self.cancel_for(invite))
        self.assertEqual(self.transactions.of("CANCEL"), [])  # RFC 3261 §9.1
        client.reply(100)
        self.assertEqual(len(self.transactions.of("CANCEL")), 1)
        client.reply(487)
        self.assertEqual(tx.statuses, [100, 487])

    def test_cancel_while_policy_is_deciding_gives_487(self) -> None:
        decision: defer.Deferred = defer.Deferred()
        self.policy.decide = lambda context: decision
        invite = request_text()
        tx = self.receive(invite)
        self.receive(self.cancel_for(invite))
        decision.callback(Forward(invite.copy(), UAS))
        self.assertEqual(tx.statuses, [100, 487])
        self.assertEqual(self.transactions.of("INVITE"), [])

    def test_unknown_cancel_gets_481(self) -> None:
        tx = self.receive(self.cancel_for(request_text(call_id="nothing")))
        self.assertEqual(tx.statuses, [481])

    def test_timer_c_cancels_a_ringing_branch(self) -> None:
        # RFC 3261 §16.6 step 11 / §16.8: > 3 minutes, reset by provisionals.
        self.proxy.settings = ProxySettings(timer_c=181.0)
        tx = self.receive(request_text())
        client = self.forwarded()
        self.clock.advance(100)
        client.reply(180)
        self.clock.advance(180)
        self.assertEqual(self.transactions.of("CANCEL"), [])  # reset by the 180
        self.clock.advance(1.5)
        self.assertEqual(len(self.transactions.of("CANCEL")), 1)
        client.reply(487)
        self.assertEqual(tx.statuses, [100, 180, 487])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_stops_timer_c(self) -> None:
        self.receive(request_text())
        self.forwarded()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.proxy.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timer_c_without_provisional_gives_408(self) -> None:
        tx = self.receive(request_text())
        self.forwarded()
        self.clock.advance(181)
        self.assertEqual(tx.statuses, [100, 408])
        self.assertEqual(self.transactions.of("CANCEL"), [])

    def test_client_transaction_timeout_gives_408(self) -> None:
        tx = self.receive(request_text("MESSAGE"))
        client = self.forwarded("MESSAGE")
        self.proxy.timed_out(client)
        self.assertEqual(tx.statuses, [408])  # RFC 3261 §16.8

    def test_transport_failure_gives_503(self) -> None:
        tx = self.receive(request_text("MESSAGE"))
        self.proxy.transport_failed(self.forwarded("MESSAGE"), "connection refused")
        # RFC 3261 §16.9: as if a 503 was received; being ours (the next hop is unreachable
        # for any request) it is not turned into a 500.
        self.assertEqual(tx.statuses, [503])

    def test_no_route_gives_503(self) -> None:
        self.policy.destination = []
        tx = self.receive(request_text("MESSAGE"))
        self.assertEqual(tx.statuses, [503])


class FailoverTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.policy.destination = [UAS, UAS2]

    def test_503_tries_the_next_target(self) -> None:
        tx = self.receive(request_text("MESSAGE"))
        first = self.forwarded("MESSAGE")
        first.reply(503)
        sent = self.transactions.of("MESSAGE")
        self.assertEqual(len(sent), 2)
        self.assertEqual(sent[1].connection.remote, UAS2.address)
        branch = lambda tx: rules.via_param(rules.list_values(tx.request.headers, "via")[0], "branch")
        self.assertNotEqual(branch(sent[0]), branch(sent[1]))  # a new client transaction
        sent[1].reply(200)
        self.assertEqual(tx.statuses, [200])

    def test_connection_refused_tries_the_next_target(self) -> None:
        self.connector.refuse.add(UAS)
        tx = self.receive(request_text("MESSAGE"))
        self.assertEqual(self.forwarded("MESSAGE").connection.remote, UAS2.address)
        self.forwarded("MESSAGE").reply(202)
        self.assertEqual(tx.statuses, [202])

    def test_timeout_tries_the_next_target_then_408(self) -> None:
        tx = self.receive(request_text("MESSAGE"))
        self.proxy.timed_out(self.forwarded("MESSAGE"))
        second = self.transactions.of("MESSAGE")[1]
        self.proxy.timed_out(second)
        self.assertEqual(tx.statuses, [408])

    def test_all_targets_refused_gives_503(self) -> None:
        self.connector.refuse.update({UAS, UAS2})
        tx = self.receive(request_text("MESSAGE"))
        self.assertEqual(tx.statuses, [503])

    def test_503_from_every_target_goes_up_as_500(self) -> None:
        # RFC 3263 §4.3 failover, then RFC 3261 §16.7 step 6 for the received 503s.
        tx = self.receive(request_text("MESSAGE"))
        self.forwarded("MESSAGE").reply(503)
        self.transactions.of("MESSAGE")[1].reply(503)
        self.assertEqual(tx.statuses, [500])


class StatelessTests(ProxyTestCase):
    def test_ack_for_2xx_is_forwarded_statelessly_along_route(self) -> None:
        policy = DefaultRoutingPolicy(self.connector, self.resolver)
        self.proxy.policy = policy
        ack = request_text("ACK", extra=["Route: <sip:127.0.0.1:5060;transport=udp;lr>, <sip:192.0.2.40:5060;lr>"])
        self.proxy.ack_received(ack, self.inbound)
        connection = self.connector.connections[Target("UDP", "192.0.2.40", 5060, None)]
        (sent,) = connection.sent
        self.assertEqual(sent.method, "ACK")
        self.assertEqual(len(rules.list_values(sent.headers, "via")), 2)
        self.assertEqual(rules.list_values(sent.headers, "route"), ["<sip:192.0.2.40:5060;lr>"])
        self.assertEqual(sent.headers.get("max-forwards"), "69")
        self.assertEqual(self.transactions.sent, [])

    def test_stray_2xx_with_our_via_goes_to_the_next_via(self) -> None:
        self.receive(request_text())
        client = self.forwarded()
        response = make_response(client.request, 200, to_tag="uas")
        upstream = self.connector.connect(Target("UDP", "192.0.2.10", 5070, "192.0.2.10"))
        self.proxy.stray_response_received(response, client.connection)
        (sent,) = self.successResultOf(upstream).sent
        self.assertEqual(len(rules.list_values(sent.headers, "via")), 1)

    def test_stray_response_not_ours_is_dropped(self) -> None:
        response = make_response(request_text(), 200, to_tag="x")
        self.proxy.stray_response_received(response, self.inbound)
        self.assertEqual(self.connector.connections, {})


class PolicyTests(ProxyTestCase):
    def test_reject(self) -> None:
        self.policy.decide = lambda context: Reject(make_response(context.request, 403))
        tx = self.receive(request_text("MESSAGE"))
        self.assertEqual(tx.statuses, [403])
        self.assertIn(";tag=", tx.responses[0].headers.get("to"))
        self.assertEqual(len(self.policy.ended), 1)

    def test_deferred_decision_and_connection_destination(self) -> None:
        flow = FakeConnection("WS", Address("198.51.100.7", 40000), Address("127.0.0.1", 8080))
        decision: defer.Deferred = defer.Deferred()
        self.policy.decide = lambda context: decision
        self.receive(request_text("MESSAGE"))
        self.assertEqual(self.transactions.sent, [])
        decision.callback(Forward(self.proxy.active()[0].request, flow, via_sent_by="abc.invalid"))
        sent = self.forwarded("MESSAGE")
        self.assertIs(sent.connection, flow)
        self.assertTrue(rules.list_values(sent.request.headers, "via")[0].startswith("SIP/2.0/WS abc.invalid;branch="))

    def test_policy_exception_gives_500(self) -> None:
        def broken(context: Any) -> Any:
            raise RuntimeError("bug")

        self.policy.decide = broken
        tx = self.receive(request_text("MESSAGE"))
        self.assertEqual(tx.statuses, [500])
        self.flushLoggedErrors(RuntimeError)


class RuleTests(unittest.TestCase):
    def test_choose_best_response(self) -> None:
        def r(status: int) -> Response:
            return Response(status)

        self.assertEqual(rules.choose_best_response([r(404), r(302), r(500)]).status, 302)
        self.assertEqual(rules.choose_best_response([r(404), r(600), r(302)]).status, 600)
        self.assertEqual(rules.choose_best_response([r(404), r(407), r(486)]).status, 407)
        self.assertIsNone(rules.choose_best_response([r(180)]))

    def test_mark_received(self) -> None:
        # RFC 3261 §18.2.1 and RFC 3581 §4.
        m = rules.mark_received
        self.assertEqual(
            m("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK1", "192.0.2.1", 4000),
            "SIP/2.0/UDP 10.0.0.1:5060;rport=4000;branch=z9hG4bK1;received=192.0.2.1",
        )
        self.assertEqual(  # rport with a value already: left alone; sent-by differs: received
            m("SIP/2.0/UDP 10.0.0.1:5060;rport=5;branch=z9hG4bK1", "192.0.2.1", 4000),
            "SIP/2.0/UDP 10.0.0.1:5060;rport=5;branch=z9hG4bK1;received=192.0.2.1",
        )
        self.assertEqual(m("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", "192.0.2.1", 4000), "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1")
        self.assertEqual(  # rport also when sent-by equals the source (RFC 3581 §4)
            m("SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK1;rport", "2001:db8::1", 4000),
            "SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK1;rport=4000;received=2001:db8::1",
        )
        self.assertEqual(
            m("SIP/2.0/UDP a.example;branch=z9hG4bK1;received=1.2.3.4", "192.0.2.1", 4000),
            "SIP/2.0/UDP a.example;branch=z9hG4bK1;received=192.0.2.1",
        )

    def test_split_and_pop_list_values(self) -> None:
        request = request_text(extra=['Route: <sip:a;lr>, "x,y" <sip:b;lr>', "Route: <sip:c>"])
        self.assertEqual(rules.pop_first_value(request.headers, "route"), "<sip:a;lr>")
        self.assertEqual(rules.list_values(request.headers, "route"), ['"x,y" <sip:b;lr>', "<sip:c>"])
        # A first line holding one value is dropped (or replaced) alone, the others kept as they are.
        self.assertEqual(rules.pop_first_value(request.headers, "route"), '"x,y" <sip:b;lr>')
        self.assertEqual(request.headers.get_all("route"), ["<sip:c>"])
        rules.replace_first_value(request.headers, "route", "<sip:d;lr>")
        self.assertEqual(request.headers.get_all("route"), ["<sip:d;lr>"])
        self.assertEqual(rules.pop_first_value(request.headers, "route"), "<sip:d;lr>")
        self.assertIsNone(rules.pop_first_value(request.headers, "route"))
        self.assertNotIn("route", request.headers)


class TimerCQueueTests(ProxyTestCase):
    """Timer C of every INVITE branch shares one reactor call (``TimerQueue``), each still
    firing at its own deadline (RFC 3261 §16.6 step 11, §16.8)."""

    def test_three_branches_one_reactor_call_each_timer_on_time(self) -> None:
        tx_1 = self.receive(request_text(call_id="c1", via="SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1"))
        self.clock.advance(10)
        tx_2 = self.receive(request_text(call_id="c2", via="SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-2"))
        self.clock.advance(10)
        tx_3 = self.receive(request_text(call_id="c3", via="SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-3"))
        self.assertEqual(len(self.transactions.of("INVITE")), 3)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.transactions.of("INVITE")[1].reply(180)  # t = 30: the second branch's Timer C starts again
        self.clock.advance(151)  # t = 181: the first branch's, with no provisional: 408
        self.assertEqual([tx_1.statuses, tx_2.statuses, tx_3.statuses], [[100, 408], [100, 180], [100]])
        self.clock.advance(20)  # t = 201: the third's
        self.assertEqual(tx_3.statuses, [100, 408])
        self.assertEqual(self.transactions.of("CANCEL"), [])
        self.clock.advance(10)  # t = 211: the second's, after its 180: CANCEL
        self.assertEqual(len(self.transactions.of("CANCEL")), 1)
