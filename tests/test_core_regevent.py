"""Reg event notifier timers on a task.Clock (RFC 3680 §5.2 'expired', RFC 6665 §4.2.2 timeout)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.core.location import Binding, LocationService
from epcscf.core.regevent import MAX_SUBSCRIPTIONS_PER_AOR, RegEventNotifier, is_reg_subscription
from epcscf.sip.connection import Address
from epcscf.sip.message import Headers, Request, Response
from epcscf.sip.resolver import Target
from tests.support.fakes import FakeConnection, FakeServerTransaction

AOR = "sip:bob@ims.localdomain"


class FakeTransports:
    def connect(self, target: Target) -> defer.Deferred:
        return defer.succeed(FakeConnection(local=Address("127.0.0.1", 5070)))

    def local_address(self, transport: str) -> Address:
        return Address("127.0.0.1", 5070)


class FakeResolver:
    def resolve_uri(self, uri: Any) -> defer.Deferred:
        return defer.succeed([Target("UDP", uri.host, uri.port or 5060)])


class FakeTransactions:
    def __init__(self) -> None:
        self.sent: list[tuple[Request, Any]] = []

    def send_request(self, request: Request, connection: Any, user: Any) -> None:
        self.sent.append((request, user))


def subscribe(expires: int) -> Request:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1")
    headers.add("To", f"<{AOR}>")
    headers.add("From", "<sip:pcscf@127.0.0.1:5060>;tag=p1")
    headers.add("Call-ID", "sub-1")
    headers.add("CSeq", "1 SUBSCRIBE")
    headers.add("Event", "reg")
    headers.add("Expires", str(expires))
    headers.add("Contact", "<sip:pcscf@127.0.0.1:5060>")
    return Request("SUBSCRIBE", AOR, headers)


class NotifierTimerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.location = LocationService(self.clock)
        self.transactions = FakeTransactions()
        self.notifier = RegEventNotifier(
            self.clock,
            self.location,
            {AOR: (AOR, "tel:+15550002")}.get,
            self.transactions,
            FakeTransports(),
            FakeResolver(),
            lambda: "sip:127.0.0.1:5070",
        )
        self.addCleanup(self.notifier.close)

    def notifies(self) -> list[Request]:
        return [request for request, _ in self.transactions.sent]

    def test_event_header_selects_the_reg_package(self) -> None:
        self.assertTrue(is_reg_subscription(subscribe(60)))
        other = subscribe(60)
        other.headers.set("Event", "presence")
        self.assertFalse(is_reg_subscription(other))

    def test_binding_expiry_is_notified_when_it_happens(self) -> None:
        self.location.put(Binding(AOR, "sip:bob@b.invalid", "", (), None, None, "c", 1, 100.0, 0.0))
        server = FakeServerTransaction()
        self.notifier.subscribe(subscribe(3600), server, AOR)
        self.assertEqual(server.responses[0].status, 200)
        self.assertEqual(len(self.notifies()), 1)
        self.clock.advance(99)
        self.assertEqual(len(self.notifies()), 1)
        self.clock.advance(1)  # the binding expires: noticed by the binding timer...
        self.clock.advance(0)  # ...and notified on the next turn
        [_, expired] = self.notifies()
        self.assertIn('event="expired"', expired.body.decode())
        self.assertIn('aor="tel:+15550002"', expired.body.decode())
        self.assertEqual(expired.headers.get("subscription-state"), "terminated;reason=noresource")
        self.assertEqual(expired.headers.get("cseq"), "2 NOTIFY")
        self.assertTrue(expired.headers.get("via").startswith("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK"))

    def test_one_register_changing_two_bindings_gives_one_notify(self) -> None:
        self.notifier.subscribe(subscribe(3600), FakeServerTransaction(), AOR)
        self.location.put(Binding(AOR, "sip:bob@one.invalid", "", (), None, None, "c", 1, 300.0, 0.0))
        self.location.put(Binding(AOR, "sip:bob@two.invalid", "", (), None, None, "c", 1, 300.0, 0.0))
        self.clock.advance(0)
        self.assertEqual(len(self.notifies()), 2)  # the initial one and one for both changes
        body = self.notifies()[1].body.decode()
        self.assertEqual(body.count('event="created"'), 4)  # two contacts under each of two identities

    def test_subscription_expiry_sends_a_final_notify(self) -> None:
        self.notifier.subscribe(subscribe(60), FakeServerTransaction(), AOR)
        self.clock.advance(60)
        self.assertEqual(self.notifies()[-1].headers.get("subscription-state"), "terminated;reason=timeout")
        self.assertEqual(self.notifier.subscriptions, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_subscriptions_per_aor_are_capped_and_a_fetch_still_answered(self) -> None:
        answers = []
        for number in range(MAX_SUBSCRIPTIONS_PER_AOR + 3):
            request = subscribe(3600)
            request.headers.set("Call-ID", f"sub-{number}")
            server = FakeServerTransaction()
            self.notifier.subscribe(request, server, AOR)
            answers.append(server.responses[0].status)
        self.assertEqual(answers, [200] * MAX_SUBSCRIPTIONS_PER_AOR + [403] * 3)
        self.assertEqual(len(self.notifier.subscriptions), MAX_SUBSCRIPTIONS_PER_AOR)
        fetch = FakeServerTransaction()
        self.notifier.subscribe(subscribe(0), fetch, AOR)  # RFC 6665 §4.2.1.1: a fetch keeps no state
        self.assertEqual(fetch.responses[0].status, 200)

    def test_481_to_a_notify_ends_the_subscription(self) -> None:
        self.notifier.subscribe(subscribe(3600), FakeServerTransaction(), AOR)
        [(notify, user)] = self.transactions.sent
        user.response_received(Response(481, "Call/Transaction Does Not Exist"), None)
        self.assertEqual(self.notifier.subscriptions, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
