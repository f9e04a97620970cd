"""``EdgeReactor`` (epcscf.event_loop): Twisted's asyncio reactor without a log context per event.

Each test runs a private ``EdgeReactor`` on a fresh asyncio loop (trial's own reactor does not run
during a synchronous test method), on real descriptors: a socket pair, a regular file.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from epcscf.event_loop import EdgeReactor


class Descriptor(FileDescriptor):
    """A raw descriptor that records what the reactor calls on it."""

    def __init__(self, reactor: EdgeReactor, fd: int) -> None:
        super().__init__(reactor=reactor)
        self.fd = fd
        self.read: list[bytes] = []
        self.writable = 0
        self.lost: list[Failure] = []
        self.raise_on_loss = False

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:  # noqa: N802
        data = os.read(self.fd, 4096)
        if data == b"boom":
            raise RuntimeError("doRead failed")
        if not data:
            return ConnectionDone()
        self.read.append(data)
        return None

    def doWrite(self) -> Any:  # noqa: N802
        self.writable += 1
        self.stopWriting()
        return None

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.lost.append(reason)
        if self.raise_on_loss:
            raise ValueError("connectionLost failed")


class EdgeReactorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.reactor = EdgeReactor(self.loop)
        self.ours, self.theirs = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.ours.setblocking(False)
        self.descriptor = Descriptor(self.reactor, self.ours.fileno())
        self.addCleanup(self.reactor.removeAll)

    def turn(self, seconds: float = 0.05) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def test_data_on_a_descriptor_reaches_its_doRead(self) -> None:
        self.descriptor.startReading()
        self.theirs.send(b"hello")
        self.turn()
        self.assertEqual(self.descriptor.read, [b"hello"])

    def test_a_doRead_that_raises_is_logged_and_its_descriptor_disconnected(self) -> None:
        self.descriptor.startReading()
        self.theirs.send(b"boom")
        self.turn()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([reason.type for reason in self.descriptor.lost], [RuntimeError])
        self.assertNotIn(self.descriptor, self.reactor.getReaders())

    def test_a_connectionLost_that_raises_is_logged_and_the_loop_goes_on(self) -> None:
        # What escapes _readOrWrite (here connectionLost, run by its disconnect) is logged
        # through Twisted's logger, not handed to asyncio's handler, and the loop keeps serving.
        handled: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: handled.append(context))
        self.descriptor.raise_on_loss = True
        self.descriptor.startReading()
        self.theirs.close()
        self.turn()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(handled, [])
        self.assertNotIn(self.descriptor, self.reactor.getReaders())
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        other = Descriptor(self.reactor, left.fileno())
        other.startReading()
        right.send(b"still served")
        self.turn()
        self.assertEqual(other.read, [b"still served"])

    def test_a_doRead_that_returns_a_reason_disconnects_with_it(self) -> None:
        self.descriptor.startReading()
        self.theirs.close()
        self.turn()
        self.assertEqual([reason.type for reason in self.descriptor.lost], [ConnectionDone])
        self.assertNotIn(self.descriptor, self.reactor.getReaders())

    def test_a_writable_descriptor_gets_doWrite(self) -> None:
        self.descriptor.startWriting()
        self.turn()
        self.assertEqual(self.descriptor.writable, 1)
        self.assertNotIn(self.descriptor, self.reactor.getWriters())

    def test_a_regular_file_that_epoll_refuses_is_polled_instead(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(b"from a file")
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        descriptor = Descriptor(self.reactor, fd)
        descriptor.startReading()
        self.assertIn(descriptor, self.reactor.getReaders())
        self.turn(0.1)
        self.assertEqual(descriptor.read, [b"from a file"])
        descriptor.stopReading()
        self.assertNotIn(descriptor, self.reactor.getReaders())
