"""``epcscf.sip.tcp_write.write_now`` on real loopback TCP connections."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, protocol
from twisted.trial import unittest

from epcscf.sip.tcp_write import write_now


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.enough: defer.Deferred[bytes] = defer.Deferred()
        self.expected = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.received += data
        if len(self.received) >= self.expected and not self.enough.called:
            self.enough.callback(self.received)


class WriteNowTests(unittest.TestCase):
    @defer.inlineCallbacks
    def connected_pair(self) -> Any:
        from twisted.internet import reactor

        server_side: defer.Deferred[protocol.Protocol] = defer.Deferred()

        class Accept(protocol.Protocol):
            def connectionMade(self) -> None:  # noqa: N802
                server_side.callback(self)

        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Accept)
        )
        self.addCleanup(port.stopListening)
        client = Collect()
        yield endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        server = yield server_side
        self.addCleanup(client.transport.loseConnection)
        self.addCleanup(server.transport.loseConnection)
        return server.transport, client, reactor

    @defer.inlineCallbacks
    def test_an_idle_connection_sends_at_once_without_becoming_a_writer(self) -> Any:
        transport, client, reactor = yield self.connected_pair()
        client.expected = 5
        write_now(transport, b"hello")
        self.assertNotIn(transport, reactor.getWriters())  # nothing queued for a later turn
        self.assertEqual(transport._tempDataBuffer, [])
        self.assertEqual((yield client.enough), b"hello")

    @defer.inlineCallbacks
    def test_data_queued_first_stays_first(self) -> Any:
        transport, client, _ = yield self.connected_pair()
        client.expected = 6
        transport.write(b"one")
        write_now(transport, b"two")  # queued behind "one", never sent around it
        write_now(transport, b"")
        self.assertEqual((yield client.enough), b"onetwo")

    @defer.inlineCallbacks
    def test_a_large_write_goes_out_whole_and_in_order(self) -> Any:
        transport, client, _ = yield self.connected_pair()
        big = bytes(range(256)) * 40000  # ~10 MB: more than the socket buffer takes at once
        client.expected = len(big) + 4
        write_now(transport, big)
        write_now(transport, b"tail")
        self.assertEqual((yield client.enough), big + b"tail")

    @defer.inlineCallbacks
    def test_a_closing_connection_is_left_to_twisted(self) -> Any:
        transport, _, _ = yield self.connected_pair()
        transport.loseConnection()
        write_now(transport, b"late")  # queued as Twisted's write queues it: flushed before the close
        self.assertEqual(transport._tempDataBuffer, [b"late"])
