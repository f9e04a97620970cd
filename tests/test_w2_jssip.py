"""Interop: JsSIP (a real WIC's SIP stack, in Node) registers through epcscf to the embedded core."""

from __future__ import annotations

from twisted.trial import unittest

from tests.support.deployment import DOMAIN, USERS, start_deployment, ws_url
from tests.support.node_peer import require_node_modules, start_node_peer
from tests.support.wic import WsSipClient, as_deferred


class JsSipRegistrationTests(unittest.TestCase):
    def setUp(self) -> None:
        require_node_modules(self, "jssip", "jssip-node-websocket")
        self.service = start_deployment(self)

    def test_register_refresh_unregister_and_reachable_after_reconnect(self):
        return as_deferred(self._scenario())

    async def _scenario(self) -> None:
        peer = start_node_peer(
            self, "jssip_register.js", ws_url(self.service), "alice", USERS["alice"], DOMAIN,
            "register,reregister,unregister,register,drop,reconnect,await-message,unregister",
        )
        registered = await peer.wait_for("registered")
        self.assertEqual(registered["service_route"], f"<sip:orig@{self.service.core.addresses[0][1]};lr>")
        await peer.wait_for("step-done", step="reregister")
        await peer.wait_for("unregistered", status=200)
        self.assertEqual(self.service.pcscf.registrations.all(), [])
        await peer.wait_for("step-done", step="register")
        [before] = self.service.pcscf.registrations.all()
        await peer.wait_for("disconnected")
        await peer.wait_for("step-done", step="reconnect")
        [after] = self.service.pcscf.registrations.all()
        self.assertNotEqual(after.flow_id, before.flow_id)  # RFC 5626 §6: the binding moved
        self.assertEqual(after.instance_id, before.instance_id)
        bob = WsSipClient(ws_url(self.service), "bob", USERS["bob"], DOMAIN)
        await bob.connect()
        self.addCleanup(lambda: as_deferred(bob.close()))
        self.assertEqual((await bob.register()).status, 200)
        response = await bob.transact(bob.request("MESSAGE", f"sip:alice@{DOMAIN}", body=b"are you back?", content_type="text/plain"))
        self.assertEqual(response.status, 200)
        message = await peer.wait_for("message")
        self.assertEqual(message["body"], "are you back?")
        await peer.wait_for("unregistered", status=200)
        self.assertEqual(await peer.ended, 0)
