"""The WWSF's web login in headless Chromium, as deployed: the page comes over https and its
WICs use wss only ([auth] mode = token, handshake = required).  Alice and bob log in at the
WWSF, get a token, open their WebSocket with it in the URL (``?access_token=``, RFC 6750 §2.3:
what a browser can send at the handshake), register with ``Authorization: Bearer`` (no SIP
password in the page) and alice calls bob with audio both ways.  A socket without a token, or
with a bad one, is refused with HTTP 401 before any SIP.  The certificate is the test PKI's,
pinned for Chromium as in tests.test_wwsf_https."""

from __future__ import annotations

import os
import ssl

import websockets
from twisted.trial import unittest

from tests.support.browser import (
    Browser,
    call_from_page,
    page_state,
    require_browser,
    start_browser,
    start_wwsf_deployment,
    trust_certificate_flags,
    wait_for_inbound_audio,
)
from tests.support.certificates import certificate_chain
from tests.support.deployment import DOMAIN
from tests.support.wic import as_deferred

USERS = ("alice", "bob")
TOKEN_MODE = "[auth]\nmode = token\nhandshake = required\n[core]\ntrust_asserted_identity = true\n"

# In the page: open a WebSocket to the eP-CSCF with this URL; "open" or "refused".
OPEN_SOCKET = """(url) => new Promise((resolve) => {
  const socket = new WebSocket(url, 'sip');
  socket.onopen = () => { socket.close(); resolve('open'); };
  socket.onerror = () => resolve('refused');
})"""
# In the page: a fresh token from the WWSF, as the page's login gets it.
LOGIN = """async (user) => {
  const response = await fetch('login', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user, password: user + '-secret' }) });
  return { status: response.status, body: await response.json() };
}"""


class WwsfLoginTests(unittest.TestCase):
    def setUp(self) -> None:
        require_browser(self)
        self.tls = certificate_chain(os.path.abspath(self.mktemp()))
        self.service, self.page_url = start_wwsf_deployment(self, TOKEN_MODE, tls=self.tls)

    def test_users_log_in_with_a_token_and_call_without_a_sip_password(self):
        return as_deferred(self._login_and_call())

    async def _log_in(self, browser: Browser, user: str) -> None:
        await browser.open(user, f"{self.page_url}?user={user}")
        await browser.wait(user, "body[data-ready]")
        await browser.click(user, "#login")
        await browser.wait(user, page_state("registration-state", "registered"))
        # The page keeps no password: the field is emptied, JsSIP was given none.
        self.assertEqual(await browser.evaluate(user, "() => document.getElementById('password').value"), "")
        self.assertIsNone(await browser.evaluate(user, "() => window.wwsf.ua._configuration.password || null"))

    async def _refused_status(self, url: str) -> int:
        """The HTTP status of a refused wss handshake (a browser's WebSocket API hides it)."""
        context = ssl.create_default_context(cafile=self.tls.root_path)
        with self.assertRaises(websockets.InvalidStatus) as caught:
            await websockets.connect(url, subprotocols=["sip"], ssl=context, server_hostname="localhost",
                                     additional_headers={"Origin": self.page_url.rstrip("/")})
        return caught.exception.response.status_code

    async def _login_and_call(self) -> None:
        self.assertTrue(self.page_url.startswith("https://"))
        browser = await start_browser(self, flags=trust_certificate_flags(self.tls))
        for user in USERS:
            await self._log_in(browser, user)
        self.assertEqual({flow.connection.transport for flow in self.service.pcscf.flows}, {"WSS"})
        self.assertEqual(
            sorted(binding.aor for binding in self.service.pcscf.registrations.all()), [f"sip:{u}@{DOMAIN}" for u in USERS]
        )
        # The password path is closed in token mode: a wrong web password gets no token either.
        refused = await browser.evaluate("alice", LOGIN.replace("user + '-secret'", "'guess'"), "alice")
        self.assertEqual(refused["status"], 403)

        # The browser's WebSocket: a token in the URL is checked at the handshake, and none is
        # no entry (handshake = required): refused before any SIP, counted.
        url = await browser.evaluate("alice", "() => document.getElementById('websocket-url').value")
        self.assertTrue(url.startswith("wss://127.0.0.1:"), url)
        grant = await browser.evaluate("alice", LOGIN, "alice")
        self.assertEqual(grant["status"], 200)
        self.assertEqual(await browser.evaluate("alice", OPEN_SOCKET, f"{url}/?access_token={grant['body']['token']}"), "open")
        self.assertEqual(await browser.evaluate("alice", OPEN_SOCKET, f"{url}/?access_token=forged.token.value"), "refused")
        self.assertEqual(await browser.evaluate("alice", OPEN_SOCKET, url), "refused")
        self.assertEqual(await self._refused_status(url), 401)
        self.assertEqual(await self._refused_status(f"{url}/?access_token=forged.token.value"), 401)
        registry = self.service.metrics.registry
        self.assertEqual(registry.get_sample_value("epcscf_token_refusals_total", {"reason": "missing"}), 2.0)
        self.assertEqual(len(self.service.pcscf.flows), 2)  # the refused sockets made no flow

        await call_from_page(browser, "alice", "bob")
        await browser.wait("bob", page_state("call-state", "incoming"))
        await browser.click("bob", "#answer")
        for user in USERS:
            await browser.wait(user, page_state("call-state", "connected"), timeout=20000)
            stats = await wait_for_inbound_audio(browser, user)
            self.assertEqual(stats["dtlsState"], "connected", user)
        await browser.click("alice", "#hangup")
        for user in USERS:
            await browser.wait(user, page_state("call-state", "idle"))
