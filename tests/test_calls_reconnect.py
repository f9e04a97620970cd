"""Calls that outlive a lost WebSocket ([calls] reconnect_grace, ``epcscf.pcscf.call_suspension``):
a WIC (real WebSocket + aioice + DTLS-SRTP) in a call through epcscf (embedded core) with a sipp
UAS loses its flow; the call is suspended; only the same UA instance (AOR, +sip.instance and
reg-id, RFC 5626 §4.2) registering again adopts it, and the old flow token then works for that
dialog only, on the new flow; without a reconnection the call is released after the grace period.
The core side is played by a bare UDP peer (requests carrying the old flow token) and sipp."""

from __future__ import annotations

import secrets
from dataclasses import replace

from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.call_state import CallState
from epcscf.pcscf.call_suspension import LATE_WINDOW, CallSuspensions
from epcscf.pcscf.calls import CallManager, CallSettings
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_rules import list_values
from tests.support.deployment import DOMAIN, USERS, ws_url
from tests.support.sipp import received_requests
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import WsSipClient, as_deferred
from tests.test_calls_w2_sipp import CallsThroughTheEdgeTests, until

GRACE = 5.0


class _ReconnectFixture(unittest.TestCase):
    """A WIC in a call with sipp through epcscf whose call manager suspends (no tests here)."""

    timeout = 60
    ice_mode = "lite"
    grace = GRACE

    # The edge-and-sipp fixture of tests.test_calls_w2_sipp, with a call manager that suspends.
    setUp_edge = CallsThroughTheEdgeTests.setUp
    media_settings = CallsThroughTheEdgeTests.media_settings
    tearDown = CallsThroughTheEdgeTests.tearDown
    _cleanup = CallsThroughTheEdgeTests._cleanup
    spawn_sipp = CallsThroughTheEdgeTests.spawn_sipp
    start_uas = CallsThroughTheEdgeTests.start_uas
    registered = CallsThroughTheEdgeTests.registered
    wic = CallsThroughTheEdgeTests.wic
    call_sipp = CallsThroughTheEdgeTests.call_sipp
    in_dialog = CallsThroughTheEdgeTests.in_dialog
    established_originating_call = CallsThroughTheEdgeTests.established_originating_call
    assert_everything_freed = CallsThroughTheEdgeTests.assert_everything_freed

    def setUp(self) -> None:
        self.setUp_edge()
        node = self.service.pcscf
        self.calls = CallManager(global_reactor, node.policy.addresses, self.engine,
                                 CallSettings(reconnect_grace=self.grace), node.proxy)
        node.policy.calls = self.calls
        node.calls = self.calls
        node.policy.collaborators = replace(node.policy.collaborators, reconnections=self.calls.suspensions)
        self.core = UdpSipPeer()
        self.core.start()
        self.addCleanup(self.core.stop)

    # --- helpers -------------------------------------------------------------------------------

    async def client(self, instance: str | None, reg_id: bool = True) -> tuple[WsSipClient, Response]:
        """alice on a new WebSocket: the given +sip.instance (None: a new one), with or without reg-id."""
        client = WsSipClient(ws_url(self.service), "alice", USERS["alice"], DOMAIN)
        if instance is not None:
            client.instance = instance
        await as_deferred(client.connect())
        self.clients.append(client)
        register = client.register_request()
        if not reg_id:
            register.headers.set("Contact", f"<sip:alice@{client.host};transport=ws>;expires=600")
        response = await as_deferred(client.transact(register))
        self.assertEqual(response.status, 200)
        return client, response

    def core_request(self, method: str, invite: Request, ok: Response, call_id: str | None = None) -> Request:
        """What the core would send in the dialog: along the route set toward the WIC, whose top
        entry is our core-side Record-Route URI carrying the (old) flow token."""
        node = self.service.pcscf
        ours = [f"{node.listener(t).address.host}:{node.listener(t).address.port}" for t in ("UDP", "WS")]
        routes = [value for value in list_values(ok.headers, "Record-Route") if any(o in value for o in ours)]
        self.assertEqual(len(routes), 2, ok.headers.get_all("Record-Route"))  # RFC 5658 §4: both of ours
        request = Request(method, "sip:alice@unused.invalid;transport=ws")
        request.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{self.core.port.getHost().port};branch=z9hG4bK{secrets.token_hex(6)}")
        request.headers.replace_all("Route", routes)
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", ok.headers.get("To") or "")
        request.headers.add("To", invite.headers.get("From") or "")
        request.headers.add("Call-ID", call_id or invite.headers.get("Call-ID") or "")
        request.headers.add("CSeq", f"{secrets.randbelow(1000) + 10} {method}")
        request.headers.add("Content-Length", "0")
        return request

    async def from_core(self, request: Request) -> Response:
        listener = self.service.pcscf.listener("UDP").address
        self.core.send(request, (listener.host, listener.port))
        while True:
            message, _ = await as_deferred(self.core_next())
            if isinstance(message, Response) and message.status >= 200:
                return message

    async def core_next(self) -> tuple:
        import asyncio

        return await asyncio.wait_for(self.core.received.get(), 5)

    async def wic_request(self, client: WsSipClient, method: str, invite: Request, ok: Response) -> Response:
        request = self.in_dialog(client, method, invite, ok, cseq=secrets.randbelow(1000) + 10)
        request.headers.set("Via", f"SIP/2.0/WS {client.host};branch=z9hG4bK{secrets.token_hex(6)}")
        await as_deferred(client.send(request))
        return await as_deferred(client.final_response())

    def scrape(self) -> str:
        """What /metrics would show of the running node (the metrics' own collector)."""
        from prometheus_client import CollectorRegistry, generate_latest

        from epcscf.ops.metrics import LiveStateCollector

        registry = CollectorRegistry()
        registry.register(LiveStateCollector(lambda: self.service.pcscf.operations))
        return generate_latest(registry).decode()

    async def from_core_response(self) -> Response:
        while True:
            message, _ = await as_deferred(self.core_next())
            if isinstance(message, Response) and message.status >= 200:
                return message


class CallReconnectTests(_ReconnectFixture):
    async def test_only_the_same_instance_adopts_the_call_and_the_old_token_then_works_for_it_only(self) -> None:
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        [call] = self.calls.calls()
        old_flow = call.wic_flow.id
        await as_deferred(client.drop())
        await until(lambda: call.suspended_since is not None)
        self.assertEqual(call.summary()["state"], "suspended (flow lost)")
        self.assertIn("suspended (flow lost)", call.timeline[-1].text)
        self.assertIsNotNone(call.media, "media keeps running while suspended")
        self.assertEqual(self.service.pcscf.operations.stats()["calls_suspended"], 1)

        # The core's in-dialog request meanwhile: 500 + Retry-After (RFC 3261 §14.2).
        busy = await self.from_core(self.core_request("INFO", invite, ok))
        self.assertEqual(busy.status, 500)
        self.assertLessEqual(int(busy.headers.get("Retry-After") or "99"), GRACE)

        # alice again, but another instance / no reg-id: registered, yet no adoption; the old
        # token in its requests is another connection's (403), whatever the Call-ID and tags.
        other, _ = await self.client(instance=None)
        bare, _ = await self.client(instance=client.instance, reg_id=False)
        for stranger in (other, bare):
            refused = await self.wic_request(stranger, "BYE", invite, ok)
            self.assertEqual((refused.status, refused.reason), (403, "Forbidden (flow token of another connection)"))
        self.assertEqual(call.wic_flow.id, old_flow)
        self.assertIsNotNone(call.suspended_since)

        # The same instance and reg-id, authenticated afresh by the core: the call moves.
        again, _ = await self.client(instance=client.instance)
        await until(lambda: call.suspended_since is None)
        self.assertNotEqual(call.wic_flow.id, old_flow)
        self.assertEqual(call.summary()["state"], CallState.CONFIRMED.value)
        self.assertTrue(any("adopted by flow" in entry.text for entry in call.timeline))
        scrape = self.scrape()
        self.assertIn("epcscf_calls_suspended 0.0", scrape)
        self.assertIn('epcscf_call_reconnections_total{result="adopted"} 1.0', scrape)

        # The core's request with the old token reaches the new flow; another Call-ID with that
        # token does not (430: the old flow is gone for every other dialog).
        self.core.received = type(self.core.received)()
        listener = self.service.pcscf.listener("UDP").address
        info = self.core_request("INFO", invite, ok)
        self.core.send(info, (listener.host, listener.port))
        delivered = await as_deferred(again.next_message(5))
        self.assertIsInstance(delivered, Request)
        self.assertEqual((delivered.method, delivered.headers.get("Call-ID")), ("INFO", invite.headers.get("Call-ID")))
        await as_deferred(again.answer(delivered, 200))
        answered = await self.from_core_response()
        self.assertEqual(answered.status, 200)
        gone = await self.from_core(self.core_request("INFO", invite, ok, call_id="another-" + secrets.token_hex(4)))
        self.assertEqual(gone.status, 430)
        # Strangers still cannot use it; the adopting WIC's own hang-up goes through to sipp.
        refused = await self.wic_request(other, "BYE", invite, ok)
        self.assertEqual(refused.status, 403)
        bye = await self.wic_request(again, "BYE", invite, ok)
        self.assertEqual(bye.status, 200)
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        # One BYE (sent again only as a UDP retransmission, T1 is 50 ms here): the WIC's own.
        byes = received_requests(trace, "BYE")
        self.assertEqual(len(byes), 1, byes)
        await self.calls.idle()
        self.assert_everything_freed()
        self.assertEqual(call.release_cause, "BYE from the wic")

    async def test_the_same_instance_on_a_new_flow_adopts_the_call_while_the_old_flow_still_looks_open(self) -> None:
        # RFC 5626 §4.4.1: a WIC on a dead network opens a new flow long before our pings find
        # the old one dead; its fresh registration is what says the old flow is lost to it.
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        [call] = self.calls.calls()
        old_flow = call.wic_flow
        again, _ = await self.client(instance=client.instance)
        await until(lambda: call.wic_flow is not old_flow)
        self.assertTrue(old_flow.connected, "the old WebSocket is still open")
        self.assertIsNone(call.suspended_since)
        # The core's request with the old token goes to the new flow, not the open old one.
        listener = self.service.pcscf.listener("UDP").address
        self.core.send(self.core_request("INFO", invite, ok), (listener.host, listener.port))
        delivered = await as_deferred(again.next_message(5))
        self.assertEqual(delivered.method, "INFO")
        await as_deferred(again.answer(delivered, 200))
        self.assertEqual((await self.from_core_response()).status, 200)
        self.assertTrue(client.received.empty(), "nothing went to the old flow")
        # Its old flow closing later changes nothing; the WIC hangs up from the new flow.
        await as_deferred(client.drop())
        await until(lambda: not old_flow.connected)
        self.assertEqual(self.calls.calls(), [call])
        self.assertEqual((await self.wic_request(again, "BYE", invite, ok)).status, 200)
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        await self.calls.idle()
        self.assert_everything_freed()

    async def test_a_bye_from_the_core_ends_a_suspended_call(self) -> None:
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        [call] = self.calls.calls()
        await as_deferred(client.drop())
        await until(lambda: call.suspended_since is not None)
        answered = await self.from_core(self.core_request("BYE", invite, ok))
        self.assertEqual(answered.status, 200)
        await self.calls.idle()
        self.assert_everything_freed()
        self.assertEqual(call.release_cause, "BYE from the core")
        # Nothing is left to adopt.
        await self.client(instance=client.instance)
        self.assertEqual(self.calls.calls(), [])


class CallReconnectTooLateTests(_ReconnectFixture):
    grace = 0.5

    async def test_no_reconnection_within_the_grace_period_releases_the_call_toward_the_core(self) -> None:
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        [call] = self.calls.calls()
        await as_deferred(client.drop())
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        byes = received_requests(trace, "BYE")  # its UDP retransmissions, if any, are the same transaction
        self.assertEqual(len(byes), 1, byes)
        core_bye = byes[0]
        self.assertIn('Reason: SIP;cause=480;text="WebSocket closed"', core_bye)
        await self.calls.idle()
        self.assert_everything_freed()
        waited = [entry.text for entry in call.timeline if entry.text.startswith("no reconnection within")]
        self.assertEqual(len(waited), 1, call.timeline)
        self.assertGreaterEqual(float(waited[0].split()[3]), self.grace - 0.05)
        self.assertEqual(call.summary()["cause_code"], "ws-closed")
        self.assertIn('epcscf_call_reconnections_total{result="expired"} 1.0', self.scrape())
        # Too late: the same instance registers again; nothing to adopt, but its dialog gets the
        # BYE it could not get before (so that the WIC closes its media too); the old token is 430.
        again, _ = await self.client(instance=client.instance)
        bye = await as_deferred(again.next_message(5))
        self.assertIsInstance(bye, Request)
        self.assertEqual((bye.method, bye.headers.get("Call-ID")), ("BYE", invite.headers.get("Call-ID")))
        self.assertEqual(bye.headers.get("Reason"), 'SIP;cause=480;text="WebSocket closed"')
        await as_deferred(again.answer(bye, 200))
        self.assertEqual(self.calls.calls(), [])
        gone = await self.from_core(self.core_request("INFO", invite, ok))
        self.assertEqual(gone.status, 430)
        gone = await self.from_core(self.core_request("INFO", invite, ok))
        self.assertEqual(gone.status, 430)


class SuspensionTimerTests(unittest.TestCase):
    """The grace timer on an injected clock (no sockets): expiry and forgetting."""

    def test_the_grace_timer_releases_once_and_an_ended_call_cancels_it(self) -> None:
        from types import SimpleNamespace

        clock = Clock()
        released: list[tuple[object, str]] = []
        suspensions = CallSuspensions(clock, 10.0, lambda call, connection: None,
                                      lambda call, cause: released.append((call, cause)), lambda *a: None,
                                      lambda *a: None, lambda flow_id: [])
        timeline: list[str] = []
        make = lambda: SimpleNamespace(state=CallState.CONFIRMED, media=object(), call_id=secrets.token_hex(4),  # noqa: E731
                                       ended=False, suspended_since=None, dialog=None,
                                       note=lambda kind, text: timeline.append(text))
        first, second = make(), make()
        keys = frozenset({("sip:alice@example.com", '"<urn:uuid:1>"', "1")})
        self.assertEqual(suspensions.suspend("flow-a", keys, [first]), [])
        self.assertEqual(suspensions.suspend("flow-b", frozenset(), [second]), [second], "no instance: released at once")
        clock.advance(9.9)
        self.assertEqual(released, [])
        clock.advance(0.2)
        self.assertEqual([(call, cause.split(" (")[0]) for call, cause in released], [(first, "WebSocket closed")])
        [late_window] = clock.getDelayedCalls()  # the grace timer is gone; the released call's window is left
        self.assertAlmostEqual(late_window.getTime(), clock.seconds() + LATE_WINDOW)
        third = make()
        suspensions.suspend("flow-c", keys, [third])
        suspensions.forget(third)
        self.assertEqual(clock.getDelayedCalls(), [late_window])
        self.assertEqual(len(suspensions), 0)

    def test_a_call_released_for_want_of_a_reconnection_is_let_go_after_the_late_window(self) -> None:
        """Issue 14: it was forgotten only at the next expiry or registration, so the calls of a
        burst's last lost flows stayed whole for good."""
        import gc
        import weakref

        class _Call:
            def __init__(self) -> None:
                self.state, self.media, self.call_id = CallState.CONFIRMED, object(), secrets.token_hex(4)
                self.ended, self.suspended_since, self.dialog = False, None, None

            def note(self, kind: str, text: str) -> None:
                pass

        clock = Clock()
        # Released as the call manager does: the call ends and is forgotten (``CallManager._finish``).
        suspensions = CallSuspensions(clock, 10.0, lambda call, connection: None, lambda call, cause: suspensions.forget(call),
                                      lambda *a: None, lambda *a: None, lambda flow_id: [])
        keys = frozenset({("sip:alice@example.com", '"<urn:uuid:1>"', "1")})
        call = _Call()
        suspensions.suspend("flow-a", keys, [call])
        released = weakref.ref(call)
        del call
        clock.advance(10.0)  # grace over: released, remembered for a late registration
        gc.collect()
        self.assertIsNotNone(released(), "kept for a registration within the late window")
        clock.advance(LATE_WINDOW)
        gc.collect()
        self.assertIsNone(released(), "nothing refers to the call once the late window is over")
        self.assertEqual(clock.getDelayedCalls(), [])


del CallsThroughTheEdgeTests  # imported for its fixture only: its tests run in their own module
