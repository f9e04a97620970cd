"""No reference cycles per bad message or per closed connection: what they leave is freed by
reference counting at once, not by the cyclic collector later (docs/performance.md,
"Reference cycles at their source").  Each test runs with the collector disabled."""

from __future__ import annotations

import gc
import weakref
from collections import Counter
from typing import Any, Callable

from twisted.internet import endpoints, reactor, task
from twisted.trial import unittest


from epcscf.sip.parser import FramingError, ParserLimits, StreamFramer
from epcscf.sip.transport import TransportManager
from tests.support.processes import wait_for
from tests.test_calls_media import CallMediaTestCase
from tests.test_ice_agent import IceTestCase
from tests.test_sip_transport import Collector, RawClient, options_request


def cyclic_garbage(operation: Callable[[], Any]) -> Counter:
    """The objects by type that ``operation`` left in reference cycles (a saving collection)."""
    gc.collect()
    gc.disable()
    try:
        operation()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = Counter(type(thing).__name__ for thing in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return found


class FramerTests(unittest.TestCase):
    def test_an_unparseable_message_on_a_stream_leaves_no_cycle(self) -> None:
        bad_via = options_request(via="SIP/2.0/@TCP@ 127.0.0.1:5999")

        def feed() -> None:
            [event] = StreamFramer(ParserLimits()).feed(bad_via)
            self.assertIsInstance(event, FramingError)
            self.assertEqual(event.error.status, 400)  # the copy keeps what the answer needs
            self.assertIsNotNone(event.error.partial)

        self.assertEqual(cyclic_garbage(feed), Counter())


class ClosedConnectionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sink = Collector()
        self.manager = TransportManager(reactor, self.sink)
        self.addCleanup(self.manager.close)
        self.address = self.manager.listen("tcp:127.0.0.1:0")
        self.addCleanup(gc.enable)

    async def test_a_closed_tcp_connection_is_freed_without_the_collector(self) -> None:
        client = RawClient()
        await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.address.port), client)
        client.transport.write(options_request("z9hG4bK-1"))
        await wait_for(lambda: len(self.sink.received) == 1)
        connection = weakref.ref(self.sink.received[0][1])
        protocol = weakref.ref(self.sink.received[0][1].protocol)
        self.sink.received.clear()
        gc.collect()
        gc.disable()
        client.transport.loseConnection()
        await client.lost
        await wait_for(lambda: not self.manager.connection_table.all)
        await task.deferLater(reactor, 0.01, lambda: None)  # the reactor lets go of its selectable
        self.assertIsNone(connection())
        self.assertIsNone(protocol())


class ClosedCallMediaTests(CallMediaTestCase):
    async def test_a_closed_calls_media_is_freed_without_the_collector(self) -> None:
        media, _, _, _ = await self.originating_call()
        self.medias.remove(media)
        freed = weakref.ref(media)
        streams = weakref.ref(media._streams)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        await media.close()
        del media
        await task.deferLater(reactor, 0.01, lambda: None)
        self.assertIsNone(freed())  # its DTLS and streams parts let go of its callbacks
        self.assertIsNone(streams())  # and each agent of the closure holding them (first_datagram)


class ClosedIceAgentTests(IceTestCase):
    async def test_a_closed_full_ice_agent_is_freed_without_the_collector(self) -> None:
        agent = self.agent(controlling=False)
        wic = await self.wic(controlling=True)
        await self.connect(agent, wic)
        self.agents.remove(agent)
        freed = weakref.ref(agent)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        await agent.close()  # the back-end, its aioice connection and pairs, consent: no cycle left
        del agent
        await task.deferLater(reactor, 0.01, lambda: None)
        self.assertIsNone(freed())

    async def test_an_agent_closed_while_its_checks_are_in_flight_is_freed_without_the_collector(self) -> None:
        agent = self.agent(controlling=True)
        silent = await self.wic(controlling=False)  # bound, never told our credentials: never answers
        await agent.gather()
        agent.set_remote("silentwic", "s" * 22, [c.to_sdp() for c in silent.local_candidates])
        agent.start().addErrback(lambda _: None)
        await task.deferLater(reactor, 0.1, lambda: None)  # a check sent, its answer awaited
        self.agents.remove(agent)
        # the aioice connection: its pairs, sockets and queues hang off it
        freed = weakref.ref(agent._backend._current.connection)  # type: ignore[attr-defined]
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        await agent.close()  # cancels the check: its task's exception has frames that refer to the pair
        del agent
        await task.deferLater(reactor, 0.01, lambda: None)
        self.assertIsNone(freed())
