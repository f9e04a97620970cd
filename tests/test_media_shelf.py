"""Media sockets parked between calls (`epcscf.ice.shelf`) and the calls' media timers on one
queue: real sockets on 127.0.0.1 (needs trial --reactor=asyncio)."""

from __future__ import annotations

import socket
from typing import Any

from aioice import stun
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from epcscf.ice import IceAgent, IceState, UdpPortPool
from epcscf.ice.shelf import PARK_QUARANTINE, SocketShelf
from epcscf.media.relay import CorePorts
from epcscf.pcscf.call_media import CallMediaEngine, CallMediaSettings
from epcscf.pcscf.media_engine import stop_media_engine
from tests.test_calls_media import LOCAL, PORTS, CallMediaTestCase, rtp, until


class FakeSocket:
    def __init__(self, *ports: int) -> None:
        self.ports = ports
        self.closed = False

    def close(self) -> None:
        self.closed = True


class SocketShelfTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = UdpPortPool(50000, 50009)
        self.shelf = SocketShelf(self.pool, self.clock, limit=2, quarantine=1.0)

    def parked(self, key: str = "k") -> FakeSocket:
        item = FakeSocket(self.pool.allocate())
        self.assertTrue(self.shelf.park(key, item))
        return item

    def test_a_parked_socket_is_handed_out_only_after_its_quarantine(self) -> None:
        item = self.parked()
        self.assertIsNone(self.shelf.take("k"))
        self.clock.advance(0.999)
        self.assertIsNone(self.shelf.take("k"))
        self.clock.advance(0.001)
        self.assertIs(self.shelf.take("k"), item)
        self.assertIsNone(self.shelf.take("k"))

    def test_oldest_first_and_only_for_its_own_key(self) -> None:
        first = self.parked()
        self.clock.advance(0.5)
        second = self.parked()
        other = self.parked("other")
        self.clock.advance(1.0)
        self.assertIs(self.shelf.take("k"), first)
        self.assertIs(self.shelf.take("k"), second)
        self.assertIs(self.shelf.take("other"), other)

    def test_parked_ports_are_neither_free_nor_in_use_until_taken(self) -> None:
        item = self.parked()
        self.assertEqual((self.pool.used_count, self.pool.parked_count, self.pool.free_count), (0, 1, 9))
        self.clock.advance(1.0)
        self.shelf.take("k")
        self.assertEqual((self.pool.used_count, self.pool.parked_count), (1, 0))
        self.pool.release(*item.ports)
        self.assertEqual(self.pool.free_count, self.pool.size)

    def test_bounded_per_key(self) -> None:
        self.parked()
        self.parked()
        extra = FakeSocket(self.pool.allocate())
        self.assertFalse(self.shelf.park("k", extra))
        self.assertEqual(self.pool.used_count, 1)  # still the caller's to close and release
        self.assertEqual(len(self.shelf), 2)

    def test_a_socket_nobody_takes_is_closed_after_the_idle_time(self) -> None:
        shelf = SocketShelf(self.pool, self.clock, limit=4, quarantine=1.0, idle=60.0)
        first = FakeSocket(self.pool.allocate())
        shelf.park("k", first)
        self.clock.advance(30)
        second = FakeSocket(self.pool.allocate())
        shelf.park("other", second)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(29.9)
        self.assertEqual((first.closed, len(shelf)), (False, 2))
        self.clock.advance(0.2)
        self.assertEqual((first.closed, second.closed, len(shelf), shelf.expired), (True, False, 1, 1))
        self.assertEqual(self.pool.parked_count, len(second.ports))
        self.clock.advance(30)
        self.assertEqual((second.closed, len(shelf), shelf.expired, self.pool.parked_count), (True, 0, 2, 0))
        self.assertEqual((self.pool.used_count, self.pool.free_count), (0, self.pool.size))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_socket_taken_in_time_is_not_closed_by_the_idle_timer(self) -> None:
        shelf = SocketShelf(self.pool, self.clock, limit=4, quarantine=1.0, idle=60.0)
        item = FakeSocket(self.pool.allocate())
        shelf.park("k", item)
        self.clock.advance(2)
        self.assertIs(shelf.take("k"), item)
        self.clock.advance(120)
        self.assertEqual((item.closed, shelf.expired), (False, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closing_the_shelf_cancels_the_idle_timer(self) -> None:
        shelf = SocketShelf(self.pool, self.clock, idle=60.0)
        shelf.park("k", FakeSocket(self.pool.allocate()))
        shelf.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_closes_every_parked_socket_and_frees_its_ports(self) -> None:
        items = [self.parked(), self.parked("other")]
        self.shelf.close()
        self.assertTrue(all(item.closed for item in items))
        self.assertEqual(self.pool.free_count, self.pool.size)
        late = FakeSocket(self.pool.allocate())
        self.assertFalse(self.shelf.park("k", late))  # after shutdown nothing is kept


class ParkedCorePortsTests(unittest.TestCase):
    """The core-side RTP/RTCP pair: what the old call's core sends after its end reaches no one."""

    async def test_a_parked_pair_drops_the_old_traffic_and_carries_the_next_call(self) -> None:
        clock = Clock()
        pool = UdpPortPool(*PORTS)
        shelf = SocketShelf(pool, clock)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        old: list[Any] = []
        new: list[Any] = []
        first = CorePorts(global_reactor, LOCAL, pool, lambda d, a: old.append(d), lambda d, a: old.append(d), shelf)
        ports = (first.rtp_port, first.rtcp_port)
        await first.close()
        self.assertEqual((pool.used_count, pool.parked_count), (0, 2))
        sender.sendto(rtp(1), (LOCAL, ports[0]))  # the old call's core, still sending
        await deferLater(global_reactor, 0.05, lambda: None)
        self.assertEqual(old, [])
        clock.advance(PARK_QUARANTINE)
        second = CorePorts(global_reactor, LOCAL, pool, lambda d, a: new.append(d), lambda d, a: new.append(d), shelf)
        self.assertEqual((second.rtp_port, second.rtcp_port), ports)
        self.assertEqual((pool.used_count, pool.parked_count), (2, 0))
        sender.sendto(rtp(2), (LOCAL, ports[0]))
        sender.sendto(b"\x81\xc9\x00\x01rtcp", (LOCAL, ports[1]))
        await until(lambda: len(new) == 2)
        self.assertEqual(old, [])
        await second.close()
        shelf.close()
        await deferLater(global_reactor, 0, lambda: None)
        self.assertEqual(pool.free_count, pool.size)


class ParkedCallSocketsTests(CallMediaTestCase):
    """Two calls one after the other on one engine that parks its media sockets."""

    def setUp(self) -> None:
        super().setUp()
        self.shelf_clock = Clock()
        self.engine.shelf = SocketShelf(self.pool, self.shelf_clock)

    def settings(self, **ice: Any) -> CallMediaSettings:
        settings = super().settings(**ice)
        return CallMediaSettings(ice=settings.ice, media=settings.media, park_sockets=True)

    async def cleanup(self) -> None:
        await super().cleanup()
        await stop_media_engine(self.engine)  # closes the parked sockets, as at a node's stop
        await deferLater(global_reactor, 0.01, lambda: None)

    async def test_the_next_call_reuses_the_sockets_and_gets_nothing_of_the_old_call(self) -> None:
        media, old_wic, _, _ = await self.originating_call()
        await self.assert_media_both_ways(media, old_wic)
        old_credentials = media.streams[0].agent.local_credentials
        ports = (media.streams[0].agent.default_address, media.streams[0].session.core_rtp_port)
        await media.close()
        self.assertEqual((self.pool.used_count, self.pool.parked_count), (0, 3))
        counts = self.engine.resource_counts()
        self.assertEqual((counts["media_ports_in_use"], counts["media_ports_parked"]), (0, 3))

        self.shelf_clock.advance(PARK_QUARANTINE)
        media, wic, _, _ = await self.originating_call()
        agent = media.streams[0].agent
        self.assertEqual((agent.default_address, media.streams[0].session.core_rtp_port), ports)
        self.assertNotEqual(agent.local_credentials, old_credentials)
        self.assertEqual((self.pool.used_count, self.pool.parked_count), (3, 0))

        # The old WIC still checks and sends on its 5-tuple, now the new call's socket.
        check = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        check.attributes["USERNAME"] = f"{old_credentials.ufrag}:{old_wic.ice.local_username}"
        check.attributes["PRIORITY"] = 1
        check.attributes["ICE-CONTROLLING"] = 1
        check.add_message_integrity(old_credentials.pwd.encode())
        check.add_fingerprint()
        rejected = agent.stats.checks_rejected
        old_wic.ice._protocols[0].transport.sendto(bytes(check), agent.default_address)
        await until(lambda: agent.stats.checks_rejected == rejected + 1)  # RFC 8445 §7.3: 401
        self.core.received.clear()
        old_wic.send_rtp(rtp(99))
        await deferLater(global_reactor, 0.1, lambda: None)
        self.assertEqual(self.core.received, [])
        self.assertEqual(media.streams[0].session.wic_to_core.packets, 0)
        await self.assert_media_both_ways(media, wic)

    async def test_a_call_on_parked_sockets_is_gathered_at_once(self) -> None:
        media, _, _, _ = await self.originating_call()
        await media.close()
        self.shelf_clock.advance(PARK_QUARANTINE)
        agent = IceAgent(self.engine.settings.ice, False, global_reactor, self.pool, shelf=self.engine.shelf)
        gathered = agent.gather()
        self.assertIsNone(self.successResultOf(gathered))  # no socket to bind: nothing to wait for
        self.assertEqual(agent.state, IceState.GATHERED)
        self.assertEqual(self.pool.parked_count, 2)  # the RTP/RTCP pair is still parked
        await agent.close()

    async def test_a_socket_in_quarantine_is_not_reused(self) -> None:
        media, _, _, _ = await self.originating_call()
        port = media.streams[0].agent.default_address
        await media.close()
        media, _, _, _ = await self.originating_call()
        self.assertNotEqual(media.streams[0].agent.default_address, port)
        self.assertEqual(self.pool.parked_count, 3)


class MediaTimerQueueTests(CallMediaTestCase):
    """ICE (connect timeout, RFC 7675 consent) and DTLS timers of every call share one clock call."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.engine = CallMediaEngine(global_reactor, self.settings(), self.pool, clock=self.clock)

    async def test_a_calls_media_timers_are_one_clock_call_and_none_after_close(self) -> None:
        media, _, _, _ = await self.originating_call()
        other, _, _, _ = await self.originating_call()
        # RFC 7675 consent, one timer per call (its next check or its expiry, whichever is first).
        self.assertEqual(self.engine.timers.pending(), 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        await media.close()
        await other.close()
        self.assertEqual(self.engine.timers.pending(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_consent_checks_still_run_on_the_queue(self) -> None:
        media, wic, _, _ = await self.originating_call()
        stats = media.streams[0].agent.stats
        self.clock.advance(6.0)  # RFC 7675 §5.1: a check within 4-6 s (randomised, floor 4 s)
        await until(lambda: stats.consent_responses >= 1)
        self.assertEqual(stats.consent_checks_sent, 1)
