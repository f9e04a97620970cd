"""The SIP UDP listener's read (``epcscf.sip.transport_udp.UdpPort``): the datagrams Twisted's
``udp.Port`` reads in one wake-up, in the same order, without the failing ``recvfrom`` that
ends Twisted's loop when one datagram was waiting.  Real sockets on 127.0.0.1; ``doRead`` is
called as the reactor would call it, with the port left out of the reactor's readers."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor, udp
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from epcscf.sip.transport_udp import UdpPort, adopt_udp, listen_udp


class Collector(DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Any]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        self.datagrams.append((data, addr))


class CountingSocket:
    """The port's socket, counting ``recvfrom`` calls and the ones that found nothing."""

    def __init__(self, inner: socket.socket) -> None:
        self._inner = inner
        self.reads = 0
        self.empty_reads = 0

    def recvfrom(self, size: int) -> Any:
        self.reads += 1
        try:
            return self._inner.recvfrom(size)
        except BlockingIOError:
            self.empty_reads += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class UdpPortTests(unittest.TestCase):
    def listen(self, port_class: type[udp.Port]) -> tuple[udp.Port, Collector, CountingSocket]:
        collector = Collector()
        if port_class is UdpPort:
            port = listen_udp(reactor, 0, collector, "127.0.0.1")
        else:
            port = reactor.listenUDP(0, collector, interface="127.0.0.1")
        self.assertIsInstance(port, port_class)
        port.stopReading()  # this test calls doRead itself
        self.addCleanup(port.stopListening)
        counting = CountingSocket(port.socket)
        port.socket = counting
        return port, collector, counting

    def sender(self) -> socket.socket:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        return sender

    def read_after_sending(self, port_class: type[udp.Port], datagrams: list[bytes]) -> tuple[list[Any], CountingSocket]:
        port, collector, counting = self.listen(port_class)
        sender = self.sender()
        for data in datagrams:
            sender.sendto(data, ("127.0.0.1", port.getHost().port))
        port.doRead()
        return collector.datagrams, counting

    def test_one_wake_up_delivers_what_twisteds_port_delivers_in_order(self) -> None:
        for count in (0, 1, 2, 5, 40):
            datagrams = [f"datagram {i}".encode() * (i % 7 + 1) for i in range(count)]
            ours, _ = self.read_after_sending(UdpPort, datagrams)
            twisteds, _ = self.read_after_sending(udp.Port, datagrams)
            self.assertEqual([data for data, _ in ours], datagrams)
            self.assertEqual([data for data, _ in ours], [data for data, _ in twisteds])
            self.assertTrue(all(address[0] == "127.0.0.1" and len(address) == 2 for _, address in ours))

    def test_one_datagram_waiting_is_read_without_a_failing_read(self) -> None:
        delivered, counting = self.read_after_sending(UdpPort, [b"REGISTER"])
        self.assertEqual([data for data, _ in delivered], [b"REGISTER"])
        self.assertEqual((counting.reads, counting.empty_reads), (1, 0))
        # Twisted's port reads until a read finds nothing
        _, twisteds = self.read_after_sending(udp.Port, [b"REGISTER"])
        self.assertEqual((twisteds.reads, twisteds.empty_reads), (2, 1))

    def test_several_waiting_are_read_until_none_is_left(self) -> None:
        delivered, counting = self.read_after_sending(UdpPort, [b"a", b"b", b"c"])
        self.assertEqual([data for data, _ in delivered], [b"a", b"b", b"c"])
        self.assertEqual(counting.empty_reads, 1)  # Twisted's loop ends the burst as before

    def test_a_wake_up_with_nothing_to_read_delivers_nothing(self) -> None:
        delivered, _ = self.read_after_sending(UdpPort, [])
        self.assertEqual(delivered, [])

    def test_a_failing_protocol_does_not_stop_the_reading(self) -> None:
        port, collector, _ = self.listen(UdpPort)
        calls: list[bytes] = []

        def failing(data: bytes, addr: Any) -> None:
            calls.append(data)
            if data == b"first":
                raise RuntimeError("a bug in the protocol")

        collector.datagramReceived = failing  # type: ignore[method-assign]
        sender = self.sender()
        sender.sendto(b"first", ("127.0.0.1", port.getHost().port))
        sender.sendto(b"second", ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual(calls, [b"first", b"second"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_an_adopted_socket_reads_the_same_way(self) -> None:
        bound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        bound.bind(("127.0.0.1", 0))
        bound.setblocking(False)
        self.addCleanup(bound.close)  # the parent's copy (a supervisor keeps one)
        collector = Collector()
        port = adopt_udp(reactor, bound.fileno(), socket.AF_INET, collector)
        self.assertIsInstance(port, UdpPort)
        port.stopReading()
        self.addCleanup(port.stopListening)
        self.sender().sendto(b"OPTIONS", ("127.0.0.1", bound.getsockname()[1]))
        port.doRead()
        self.assertEqual([data for data, _ in collector.datagrams], [b"OPTIONS"])
