"""Interop (TS 24.371 §7.4.2): JsSIP places a call with a Chrome-style WebRTC offer through
epcscf and the embedded core to a sipp UAS. sipp must see a plain IMS offer; JsSIP must get
a WebRTC answer carrying our ICE and DTLS attributes."""

from __future__ import annotations

import asyncio
import os
import re

from twisted.trial import unittest

from epcscf.sdp import SessionDescription
from tests.support.deployment import DOMAIN, USERS, start_deployment, ws_url
from tests.support.node_peer import require_node_modules, start_node_peer
from tests.support.processes import TOP, wait_for
from tests.support.wic import as_deferred
from tests.support.sipp import (
    SCENARIOS, SippProcess, free_port, messages_in_trace, one_per_transaction, port_bound, require_sipp, spawn_sipp,
)

# A Chrome offer (as chrome_offer_2_1.sdp), audio only, with a real fingerprint and loopback candidates.
CHROME_OFFER = os.path.join(TOP, "tests", "fixtures", "sdp", "chrome_offer_loopback.sdp")
WEBRTC_ONLY = re.compile(r"^a=(ice-|candidate|end-of-candidates|fingerprint|setup|group|mid|msid|ssrc|extmap|rtcp-mux|rtcp-fb)", re.M)


class JsSipCallToSippTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.sipp = require_sipp(self)
        require_node_modules(self, "jssip", "jssip-node-websocket")
        self.assertTrue(os.path.exists(CHROME_OFFER), CHROME_OFFER)
        self.service = start_deployment(self)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def spawn_sipp_uas(self, scenario_name: str = "calls_uas_answer.xml") -> tuple[SippProcess, str, int]:
        port = free_port()
        scenario = os.path.join(SCENARIOS, scenario_name)
        args = ["-sf", scenario, "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-timeout", "30s", "-timeout_error"]
        process, trace = spawn_sipp(self, self.sipp, args, self.directory, "uas")
        return process, trace, port

    def test_chrome_style_offer_reaches_sipp_as_plain_rtp_and_jssip_gets_ice_and_dtls(self):
        return as_deferred(self._call())

    async def _call(self) -> None:
        uas, trace, port = self.spawn_sipp_uas()
        await wait_for(lambda: port_bound(port, "UDP") or uas.ended.called, timeout=10)
        peer = start_node_peer(self, "jssip_call.js", ws_url(self.service), "alice", USERS["alice"], DOMAIN,
                               f"sip:echo@127.0.0.1:{port}", CHROME_OFFER)
        answer = await peer.wait_for("remote-description", timeout=20)
        await peer.wait_for("confirmed", timeout=20)
        await peer.wait_for("ended", timeout=20)
        self.assertEqual(await uas.ended.asFuture(asyncio.get_event_loop()), 0, uas.output[-2000:])
        # What the core side saw: the IMS offer (TS 24.371 §7.4.2 b).
        invite = next(m for m in messages_in_trace(trace) if m.startswith("INVITE "))
        offer_text = invite.split("\n\n", 1)[1] if "\n\n" in invite else invite.split("\r\n\r\n", 1)[1]
        offer = SessionDescription.parse(offer_text.replace("\r\n", "\n").replace("\n", "\r\n"))
        self.assertEqual([m.proto for m in offer.media], ["RTP/AVP"])
        self.assertEqual(offer.connection.address if offer.connection else offer.media[0].connection.address, "127.0.0.1")
        self.assertEqual(offer.media[0].formats, ["9", "0", "8", "126"])
        self.assertIsNone(WEBRTC_ONLY.search(offer_text), offer_text)
        self.assertNotIn("54400", offer_text)  # the browser's transport never leaks to the core
        low, high = self.service.config.media.port_range
        self.assertTrue(low <= offer.media[0].port <= high and offer.media[0].port % 2 == 0)
        # What the WIC got: a WebRTC answer with our ICE and DTLS (TS 23.334).
        sdp = answer["sdp"]
        self.assertEqual(answer["type"], "answer")
        for pattern in (r"^m=audio [1-9]\d* UDP/TLS/RTP/SAVPF ", r"^a=ice-ufrag:\S{4,}", r"^a=ice-pwd:\S{22,}",
                        r"^a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 \d+ typ host", r"^a=fingerprint:sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}",
                        r"^a=setup:active", r"^a=rtcp-mux", r"^a=mid:0", r"^a=end-of-candidates"):
            self.assertRegex(sdp, re.compile(pattern, re.M))
        self.assertNotIn("a=group:BUNDLE", sdp)  # never answer with BUNDLE (not supported)
        # the call is over: nothing of it is left in the media pool
        await wait_for(lambda: not self.service.pcscf.calls.calls(), timeout=10)

    def test_in_dialog_requests_of_a_real_wic_pass_the_border_checks(self):
        """re-INVITE, UPDATE, trickle INFO (consumed here, RFC 8840), INFO, MESSAGE and BYE from
        JsSIP along the route set it learnt: every one passes the flow-token and route-set checks
        of ``epcscf.pcscf.guard`` and reaches sipp (the trickle INFO excepted)."""
        return as_deferred(self._in_dialog_call())

    async def _in_dialog_call(self) -> None:
        uas, trace, port = self.spawn_sipp_uas("calls_uas_in_dialog.xml")
        await wait_for(lambda: port_bound(port, "UDP") or uas.ended.called, timeout=10)
        peer = start_node_peer(self, "jssip_call.js", ws_url(self.service), "alice", USERS["alice"], DOMAIN,
                               f"sip:echo@127.0.0.1:{port}", CHROME_OFFER, "in-dialog")
        await peer.wait_for("confirmed", timeout=20)
        for step in ("reinvite-ok", "update-ok", "trickle-info-ok", "info-ok", "message-ok"):
            await peer.wait_for(step, timeout=10)
        await peer.wait_for("ended", timeout=20)
        self.assertEqual(await uas.ended.asFuture(asyncio.get_event_loop()), 0, uas.output[-2000:])
        methods = [m.split(" ", 1)[0] for m in one_per_transaction(messages_in_trace(trace)) if not m.startswith("SIP/2.0")]
        self.assertEqual(methods, ["INVITE", "ACK", "INVITE", "ACK", "UPDATE", "INFO", "MESSAGE", "BYE"])
        self.assertEqual(self.service.metrics.registry.get_sample_value("epcscf_requests_refused_total", {"side": "wic", "reason": "route_set"}), None)
