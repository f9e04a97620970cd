"""UDP/TCP/TLS transports with real sockets on 127.0.0.1 (port 0)."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, endpoints, reactor, ssl, task
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.trial import unittest

from tests.support.certificates import self_signed_certificate

from epcscf.sip.connection import Address, Connection, ConnectionLost
from epcscf.sip.message import Message, Request, make_response
from epcscf.sip.parser import ParserLimits, parse_message
from epcscf.sip.resolver import Target
from epcscf.sip.transport import TransportManager
from epcscf.sip.transport_specs import ListenerSpec, TransportSettings
from epcscf.sip.transport_udp import UdpTransport
from tests.support.processes import wait_for


def options_request(branch: str = "z9hG4bK-1", via: str = "SIP/2.0/UDP 127.0.0.1:5999;rport", body: bytes = b"") -> bytes:
    head = (
        f"OPTIONS sip:service@127.0.0.1 SIP/2.0\r\n"
        f"Via: {via};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:a@example.com>;tag=1\r\n"
        "To: <sip:service@127.0.0.1>\r\n"
        f"Call-ID: {branch}@test\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Collector:
    """A sink that records every message and its connection."""

    def __init__(self) -> None:
        self.received: list[tuple[Message, Connection]] = []

    def __call__(self, message: Message, connection: Connection) -> None:
        self.received.append((message, connection))


class UdpPeer(DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        self.datagrams.append(data)


class RawClient(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


def self_signed(directory: str, name: str = "localhost") -> tuple[str, str, bytes]:
    """A self-signed ECDSA certificate for ``name`` and 127.0.0.1: (cert path, key path, PEM)."""
    return self_signed_certificate(directory, name)


class ListenerSpecTests(unittest.TestCase):
    def test_parse_forms(self) -> None:
        self.assertEqual(ListenerSpec.parse("udp:127.0.0.1:5060"), ListenerSpec("UDP", "127.0.0.1", 5060))
        self.assertEqual(ListenerSpec.parse("tls:[::1]:5061"), ListenerSpec("TLS", "::1", 5061))
        with self.assertRaises(ValueError):
            ListenerSpec.parse("sctp:127.0.0.1:5060")
        with self.assertRaises(ValueError):
            ListenerSpec.parse("udp:127.0.0.1")


class UdpTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sink = Collector()
        self.manager = TransportManager(reactor, self.sink)
        self.addCleanup(self.manager.close)
        self.address = self.manager.listen("udp:127.0.0.1:0")
        self.peer = UdpPeer()
        self.peer_port = reactor.listenUDP(0, self.peer, interface="127.0.0.1")
        self.addCleanup(self.peer_port.stopListening)
        self.peer_address = Address("127.0.0.1", self.peer_port.getHost().port)

    def send(self, data: bytes) -> None:
        self.peer.transport.write(data, (self.address.host, self.address.port))

    async def test_request_in_response_back_to_source(self) -> None:
        self.send(options_request())
        await wait_for(lambda: len(self.sink.received) == 1)
        request, connection = self.sink.received[0]
        self.assertIsInstance(request, Request)
        self.assertEqual(connection.transport, "UDP")
        self.assertFalse(connection.reliable)
        # RFC 3581 §4: rport requested → the reply goes to the source address.
        self.assertEqual(connection.remote, self.peer_address)
        connection.send_message(make_response(request, 200, to_tag="x"))  # type: ignore[arg-type]
        await wait_for(lambda: len(self.peer.datagrams) == 1)
        self.assertTrue(self.peer.datagrams[0].startswith(b"SIP/2.0 200 OK\r\n"))

    async def test_without_rport_reply_goes_to_via_port(self) -> None:
        # RFC 3261 §18.2.2: no rport → source IP, Via sent-by port.
        self.send(options_request(via="SIP/2.0/UDP 127.0.0.1:5999"))
        await wait_for(lambda: len(self.sink.received) == 1)
        self.assertEqual(self.sink.received[0][1].remote, Address("127.0.0.1", 5999))

    async def test_one_connection_per_peer_is_reused(self) -> None:
        self.send(options_request("z9hG4bK-a"))
        self.send(options_request("z9hG4bK-b"))
        await wait_for(lambda: len(self.sink.received) == 2)
        self.assertIs(self.sink.received[0][1], self.sink.received[1][1])
        connection = self.successResultOf(self.manager.connect(Target("UDP", "127.0.0.1", self.peer_address.port)))
        self.assertIs(connection, self.sink.received[0][1])

    async def test_malformed_request_gets_400_and_garbage_is_dropped(self) -> None:
        bad = options_request().replace(b"Content-Length: 0", b"Content-Length: 50")  # body too short
        self.send(b"\x00\x01garbage that is no SIP at all")
        self.send(b"\r\n\r\n")  # a keep-alive: ignored
        self.send(bad)
        await wait_for(lambda: len(self.peer.datagrams) == 1)
        self.assertTrue(self.peer.datagrams[0].startswith(b"SIP/2.0 400 "))
        self.assertEqual(self.sink.received, [])

    def test_udp_send_failure_is_connection_lost(self) -> None:
        # RFC 3261 §18.4: the transaction layer sees a transport error, not an OSError.
        connection = self.successResultOf(self.manager.connect(Target("UDP", "127.0.0.1", self.peer_address.port)))
        huge = Request("MESSAGE", "sip:x@127.0.0.1", body=b"x" * 70000)
        with self.assertRaises(ConnectionLost):
            connection.send_message(huge)

    async def test_oversize_datagram_is_rejected(self) -> None:
        self.manager.settings = TransportSettings(limits=ParserLimits(max_message_size=1024))
        await self.manager.close()
        self.manager = TransportManager(reactor, self.sink, TransportSettings(limits=ParserLimits(max_message_size=1024)))
        self.addCleanup(self.manager.close)
        self.address = self.manager.listen("udp:127.0.0.1:0")
        self.send(options_request(body=b"x" * 2000))
        await wait_for(lambda: len(self.peer.datagrams) == 1)
        self.assertRegex(self.peer.datagrams[0].split(b"\r\n")[0], rb"SIP/2.0 (413|513) ")
        self.assertEqual(self.sink.received, [])


class FakeDatagramTransport:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def getHost(self) -> Any:
        return type("H", (), {"host": "127.0.0.1", "port": 5060})()

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))


class UdpIdleExpiryTests(unittest.TestCase):
    def test_idle_peers_are_forgotten_after_udp_idle_timeout(self) -> None:
        clock = task.Clock()
        sink = Collector()
        udp = UdpTransport(clock, sink, TransportSettings(udp_idle_timeout=60))
        udp.makeConnection(FakeDatagramTransport())  # type: ignore[arg-type]
        udp.datagramReceived(options_request(), ("127.0.0.1", 4000))
        self.assertEqual(udp.peer_count(), 1)
        clock.advance(31)
        udp.datagramReceived(options_request("z9hG4bK-2"), ("127.0.0.1", 4000))  # refreshes
        clock.advance(59)
        self.assertEqual(udp.peer_count(), 1)
        clock.advance(31)
        self.assertEqual(udp.peer_count(), 0)
        udp.doStop()
        self.assertEqual(clock.getDelayedCalls(), [])


class TcpTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sink = Collector()
        self.manager = TransportManager(reactor, self.sink)
        self.addCleanup(self.manager.close)
        self.address = self.manager.listen("tcp:127.0.0.1:0")

    async def client(self) -> RawClient:
        client = RawClient()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.address.port)
        await endpoints.connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.transport.loseConnection() or client.lost)
        return client

    async def test_partial_reads_and_several_messages_per_read(self) -> None:
        client = await self.client()
        one, two, three = options_request("z9hG4bK-1"), options_request("z9hG4bK-2"), options_request("z9hG4bK-3", body=b"hello")
        client.transport.write(one + two + three[:25])
        await wait_for(lambda: len(self.sink.received) == 2)
        client.transport.write(three[25:-2])
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.sink.received), 2)
        client.transport.write(three[-2:])
        await wait_for(lambda: len(self.sink.received) == 3)
        self.assertEqual(self.sink.received[2][0].body, b"hello")
        connection = self.sink.received[0][1]
        self.assertEqual((connection.transport, connection.reliable), ("TCP", True))
        self.assertTrue(all(c is connection for _, c in self.sink.received))

    async def test_crlf_keepalive_is_answered_with_crlf(self) -> None:
        # RFC 5626 §4.4.1
        client = await self.client()
        client.transport.write(b"\r\n\r\n")
        await wait_for(lambda: client.data == b"\r\n")
        self.assertEqual(self.sink.received, [])

    async def test_missing_content_length_gives_400_and_close_without_hurting_others(self) -> None:
        good = await self.client()
        bad = await self.client()
        bad.transport.write(options_request().replace(b"Content-Length: 0\r\n", b""))
        await bad.lost
        self.assertTrue(bad.data.startswith(b"SIP/2.0 400 "))
        good.transport.write(options_request("z9hG4bK-ok"))
        await wait_for(lambda: len(self.sink.received) == 1)
        request, connection = self.sink.received[0]
        connection.send_message(make_response(request, 200, to_tag="t"))  # type: ignore[arg-type]
        await wait_for(lambda: good.data.startswith(b"SIP/2.0 200 OK"))

    async def test_response_reuses_the_request_connection(self) -> None:
        client = await self.client()
        client.transport.write(options_request(via="SIP/2.0/TCP 127.0.0.1:5999"))
        await wait_for(lambda: len(self.sink.received) == 1)
        request, connection = self.sink.received[0]
        # §18.2.2 / connection table: connecting to the peer finds the same connection.
        again = self.successResultOf(self.manager.connect(Target("TCP", connection.remote.host, connection.remote.port)))
        self.assertIs(again, connection)
        connection.send_message(make_response(request, 200, to_tag="t"))  # type: ignore[arg-type]
        await wait_for(lambda: b"200 OK" in client.data)

    async def test_response_after_connection_loss_goes_to_via_sent_by(self) -> None:
        # RFC 3261 §18.2.2: the connection is gone → open one to the Via sent-by (received/rport).
        other_sink = Collector()
        peer = TransportManager(reactor, other_sink)
        self.addCleanup(peer.close)
        peer_address = peer.listen("tcp:127.0.0.1:0")
        client = await self.client()
        client.transport.write(options_request(via=f"SIP/2.0/TCP 127.0.0.1:{peer_address.port}"))
        await wait_for(lambda: len(self.sink.received) == 1)
        request, connection = self.sink.received[0]
        client.transport.loseConnection()
        await wait_for(lambda: not connection.connected)
        connection.send_message(make_response(request, 200, to_tag="t"))  # type: ignore[arg-type]
        await wait_for(lambda: len(other_sink.received) == 1)
        self.assertEqual(other_sink.received[0][0].status, 200)  # type: ignore[union-attr]

    async def test_outbound_connect_reuse_and_idle_timeout(self) -> None:
        clock = task.Clock()
        caller = TransportManager(reactor, Collector(), TransportSettings(idle_timeout=30), clock=clock)
        self.addCleanup(caller.close)
        target = Target("TCP", "127.0.0.1", self.address.port)
        first, second = await defer.gatherResults([caller.connect(target), caller.connect(target)])
        self.assertIs(first, second)
        first.send_message(parse_message(options_request(via="SIP/2.0/TCP 127.0.0.1:1")))
        await wait_for(lambda: len(self.sink.received) == 1)
        self.assertIs(await caller.connect(target), first)
        clock.advance(29)
        self.assertTrue(first.connected)
        clock.advance(2)
        self.assertFalse(first.connected)
        await first.closed
        await wait_for(lambda: not self.sink.received[0][1].connected)

    async def test_connect_refused_fails_the_deferred(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        with self.assertRaises(Exception):
            await self.manager.connect(Target("TCP", "127.0.0.1", port))


class TlsTests(unittest.TestCase):
    def setUp(self) -> None:
        cert_path, key_path, self.cert_pem = self_signed(_tempdir(self))
        self.sink = Collector()
        self.server = TransportManager(
            reactor, self.sink, TransportSettings(tls_certificate=cert_path, tls_private_key=key_path)
        )
        self.addCleanup(self.server.close)
        self.address = self.server.listen("tls:127.0.0.1:0")
        trust = ssl.Certificate.loadPEM(self.cert_pem)
        self.client = TransportManager(reactor, Collector(), TransportSettings(tls_trust_root=trust))
        self.addCleanup(self.client.close)

    async def test_tls_message_both_ways_with_verified_name(self) -> None:
        connection = await self.client.connect(Target("TLS", "127.0.0.1", self.address.port, "localhost"))
        self.assertEqual(connection.transport, "TLS")
        connection.send_message(parse_message(options_request(via="SIP/2.0/TLS 127.0.0.1:1")))
        await wait_for(lambda: len(self.sink.received) == 1)
        self.assertEqual(self.sink.received[0][1].transport, "TLS")

    async def test_outbound_tls_hostname_mismatch_fails(self) -> None:
        with self.assertRaises(Exception):
            await self.client.connect(Target("TLS", "127.0.0.1", self.address.port, "wrong.example"))
        self.assertEqual(self.sink.received, [])
        self.assertEqual([c for c in self.client.stream_connections() if c.connected], [])

    async def test_close_fails_a_connect_still_in_its_handshake(self) -> None:
        # A TCP peer that never answers the TLS ClientHello: connect() is still pending.
        silent = TransportManager(reactor, Collector())
        self.addCleanup(silent.close)
        silent_address = silent.listen("tcp:127.0.0.1:0")
        pending = self.client.connect(Target("TLS", "127.0.0.1", silent_address.port, "localhost"))
        await wait_for(lambda: len(silent.stream_connections()) == 1)
        self.assertNoResult(pending)
        await self.client.close()
        with self.assertRaises(Exception):
            await pending
        self.assertEqual(self.client.stream_connections(), [])

    def test_tls_listener_without_certificate_is_a_clear_error(self) -> None:
        manager = TransportManager(reactor, Collector())
        with self.assertRaisesRegex(ValueError, "tls_certificate"):
            manager.listen("tls:127.0.0.1:0")


def _tempdir(case: unittest.TestCase) -> str:
    path = case.mktemp()
    os.makedirs(path)
    return path


class UdpDirectSendTests(unittest.TestCase):
    """A UDP connection sends with the socket's own ``sendto`` (issue 16): what Twisted's
    ``Port.write`` refused per datagram is refused once per connection, still as ConnectionLost."""

    setUp = UdpTests.setUp  # the same listener and peer (not UdpTests' tests again)

    def test_an_address_port_write_refuses_is_connection_lost(self) -> None:
        udp = self.manager._udp[0]
        self.assertIsNotNone(udp.sendto)  # the direct path is the one taken here
        for host in ("::1", "not-an-address.invalid"):  # IPv6 from an IPv4 socket; a name
            with self.assertRaises(ConnectionLost):
                udp.connection_to(Address(host, 5060)).send_bytes(b"x")

    async def test_the_direct_send_arrives(self) -> None:
        self.manager._udp[0].connection_to(self.peer_address).send_bytes(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        await wait_for(lambda: len(self.peer.datagrams) == 1)
        self.assertEqual(self.peer.datagrams[0], b"OPTIONS sip:x SIP/2.0\r\n\r\n")
