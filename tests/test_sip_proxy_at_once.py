"""The proxy's at-once paths for a call's requests (tenth pass, docs/performance.md): each gives
what the Deferred path it stands for gives.

* the next hop of a request the policy leaves to resolve (RFC 3261 §16.6 step 7) when it needs
  no DNS (RFC 3263 §4.2): ``_targets_now`` against ``_resolve``;
* the ACK for a 2xx (RFC 3261 §16.11, §13.2.2.4): decided, resolved and sent at once, against
  the same ACK through a Deferred decision, a resolver that only resolves with Deferreds and a
  connector that only connects with them — the same bytes on the same connection;
* Timer C moved by a provisional rather than replaced (RFC 3261 §16.7 step 2).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from epcscf.sip.proxy import ProxySettings
from epcscf.sip.proxy_policy import DefaultRoutingPolicy, Forward, Reject
from epcscf.sip.resolver import Target
from tests.test_sip_proxy import FakeConnector, ProxyTestCase, request_text

ROUTED_ACK_ROUTES = ["Route: <sip:127.0.0.1:5060;transport=udp;lr>, <sip:192.0.2.40:5060;lr>"]
NEXT_HOP = Target("UDP", "192.0.2.40", 5060, None)


class DeferredOnlyResolver:
    """The resolver as the proxy used it before: ``resolve_uri`` only (a Deferred)."""

    def __init__(self, resolver: Any) -> None:
        self._resolver = resolver

    def resolve_uri(self, uri: Any) -> defer.Deferred:
        return self._resolver.resolve_uri(uri)


class ConnectorWithOpenConnections(FakeConnector):
    """A connector that also names its open connections, as ``TransportManager.connection_for``."""

    def connection_for(self, target: Target) -> Any:
        return self.connections.get(target)


class TargetsNowTests(ProxyTestCase):
    URIS = [
        "sip:bob@192.0.2.20:5080",
        "sip:192.0.2.40;lr",
        "sip:192.0.2.40:5070;transport=tcp;lr",
        "sips:192.0.2.40;lr",
        "sip:[2001:db8::1]:5062;transport=tls",
        "sip:bob@192.0.2.1;maddr=192.0.2.50",
        "tel:+15551234",
        "not a uri",
    ]

    def test_a_next_hop_known_at_once_is_what_resolving_it_gives(self) -> None:
        for text in self.URIS:
            at_once = self.proxy._targets_now(text)
            self.assertIsNotNone(at_once, text)
            self.assertEqual(at_once, self.successResultOf(self.proxy._resolve(text)), text)

    def test_a_name_to_look_up_is_left_to_resolve(self) -> None:
        self.assertIsNone(self.proxy._targets_now("sip:core.example.com;lr"))

    def test_a_resolver_without_numeric_resolution_is_always_asked(self) -> None:
        self.proxy.resolver = DeferredOnlyResolver(self.resolver)
        self.assertIsNone(self.proxy._targets_now("sip:192.0.2.40;lr"))
        self.assertEqual(self.proxy._targets_now("tel:+15551234"), [])  # not SIP: no next hop, as before

    def test_an_invite_left_to_resolve_goes_out_as_through_the_resolver(self) -> None:
        sent = []
        for resolver in (self.resolver, DeferredOnlyResolver(self.resolver)):
            self.proxy.resolver = resolver
            self.policy.destination = None
            self.transactions.sent.clear()
            self.receive(request_text(uri="sip:bob@192.0.2.20:5080"))
            client = self.forwarded()
            sent.append((client.connection, client.request.serialize()))
        self.assertEqual(sent[0], sent[1])


class AckAtOnceTests(ProxyTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def forward_ack(self, *, at_once: bool, decide: Any = None) -> list[bytes]:
        """The ACK sent on toward the next hop, with every collaborator giving its answer at once
        (``at_once``) or through a Deferred, as the stateless path had them before."""
        self.connector = ConnectorWithOpenConnections() if at_once else FakeConnector()
        self.proxy.connector = self.connector
        self.proxy.resolver = self.resolver if at_once else DeferredOnlyResolver(self.resolver)
        policy = DefaultRoutingPolicy(self.connector, self.resolver)
        if decide is not None:
            policy.route_request = decide  # type: ignore[method-assign]
        elif not at_once:
            plain = policy.route_request
            policy.route_request = lambda context: defer.succeed(plain(context))  # type: ignore[method-assign]
        self.proxy.policy = policy
        if at_once:
            self.connector.connect(NEXT_HOP)  # the core's connection is open, as on a node
        self.proxy.ack_received(request_text("ACK", extra=ROUTED_ACK_ROUTES), self.inbound)
        connection = self.connector.connections.get(NEXT_HOP)
        return [message.serialize() for message in connection.sent] if connection is not None else []

    def test_the_ack_sent_at_once_is_the_one_the_deferred_path_sends(self) -> None:
        through_deferreds = self.forward_ack(at_once=False)
        at_once = self.forward_ack(at_once=True)
        self.assertEqual(len(at_once), 1)
        self.assertEqual(at_once, through_deferreds)

    def test_an_ack_the_policy_fails_on_is_logged_and_dropped_either_way(self) -> None:
        def broken(context: Any) -> Any:
            raise RuntimeError("policy bug")

        for decide in (broken, lambda context: defer.fail(RuntimeError("policy bug"))):
            self.logged.clear()
            self.assertEqual(self.forward_ack(at_once=True, decide=decide), [])
            why = [str(event.get("why")) for event in self.logged if "ACK not forwarded" in event.get("log_format", "")]
            self.assertEqual(why, ["policy bug"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_an_ack_the_policy_refuses_is_dropped_either_way(self) -> None:
        def refuse(context: Any) -> Reject:
            return Reject(request_text("ACK"))  # type: ignore[arg-type]

        self.assertEqual(self.forward_ack(at_once=True, decide=refuse), [])
        self.assertEqual(self.forward_ack(at_once=False, decide=lambda c: defer.succeed(refuse(c))), [])

    def test_an_ack_toward_a_name_waits_for_the_resolver(self) -> None:
        asked: list[str] = []

        class Resolving:
            def resolve_numeric(self, uri: Any) -> None:
                return None  # a name: DNS needed

            def resolve_uri(self, uri: Any) -> defer.Deferred:
                asked.append(str(uri))
                return defer.succeed([NEXT_HOP])

        self.proxy.resolver = Resolving()
        self.proxy.policy = type("P", (), {
            "is_own_uri": lambda self, uri: False,
            "route_request": lambda self, context: Forward(context.request),
        })()
        self.proxy.ack_received(request_text("ACK", extra=["Route: <sip:core.example.com;lr>"]), self.inbound)
        self.assertEqual(asked, ["sip:core.example.com;lr"])
        (sent,) = self.connector.connections[NEXT_HOP].sent
        self.assertEqual(sent.method, "ACK")



class TimerCResetTests(ProxyTestCase):
    """Timer C moved by each provisional (RFC 3261 §16.7 step 2) instead of replaced: it fires as
    the replaced one fired."""

    def test_each_provisional_moves_the_deadline_and_one_timer_stays_armed(self) -> None:
        self.proxy.settings = ProxySettings(timer_c=181.0)
        tx = self.receive(request_text())
        client = self.forwarded()
        for status in (180, 183, 180):
            self.clock.advance(60)
            client.reply(status)
            self.assertEqual(self.proxy._timers_c.pending(), 1)
        self.clock.advance(180.5)  # 180.5 s after the last provisional: not yet
        self.assertEqual(self.transactions.of("CANCEL"), [])
        self.clock.advance(1)
        self.assertEqual(len(self.transactions.of("CANCEL")), 1)  # §16.8: CANCEL after a provisional
        client.reply(487)
        self.assertEqual(tx.statuses, [100, 180, 183, 180, 487])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_provisional_after_timer_c_cancelled_the_branch_starts_a_new_timer_c(self) -> None:
        # The wait for the CANCELled branch's 487 is not moved: a new Timer C replaces it.
        self.proxy.settings = ProxySettings(timer_c=181.0)
        tx = self.receive(request_text())
        client = self.forwarded()
        client.reply(180)
        self.clock.advance(181)  # Timer C: CANCEL; the 487 is then waited for another 181 s
        self.assertEqual(len(self.transactions.of("CANCEL")), 1)
        self.clock.advance(10)
        client.reply(183)  # t = 191: a new Timer C, due at t = 372
        self.clock.advance(181 + 0.5)  # t = 372.5: that Timer C fired (nothing more to CANCEL), no 408
        self.assertEqual(tx.statuses, [100, 180, 183])
        self.clock.advance(181)  # t = 553.5: the wait it armed for the 487 ran out: 408
        self.assertEqual(tx.statuses, [100, 180, 183, 408])
        self.assertEqual(len(self.transactions.of("CANCEL")), 1)


del ProxyTestCase  # imported for its set-up only: not run again here
