"""The eP-CSCF is no open relay: what each side may make it send (a border element, TS 24.229 §5.2).

Real sockets: raw WebSocket clients on the WIC side, a UDP sink standing for any host an
attacker would like to reach, UDP peers on the core side.  The DNS resolver of the eP-CSCF is
a double that records every call: a refused request must never cause a lookup.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.names.error import DNSNameError
from twisted.trial import unittest

from epcscf.service import EpcscfService
from epcscf.sip.message import Request, Response
from epcscf.sip.resolver import NextHopResolver
from tests.support.deployment import DOMAIN, USERS, start_deployment
from tests.support.processes import wait_for
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import WsSipClient, as_deferred

IN_DIALOG_METHODS = ("MESSAGE", "BYE", "INFO", "UPDATE", "NOTIFY", "INVITE", "SUBSCRIBE", "REFER", "OPTIONS")


def asyncio_test(method):
    def wrapper(self):
        return as_deferred(method(self))

    wrapper.__name__ = method.__name__
    return wrapper


class RecordingDns:
    """A ``twisted.names`` resolver that must not be used: every lookup is recorded and fails."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("lookup"):
            raise AttributeError(name)

        def lookup(*args: Any, **kwargs: Any) -> defer.Deferred:
            self.calls.append((name, args))
            return defer.fail(DNSNameError(f"test resolver: {name}{args} must not be called"))

        return lookup


class BorderTestCase(unittest.TestCase):
    """An epcscf with its embedded core, a recording DNS double and a UDP sink."""

    extra_config = ""

    def setUp(self) -> None:
        self.dns = RecordingDns()
        self.service = self.start_service(self.extra_config)
        self.sink = UdpSipPeer()
        self.sink_port = self.sink.start()
        self.addCleanup(self.sink.stop)
        self.clients: list[WsSipClient] = []
        self.log_events: list[dict] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)

    def start_service(self, extra: str) -> EpcscfService:
        def use_dns_double(service: EpcscfService) -> None:
            service.pcscf.resolver = NextHopResolver(self.dns)  # the proxy takes it at start

        return start_deployment(self, extra, before_start=use_dns_double)

    def tearDown(self):
        return as_deferred(self._close_clients())

    async def _close_clients(self) -> None:
        for client in self.clients:
            await client.close()

    # --- WICs and their flows ---

    @property
    def ws_port(self) -> int:
        return self.service.pcscf.listener("WS").address.port

    async def wic(self, user: str = "alice") -> WsSipClient:
        client = WsSipClient(f"ws://127.0.0.1:{self.ws_port}", user, USERS[user], DOMAIN)
        await client.connect()
        self.clients.append(client)
        return client

    async def registered(self, user: str) -> WsSipClient:
        client = await self.wic(user)
        self.assertEqual((await client.register()).status, 200)
        return client

    def flow_of(self, client: WsSipClient) -> Any:
        local = client.socket.transport.get_extra_info("sockname")
        [flow] = [f for f in self.service.pcscf.flows if f.connection.remote.port == local[1]]
        return flow

    def wic_side_route(self, token: str) -> str:
        return f"<sip:{token}@127.0.0.1:{self.ws_port};transport=ws;lr>"

    def attack(self, client: WsSipClient, method: str, routes: list[str], uri: str | None = None) -> Request:
        """The request of the report: in-dialog (To-tag), aimed at the sink unless ``uri`` says."""
        request = Request(method, uri or f"sip:victim@127.0.0.1:{self.sink_port}")
        request.headers.add("Via", f"SIP/2.0/WS {client.host};branch=z9hG4bK{secrets.token_hex(6)}")
        request.headers.add("Max-Forwards", "70")
        for route in routes:
            request.headers.add("Route", route)
        request.headers.add("To", "<sip:victim@127.0.0.1>;tag=aaa")
        request.headers.add("From", "<sip:nobody@ims.test>;tag=bbb")
        request.headers.add("Call-ID", secrets.token_hex(8))
        request.headers.add("CSeq", f"{1 if method == 'ACK' else 2} {method}")
        if method != "ACK":
            request.headers.add("Content-Type", "text/plain")
            request.body = b"hello"
        return request

    async def refused(self, client: WsSipClient, request: Request) -> Response:
        await client.send(request)
        response = await client.final_response()
        self.assertEqual(response.status, 403, f"{request.method} {request.uri}: {response.status} {response.reason}")
        self.assertTrue(response.reason.startswith("Forbidden ("), response.reason)
        if request.method == "INVITE":  # RFC 3261 §17.1.1.3: the ACK for the 403
            ack = Request("ACK", request.uri)
            for name in ("Via", "Max-Forwards", "From", "Call-ID"):
                ack.headers.add(name, request.headers.get(name) or "")
            ack.headers.add("To", response.headers.get("To") or "")
            ack.headers.add("CSeq", f"{request.headers.get('CSeq').split()[0]} ACK")
            await client.send(ack)
        return response

    async def assert_sink_silent(self) -> None:
        await asyncio.sleep(0.3)  # what was forwarded would have arrived by now on loopback
        self.assertTrue(self.sink.received.empty(), "a request reached the sink")
        self.assertEqual(self.dns.calls, [])

    def refused_count(self, side: str, reason: str) -> float:
        value = self.service.metrics.registry.get_sample_value("epcscf_requests_refused_total", {"side": side, "reason": reason})
        return value or 0.0

    def refusal_logs(self, call_id: str) -> list[dict]:
        return [e for e in self.log_events if e.get("log_namespace") == "epcscf.pcscf.edge" and e.get("call_id") == call_id]

    # --- the core side ---

    def request_to_edge(self, peer: UdpSipPeer, method: str, route: str | None = None) -> Request:
        core_side = self.service.pcscf.listener("UDP").address
        request = Request(method, f"sip:victim@127.0.0.1:{self.sink_port}")
        host, port = peer.port.getHost().host, peer.port.getHost().port
        request.headers.add("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(5)}")
        if route:
            request.headers.add("Route", route)
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", "<sip:nobody@ims.test>;tag=1")
        request.headers.add("To", "<sip:victim@127.0.0.1>")
        request.headers.add("Call-ID", secrets.token_hex(6))
        request.headers.add("CSeq", f"1 {method}")
        peer.send(request, (core_side.host, core_side.port))
        return request

    def peer(self, interface: str = "127.0.0.1") -> UdpSipPeer:
        from twisted.internet import reactor

        peer = UdpSipPeer()
        peer.port = reactor.listenUDP(0, peer, interface=interface)
        self.addCleanup(peer.stop)
        return peer

    async def response_to(self, peer: UdpSipPeer) -> Response:
        while True:
            message, _ = await asyncio.wait_for(peer.received.get(), 5)
            if isinstance(message, Response) and message.status >= 200:
                return message


class WicInDialogTests(BorderTestCase):


    """A WIC's in-dialog request goes on only along our WIC-side Record-Route entry holding a
    flow token that verifies and names the WebSocket it came on."""

    @asyncio_test
    async def test_the_reported_message_from_a_fresh_websocket_gets_403_and_nothing_leaves(self) -> None:
        mallory = await self.wic()
        request = self.attack(mallory, "MESSAGE", [self.wic_side_route("MADEUPTOKEN")])
        response = await self.refused(mallory, request)
        self.assertEqual(response.reason, "Forbidden (invalid flow token)")
        await self.assert_sink_silent()
        self.assertEqual(self.refused_count("wic", "bad_token"), 1)
        [event] = self.refusal_logs(request.headers.get("Call-ID"))
        self.assertEqual(event["where"], self.flow_of(mallory).id)
        self.assertEqual(event["log_level"].name, "info")

    @asyncio_test
    async def test_every_method_with_a_to_tag_and_a_made_up_token_gets_403(self) -> None:
        mallory = await self.registered("alice")  # a registration does not help
        for method in IN_DIALOG_METHODS:
            await self.refused(mallory, self.attack(mallory, method, [self.wic_side_route("MADEUPTOKEN")]))
        await self.assert_sink_silent()
        self.assertEqual(self.refused_count("wic", "bad_token"), len(IN_DIALOG_METHODS))

    @asyncio_test
    async def test_a_host_name_in_the_request_uri_is_never_resolved(self) -> None:
        mallory = await self.wic()
        for routes in ([self.wic_side_route("MADEUPTOKEN")], [], [f"<sip:127.0.0.1:{self.sink_port};lr>"]):
            await self.refused(mallory, self.attack(mallory, "MESSAGE", routes, uri="sip:victim@victim.example.com"))
        await self.assert_sink_silent()  # asserts the resolver was never called

    @asyncio_test
    async def test_a_route_to_any_host_gets_403(self) -> None:
        mallory = await self.wic()
        core = self.service.pcscf.listener("UDP").address
        anywhere = f"<sip:127.0.0.1:{self.sink_port};lr>"
        variants = [
            [self.wic_side_route("MADEUPTOKEN"), anywhere],  # a second Route after ours
            [anywhere],  # no Route of ours at all
            [f"<sip:MADEUPTOKEN@{core.host}:{core.port};transport=udp;lr>", anywhere],  # our core side is not the WIC's entry
            [f"<sip:{self.flow_of(mallory).token}@127.0.0.1:{self.sink_port};transport=ws;lr>"],  # own token, foreign host
        ]
        for routes in variants:
            response = await self.refused(mallory, self.attack(mallory, "MESSAGE", routes))
            self.assertIn(response.reason, ("Forbidden (invalid flow token)", "Forbidden (not in a dialog through this proxy)"))
        await self.assert_sink_silent()
        self.assertEqual(self.refused_count("wic", "not_in_dialog"), 3)

    @asyncio_test
    async def test_a_genuine_token_of_another_live_flow_gets_403(self) -> None:
        bob = await self.registered("bob")
        mallory = await self.registered("alice")
        stolen = self.flow_of(bob).token
        for routes in ([self.wic_side_route(stolen)], [self.wic_side_route(stolen), f"<sip:127.0.0.1:{self.sink_port};lr>"]):
            response = await self.refused(mallory, self.attack(mallory, "MESSAGE", routes))
            self.assertEqual(response.reason, "Forbidden (flow token of another connection)")
        await self.assert_sink_silent()
        self.assertEqual(self.refused_count("wic", "other_flow"), 2)

    @asyncio_test
    async def test_the_token_of_a_closed_flow_gets_403(self) -> None:
        carol = await self.registered("carol")
        flow = self.flow_of(carol)
        await carol.close()
        await wait_for(lambda: flow.id not in self.service.pcscf.flows)
        mallory = await self.wic()
        response = await self.refused(mallory, self.attack(mallory, "BYE", [self.wic_side_route(flow.token)]))
        self.assertEqual(response.reason, "Forbidden (flow token of another connection)")
        await self.assert_sink_silent()

    @asyncio_test
    async def test_a_tampered_token_gets_403(self) -> None:
        mallory = await self.registered("alice")
        token = self.flow_of(mallory).token
        for tampered in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), token[1:], token + "A", "x" + token):
            response = await self.refused(mallory, self.attack(mallory, "MESSAGE", [self.wic_side_route(tampered)]))
            self.assertEqual(response.reason, "Forbidden (invalid flow token)")
        await self.assert_sink_silent()
        self.assertEqual(self.refused_count("wic", "bad_token"), 4)

    @asyncio_test
    async def test_own_token_outside_any_dialog_needs_a_registration_and_a_core_next_hop(self) -> None:
        mallory = await self.wic()
        own = self.wic_side_route(self.flow_of(mallory).token)
        response = await self.refused(mallory, self.attack(mallory, "MESSAGE", [own]))
        self.assertEqual(response.reason, "Forbidden (not registered)")
        await mallory.register()
        core = self.service.pcscf.listener("UDP").address
        our_core_side = f"<sip:{core.host}:{core.port};transport=udp;lr>"
        # RFC 3261 §16.12 would follow these; TS 24.229 §5.2.6.3 has the P-CSCF check them.
        for routes, uri in (
            ([own], None),
            ([own, our_core_side], None),
            ([own, our_core_side, f"<sip:127.0.0.1:{self.sink_port};lr>"], f"sip:bob@{DOMAIN}"),
        ):
            response = await self.refused(mallory, self.attack(mallory, "MESSAGE", routes, uri))
            self.assertEqual(response.reason, "Forbidden (in-dialog request not toward the core)")
        await self.assert_sink_silent()
        self.assertEqual(self.refused_count("wic", "not_toward_core"), 3)

    @asyncio_test
    async def test_own_token_toward_the_core_goes_on(self) -> None:
        """The control: a registered WIC on its own flow, next hop the core (its Service-Route
        host): forwarded, and answered by the embedded core itself (which routes no in-dialog
        request it did not Record-Route: 404 No Route To Destination)."""
        alice = await self.registered("alice")
        transport, core = self.service.core.addresses[0]
        own = self.wic_side_route(self.flow_of(alice).token)
        request = self.attack(alice, "MESSAGE", [own, f"<sip:{core.host}:{core.port};lr>"], uri=f"sip:bob@{DOMAIN}")
        await alice.send(request)
        response = await alice.final_response()
        self.assertEqual((response.status, response.reason), (404, "No Route To Destination"))
        self.assertEqual(self.refused_count("wic", "not_toward_core"), 0)
        await self.assert_sink_silent()

    @asyncio_test
    async def test_acks_failing_the_rule_are_dropped_silently(self) -> None:
        bob = await self.registered("bob")
        mallory = await self.wic()
        anywhere = f"<sip:127.0.0.1:{self.sink_port};lr>"
        token = self.flow_of(mallory).token
        variants = [
            ([self.wic_side_route("MADEUPTOKEN")], None),
            ([self.wic_side_route(self.flow_of(bob).token)], None),
            ([self.wic_side_route(token[:-1] + ("A" if token[-1] != "A" else "B"))], None),
            ([anywhere], None),
            ([], "sip:victim@victim.example.com"),
            ([self.wic_side_route(token), anywhere], None),  # own token, but not registered
        ]
        for routes, uri in variants:
            await mallory.send(self.attack(mallory, "ACK", routes, uri))
        await self.assert_sink_silent()
        self.assertTrue(mallory.received.empty(), "an ACK was answered")
        counts = {reason: self.refused_count("wic", reason) for reason in ("bad_token", "other_flow", "not_in_dialog", "not_registered")}
        self.assertEqual(counts, {"bad_token": 2, "other_flow": 1, "not_in_dialog": 2, "not_registered": 1})


class CoreSourceTests(BorderTestCase):
    """Requests on the core-facing listener come from a trusted core address or carry our token."""

    @asyncio_test
    async def test_an_unlisted_source_gets_403_for_every_method(self) -> None:
        stranger = self.peer()  # 127.0.0.1 but not the embedded core's port
        for method in ("MESSAGE", "INVITE", "OPTIONS", "BYE"):
            self.request_to_edge(stranger, method)
            response = await self.response_to(stranger)
            self.assertEqual((response.status, response.reason), (403, "Forbidden (not a trusted core address)"), method)
        self.request_to_edge(stranger, "ACK")  # dropped: an ACK is never answered
        await self.assert_sink_silent()
        self.assertTrue(stranger.received.empty())
        self.assertEqual(self.refused_count("core", "untrusted_source"), 5)

    @asyncio_test
    async def test_an_unlisted_source_with_a_verifying_token_reaches_the_wic(self) -> None:
        alice = await self.registered("alice")
        core_side = self.service.pcscf.listener("UDP").address
        stranger = self.peer()
        token = self.flow_of(alice).token
        self.request_to_edge(stranger, "MESSAGE", f"<sip:{token}@{core_side.host}:{core_side.port};transport=udp;lr>")
        arrived = await alice.next_message()
        self.assertEqual(arrived.method, "MESSAGE")
        await alice.answer(arrived, 200)
        self.assertEqual((await self.response_to(stranger)).status, 200)
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        self.request_to_edge(stranger, "MESSAGE", f"<sip:{tampered}@{core_side.host}:{core_side.port};transport=udp;lr>")
        self.assertEqual((await self.response_to(stranger)).status, 403)
        self.assertEqual(self.refused_count("core", "bad_token"), 1)


class ConfiguredSourcesTests(BorderTestCase):
    """``[core] trusted_sources`` replaces the default (the embedded core)."""

    extra_config = "[core]\ntrusted_sources = 127.0.0.2, 10.0.0.0/8\n"

    @asyncio_test
    async def test_listed_sources_are_served_and_others_refused(self) -> None:
        listed = self.peer("127.0.0.2")
        self.request_to_edge(listed, "MESSAGE")
        response = await self.response_to(listed)
        self.assertEqual(response.status, 404)  # trusted, then routed: no flow token, no WIC to reach
        stranger = self.peer("127.0.0.3")
        self.request_to_edge(stranger, "MESSAGE")
        self.assertEqual((await self.response_to(stranger)).status, 403)
        await self.assert_sink_silent()


class ExternalCoreDefaultSourcesTests(BorderTestCase):
    """External mode: the default trusted sources are the hosts of ``[core] next_hop``."""

    extra_config = "[core]\nmode = external\nnext_hop = sip:127.0.0.2:5999\n"

    @asyncio_test
    async def test_next_hop_host_is_trusted_on_any_port_and_others_are_not(self) -> None:
        await wait_for(lambda: len(self.service.pcscf.trusted_sources) > 0)
        core = self.peer("127.0.0.2")
        self.request_to_edge(core, "MESSAGE")
        self.assertEqual((await self.response_to(core)).status, 404)
        stranger = self.peer("127.0.0.1")
        self.request_to_edge(stranger, "OPTIONS")
        self.assertEqual((await self.response_to(stranger)).status, 403)
        await self.assert_sink_silent()

    @asyncio_test
    async def test_the_reported_relay_is_closed_in_external_mode_too(self) -> None:
        mallory = await self.wic()
        for routes, uri in (([self.wic_side_route("MADEUPTOKEN")], None), ([self.wic_side_route("MADEUPTOKEN")], "sip:victim@victim.example.com")):
            await self.refused(mallory, self.attack(mallory, "MESSAGE", routes, uri))
        await mallory.send(self.attack(mallory, "ACK", [self.wic_side_route("MADEUPTOKEN")]))
        await self.assert_sink_silent()
        self.assertEqual(self.refused_count("wic", "bad_token"), 3)
