"""Copies of a statelessly forwarded 2xx or ACK sent on without the full path (epcscf.sip.replay).

RFC 3261 §13.3.1.4: a UAS retransmits its 2xx to an INVITE until the ACK comes, T1 doubling to
T2, for 64·T1; §13.2.2.4: the UAC answers each copy with the same ACK; §16.11: a proxy forwards
each of them statelessly, the same way every time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from epcscf.sip.connection import Address, ConnectionLost
from epcscf.sip.message import Message, make_response
from epcscf.sip.parser import parse_message
from epcscf.sip.proxy import ProxySettings, StatefulProxy
from epcscf.sip.proxy_policy import DefaultRoutingPolicy
from epcscf.sip.replay import ENTRIES, REPLAY_WINDOW, REPLAYS_PER_ENTRY, StatelessReplays
from epcscf.sip.resolver import NextHopResolver
from epcscf.sip.transport_specs import TransportSettings
from epcscf.sip.transport_udp import UdpTransport
from tests.support.fakes import FakeConnection, FakeServerTransaction
from tests.test_sip_proxy import PROXY_UDP, UAC, UAS, FakeConnector, FakeTransactions, StaticPolicy, request_text
from tests.test_sip_resolver import MemoryAuthority
from tests.test_sip_transport import FakeDatagramTransport

CORE = ("127.0.0.1", 5070)


def ack_bytes(call_id: str = "a84b4c76e66710") -> bytes:
    return (
        "ACK sip:uas@127.0.0.1:5090 SIP/2.0\r\n"
        "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK776sgdkse\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=1928301774\r\n"
        "To: <sip:uas@example.com>;tag=as83\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def ok_bytes(method: str = "INVITE", call_id: str = "a84b4c76e66710") -> bytes:
    return (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy\r\n"
        "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK776sgdkse\r\n"
        "From: <sip:alice@example.com>;tag=1928301774\r\n"
        "To: <sip:uas@example.com>;tag=as83\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class RawConnection(FakeConnection):
    """A connection that can send bytes already serialised, as UDP and WebSocket ones can."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: list[bytes] = []

    def send_bytes(self, data: bytes) -> None:
        if not self.connected:
            raise ConnectionLost("gone")
        self.raw.append(data)


class StatelessReplaysTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.replays = StatelessReplays(self.clock)
        self.core = RawConnection("UDP", Address(*CORE))

    def forward_ack(self, raw: bytes = ack_bytes(), source: Any = "wic-flow") -> Message:
        """What the transport and the stateless forwarder do for the first ACK."""
        outgoing = parse_message(raw)
        outgoing.headers.set("Max-Forwards", "69")
        self.replays.receiving(raw, source)
        self.replays.forwarded(outgoing, self.core)
        self.replays.received()
        return outgoing

    def test_a_copy_of_a_forwarded_ack_is_sent_on_as_the_same_bytes(self) -> None:
        outgoing = self.forward_ack()
        self.assertTrue(self.replays.replay(ack_bytes(), "wic-flow"))
        self.assertEqual(self.core.raw, [outgoing.serialize()])

    def test_only_a_copy_from_the_same_peer_is_replayed(self) -> None:
        self.forward_ack()
        self.assertFalse(self.replays.replay(ack_bytes(), "another-flow"))
        self.assertFalse(self.replays.replay(ack_bytes("other-call"), "wic-flow"))
        self.assertEqual(self.core.raw, [])

    def test_nothing_is_remembered_once_the_transport_handed_the_message_over(self) -> None:
        # A forward that waited for a Deferred happens after ``received``.
        self.replays.receiving(ack_bytes(), "wic-flow")
        self.replays.received()
        self.replays.forwarded(parse_message(ack_bytes()), self.core)
        self.assertEqual(len(self.replays), 0)

    def test_another_message_sent_while_receiving_is_not_remembered(self) -> None:
        # Receiving a 2xx, the edge sent an ACK of its own (a call released early): not its copy.
        self.replays.receiving(ok_bytes(), CORE)
        self.replays.forwarded(parse_message(ack_bytes()), self.core)
        self.assertEqual(len(self.replays), 0)

    def test_a_2xx_to_invite_is_remembered_and_a_2xx_to_bye_is_not(self) -> None:
        # Only a 2xx to an INVITE is retransmitted unasked (RFC 3261 §13.3.1.4); a copy of
        # another final is the client transaction's to absorb (§17.1.2.2).
        wic = RawConnection("WS", Address("192.0.2.9", 40000))
        for method in ("BYE", "INVITE"):
            self.replays.receiving(ok_bytes(method), CORE)
            self.replays.forwarded(parse_message(ok_bytes(method)), wic)
            self.replays.received()
        self.assertFalse(self.replays.replay(ok_bytes("BYE"), CORE))
        self.assertTrue(self.replays.replay(ok_bytes("INVITE"), CORE))
        self.assertEqual(len(wic.raw), 1)

    def test_a_2xx_forwarded_without_its_body_is_not_remembered(self) -> None:
        # A copy that came before the answer toward the WIC was known went on without SDP; the
        # next copy must be worked out again, to carry the answer.
        with_sdp = ok_bytes().replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 4\r\n\r\nv=0\n")
        wic = RawConnection("WS", Address("192.0.2.9", 40000))
        self.replays.receiving(with_sdp, CORE)
        self.replays.forwarded(parse_message(ok_bytes()), wic)
        self.assertFalse(self.replays.replay(with_sdp, CORE))

    def test_entries_are_forgotten_after_64_t1_by_one_timer(self) -> None:
        self.forward_ack()
        self.clock.advance(REPLAY_WINDOW - 1)
        self.forward_ack(ack_bytes("second-call"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.replays), 1)
        self.assertFalse(self.replays.replay(ack_bytes(), "wic-flow"))
        self.clock.advance(REPLAY_WINDOW)
        self.assertEqual(len(self.replays), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_copy_is_sent_on_at_most_as_often_as_a_uas_retransmits(self) -> None:
        self.forward_ack()
        sent = [self.replays.replay(ack_bytes(), "wic-flow") for _ in range(REPLAYS_PER_ENTRY + 2)]
        self.assertEqual(sent, [True] * REPLAYS_PER_ENTRY + [False, False])
        self.assertEqual(len(self.core.raw), REPLAYS_PER_ENTRY)

    def test_a_connection_gone_ends_the_entry(self) -> None:
        self.forward_ack()
        self.core.connected = False
        self.assertFalse(self.replays.replay(ack_bytes(), "wic-flow"))
        self.assertEqual(len(self.replays), 0)

    def test_entries_are_bounded_oldest_first(self) -> None:
        for n in range(ENTRIES + 1):
            self.forward_ack(ack_bytes(f"call-{n}"))
        self.assertEqual(len(self.replays), ENTRIES)
        self.assertFalse(self.replays.replay(ack_bytes("call-0"), "wic-flow"))
        self.assertTrue(self.replays.replay(ack_bytes(f"call-{ENTRIES}"), "wic-flow"))

    def test_close_cancels_the_timer(self) -> None:
        self.forward_ack()
        self.replays.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.replays), 0)


class ForwardingSink:
    """A transaction user that forwards every message statelessly, as ``StatefulProxy`` does an ACK."""

    def __init__(self, replays: StatelessReplays, next_hop: RawConnection) -> None:
        self.replays = replays
        self.next_hop = next_hop
        self.received: list[Message] = []

    def __call__(self, message: Message, connection: Any) -> None:
        self.received.append(message)
        message.headers.set("Max-Forwards", "69")
        self.next_hop.send_message(message)
        self.replays.forwarded(message, self.next_hop)


class UdpTransportReplayTests(unittest.TestCase):
    def test_a_copy_from_the_same_address_is_not_parsed_again(self) -> None:
        clock = task.Clock()
        replays = StatelessReplays(clock)
        next_hop = RawConnection("WS", Address("192.0.2.9", 40000))
        sink = ForwardingSink(replays, next_hop)
        udp = UdpTransport(clock, sink, TransportSettings())
        udp.replays = replays
        udp.makeConnection(FakeDatagramTransport())  # type: ignore[arg-type]
        for _ in range(3):
            udp.datagramReceived(ok_bytes(), CORE)
        udp.datagramReceived(ok_bytes(), ("127.0.0.1", 5071))  # another source: the full path
        self.assertEqual(len(sink.received), 2)
        self.assertEqual(next_hop.raw, [sink.received[0].serialize()] * 2)
        self.assertEqual(replays.replayed, 2)
        udp.doStop()
        replays.close()


class ProxyReplayTests(unittest.TestCase):
    """The proxy tells the replays what it forwarded statelessly, and the first 2xx to an INVITE."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.connector = FakeConnector()
        self.proxy = StatefulProxy(
            self.clock, self.connector, NextHopResolver(MemoryAuthority([])), StaticPolicy(UAS), ProxySettings(), secret=b"k"
        )
        self.proxy.transactions = FakeTransactions()
        self.replays = StatelessReplays(self.clock)
        self.proxy.replays = self.replays

    def test_the_first_2xx_to_an_invite_forwarded_upstream_is_remembered(self) -> None:
        inbound = RawConnection(remote=UAC, local=PROXY_UDP)
        invite = request_text()
        server = FakeServerTransaction(invite, inbound)
        self.proxy.request_received(invite, server)
        (client,) = self.proxy.transactions.of("INVITE")
        raw = make_response(client.request, 200, to_tag="uas").serialize()  # as on the wire
        self.replays.receiving(raw, CORE)
        self.proxy.response_received(parse_message(raw), client)
        self.replays.received()
        self.assertEqual(server.statuses, [100, 200])
        self.assertTrue(self.replays.replay(raw, CORE))
        self.assertEqual(inbound.raw, [server.responses[-1].serialize()])
        self.replays.close()

    def test_an_ack_forwarded_statelessly_is_remembered_as_the_bytes_sent(self) -> None:
        core = RawConnection("UDP", UAS.address, PROXY_UDP)
        self.connector.connections[UAS] = core
        self.proxy.policy = DefaultRoutingPolicy(self.connector, self.proxy.resolver)
        raw = ack_bytes().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nRoute: <sip:192.0.2.20:5080;lr>\r\n")
        wic = RawConnection("WS", Address("192.0.2.9", 40000))
        self.replays.receiving(raw, wic)
        self.proxy.ack_received(parse_message(raw), wic)
        self.replays.received()
        (sent,) = core.raw  # sent once, as bytes serialised once
        self.assertTrue(sent.startswith(b"ACK ") and b"Max-Forwards: 69" in sent)
        self.assertTrue(self.replays.replay(raw, wic))
        self.assertEqual(core.raw, [sent, sent])
        self.replays.close()
