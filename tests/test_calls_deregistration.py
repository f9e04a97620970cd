"""Network-initiated de-registration mid-call (TS 24.229 §5.2.5.1) on real sockets: a WIC in a
call with sipp (plain RTP) through epcscf and its embedded core; the core ends the WIC's
registration, its reg-event NOTIFY (``terminated``) reaches the eP-CSCF's own subscription,
and the call is released toward both sides with ``Reason: SIP;cause=503;text="de-registered"``,
its media ports freed, and the WIC's WebSocket closed with a reason.  The same release when
the registration simply expires.  Harness: ``tests.test_calls_w2_sipp``."""

from __future__ import annotations

import os

import aioice.ice
from twisted.internet import reactor as global_reactor
from twisted.trial import unittest

from epcscf.ice import UdpPortPool
from epcscf.pcscf.call_media import CallMediaEngine
from epcscf.pcscf.calls import CallManager, CallSettings
from epcscf.pcscf.reg_event import SubscriptionState
from epcscf.sip.message import Request
from tests import test_calls_w2_sipp as w2
from tests.support.deployment import start_deployment
from tests.support.reactor import asyncio_loop
from tests.support.sipp import received_requests, require_sipp, sipp_messages
from tests.support.wic import as_deferred


class DeregistrationMidCallTests(unittest.TestCase):
    timeout = 60
    ice_mode = "lite"

    # The call harness of tests.test_calls_w2_sipp (its helpers, not its tests: no TestCase of
    # that module is bound at this module's level, so trial does not run them twice).
    _HARNESS = w2.CallsThroughTheEdgeTests
    media_settings = _HARNESS.media_settings
    tearDown = _HARNESS.tearDown
    _cleanup = _HARNESS._cleanup
    spawn_sipp = _HARNESS.spawn_sipp
    start_uas = _HARNESS.start_uas
    registered = _HARNESS.registered
    wic = _HARNESS.wic
    call_sipp = _HARNESS.call_sipp
    in_dialog = _HARNESS.in_dialog
    established_originating_call = _HARNESS.established_originating_call
    assert_everything_freed = _HARNESS.assert_everything_freed
    del _HARNESS

    def setUp(self) -> None:
        self.sipp = require_sipp(self)
        self.loop = asyncio_loop()
        self.patch(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [w2.LOCAL])
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.service = start_deployment(
            self,
            extra="[sip]\nt1 = 0.05\nt2 = 0.4\nt4 = 0.2\nwic_t1 = 0.05\nwic_t2 = 0.4\nwic_t4 = 0.2\n"
            "[reg_event]\nsubscribe = yes\nclose_grace = 0.3\n",
        )
        self.pool = UdpPortPool(*w2.PORTS)
        self.engine = CallMediaEngine(global_reactor, self.media_settings(), self.pool)
        node = self.service.pcscf
        self.calls = CallManager(global_reactor, node.policy.addresses, self.engine, CallSettings(), node.proxy)
        node.policy.calls = self.calls
        node.calls = self.calls
        self.clients = []
        self.wics = []

    async def test_a_terminated_notify_mid_call_releases_it_on_both_sides_and_closes_the_flow(self) -> None:
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        node = self.service.pcscf
        await w2.until(lambda: [s.state for s in node.reg_events.subscriptions()] == [SubscriptionState.ACTIVE])
        self.assertNotEqual(self.pool.free_count, self.pool.size)  # the call holds media ports
        location = self.service.core.location
        [aor] = list(location.aors())
        for binding in location.bindings(aor):
            location.remove(binding)  # the network ends the registration (TS 24.229 §5.4.1.5)
        bye = await as_deferred(client.next_message(10))
        self.assertIsInstance(bye, Request)
        self.assertEqual(bye.method, "BYE")
        self.assertEqual(bye.headers.get("Reason"), 'SIP;cause=503;text="de-registered"')
        await as_deferred(client.answer(bye, 200))
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        [core_bye] = received_requests(trace, "BYE")
        self.assertIn('Reason: SIP;cause=503;text="de-registered"', core_bye.splitlines())
        await self.calls.idle()
        self.assert_everything_freed()
        [ended] = self.calls.ended_calls()
        self.assertEqual(ended.release_cause, "de-registered by the network")
        self.assertEqual(node.registrations.all(), [])
        await w2.until(lambda: client.socket.close_code is not None)
        self.assertEqual((client.socket.close_code, client.socket.close_reason), (1000, "de-registered by the network"))

    async def test_an_expired_registration_releases_the_call(self) -> None:
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        node = self.service.pcscf
        [binding] = node.registrations.all()
        node.registrations.reschedule(binding, 0)  # its expiry comes now (RFC 3261 §10.2.1)
        bye = await as_deferred(client.next_message(10))
        self.assertEqual(bye.headers.get("Reason"), 'SIP;cause=503;text="registration expired"')
        await as_deferred(client.answer(bye, 200))
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        await self.calls.idle()
        self.assert_everything_freed()
        self.assertIsNone(client.socket.close_code)  # the WIC may register again on its flow
