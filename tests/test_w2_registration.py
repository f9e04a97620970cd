"""W2 end to end: WICs on real WebSockets register through the eP-CSCF to the embedded core,
originate requests and are reached again by flow token (RFC 7118, RFC 5626, TS 24.229 §5.2)."""

from __future__ import annotations

import asyncio
import secrets

from twisted.trial import unittest

from epcscf.sip.headers import to_tag
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_rules import list_values, name_addr_uri
from epcscf.sip.uri import parse_uri
from tests.support.deployment import DOMAIN, USERS, start_deployment, ws_url
from tests.support.processes import wait_for
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import WsSipClient, as_deferred


def asyncio_test(method):
    def wrapper(self):
        return as_deferred(method(self))

    wrapper.__name__ = method.__name__
    return wrapper


class RegistrationThroughTheEdgeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.service = start_deployment(self)
        self.clients: list[WsSipClient] = []

    def tearDown(self):
        return as_deferred(self._close_clients())

    async def _close_clients(self) -> None:
        for client in self.clients:
            await client.close()

    async def wic(self, user: str) -> WsSipClient:
        client = WsSipClient(ws_url(self.service), user, USERS[user], DOMAIN)
        await client.connect()
        self.clients.append(client)
        return client

    async def registered(self, user: str) -> WsSipClient:
        client = await self.wic(user)
        response = await client.register()
        self.assertEqual(response.status, 200, response.serialize())
        return client

    def flow_token_of(self, client: WsSipClient) -> str:
        [flow] = [f for f in self.service.pcscf.flows if f.id == self.flow_id_of(client)]
        return flow.token

    def flow_id_of(self, client: WsSipClient) -> str:
        local = client.socket.transport.get_extra_info("sockname")
        [flow] = [f for f in self.service.pcscf.flows if f.connection.remote.port == local[1]]
        return flow.id

    @asyncio_test
    async def test_register_is_challenged_then_accepted_with_path_service_route_and_identities(self) -> None:
        client = await self.wic("alice")
        first = client.register_request()
        await client.send(first)
        challenge = await client.final_response()
        self.assertEqual(challenge.status, 401)
        algorithms = [v.split("algorithm=")[1].split(",")[0].strip() for v in challenge.headers.get_all("WWW-Authenticate")]
        self.assertEqual(algorithms, ["SHA-256", "MD5"])  # RFC 8760 §2.4: the preferred first ([core] default)
        response = await client.register()
        self.assertEqual(response.status, 200)
        self.assertEqual(list_values(response.headers, "Service-Route"), [f"<sip:orig@{self.core_address()};lr>"])
        self.assertEqual(list_values(response.headers, "P-Associated-URI")[0], f"<sip:alice@{DOMAIN}>")
        # RFC 3327 §5.3: the registrar returns the Path; ours carries the flow token and ;ob
        [path] = list_values(response.headers, "Path")
        path_uri = parse_uri(name_addr_uri(path))
        self.assertEqual(path_uri.user, self.flow_token_of(client))
        self.assertIn("ob", path_uri.params)
        self.assertIn("lr", path_uri.params)
        # RFC 7315 / TS 24.229 §5.2.7.4: no charging information toward the UE
        self.assertNotIn("P-Charging-Vector", response.headers)
        [binding] = self.service.pcscf.registrations.all()
        self.assertEqual((binding.aor, binding.flow_id), (f"sip:alice@{DOMAIN}", self.flow_id_of(client)))

    def core_address(self) -> str:
        transport, address = self.service.core.addresses[0]
        return str(address)

    @asyncio_test
    async def test_requests_from_an_unregistered_flow_get_403(self) -> None:
        client = await self.wic("alice")
        response = await client.transact(client.request("MESSAGE", f"sip:bob@{DOMAIN}", body=b"hi", content_type="text/plain"))
        self.assertEqual(response.status, 403)

    @asyncio_test
    async def test_identity_is_asserted_and_trust_domain_headers_are_stripped(self) -> None:
        peer = UdpSipPeer()
        port = peer.start()
        self.addCleanup(peer.stop)
        client = await self.registered("alice")
        message = client.request("MESSAGE", f"sip:service@127.0.0.1:{port}", body=b"hello", content_type="text/plain")
        message.headers.add("P-Asserted-Identity", "<sip:admin@ims.localdomain>")
        message.headers.add("P-Charging-Vector", "icid-value=forged")
        message.headers.add("P-Preferred-Identity", "<sip:mallory@ims.localdomain>")
        await client.send(message)
        arrived, addr = await peer.next_request()
        self.assertEqual(arrived.headers.get_all("P-Asserted-Identity"), [f"<sip:alice@{DOMAIN}>"])
        self.assertNotIn("P-Preferred-Identity", arrived.headers)
        self.assertNotIn("icid-value=forged", arrived.headers.get("P-Charging-Vector") or "")
        self.assertIn("icid-value=", arrived.headers.get("P-Charging-Vector") or "")
        self.assertEqual(arrived.body, b"hello")
        # The request went through the core's Service-Route: three Vias (WIC, eP-CSCF, core)
        self.assertEqual(len(list_values(arrived.headers, "Via")), 3)
        peer.reply(arrived, addr, 200)
        response = await client.final_response()
        self.assertEqual(response.status, 200)

    @asyncio_test
    async def test_a_request_from_the_core_reaches_the_wic_by_its_flow_token(self) -> None:
        alice = await self.registered("alice")
        bob = await self.registered("bob")
        await bob.send(bob.request("MESSAGE", f"sip:alice@{DOMAIN}", body=b"hi alice", content_type="text/plain"))
        arrived = await alice.next_message()
        self.assertIsInstance(arrived, Request)
        self.assertEqual((arrived.method, arrived.body), ("MESSAGE", b"hi alice"))
        self.assertEqual(arrived.headers.get_all("P-Asserted-Identity"), [f"<sip:bob@{DOMAIN}>"])
        self.assertNotIn("P-Charging-Vector", arrived.headers)
        await alice.answer(arrived, 200)
        self.assertEqual((await bob.final_response()).status, 200)

    @asyncio_test
    async def test_430_once_the_flow_is_gone_and_binding_moves_on_reconnect(self) -> None:
        alice = await self.registered("alice")
        bob = await self.registered("bob")
        alice_flow, alice_token = self.flow_id_of(alice), self.flow_token_of(alice)
        await alice.drop()
        await wait_for(lambda: alice_flow not in self.service.pcscf.flows)
        # RFC 5626 §5.3.1: a request for the dead flow gets 430 (Flow Failed) at the edge ...
        self.assertEqual((await self.send_via_edge(alice, alice_token)).status, 430)
        # ... and the core, told so, drops that binding (RFC 5626 §7): alice is unavailable.
        response = await bob.transact(bob.request("MESSAGE", f"sip:alice@{DOMAIN}", body=b"x", content_type="text/plain"))
        self.assertEqual(response.status, 480)
        # The same instance/reg-id registers again on a new connection (RFC 5626 §4.2.1).
        again = WsSipClient(ws_url(self.service), "alice", USERS["alice"], DOMAIN)
        again.instance, again.host = alice.instance, alice.host
        await again.connect()
        self.clients.append(again)
        self.assertEqual((await again.register()).status, 200)
        self.assertEqual([b.flow_id for b in self.service.pcscf.registrations.all() if b.aor.startswith("sip:alice")], [self.flow_id_of(again)])
        await bob.send(bob.request("MESSAGE", f"sip:alice@{DOMAIN}", body=b"back?", content_type="text/plain"))
        arrived = await again.next_message()
        self.assertEqual(arrived.body, b"back?")
        await again.answer(arrived, 200)
        self.assertEqual((await bob.final_response()).status, 200)

    @asyncio_test
    async def test_tampered_flow_token_gets_403(self) -> None:
        alice = await self.registered("alice")
        token = self.flow_token_of(alice)
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        self.assertEqual((await self.send_via_edge(alice, tampered)).status, 403)

    async def send_via_edge(self, target: WsSipClient, token: str) -> Response:
        """A MESSAGE from a core-side peer routed by ``token`` in its Route (as a core would)."""
        peer = UdpSipPeer()
        peer.start()
        self.addCleanup(peer.stop)
        core_side = self.service.pcscf.listener("UDP").address
        request = Request("MESSAGE", f"sip:alice@{target.host};transport=ws")
        request.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{peer.port.getHost().port};branch=z9hG4bK{secrets.token_hex(5)}")
        request.headers.add("Route", f"<sip:{token}@{core_side.host}:{core_side.port};transport=udp;lr>")
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", f"<sip:bob@{DOMAIN}>;tag=1")
        request.headers.add("To", f"<sip:alice@{DOMAIN}>")
        request.headers.add("Call-ID", secrets.token_hex(6))
        request.headers.add("CSeq", "1 MESSAGE")
        peer.send(request, (core_side.host, core_side.port))
        response, _ = await asyncio.wait_for(peer.received.get(), 5)
        self.assertIsInstance(response, Response)
        return response

    @asyncio_test
    async def test_deregistration_removes_the_binding(self) -> None:
        alice = await self.registered("alice")
        self.assertEqual(len(self.service.pcscf.registrations.all()), 1)
        self.assertEqual((await alice.register(expires=0)).status, 200)
        self.assertEqual(self.service.pcscf.registrations.all(), [])
        bob = await self.registered("bob")
        response = await bob.transact(bob.request("MESSAGE", f"sip:alice@{DOMAIN}", body=b"x", content_type="text/plain"))
        self.assertEqual(response.status, 480)  # registered nowhere: Temporarily Unavailable


class SecureWebSocketTests(unittest.TestCase):
    """RFC 7118 §9.1: WSS with the certificate from [ws]; a client that trusts it registers."""

    def setUp(self) -> None:
        import os

        from tests.support.certificates import self_signed_certificate

        directory = os.path.abspath(self.mktemp())
        self.cert, key, _ = self_signed_certificate(directory)
        self.service = start_deployment(self, f"[ws]\nlisten = wss:127.0.0.1:0\ncertificate = {self.cert}\nprivate_key = {key}\n")

    @asyncio_test
    async def test_register_over_wss(self) -> None:
        import ssl

        port = self.service.pcscf.listener("WSS").address.port
        context = ssl.create_default_context(cafile=self.cert)
        client = WsSipClient(f"wss://127.0.0.1:{port}", "alice", USERS["alice"], DOMAIN)
        import websockets

        client.socket = await websockets.connect(client.url, subprotocols=["sip"], ssl=context)
        client._reader = asyncio.ensure_future(client._read())
        self.addCleanup(lambda: as_deferred(client.close()))
        response = await client.register()
        self.assertEqual(response.status, 200)
        [binding] = self.service.pcscf.registrations.all()
        self.assertTrue(binding.flow_id.startswith("wss-"))

    @asyncio_test
    async def test_untrusting_client_cannot_connect(self) -> None:
        import ssl

        import websockets

        port = self.service.pcscf.listener("WSS").address.port
        with self.assertRaises(ssl.SSLCertVerificationError):
            await websockets.connect(f"wss://127.0.0.1:{port}", subprotocols=["sip"], ssl=ssl.create_default_context())
