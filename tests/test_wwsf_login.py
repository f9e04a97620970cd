"""The WWSF's web login in headless Chromium ([auth] mode = token): alice and bob log in at the
WWSF, get a token, register with ``Authorization: Bearer`` (no SIP password in the page) and
alice calls bob with audio both ways.  The browser's own WebSocket carries a token at the
handshake in its URL (what a browser can send), and a bad one is refused before any SIP."""

from __future__ import annotations

from twisted.trial import unittest

from tests.support.browser import (
    Browser,
    call_from_page,
    page_state,
    require_browser,
    start_browser,
    start_wwsf_deployment,
    wait_for_inbound_audio,
)
from tests.support.deployment import DOMAIN
from tests.support.wic import as_deferred

USERS = ("alice", "bob")
TOKEN_MODE = "[auth]\nmode = token\n[core]\ntrust_asserted_identity = true\n"

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
        self.service, self.page_url = start_wwsf_deployment(self, TOKEN_MODE)

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

    async def _login_and_call(self) -> None:
        browser = await start_browser(self)
        for user in USERS:
            await self._log_in(browser, user)
        self.assertEqual(
            sorted(binding.aor for binding in self.service.pcscf.registrations.all()), [f"sip:{u}@{DOMAIN}" for u in USERS]
        )
        # The password path is closed in token mode: a wrong web password gets no token either.
        refused = await browser.evaluate("alice", LOGIN.replace("user + '-secret'", "'guess'"), "alice")
        self.assertEqual(refused["status"], 403)

        # The browser's WebSocket: a token in the URL is checked at the handshake.
        url = await browser.evaluate("alice", "() => document.getElementById('websocket-url').value")
        grant = await browser.evaluate("alice", LOGIN, "alice")
        self.assertEqual(grant["status"], 200)
        self.assertEqual(await browser.evaluate("alice", OPEN_SOCKET, f"{url}/?access_token={grant['body']['token']}"), "open")
        self.assertEqual(await browser.evaluate("alice", OPEN_SOCKET, f"{url}/?access_token=forged.token.value"), "refused")

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
