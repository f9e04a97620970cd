"""A non-SIP WIC with real WebRTC calls a SIP WIC through epcscf (TS 24.371 §7.2.1, §7.4): headless
Chromium runs the real ``janus.js`` (npm ``janus-gateway``) on a page of its own origin as alice
and the WWSF demo page (JsSIP) as bob; alice calls bob, bob answers, audio flows both ways (the
inbound-rtp packets of both pages rise), alice hangs up."""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.server import Site
from twisted.web.static import File

from tests.support.browser import (
    open_registered_page,
    page_state,
    require_browser,
    start_browser,
    start_wwsf_deployment,
    wait_for_inbound_audio,
)
from tests.support.deployment import DOMAIN, USERS
from tests.support.processes import TOP, wait_for
from tests.support.wic import as_deferred

PAGE_SOURCES = os.path.join(TOP, "tests", "peers", "janus_page")
JANUS_JS = os.path.join(TOP, "node_modules", "janus-gateway", "npm", "dist", "janus.es.js")
ADAPTER_JS = os.path.join(TOP, "node_modules", "webrtc-adapter", "out", "adapter.js")

# In the janus.js page: inbound audio packets grow by `arg` within a second; the stats, else false.
JANUS_PACKETS_RISE = """async (more) => {
  const first = await window.janusWic.stats();
  if (!first) return false;
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const second = await window.janusWic.stats();
  return second.packetsReceived >= first.packetsReceived + more ? second : false;
}"""


class JanusPageCallsJsSipPageTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        require_browser(self)
        for path in (JANUS_JS, ADAPTER_JS):
            if not os.path.exists(path):
                self.fail(f"{path} is missing: bin/test runs npm ci (janus-gateway)")
        root = os.path.abspath(self.mktemp())
        shutil.copytree(PAGE_SOURCES, root)
        shutil.copy(JANUS_JS, root)
        shutil.copy(ADAPTER_JS, root)
        self.page_port = reactor.listenTCP(0, Site(File(root)), interface="127.0.0.1")
        self.addCleanup(self.page_port.stopListening)
        origin = f"http://127.0.0.1:{self.page_port.getHost().port}"
        self.page = f"{origin}/index.html"
        self.service, self.wwsf_url = start_wwsf_deployment(
            self, extra="[nonsip]\nlisten = ws:127.0.0.1:0\n", extra_origins=[origin]
        )

    def test_janus_js_calls_a_jssip_page_with_audio_both_ways(self):
        return as_deferred(self._call())

    async def _call(self) -> None:
        browser = await start_browser(self)
        await open_registered_page(browser, self.wwsf_url, "bob")
        await browser.open("alice", self.page)
        await browser.wait_function("alice", "() => window.janusWic && window.janusWic.state === 'ready'")
        listener = self.service.pcscf.listener("JANUS-WS")
        assert listener is not None
        janus = f"ws://127.0.0.1:{listener.address.port}"
        await browser.evaluate(
            "alice", "([server, password, domain]) => window.janusWic.register(server, 'alice', password, domain)",
            [janus, USERS["alice"], DOMAIN],
        )
        await browser.evaluate("alice", f"() => window.janusWic.call('sip:bob@{DOMAIN}')")
        await browser.wait("bob", page_state("call-state", "incoming"), timeout=20000)
        await browser.click("bob", "#answer")
        await browser.wait_function("alice", "() => window.janusWic.state === 'accepted'", timeout=20000)
        bob = await wait_for_inbound_audio(browser, "bob", timeout=20000)
        self.assertEqual(bob["dtlsState"], "connected")
        alice = await browser.wait_function("alice", JANUS_PACKETS_RISE, arg=25, timeout=20000, polling=200)
        self.assertEqual(alice["connectionState"], "connected")
        self.assertGreater(alice["packetsSent"], 25)
        # the originating leg (alice's, from the non-SIP WIC) and the terminating one (bob's)
        live = [record for record in self.service.pcscf.operations.calls() if record["live"]]
        self.assertEqual(len(live), 2, live)
        await browser.evaluate("alice", "() => window.janusWic.hangup()")
        await browser.wait("bob", page_state("call-state", "idle"), timeout=20000)
        await browser.wait_function("alice", "() => window.janusWic.state === 'ended'", timeout=20000)
        await wait_for(lambda: not any(record["live"] for record in self.service.pcscf.operations.calls()), timeout=10)
