"""BUNDLE, video and DTMF as headless Chromium really sends them (RFC 8843, RFC 6184/7741, RFC 4733).

One epcscf (embedded core, [media] video_codecs = H264, VP8) and one Chromium per test, pages
of the WWSF demo with fake audio and video devices (``?video=1&bundle=<policy>``):

1. browser ⇄ browser through epcscf and the core: max-bundle on both pages, then balanced on
   both, then max-bundle calling balanced.  Each call: both pages connected, one transport with
   one selected candidate pair per page, inbound video with ``framesDecoded`` rising and
   ``frameWidth`` > 0, inbound audio packets rising and the level meter moving; in epcscf one
   ICE agent per call leg carrying both m= lines, each line its own core port.
2. a max-bundle page calls a sipp UAS that answers audio + video as plain RTP and echoes both
   (``-rtp_echo``): the echoed audio and video reach the browser (packetsReceived rising per kind).
3. DTMF: the page's ``RTCDTMFSender.insertDTMF("1234#")`` reaches the core side's plain RTP
   receiver (this test's socket, the audio port of sipp's answer) as RFC 4733 events with
   durations and end bits; events that socket sends reach the browser (its inbound audio
   stream counts them).

bin/test runs this inside a loopback-only network namespace; alone:
``unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m twisted.trial --reactor=asyncio tests.test_media_bundle_browser'``
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any

from twisted.trial import unittest

from tests.support.browser import Browser, page_state, require_browser, start_browser, start_wwsf_deployment
from tests.support.processes import require_program, wait_for
from tests.support.wic import as_deferred
from tests import test_media_browser  # its sipp helpers (the module, so trial does not run its tests here)
from tests.test_media_browser import LOCAL, SCENARIOS, free_udp_port, udp_bound

MEDIA_CONFIG = "[media]\nvideo_codecs = H264, VP8\n"

# The page's media as its own stats say: per kind the inbound counters, the transports.
AV_STATS = """async () => {
  const pc = window.wwsf.peerConnection;
  if (!pc) return null;
  const report = await pc.getStats();
  const out = { state: pc.connectionState, transports: 0, selectedPairs: 0, inbound: {}, outbound: {} };
  report.forEach((e) => {
    if (e.type === 'transport') { out.transports++; if (e.selectedCandidatePairId) out.selectedPairs++; }
    if (e.type === 'inbound-rtp') out.inbound[e.kind] = { packets: e.packetsReceived || 0,
        framesDecoded: e.framesDecoded || 0, frameWidth: e.frameWidth || 0 };
    if (e.type === 'outbound-rtp') out.outbound[e.kind] = { packets: e.packetsSent || 0 };
  });
  return out;
}"""

# Until audio and video arrive and rise over a second, video frames decoded with a width.
AV_RISING = """async (wanted) => {
  const sample = async () => (""" + AV_STATS + """)();
  const first = await sample();
  if (!first || first.state !== 'connected' || !first.inbound.video || !first.inbound.audio) return false;
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const second = await sample();
  const audio = second.inbound.audio.packets - first.inbound.audio.packets;
  const video = second.inbound.video.packets - first.inbound.video.packets;
  const frames = second.inbound.video.framesDecoded - first.inbound.video.framesDecoded;
  if (audio < wanted.audio || video < wanted.video) return false;
  if (wanted.frames && (frames < wanted.frames || !(second.inbound.video.frameWidth > 0))) return false;
  return Object.assign(second, { audioRise: audio, videoRise: video, framesRise: frames });
}"""

# A <video> sink for the remote tracks (Chrome decodes what something renders).
ATTACH_VIDEO = """() => {
  const pc = window.wwsf.peerConnection;
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; video.playsInline = true;
  video.srcObject = new MediaStream(pc.getReceivers().map((r) => r.track));
  document.body.appendChild(video);
  video.play().catch(() => {});
  return pc.getReceivers().length;
}"""

# The payload types Chrome offers (a throwaway offer with the page's own media): codec → PT.
OFFERED_PAYLOAD_TYPES = """async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio'); pc.addTransceiver('video');
  const offer = await pc.createOffer();
  pc.close();
  const out = {};
  for (const line of offer.sdp.split('\\r\\n')) {
    const rtpmap = line.match(/^a=rtpmap:(\\d+) ([^/]+)\\/(\\d+)/);
    if (rtpmap) out[rtpmap[2] + '/' + rtpmap[3]] = out[rtpmap[2] + '/' + rtpmap[3]] || rtpmap[1];
    const fmtp = line.match(/^a=fmtp:(\\d+) (.*)$/);
    if (fmtp) out['fmtp ' + fmtp[1]] = fmtp[2];
  }
  return out;
}"""

INSERT_DTMF = """(tones) => {
  const sender = window.wwsf.peerConnection.getSenders().find((s) => s.track && s.track.kind === 'audio');
  sender.dtmf.insertDTMF(tones, 100, 70);
  return sender.dtmf.canInsertDTMF;
}"""

INBOUND_AUDIO_PACKETS = """async () => {
  const report = await window.wwsf.peerConnection.getStats();
  let packets = null;
  report.forEach((e) => { if (e.type === 'inbound-rtp' && e.kind === 'audio') packets = e.packetsReceived; });
  return packets;
}"""

#: RFC 4733 §3.2 event codes of DTMF digits
DTMF_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}


class RtpEndpoint(asyncio.DatagramProtocol):
    """The core side's plain RTP/AVP audio endpoint: records what the relay sends, can send back."""

    def __init__(self) -> None:
        self.packets: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
            self.packets.append((data, addr))

    def events(self, payload_type: int) -> list[tuple[int, int, bool]]:
        """RFC 4733 §2.3 events received: (event, longest duration, end bit seen), in order."""
        seen: dict[int, list[int]] = {}
        order: list[int] = []
        for data, _ in self.packets:
            if data[1] & 0x7F != payload_type:
                continue
            header = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10:
                header += 4 + 4 * int.from_bytes(data[header + 2:header + 4], "big")
            event, flags, duration = struct.unpack("!BBH", data[header:header + 4])
            timestamp = int.from_bytes(data[4:8], "big")  # one event = one timestamp (RFC 4733 §2.5.1.2)
            if timestamp not in seen:
                seen[timestamp] = [event, 0, 0]
                order.append(timestamp)
            entry = seen[timestamp]
            entry[1] = max(entry[1], duration)
            entry[2] |= flags & 0x80
        return [(seen[t][0], seen[t][1], bool(seen[t][2])) for t in order]


def rtp(payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type | (0x80 if marker else 0), seq & 0xFFFF, timestamp, ssrc) + payload


class BundleVideoDtmfBrowserTests(unittest.TestCase):
    timeout = 150

    def setUp(self) -> None:
        require_browser(self)
        self.sipp = require_program(self, "sipp", "sip-tester")
        self.service, self.page_url = start_wwsf_deployment(self, MEDIA_CONFIG)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.helper = test_media_browser.BrowserMediaTests("test_browser_calls_sipp_echo")
        self.helper.directory = self.directory
        self.helper.sipp = self.sipp
        self.helper.service = self.service
        self.helper.addCleanup = self.addCleanup  # type: ignore[method-assign]  # its sipp runs end with this test

    # --- helpers ---------------------------------------------------------------------------------

    async def open_page(self, browser: Browser, user: str, policy: str) -> None:
        await browser.open(user, f"{self.page_url}?user={user}&video=1&bundle={policy}")
        await browser.wait(user, "body[data-ready]")
        await browser.click(user, "#register")
        await browser.wait(user, page_state("registration-state", "registered"))

    async def av_flows(self, browser: Browser, user: str, frames: int = 5) -> dict:
        await browser.wait(user, page_state("call-state", "connected"), timeout=20000)
        await browser.evaluate(user, ATTACH_VIDEO)
        stats = await browser.wait_function(user, AV_RISING, arg={"audio": 25, "video": 10, "frames": frames},
                                            timeout=25000, polling=200)
        # RFC 8843: one transport with one selected pair carries both kinds.
        self.assertEqual((stats["transports"], stats["selectedPairs"]), (1, 1), f"{user}: {stats}")
        remote_sdp = await browser.evaluate(user, "() => window.wwsf.peerConnection.remoteDescription.sdp")
        self.assertIn("a=group:BUNDLE", remote_sdp)
        return stats

    def assert_bundled_in_epcscf(self) -> None:
        """Each call leg: one ICE agent for both m= lines, each line its own core RTP port."""
        for call in self.service.pcscf.calls.calls():
            streams = call.media.streams
            self.assertEqual(sorted(streams), [0, 1], call)
            self.assertIs(streams[0].agent, streams[1].agent)
            self.assertNotEqual(streams[0].session.core_rtp_port, streams[1].session.core_rtp_port)
            for stream in streams.values():
                stats = stream.session.stats()
                self.assertGreater(stats.wic_to_core.packets, 10, (stream.index, stats))
                self.assertGreater(stats.core_to_wic.packets, 10, (stream.index, stats))
        self.assertEqual(self.service.pcscf.calls.media_factory.resource_counts()["ice_agents"],
                         len(self.service.pcscf.calls.calls()))

    async def hang_up(self, browser: Browser, user: str, others: tuple[str, ...] = ()) -> None:
        await browser.click(user, "#hangup")
        for page in (user, *others):
            await browser.wait(page, page_state("call-state", "idle"), timeout=15000)
        await self.helper.assert_released()

    # --- browser ⇄ browser ---------------------------------------------------------------------

    def test_browser_to_browser_audio_video_max_bundle_balanced_and_mixed(self) -> Any:
        return as_deferred(self._browser_to_browser())

    async def _browser_to_browser(self) -> None:
        browser = await start_browser(self)
        for caller, callee in (("max-bundle", "max-bundle"), ("balanced", "balanced"), ("max-bundle", "balanced")):
            await self.open_page(browser, "alice", caller)
            await self.open_page(browser, "bob", callee)
            await browser.fill("alice", "#target", "bob")
            await browser.click("alice", "#call")
            await browser.wait("bob", page_state("call-state", "incoming"), timeout=20000)
            await browser.click("bob", "#answer")
            for user in ("alice", "bob"):
                stats = await self.av_flows(browser, user)
                self.assertGreater(stats["framesRise"], 0, (caller, callee, user, stats))
            for user in ("alice", "bob"):
                await browser.wait_function(user, "() => { const h = window.wwsf.meter.history.slice(-30);"
                                            " return h.length > 10 && Math.max(...h) > 0.02; }", timeout=10000)
            self.assert_bundled_in_epcscf()
            if (caller, callee) == ("max-bundle", "max-bundle"):
                # Hold and resume re-offer the group (RFC 8843 §7.5.1) on the same transports.
                agents = {call.direction: call.media.streams[0].agent for call in self.service.pcscf.calls.calls()}
                for state in ("held", "connected"):
                    await browser.click("alice", "#hold")
                    await browser.wait("bob", page_state("call-state", state), timeout=15000)
                await self.av_flows(browser, "bob", frames=1)
                self.assertEqual(agents, {call.direction: call.media.streams[0].agent
                                          for call in self.service.pcscf.calls.calls()})
            await self.hang_up(browser, "alice", ("bob",))
            for user in ("alice", "bob"):  # the next pair of pages, with their own policies
                await browser.click(user, "#unregister")
                await browser.wait(user, page_state("registration-state", "unregistered"))
                await browser.close_page(user)

    # --- browser → sipp (echo) and DTMF to and from the core side -----------------------------------

    def test_max_bundle_browser_calls_sipp_echo_and_dtmf_both_ways(self) -> Any:
        return as_deferred(self._browser_to_sipp())

    async def _sipp_uas(self, name: str, audio_port: int, media_port: int, offered: dict) -> Any:
        sip_port = free_udp_port()
        video = ("H264", offered.get("H264/90000")) if offered.get("H264/90000") else ("VP8", offered["VP8/90000"])
        fmtp = offered.get(f"fmtp {video[1]}", "max-fr=30") if video[0] == "H264" else "max-fr=30"
        uas = self.helper.spawn_sipp(name, [
            "-sf", os.path.join(SCENARIOS, "media_uas_av.xml"), "-i", LOCAL, "-p", str(sip_port),
            "-mi", LOCAL, "-mp", str(media_port), "-rtp_echo",
            "-set", "audio_port", str(audio_port), "-set", "video_port", str(media_port + 2),
            "-set", "te_pt", offered["telephone-event/8000"], "-set", "video_pt", video[1],
            "-set", "video_codec", video[0], "-set", "video_fmtp", fmtp])
        await wait_for(lambda: udp_bound(sip_port) or uas.ended.done(), 10, what="sipp UAS listening")
        self.assertFalse(uas.ended.done(), self.helper.sipp_log(name, uas))
        return uas, sip_port

    async def _browser_to_sipp(self) -> None:
        browser = await start_browser(self)
        await self.open_page(browser, "alice", "max-bundle")
        offered = await browser.evaluate("alice", OFFERED_PAYLOAD_TYPES)

        # 1. audio + video echo.
        media_port = free_udp_port() & ~1
        uas, sip_port = await self._sipp_uas("echo", media_port, media_port, offered)
        await browser.fill("alice", "#target", f"sip:echo@{LOCAL}:{sip_port}")
        await browser.click("alice", "#call")
        stats = await self.av_flows(browser, "alice", frames=0)
        self.assertGreater(stats["inbound"]["video"]["packets"], 10, stats)
        # Chromium offered H.264 (packetization-mode 1) and sipp took it, or VP8 without it.
        remote = await browser.evaluate("alice", "() => window.wwsf.peerConnection.remoteDescription.sdp")
        codec = "H264" if offered.get("H264/90000") else "VP8"
        self.assertRegex(remote, rf"m=video \d+ UDP/TLS/RTP/SAVPF \d+\r\n(.*\r\n)*a=rtpmap:\d+ {codec}/90000")
        self.assert_bundled_in_epcscf()
        await self.hang_up(browser, "alice")
        await self.helper.sipp_finished("echo", uas)

        # 2. DTMF: the audio line's core side is this test's RTP endpoint.
        loop = asyncio.get_event_loop()
        transport, endpoint = await loop.create_datagram_endpoint(RtpEndpoint, local_addr=(LOCAL, 0))
        self.addCleanup(transport.close)
        audio_port = transport.get_extra_info("sockname")[1]
        media_port = free_udp_port() & ~1
        uas, sip_port = await self._sipp_uas("dtmf", audio_port, media_port, offered)
        await browser.fill("alice", "#target", f"sip:dtmf@{LOCAL}:{sip_port}")
        await browser.click("alice", "#call")
        await browser.wait("alice", page_state("call-state", "connected"), timeout=20000)
        await browser.wait_function("alice", "() => window.wwsf.peerConnection.connectionState === 'connected'",
                                    timeout=20000)
        te = int(offered["telephone-event/8000"])
        await wait_for(lambda: len(endpoint.packets) > 10, 10, what="the browser's audio at the core side")
        self.assertTrue(await browser.evaluate("alice", INSERT_DTMF, "1234#"))
        await wait_for(lambda: len(endpoint.events(te)) >= 5 and endpoint.events(te)[-1][2], 15,
                       what=f"five RFC 4733 events at the core side: {endpoint.events(te)}")
        events = endpoint.events(te)
        self.assertEqual([event for event, _, _ in events], [DTMF_EVENTS[tone] for tone in "1234#"], events)
        for event, duration, ended in events:
            # RFC 4733 §2.5.1.3: the final duration covers the tone (100 ms at 8 kHz, in steps).
            self.assertTrue(ended, events)
            self.assertGreaterEqual(duration, 640, events)

        # 3. The reverse: the core side sends a PCMU stream, then events only; the browser counts them.
        relay = endpoint.packets[-1][1]
        ssrc, seq, timestamp = 0x4D544631, 1, 160
        for _ in range(50):
            transport.sendto(rtp(0, seq, timestamp, ssrc, b"\xff" * 160), relay)
            seq, timestamp = seq + 1, timestamp + 160
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        before = await browser.evaluate("alice", INBOUND_AUDIO_PACKETS)
        self.assertGreater(before or 0, 20, "the core side's PCMU reached the browser")
        sent = 0
        for tone in "1234#":
            start = timestamp
            for step in range(1, 6):  # RFC 4733 §2.5.1.2: updates every 20 ms, then 3 end packets
                end = step == 5
                for _ in range(3 if end else 1):
                    payload = struct.pack("!BBH", DTMF_EVENTS[tone], (0x80 if end else 0) | 10, 160 * step)
                    transport.sendto(rtp(te, seq, start, ssrc, payload, marker=step == 1), relay)
                    seq, sent = seq + 1, sent + 1
                await asyncio.sleep(0.02)
            timestamp += 160 * 6
        await asyncio.sleep(1.5)
        after = await browser.evaluate("alice", INBOUND_AUDIO_PACKETS)
        self.assertGreaterEqual(after - before, sent, f"{sent} RFC 4733 packets sent toward the browser")

        await self.hang_up(browser, "alice")
        await self.helper.sipp_finished("dtmf", uas)
