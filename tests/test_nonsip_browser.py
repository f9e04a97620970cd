"""A non-SIP WIC with real WebRTC calls a SIP WIC through epcscf (TS 24.371 §7.2.1, §7.4), as
deployed: headless Chromium runs the real ``janus.js`` (npm ``janus-gateway``) on an https page
of its own origin as alice, over the Janus API on wss (``[nonsip] listen = wss:…`` with the
``[ws]`` certificate), and the WWSF demo page (JsSIP, https, wss) as bob; alice calls bob, bob
answers, audio flows both ways (the inbound-rtp packets of both pages rise), alice hangs up.
The certificate is the test PKI's, pinned for Chromium as in tests.test_wwsf_https."""

from __future__ import annotations

import os
import shutil

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.server import Site
from twisted.web.static import File

from epcscf.sip.tls import server_tls_from_files
from tests.support.browser import (
    open_registered_page,
    page_state,
    require_browser,
    start_browser,
    start_wwsf_deployment,
    trust_certificate_flags,
    wait_for_inbound_audio,
)
from tests.support.certificates import certificate_chain
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
        self.tls = certificate_chain(os.path.abspath(self.mktemp()))
        # a page served over https may open only wss: (mixed content), the Janus API included
        tls = server_tls_from_files(self.tls.chain_path, self.tls.key_path)
        self.page_port = reactor.listenSSL(0, Site(File(root)), tls, interface="127.0.0.1")
        self.addCleanup(self.page_port.stopListening)
        origin = f"https://127.0.0.1:{self.page_port.getHost().port}"
        self.page = f"{origin}/index.html"
        self.service, self.wwsf_url = start_wwsf_deployment(
            self, extra="[nonsip]\nlisten = wss:127.0.0.1:0\n", tls=self.tls, extra_origins=[origin]
        )

    def test_janus_js_calls_a_jssip_page_with_audio_both_ways(self):
        return as_deferred(self._call())

    async def _call(self) -> None:
        browser = await start_browser(self, flags=trust_certificate_flags(self.tls))
        await open_registered_page(browser, self.wwsf_url, "bob")
        await browser.open("alice", self.page)
        await browser.wait_function("alice", "() => window.janusWic && window.janusWic.state === 'ready'")
        self.assertIsNone(self.service.pcscf.listener("JANUS-WS"))
        listener = self.service.pcscf.listener("JANUS-WSS")
        assert listener is not None
        janus = f"wss://127.0.0.1:{listener.address.port}"
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
        # alice's handle flow came from the https page's origin over the Janus wss listener:
        # a WSS flow (RFC 7118 §5.2), as bob's from the WWSF page
        flows = {flow["origin"]: flow["transport"] for flow in self.service.pcscf.operations.flows()}
        self.assertEqual(flows, {self.page.rsplit("/", 1)[0]: "WSS", self.wwsf_url.rstrip("/"): "WSS"})
        await browser.evaluate("alice", "() => window.janusWic.hangup()")
        await browser.wait("bob", page_state("call-state", "idle"), timeout=20000)
        await browser.wait_function("alice", "() => window.janusWic.state === 'ended'", timeout=20000)
        await wait_for(lambda: not any(record["live"] for record in self.service.pcscf.operations.calls()), timeout=10)
