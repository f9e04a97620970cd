"""Production set-up in a real browser: headless Chromium loads the WWSF page over https from
epcscf, and the page's WICs register and call over wss (the only WebSocket listener), with
audio flowing through epcscf's media relay.  A page served over https may open only wss:
(mixed content), and Chromium offers ALPN on both connections (``h2,http/1.1`` for the page,
``http/1.1`` for the WebSocket): this is what a deployment behind a real certificate does.

The certificate is the test PKI's server certificate; Chromium accepts it because the test
pins its public key (``trust_certificate_flags``), and nothing else.
"""

from __future__ import annotations

import os

from twisted.trial import unittest

from tests.support.browser import (
    call_from_page,
    open_registered_page,
    page_state,
    require_browser,
    start_browser,
    start_wwsf_deployment,
    trust_certificate_flags,
    wait_for_inbound_audio,
)
from tests.support.certificates import certificate_chain
from tests.support.processes import wait_for
from tests.support.wic import as_deferred

USERS = ("alice", "bob")


class WwsfOverHttpsTests(unittest.TestCase):
    def setUp(self) -> None:
        require_browser(self)
        self.tls = certificate_chain(os.path.abspath(self.mktemp()))
        self.service, self.page_url = start_wwsf_deployment(self, tls=self.tls)

    def test_https_page_registers_and_calls_over_wss_with_audio(self):
        return as_deferred(self._call())

    async def _call(self) -> None:
        self.assertTrue(self.page_url.startswith("https://127.0.0.1:"))
        browser = await start_browser(self, flags=trust_certificate_flags(self.tls))
        for user in USERS:
            await open_registered_page(browser, self.page_url, user)
        wss = self.service.pcscf.listener("WSS")
        assert wss is not None
        self.assertIsNone(self.service.pcscf.listener("WS"))
        self.assertEqual(
            await browser.evaluate("alice", "document.getElementById('websocket-url').value"),
            f"wss://127.0.0.1:{wss.address.port}",
        )
        # The page came over TLS with ALPN: Chromium reports the negotiated protocol.
        navigation = "() => [location.protocol, performance.getEntriesByType('navigation')[0].nextHopProtocol]"
        self.assertEqual(await browser.evaluate("alice", navigation), ["https:", "http/1.1"])
        flows = list(self.service.pcscf.flows)
        self.assertEqual(len(flows), 2)
        self.assertEqual({flow.connection.transport for flow in flows}, {"WSS"})
        self.assertEqual({flow.origin for flow in flows}, {self.page_url.rstrip("/")})

        await call_from_page(browser, "alice", "bob")
        await browser.wait("bob", page_state("call-state", "incoming"))
        await browser.click("bob", "#answer")
        for user in USERS:
            await browser.wait(user, page_state("call-state", "connected"), timeout=20000)
        for user in USERS:
            stats = await wait_for_inbound_audio(browser, user)
            self.assertEqual(stats["dtlsState"], "connected", user)
            # Media flows on the selected pair; Chrome may still report it "in-progress" (one of its own
            # checks on it outstanding), as tests.test_media_browser allows.
            self.assertIn(stats["selectedPair"]["state"], ("succeeded", "in-progress"), user)

        await browser.click("alice", "#hangup")
        for user in USERS:
            await browser.wait(user, page_state("call-state", "idle"))
        await wait_for(lambda: not self.service.pcscf.calls.calls(), timeout=10)
        self.assertEqual([line for line in browser.console(last=1000) if line.split(":")[0].endswith("error")], [])
