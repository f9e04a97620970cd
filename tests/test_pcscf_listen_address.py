"""Listeners on every address (0.0.0.0): what the eP-CSCF writes in Via/Record-Route/Path.

The core-facing side needs ``[sip] public_address`` then (``tests.test_config`` shows the refusal);
a WIC-facing listener on 0.0.0.0 is allowed, since a WIC sends every request over its own
WebSocket (RFC 7118 §5), but the address its Via and Record-Route name is logged at start.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.support.deployment import DOMAIN, USERS, start_deployment
from tests.support.wic import WsSipClient, as_deferred

EVERY_ADDRESS = """\
[sip]
listen = udp:0.0.0.0:0
public_address = 127.0.0.1
[ws]
listen = ws:0.0.0.0:0
"""


class EveryAddressTests(unittest.TestCase):
    def setUp(self) -> None:
        self.log_events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)
        self.service = start_deployment(self, EVERY_ADDRESS)

    def warnings(self) -> list[str]:
        return [formatEvent(event) for event in self.log_events if event.get("log_level") is LogLevel.warn]

    def test_ws_listener_on_every_address_is_logged_and_advertised_as_loopback(self) -> None:
        listener = self.service.pcscf.listener("WS")
        assert listener is not None
        self.assertEqual(listener.address.host, "0.0.0.0")
        self.assertEqual(
            self.warnings(),
            [f"ws:0.0.0.0:{listener.address.port} is on every address: Via and Record-Route toward WICs name 127.0.0.1"],
        )
        addresses = self.service.pcscf.policy.addresses  # type: ignore[union-attr]
        self.assertEqual((addresses.wic_host, addresses.wic_port), ("127.0.0.1", listener.address.port))

    def test_sip_listener_on_every_address_is_advertised_as_its_public_address(self) -> None:
        addresses = self.service.pcscf.policy.addresses  # type: ignore[union-attr]
        self.assertEqual(addresses.core_host, "127.0.0.1")  # [sip] public_address, no warning for it
        self.assertFalse([text for text in self.warnings() if text.startswith("udp:")])

    def test_a_wic_registers_through_the_listener_on_every_address(self) -> None:
        return as_deferred(self._register())

    async def _register(self) -> None:
        listener = self.service.pcscf.listener("WS")
        assert listener is not None
        client = WsSipClient(f"ws://127.0.0.1:{listener.address.port}", "alice", USERS["alice"], DOMAIN)
        await client.connect()
        try:
            self.assertEqual((await client.register()).status, 200)
        finally:
            await client.close()
