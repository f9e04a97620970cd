"""RFC 3261 §18.1.1 with real sockets on 127.0.0.1: a request the proxy forwards toward a UDP
next hop goes over TCP to the same address when it is larger than 1300 bytes (the path MTU is
unknown), its Via then says TCP; a small one stays on UDP; without a TCP listener at the next
hop the large one still goes, over UDP.  Responses keep their transport (§18.2.2)."""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from epcscf.sip.message import Request, make_response
from epcscf.sip.parser import parse_message
from epcscf.sip.proxy import ProxySettings, StatefulProxy
from epcscf.sip.proxy_policy import DefaultRoutingPolicy
from epcscf.sip.resolver import NextHopResolver, Target
from epcscf.sip.transaction import TransactionLayer
from epcscf.sip.transaction_machine import TimerSettings
from epcscf.sip.transport import TransportManager
from epcscf.sip.transport_udp import UDP_ONLY_MEMORY, UDP_REQUEST_LIMIT, congestion_controlled_target
from tests.support.processes import wait_for
from tests.support.sipp import free_port
from tests.test_sip_resolver import MemoryAuthority
from tests.test_sip_transport import Collector


class Upstream(DatagramProtocol):
    """The previous hop: sends requests to the proxy over UDP, collects what comes back."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        self.datagrams.append(data)


def message_request(port: int, body_size: int) -> bytes:
    body = b"x" * body_size
    branch = "z9hG4bK" + secrets.token_hex(6)
    head = (
        "MESSAGE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: {branch}@test\r\n"
        "CSeq: 1 MESSAGE\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class TargetChoiceTests(unittest.TestCase):
    def test_only_a_large_request_toward_udp_changes_transport(self) -> None:
        udp = Target("UDP", "127.0.0.1", 5070)
        self.assertIsNone(congestion_controlled_target(udp, UDP_REQUEST_LIMIT))
        self.assertEqual(congestion_controlled_target(udp, UDP_REQUEST_LIMIT + 1), Target("TCP", "127.0.0.1", 5070))
        self.assertIsNone(congestion_controlled_target(Target("TCP", "127.0.0.1", 5070), 60000))
        self.assertIsNone(congestion_controlled_target(Target("TLS", "127.0.0.1", 5061), 60000))


class LargeRequestsTakeTcpTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.next_hop_port = free_port()
        self.downstream_sink = Collector()
        self.downstream = TransportManager(reactor, self.downstream_sink)
        self.addCleanup(self.downstream.close)
        self.downstream.listen(f"udp:127.0.0.1:{self.next_hop_port}")
        self.proxy_port = self.start_proxy(f"sip:127.0.0.1:{self.next_hop_port};transport=udp")
        self.upstream = Upstream()
        port = reactor.listenUDP(0, self.upstream, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.upstream_port = port.getHost().port

    def start_proxy(self, next_hop: str) -> int:
        """Our stateful proxy on UDP only (what [sip] listen = udp:… gives), one static next hop."""
        layer_holder: dict[str, TransactionLayer] = {}
        # The transports' clock (idle timers, the memory of next hops without TCP) is the test's.
        self.clock = task.Clock()
        transports = TransportManager(
            reactor, lambda message, connection: layer_holder["layer"].receive(message, connection), clock=self.clock
        )
        address = transports.listen("udp:127.0.0.1:0")
        resolver = NextHopResolver(MemoryAuthority([]))
        policy = DefaultRoutingPolicy(transports, resolver, [next_hop], record_route=False)
        proxy = StatefulProxy(reactor, transports, resolver, policy, ProxySettings())
        layer = TransactionLayer(reactor, proxy, lambda connection: TimerSettings(t1=0.05, t2=0.2, t4=0.2))
        layer_holder["layer"] = layer
        proxy.transactions = layer

        def stop() -> defer.Deferred:
            layer.close()
            return transports.close()

        self.addCleanup(stop)
        return address.port

    def send(self, body_size: int) -> bytes:
        data = message_request(self.upstream_port, body_size)
        self.upstream.transport.write(data, ("127.0.0.1", self.proxy_port))
        self.sent_call_id = parse_message(data).headers.get("Call-ID")
        return data

    async def forwarded(self) -> tuple[Request, Any]:
        """The last request sent, as the next hop got it (first copy: retransmissions follow)."""

        def arrived() -> list[tuple[Any, Any]]:
            return [(m, c) for m, c in self.downstream_sink.received if m.headers.get("Call-ID") == self.sent_call_id]

        await wait_for(lambda: bool(arrived()), timeout=5)
        request, connection = arrived()[0]
        assert isinstance(request, Request)
        return request, connection

    async def test_request_over_1300_bytes_goes_over_tcp_and_its_response_comes_back(self) -> None:
        self.downstream.listen(f"tcp:127.0.0.1:{self.next_hop_port}")
        sent = self.send(body_size=1000)
        self.assertLess(len(sent), 1300)  # over the limit only with what the proxy adds (Via, rport)
        request, connection = await self.forwarded()
        self.assertGreater(len(request.serialize()), 1300)
        self.assertEqual(connection.transport, "TCP")
        self.assertEqual(len(request.body), 1000)
        self.assertTrue(request.headers.get("Via").startswith("SIP/2.0/TCP 127.0.0.1:"), request.headers.get("Via"))
        # The next hop answers on that connection; the response goes upstream over UDP.
        connection.send_message(make_response(request, 200, to_tag="b1"))
        await wait_for(lambda: bool(self.upstream.datagrams), timeout=5)
        response = parse_message(self.upstream.datagrams[0])
        self.assertEqual(response.status, 200)  # type: ignore[union-attr]
        self.assertEqual(len(response.headers.get_all("Via")), 1)

    async def test_small_request_stays_on_udp(self) -> None:
        self.downstream.listen(f"tcp:127.0.0.1:{self.next_hop_port}")
        self.send(body_size=200)
        request, connection = await self.forwarded()
        self.assertEqual(connection.transport, "UDP")
        self.assertTrue(request.headers.get("Via").startswith("SIP/2.0/UDP 127.0.0.1:"), request.headers.get("Via"))

    async def test_the_limit_counts_the_request_as_it_goes_out_with_our_via(self) -> None:
        # RFC 3261 §18.1.1: a request of exactly 1300 bytes on the wire (our Via and the
        # received parameter included) stays on UDP; one byte more takes TCP.
        self.downstream.listen(f"tcp:127.0.0.1:{self.next_hop_port}")
        self.send(body_size=200)
        small, _ = await self.forwarded()
        at_limit = 200 + UDP_REQUEST_LIMIT - len(small.serialize())
        self.send(body_size=at_limit)
        request, connection = await self.forwarded()
        self.assertEqual((connection.transport, len(request.serialize())), ("UDP", UDP_REQUEST_LIMIT))
        self.send(body_size=at_limit + 1)
        request, connection = await self.forwarded()
        self.assertEqual(connection.transport, "TCP")
        self.assertEqual(len(request.headers.get_all("Via")), 2)  # ours (TCP) and the sender's: one Via of ours

    async def test_without_a_tcp_listener_the_large_request_falls_back_to_udp(self) -> None:
        self.send(body_size=1200)
        request, connection = await self.forwarded()
        self.assertEqual(connection.transport, "UDP")
        self.assertEqual(len(request.body), 1200)
        self.assertTrue(request.headers.get("Via").startswith("SIP/2.0/UDP 127.0.0.1:"), request.headers.get("Via"))
        connection.send_message(make_response(request, 200, to_tag="b1"))
        await wait_for(lambda: bool(self.upstream.datagrams), timeout=5)
        self.assertEqual(parse_message(self.upstream.datagrams[0]).status, 200)  # type: ignore[union-attr]

    async def test_a_next_hop_without_tcp_gets_large_requests_over_udp_for_a_while(self) -> None:
        self.send(body_size=1200)
        _, first = await self.forwarded()
        self.assertEqual(first.transport, "UDP")  # the TCP connect was refused
        self.downstream.listen(f"tcp:127.0.0.1:{self.next_hop_port}")
        self.send(body_size=1200)
        _, second = await self.forwarded()
        self.assertEqual(second.transport, "UDP")  # no new try while remembered
        self.clock.advance(UDP_ONLY_MEMORY + 1)
        self.send(body_size=1200)
        request, third = await self.forwarded()
        self.assertEqual(third.transport, "TCP")
        self.assertTrue(request.headers.get("Via").startswith("SIP/2.0/TCP "))
