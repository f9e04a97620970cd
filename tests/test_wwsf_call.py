"""The WWSF demo end to end: two headless Chromium pages (alice and bob) register through
epcscf, alice calls bob, bob answers, audio flows both ways through epcscf's media relay
(ICE + DTLS-SRTP toward each browser, RTP between the legs via the embedded core's routing),
alice holds and resumes, bob hangs up (TS 24.371 §7 with a WIC at both ends).

Set EPCSCF_UPDATE_SCREENSHOTS=1 to copy the in-call screenshots to docs/ (README "Try it").
"""

from __future__ import annotations

import os
import shutil

from twisted.trial import unittest

from tests.support.browser import (
    METER_MOVES,
    METER_SILENT,
    Browser,
    call_from_page,
    open_registered_page,
    page_state,
    png_summary,
    require_browser,
    start_browser,
    start_wwsf_deployment,
    wait_for_inbound_audio,
)
from tests.support.deployment import DOMAIN
from tests.support.processes import TOP, wait_for
from tests.support.wic import as_deferred

USERS = ("alice", "bob")
MEDIA_PORTS = range(40000, 41000)  # [media] port_range of tests.support.deployment



class WwsfCallTests(unittest.TestCase):
    def setUp(self) -> None:
        require_browser(self)
        self.service, self.page_url = start_wwsf_deployment(self)

    def test_alice_calls_bob_hears_the_tone_holds_resumes_and_bob_hangs_up(self):
        return as_deferred(self._call())

    async def _register(self, browser: Browser) -> None:
        for user in USERS:
            await open_registered_page(browser, self.page_url, user)

    async def _media_flows(self, browser: Browser, user: str) -> dict:
        stats = await wait_for_inbound_audio(browser, user)
        self.assertEqual(stats["dtlsState"], "connected", user)
        # Media flows on the selected pair; Chrome may still report it "in-progress" (one of its own
        # checks on it outstanding), as tests.test_media_browser allows.
        self.assertIn(stats["selectedPair"]["state"], ("succeeded", "in-progress"), user)
        return stats

    async def _call(self) -> None:
        browser = await start_browser(self)
        await self._register(browser)

        await call_from_page(browser, "alice", "bob")
        await browser.wait("bob", page_state("call-state", "incoming"))
        self.assertEqual(await browser.text("bob", "#incoming-text"), f"Incoming call from sip:alice@{DOMAIN}")
        await browser.wait("alice", page_state("call-state", "ringing"))
        await browser.click("bob", "#answer")
        for user in USERS:
            await browser.wait(user, page_state("call-state", "connected"), timeout=20000)

        # Media: ICE and DTLS up, inbound audio packets rising, the level meter moving.
        for user in USERS:
            stats = await self._media_flows(browser, user)
            # The browser's peer is epcscf's media relay, not the other browser (TS 24.371 §7.3).
            remote_port = int(stats["selectedPair"]["remote"].split()[0].rsplit(":", 1)[1])
            self.assertIn(remote_port, MEDIA_PORTS, f"{user}'s media peer: {stats['selectedPair']}")
            await browser.wait(user, page_state("dtls-state", "connected"))
            await browser.wait(user, page_state("ice-state", "connected") + ", " + page_state("ice-state", "completed"))
            await browser.wait_function(user, METER_MOVES, timeout=10000, polling=200)
        # Both WICs are on this eP-CSCF: one originating call (alice's leg, TS 24.371 §7.4.2) and
        # one terminating call (bob's leg, §7.4.3), both confirmed, each with its own media.
        calls = {call.direction.value: call for call in self._active_calls()}
        self.assertEqual(sorted(calls), ["originating", "terminating"])
        self.assertEqual({call.state.value for call in calls.values()}, {"confirmed"})
        self.assertEqual(len({call.call_id for call in calls.values()}), 1)

        shots = {}
        for user in USERS:
            path = os.path.abspath(f"wwsf-in-call-{user}.png")
            await browser.screenshot(user, path)
            shots[user] = path
            summary = png_summary(path)
            self.assertGreater(summary.colours, 20, user)
            self.assertGreater(summary.luma_variance, 100.0, user)
        if os.environ.get("EPCSCF_UPDATE_SCREENSHOTS"):
            for user, path in shots.items():
                shutil.copy(path, os.path.join(TOP, "docs", f"wwsf-{user}.png"))

        # Mute: alice's track is disabled, so bob's meter falls silent; unmute brings the tone back.
        await browser.click("alice", "#mute")
        self.assertEqual(await browser.attribute("alice", "#mute", "aria-pressed"), "true")
        await browser.wait_function("bob", METER_SILENT, timeout=10000, polling=200)
        await browser.click("alice", "#mute")
        self.assertEqual(await browser.attribute("alice", "#mute", "aria-pressed"), "false")
        await browser.wait_function("bob", METER_MOVES, timeout=10000, polling=200)

        # Hold (RFC 3264 §8.4: a=sendonly from alice) and resume.
        await browser.click("alice", "#hold")
        await browser.wait("alice", page_state("call-state", "held"))
        self.assertEqual(await browser.attribute("alice", "#hold", "aria-pressed"), "true")
        await browser.wait("bob", page_state("call-state", "held"))
        self.assertEqual(await browser.text("bob", "#call-state"), "held by the other party")
        await browser.click("alice", "#hold")
        for user in USERS:
            await browser.wait(user, page_state("call-state", "connected"))
            await self._media_flows(browser, user)

        # Bob hangs up: both pages idle, the peer connections closed, nothing left in epcscf.
        await browser.click("bob", "#hangup")
        for user in USERS:
            await browser.wait(user, page_state("call-state", "idle"))
            self.assertIn("(last call ended: ", await browser.text(user, "#peer"))
            self.assertTrue(await browser.evaluate(user, "document.getElementById('hangup').disabled"))
            self.assertIsNone(await browser.evaluate(user, "() => window.wwsf.peerConnection"))
        self.assertIn("(remote)", await browser.text("alice", "#peer"))
        self.assertIn("(local)", await browser.text("bob", "#peer"))
        await wait_for(lambda: not self._active_calls(), timeout=10)
        self.assertEqual([line for line in browser.console(last=1000) if line.split(":")[0].endswith("error")], [])

    def _active_calls(self) -> list:
        return self.service.pcscf.calls.calls()

    def test_bob_rejects_and_both_pages_are_idle_again(self):
        return as_deferred(self._reject())

    async def _reject(self) -> None:
        browser = await start_browser(self)
        await self._register(browser)
        await browser.click("alice", "#call")
        await browser.wait("bob", page_state("call-state", "incoming"))
        await browser.click("bob", "#reject")
        for user in USERS:
            await browser.wait(user, page_state("call-state", "idle"))
        # RFC 3261 §21.6.2: 603 Decline reaches alice (JsSIP's cause "Rejected").
        self.assertIn("(last call failed: Rejected (remote))", await browser.text("alice", "#peer"))
        self.assertTrue(await browser.evaluate("bob", "document.getElementById('incoming').hidden"))
        await wait_for(lambda: not self._active_calls(), timeout=10)
        # Both can call again at once.
        for user in USERS:
            self.assertFalse(await browser.evaluate(user, "document.getElementById('call').disabled"))
