"""Input and network failures on a running edge (eP-CSCF on 127.0.0.1 with an external core):
each ends in the SIP answer RFC 3261 / RFC 5626 give, an info log line, and no transaction left
behind; never a traceback (trial fails a test on any logged error).

The core is a bare UDP peer standing for a plain registrar: it answers each REGISTER 200 with
the Service-Route a test gives it.  The eP-CSCF trusts the core's Service-Route to name its own
next hop (TS 24.229 §5.2.6.3.3: a registered WIC's initial requests follow it), so that is how
a next hop the edge cannot reach gets in here — no WIC may choose one (``epcscf.pcscf.guard``,
``tests.test_pcscf_border``) — and it is still network input that must not crash anything:

* a next hop that cannot be a DNS name is refused before any lookup; a lookup that fails with
  a socket error is "no records": 503 (RFC 3261 §16.9);
* an IPv6 next hop with only an IPv4 UDP socket is a transport error: 503 (§16.9, §18.4);
* a WebSocket that Autobahn has failed (1007 here) but whose end is not reported yet: a
  response toward it is dropped, a request toward it gets 430 (RFC 5626 §5.3.1).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import secrets
import time
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.parser import parse_message
from tests.support.deployment import DOMAIN, USERS, start_deployment, ws_url
from tests.support.raw_ws import RawWsWic, client_frame
from tests.support.reactor import asyncio_loop
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import WsSipClient, as_deferred

SHORT_TIMERS = "[sip]\nt1 = 0.05\nt2 = 0.4\nt4 = 0.2\nwic_t1 = 0.05\nwic_t2 = 0.4\nwic_t4 = 0.2\n"

LONG_LABEL = "a" * 64 + ".example"  # RFC 1035 §2.3.4: a label has at most 63 octets
LONG_NAME = ("abcdefghi." * 26) + "example"  # and a name at most 253


class RecordingDns:
    """An ``IResolver`` stand-in: records every lookup; fails each with ``error`` if given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.lookups: list[tuple[str, str]] = []
        self.error = error

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("lookup"):
            raise AttributeError(name)

        def lookup(query: str, *args: Any) -> defer.Deferred:
            self.lookups.append((name, query))
            return defer.fail(self.error) if self.error is not None else defer.succeed(([], [], []))

        return lookup


class CoreRegistrar(UdpSipPeer):
    """The external core as a plain registrar (RFC 3261 §10.3): every REGISTER (retransmissions
    too) is answered 200 at once, its Contact echoed (with its expires) and ``service_route``
    given (RFC 3608); whatever else arrives is queued for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.service_route: list[str] = []

    def datagramReceived(self, data: bytes, addr) -> None:  # noqa: N802
        message = parse_message(data)
        if not (isinstance(message, Request) and message.method == "REGISTER"):
            self.received.put_nowait((message, addr))
            return
        response = make_response(message, 200, to_tag="registrar")
        for contact in message.headers.get_all("Contact"):
            response.headers.add("Contact", contact)
        for route in self.service_route:
            response.headers.add("Service-Route", route)
        self.transport.write(response.serialize(), addr)

    async def next_request_of(self, method: str, timeout: float = 5.0) -> tuple[Request, tuple[str, int]]:
        while True:
            request, addr = await self.next_request(timeout)
            if request.method == method:
                return request, addr


class EdgeInputFailureTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        asyncio_loop()
        self.core = CoreRegistrar()
        core_port = self.core.start()
        self.addCleanup(self.core.stop)
        external = f"[core]\nmode = external\nnext_hop = sip:127.0.0.1:{core_port}\n"
        self.service = start_deployment(self, extra=SHORT_TIMERS + external)
        self.node = self.service.pcscf
        self.clients: list[Any] = []

    def tearDown(self) -> defer.Deferred:
        async def close() -> None:
            for client in self.clients:
                if isinstance(client, RawWsWic):
                    client.close()
                else:
                    await client.close()
            # A failed Deferred nobody handled is logged ("Unhandled error in Deferred") only
            # when collected: collect now, so that trial sees it as this test's logged error.
            gc.collect()

        return as_deferred(close())

    # --- helpers ----------------------------------------------------------------------------------

    async def registered_wic(self, *service_route: str) -> WsSipClient:
        """alice on a fresh WebSocket, registered at the core with this Service-Route."""
        client = WsSipClient(ws_url(self.service), "alice", USERS["alice"], DOMAIN)
        self.clients.append(client)
        await client.connect()
        await self.register(client, *service_route)
        return client

    async def register(self, client: WsSipClient, *service_route: str) -> None:
        self.core.service_route = list(service_route)
        self.assertEqual((await client.register()).status, 200)
        [binding] = self.node.registrations.for_flow(self.flow_id(client))
        self.assertEqual(binding.service_route, service_route)

    def flow_id(self, client: WsSipClient) -> str:
        local = client.socket.transport.get_extra_info("sockname")
        [flow] = [f for f in self.node.flows if f.connection.remote.port == local[1]]
        return flow.id

    async def registered_raw_wic(self) -> RawWsWic:
        listener = self.node.listener("WS")
        assert listener is not None
        client = RawWsWic(listener.address.port, "alice", USERS["alice"], DOMAIN)
        self.clients.append(client)
        await client.connect()
        self.assertEqual((await client.register()).status, 200)
        return client

    def initial_message(self, client: WsSipClient) -> Request:
        """An initial MESSAGE to bob: the edge sends it along alice's Service-Route, or to
        ``[core] next_hop`` when she has none."""
        request = client.request("MESSAGE", f"sip:bob@{DOMAIN}", to=f"sip:bob@{DOMAIN}")
        request.headers.add("Content-Type", "text/plain")
        request.body = b"hello"
        return request

    def assert_core_got_no_message(self) -> None:
        while not self.core.received.empty():
            message, _ = self.core.received.get_nowait()
            self.assertFalse(isinstance(message, Request) and message.method == "MESSAGE", "the MESSAGE went to next_hop")

    def transactions_of(self, call_id: str) -> list[Any]:
        """The edge's transactions of one Call-ID."""
        return [
            t for t in self.node.transactions.transactions()
            if getattr(t, "request", None) is not None and t.request.headers.get("Call-ID") == call_id
        ]

    async def no_transactions_of(self, call_id: str, within: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.transactions_of(call_id) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        self.assertEqual(self.transactions_of(call_id), [])

    # --- family 1: hosts that are no DNS names, lookups that fail -------------------------------------

    def test_next_hop_that_cannot_be_a_dns_name_gets_503_without_any_lookup(self) -> None:
        async def run() -> None:
            dns = RecordingDns()
            self.patch(self.node.resolver, "_dns", dns)
            client = await self.registered_wic()
            for host in (LONG_LABEL, LONG_NAME):
                await self.register(client, f"<sip:{host};lr>")
                request = self.initial_message(client)
                await client.send(request)
                response = await client.final_response()
                self.assertEqual(response.status, 503, host)
                await self.no_transactions_of(request.headers.get("Call-ID"))
            self.assertEqual(dns.lookups, [])
            self.assert_core_got_no_message()

        return as_deferred(run())

    def test_lookup_failing_with_a_socket_error_is_503(self) -> None:
        async def run() -> None:
            dns = RecordingDns(OSError(errno.ENETUNREACH, "Network is unreachable"))
            self.patch(self.node.resolver, "_dns", dns)
            client = await self.registered_wic("<sip:unreachable.example;lr>")
            request = self.initial_message(client)
            await client.send(request)
            self.assertEqual((await client.final_response()).status, 503)
            await self.no_transactions_of(request.headers.get("Call-ID"))
            self.assertNotEqual(dns.lookups, [])  # the resolver was asked (NAPTR, SRV, A...), and failed
            for kind, query in dns.lookups:
                self.assertTrue(query.endswith("unreachable.example"), (kind, query))
            self.assert_core_got_no_message()

        return as_deferred(run())

    # --- family 2: an address family we have no socket for ---------------------------------------------

    def test_ipv6_next_hop_on_the_ipv4_udp_socket_gets_503_and_leaves_no_transaction(self) -> None:
        async def run() -> None:
            client = await self.registered_wic("<sip:[::1]:5060;transport=udp;lr>")
            request = self.initial_message(client)
            await client.send(request)
            self.assertEqual((await client.final_response()).status, 503)
            await self.no_transactions_of(request.headers.get("Call-ID"))
            self.assert_core_got_no_message()

        return as_deferred(run())

    # --- family 3: a WebSocket Autobahn has failed but whose end is not reported yet ------------------
    #
    # On a text frame that is not UTF-8 Autobahn fails the connection (1007, RFC 6455 §8.1): it
    # sends its Close and drops TCP at once, but the flow's end (onClose) comes with
    # connectionLost, a loop turn later.  Whatever the same loop turn delivers for that WIC
    # meets a WebSocket on which Autobahn refuses to send.  The tests hold the loop while the
    # bad frame and then a datagram from the core arrive, so that one turn reads both.

    def same_loop_turn(self, *sends: Any) -> None:
        for send in sends:
            send()
        time.sleep(0.1)  # blocks the loop (this coroutine runs on it): both are queued meanwhile

    def from_core(self, port: int, method: str, uri: str, call_id: str) -> Request:
        request = Request(method, uri)
        for name, value in (
            ("Via", f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:carol@{DOMAIN}>;tag={secrets.token_hex(4)}"),
            ("To", f"<sip:alice@{DOMAIN}>"),
            ("Call-ID", call_id),
            ("CSeq", f"1 {method}"),
            ("Content-Type", "text/plain"),
        ):
            request.headers.add(name, value)
        request.body = b"hello"
        return request

    def test_response_toward_a_failed_websocket_is_dropped_and_its_transaction_ends(self) -> None:
        async def run() -> None:
            client = await self.registered_raw_wic()  # no Service-Route: initial requests go to next_hop
            request = self.initial_message(client.sip)
            client.write(client_frame(request.serialize()))
            forwarded, source = await self.core.next_request_of("MESSAGE")
            self.same_loop_turn(
                lambda: client.write(client_frame(b"\xff\xfe not UTF-8")),
                lambda: self.core.reply(forwarded, source, 200),
            )
            opcode, payload = await client.next_frame()
            self.assertEqual((opcode, payload[:2]), (0x8, (1007).to_bytes(2, "big")))  # no SIP frame before it
            await self.no_transactions_of(request.headers.get("Call-ID"))

        return as_deferred(run())

    def test_request_toward_a_failed_websocket_gets_430(self) -> None:
        async def run() -> None:
            client = await self.registered_raw_wic()
            [flow] = list(self.node.ws_factory.connections)
            token = self.node.flows.token_for(flow)
            port = self.core.port.getHost().port
            edge = self.node.transports.local_address("UDP")
            request = self.from_core(port, "MESSAGE", f"sip:alice@{client.sip.host};transport=ws", secrets.token_hex(8))
            request.headers.add("Route", f"<{self.node.policy.addresses.core_uri(token)}>")
            self.same_loop_turn(
                lambda: client.write(client_frame(b"\xff\xfe not UTF-8")),
                lambda: self.core.send(request, (edge.host, edge.port)),
            )
            while True:
                message, _ = await asyncio.wait_for(self.core.received.get(), 5)
                if isinstance(message, Response) and message.status >= 200:
                    break
            self.assertEqual(message.status, 430)  # RFC 5626 §5.3.1: Flow Failed
            await self.no_transactions_of(request.headers.get("Call-ID"))

        return as_deferred(run())
