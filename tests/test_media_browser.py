"""Real-browser media proof (TS 24.371 §7, TS 23.334 §5.20, RFC 5763/5764):

1. headless Chromium (the WWSF demo page, real JsSIP and RTCPeerConnection) registers as alice
   through epcscf (embedded core) and calls a sipp UAS that answers with plain RTP/AVP PCMU and
   echoes RTP (``-rtp_echo``);
2. a sipp UAC calls the browser registered as bob with a plain RTP/AVP PCMU offer and streams
   a PCMU tone of its own (``rtp_stream``); the page answers;
3. as 1, then the browser holds (re-INVITE a=sendonly: the relay stops media toward it, RFC 3264 §5.1)
   and resumes (media flows again on the same ICE/DTLS transport).

Both ICE modes of [media] (full, lite) run every test.  Each call passes when the browser's RTCPeerConnection is connected (ICE + DTLS), its inbound
RTP grows over two samples a second apart (SRTP toward the browser, plain RTP toward sipp:
the browser's own audio echoed by sipp in 1, sipp's tone with sipp's SSRC in 2), epcscf's
relay counted packets both ways, and, after the hang-up, epcscf holds no call and every media
port is back in the pool.

bin/test runs this inside a loopback-only network namespace (Chromium's only candidate is
127.0.0.1 there); run alone with
``unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m twisted.trial --reactor=asyncio tests.test_media_browser'``
(outside a namespace it also works: epcscf's candidates are on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.trial import unittest

from epcscf.media import DtlsRole
from epcscf.media.session import MediaStats
from tests.support.browser import (
    Browser,
    call_from_page,
    open_registered_page,
    page_state,
    require_browser,
    start_browser,
    start_wwsf_deployment,
    wait_for_inbound_audio,
)
from tests.support.deployment import DOMAIN
from tests.support.processes import require_program, wait_for
from tests.support.wic import as_deferred

LOCAL = "127.0.0.1"
SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sipp")
MEDIA_PORTS = range(40000, 41000)  # [media] port_range of tests.support.deployment
#: how long the sipp UAC keeps the call up before its BYE (answer + ICE/DTLS + two stats samples)
UAC_TALK_MS = 8000


# In the page: the RTCPeerConnection's own verdict (W3C webrtc-pc §4.4.3 connectionState
# "connected" = ICE connected and DTLS connected) and the DTLS transport of the stats.
PC_CONNECTED = """() => {
  const pc = window.wwsf.peerConnection;
  if (!pc || pc.connectionState !== 'connected') return false;
  return { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState };
}"""


# Every RTP stream the browser sends and receives: (kind, ssrc, packets, audio level).
RTP_STREAMS = """async () => {
  const report = await window.wwsf.peerConnection.getStats();
  const streams = [];
  report.forEach((e) => {
    if (e.type === 'inbound-rtp') streams.push(['inbound', e.ssrc, e.packetsReceived, e.audioLevel]);
    if (e.type === 'outbound-rtp') streams.push(['outbound', e.ssrc, e.packetsSent, null]);
  });
  return streams;
}"""


# RFC 7675 consent freshness as Chrome sees it on the selected pair: its consent requests were
# sent after ICE completed, and epcscf's media port answered them (one may be in flight).
CONSENT_ANSWERED = """async (wanted) => {
  const report = await window.wwsf.peerConnection.getStats();
  let pair = null;
  report.forEach((e) => {
    if (e.type === 'transport' && e.selectedCandidatePairId) pair = report.get(e.selectedCandidatePairId);
  });
  if (!pair || !(pair.consentRequestsSent >= wanted)) return false;
  if (pair.responsesReceived < pair.requestsSent - 1) return false;
  return { consentRequestsSent: pair.consentRequestsSent, requestsSent: pair.requestsSent,
           responsesReceived: pair.responsesReceived, requestsReceived: pair.requestsReceived };
}"""


def pcmu_tone(seconds: float, frequency: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine tone as G.711 μ-law samples at 8 kHz (what sipp's rtp_stream sends as PT 0)."""
    return bytes(
        _ulaw(int(amplitude * math.sin(2 * math.pi * frequency * n / 8000))) for n in range(int(8000 * seconds))
    )


def _ulaw(sample: int) -> int:
    """G.711 μ-law of a 16-bit sample: bias 0x84, segment from the highest set bit, bits inverted
    (within one step of reference coders for some negative samples: irrelevant for a test tone)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)  # segment 0..7 (magnitude < 2**15)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def free_udp_port() -> int:
    """A UDP port the kernel just had free on 127.0.0.1 (sipp needs its ports on the command line)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOCAL, 0))
        return probe.getsockname()[1]


def udp_bound(port: int) -> bool:
    needle = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as handle:
        return any(line.split()[1] == needle for line in handle.readlines()[1:])


class SippProcess(protocol.ProcessProtocol):
    """One sipp run; ``ended`` fires with its exit code (0: every call of the scenario passed)."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: asyncio.Future = asyncio.get_event_loop().create_future()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.output = (self.output + data)[-20000:]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        if not self.ended.done():
            self.ended.set_result(getattr(reason.value, "exitCode", None))


class BrowserMediaTests(unittest.TestCase):
    """Full ICE toward the browser (the [media] default)."""

    timeout = 90
    #: ini text overriding the deployment's (tests.support.deployment) for this class
    media_config = ""
    ice_mode = "full"

    def setUp(self) -> None:
        require_browser(self)
        self.sipp = require_program(self, "sipp", "sip-tester")
        self.service, self.page_url = start_wwsf_deployment(self, self.media_config)
        self.assertEqual(self.service.config.media.ice_mode, self.ice_mode)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    # --- helpers -------------------------------------------------------------------------------

    def spawn_sipp(self, name: str, args: list[str]) -> SippProcess:
        """sipp bounded to one call and 40 s; killed (and reaped) at the test's end if still running."""
        files = os.path.join(self.directory, name)
        common = ["-nostdin", "-m", "1", "-timeout", "40s", "-timeout_error", "-trace_msg", "-message_file",
                  f"{files}_messages.log", "-trace_err", "-error_file", f"{files}_errors.log"]
        process = SippProcess()
        transport = reactor.spawnProcess(process, self.sipp, [self.sipp, *args, *common], env=dict(os.environ),
                                         path=self.directory)

        def kill() -> defer.Deferred | None:
            if process.ended.done():
                return None
            try:
                transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                return None
            return defer.Deferred.fromFuture(asyncio.shield(process.ended))

        self.addCleanup(kill)
        return process

    def sipp_log(self, name: str, process: SippProcess) -> str:
        text = process.output.decode(errors="replace")[-1500:]
        for suffix in ("errors", "messages"):
            path = os.path.join(self.directory, f"{name}_{suffix}.log")
            if os.path.exists(path):
                with open(path, errors="replace") as handle:
                    text += f"\n--- {name}_{suffix}.log\n" + handle.read()[-3000:]
        return text

    async def sipp_finished(self, name: str, process: SippProcess, timeout: float = 20.0) -> None:
        code = await asyncio.wait_for(asyncio.shield(process.ended), timeout)
        self.assertEqual(code, 0, f"sipp {name} failed ({code}):\n{self.sipp_log(name, process)}")

    async def assert_media_flows(self, browser: Browser, user: str) -> dict:
        """ICE + DTLS connected in the browser and inbound RTP growing; the stats summary."""
        verdict = await browser.wait_function(user, PC_CONNECTED, timeout=20000, polling=100)
        self.assertEqual(verdict["connectionState"], "connected")
        # Two getStats() samples ~1 s apart: inbound-rtp packetsReceived grew by at least 25 (PCMU: 50/s).
        second = await wait_for_inbound_audio(browser, user, packets=25, timeout=20000)
        self.assertEqual(second["dtlsState"], "connected")
        # A selected pair with media flowing; Chrome's stats once showed it "in-progress" (one of
        # its own checks on it outstanding) in a run where media flowed normally.
        self.assertIn(second["selectedPair"]["state"], ("succeeded", "in-progress"))
        # The browser's media peer is epcscf's relay (its [media] port range), never sipp itself.
        remote = second["selectedPair"]["remote"].split()[0]
        host, port = remote.rsplit(":", 1)
        self.assertEqual(host, LOCAL)
        self.assertIn(int(port), MEDIA_PORTS, f"{user}'s media peer: {second['selectedPair']}")
        self.assertGreater(second["packetsSent"], 0)
        # Chrome would drop the call 30 s after its consent checks stop being answered (RFC 7675 §5.1).
        consent = await browser.wait_function(user, CONSENT_ANSWERED, arg=2, timeout=15000, polling=250)
        self.assertGreaterEqual(consent["responsesReceived"], consent["requestsSent"] - 1, consent)
        # What the browser was told about epcscf's ICE agent (RFC 8839 §5.3: a=ice-lite).
        remote_sdp = await browser.evaluate(user, "() => window.wwsf.peerConnection.remoteDescription.sdp")
        self.assertEqual("a=ice-lite" in remote_sdp, self.ice_mode == "lite", remote_sdp)
        self.assertIn("UDP/TLS/RTP/SAVPF", remote_sdp)
        return second

    def relay_stream(self) -> Any:
        """The one live call's media stream toward the browser in epcscf."""
        calls = self.service.pcscf.calls.calls()
        self.assertEqual(len(calls), 1, calls)
        media = calls[0].media
        self.assertIsNotNone(media)
        return media.streams[0]

    def relay_stats(self) -> MediaStats:
        return self.relay_stream().session.stats()

    async def assert_dtls_roles(self, browser: Browser, user: str, browser_setup: str, ours: str,
                                our_role: DtlsRole) -> None:
        """RFC 5763 §5: the a=setup each side sent, and epcscf's DTLS role from them."""
        setups = await browser.evaluate(user, """() => {
          const pc = window.wwsf.peerConnection;
          const setup = (sdp) => (sdp.match(/^a=setup:(\\w+)/m) || [null, null])[1];
          return [setup(pc.localDescription.sdp), setup(pc.remoteDescription.sdp)];
        }""")
        self.assertEqual(setups, [browser_setup, ours])
        self.assertIs(self.relay_stream().dtls_role, our_role)

    def assert_relay_carried_media(self, sipp_media_port: int) -> None:
        """epcscf decrypted the browser's SRTP, sent it as RTP to sipp's SDP address, and relayed
        what came back: the core-side target is still sipp's -mp port after latching onto the
        source of the returning RTP (RFC 4961), so the RTP came from sipp (and, with -rtp_echo,
        sipp received the browser's audio)."""
        stats = self.relay_stats()
        self.assertEqual(stats.dtls_state.lower(), "connected", stats)
        self.assertIsNotNone(stats.srtp_profile)
        self.assertEqual(stats.core_rtp_target, (LOCAL, sipp_media_port))
        self.assertGreater(stats.wic_to_core.packets, 25, "browser → sipp: SRTP decrypted and sent as RTP")
        self.assertGreater(stats.core_to_wic.packets, 25, "sipp → browser: RTP encrypted and sent as SRTP")

    async def assert_released(self) -> None:
        """No call left in epcscf, and every media port back in the pool."""
        calls = self.service.pcscf.calls
        await wait_for(lambda: not calls.calls(), 10, what=f"calls released: {calls.calls()}")
        await calls.idle().asFuture(asyncio.get_event_loop())
        pool = calls.media_factory.pool
        # No port held by a call; the ended calls' sockets may be parked for the next calls (epcscf.ice.shelf).
        await wait_for(lambda: pool.used_count == 0, 10, what=f"media ports freed: {pool}")
        self.assertEqual(pool.free_count + pool.parked_count, pool.size)

    async def browser_idle(self, browser: Browser, user: str) -> None:
        await browser.wait(user, page_state("call-state", "idle"), timeout=15000)
        self.assertIsNone(await browser.evaluate(user, "() => window.wwsf.peerConnection"))
        errors = [line for line in browser.console(user, last=1000) if line.split(":")[0].endswith("error")]
        self.assertEqual(errors, [])

    # --- the tests -----------------------------------------------------------------------------

    def test_browser_calls_sipp_echo(self) -> defer.Deferred:
        return as_deferred(self._browser_calls_sipp())

    async def _browser_calls_sipp(self) -> None:
        sip_port, media_port = free_udp_port(), free_udp_port()
        uas = self.spawn_sipp("uas", ["-sf", os.path.join(SCENARIOS, "media_uas_echo.xml"), "-i", LOCAL,
                                      "-p", str(sip_port), "-mi", LOCAL, "-mp", str(media_port), "-rtp_echo"])
        await wait_for(lambda: udp_bound(sip_port) or uas.ended.done(), 10, what="sipp UAS listening")
        self.assertFalse(uas.ended.done(), self.sipp_log("uas", uas))

        browser = await start_browser(self)
        await open_registered_page(browser, self.page_url, "alice")
        # The embedded core proxies a Request-URI outside its domain as is (to the sipp UAS).
        await call_from_page(browser, "alice", f"sip:echo@{LOCAL}:{sip_port}")
        await browser.wait("alice", page_state("call-state", "connected"), timeout=20000)

        await self.assert_media_flows(browser, "alice")
        self.assert_relay_carried_media(media_port)
        # The browser offered actpass; epcscf answered active and is the DTLS client.
        await self.assert_dtls_roles(browser, "alice", "actpass", "active", DtlsRole.CLIENT)

        await browser.click("alice", "#hangup")
        await self.browser_idle(browser, "alice")
        await self.sipp_finished("uas", uas)  # it got the BYE and answered it
        await self.assert_released()
        [ended] = self.service.pcscf.calls.ended_calls()
        self.assertEqual(ended.release_cause, "BYE from the wic")

    def test_browser_holds_and_resumes_a_call_to_sipp(self) -> defer.Deferred:
        return as_deferred(self._hold_and_resume())

    async def _hold_and_resume(self) -> None:
        # RFC 3264 §5.1: the browser's hold re-INVITE (a=sendonly) gates the relay toward it.
        sip_port, media_port = free_udp_port(), free_udp_port()
        uas = self.spawn_sipp("uas", ["-sf", os.path.join(SCENARIOS, "media_uas_hold.xml"), "-i", LOCAL,
                                      "-p", str(sip_port), "-mi", LOCAL, "-mp", str(media_port), "-rtp_echo"])
        await wait_for(lambda: udp_bound(sip_port) or uas.ended.done(), 10, what="sipp UAS listening")
        browser = await start_browser(self)
        await open_registered_page(browser, self.page_url, "alice")
        await call_from_page(browser, "alice", f"sip:echo@{LOCAL}:{sip_port}")
        await browser.wait("alice", page_state("call-state", "connected"), timeout=20000)
        await self.assert_media_flows(browser, "alice")
        stream = self.relay_stream()
        ports = stream.session.stats().core_rtp_target

        await browser.click("alice", "#hold")
        await browser.wait("alice", page_state("call-state", "held"), timeout=15000)
        # JsSIP shows hold/resume when it sends the re-INVITE; epcscf applies the direction (the
        # WIC's own) when sipp's answer passes through.
        await wait_for(lambda: stream.session.direction.value == "sendonly", 10, what="hold applied in epcscf")
        # The browser still sends (sendonly) and sipp still echoes, but the relay drops what comes
        # back instead of sending it to the browser (Chrome itself drops its inbound-rtp stats
        # while sendonly, so the relay's counters are the evidence here).
        before = stream.session.stats()
        await wait_for(lambda: stream.session.stats().core_to_wic.dropped >= before.core_to_wic.dropped + 25, 10,
                       what="sipp's echo gated during the hold")
        during = stream.session.stats()
        self.assertEqual(during.core_to_wic.packets, before.core_to_wic.packets, "RTP reached the held browser")
        self.assertGreater(during.wic_to_core.packets, before.wic_to_core.packets + 20)
        self.assertIs(self.relay_stream(), stream, "hold kept the ICE/DTLS transport")

        await browser.click("alice", "#hold")
        await browser.wait("alice", page_state("call-state", "connected"), timeout=15000)
        await wait_for(lambda: stream.session.direction.value == "sendrecv", 10, what="resume applied in epcscf")
        await wait_for_inbound_audio(browser, "alice", packets=25, timeout=15000)
        self.assertEqual(stream.session.stats().core_rtp_target, ports)

        await browser.click("alice", "#hangup")
        await self.browser_idle(browser, "alice")
        await self.sipp_finished("uas", uas)
        await self.assert_released()

    def test_sipp_calls_the_browser(self) -> defer.Deferred:
        return as_deferred(self._sipp_calls_browser())

    async def _sipp_calls_browser(self) -> None:
        browser = await start_browser(self)
        await open_registered_page(browser, self.page_url, "bob")

        core = self.service.core.addresses[0][1]  # the embedded core's UDP listener
        media_port = free_udp_port()
        with open(os.path.join(self.directory, "tone.pcmu"), "wb") as tone:  # sipp runs in self.directory
            tone.write(pcmu_tone(2.0))  # looped by the scenario
        uac = self.spawn_sipp("uac", ["-sf", os.path.join(SCENARIOS, "media_uac_call.xml"), "-s", "bob",
                                      "-set", "domain", DOMAIN, "-i", LOCAL, "-p", str(free_udp_port()),
                                      "-mi", LOCAL, "-mp", str(media_port),
                                      "-d", str(UAC_TALK_MS), f"{core.host}:{core.port}"])
        try:
            await browser.wait("bob", page_state("call-state", "incoming"), timeout=20000)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\nsipp uac:\n{self.sipp_log('uac', uac)}") from None
        self.assertEqual(await browser.text("bob", "#incoming-text"), f"Incoming call from sip:ims-caller@{DOMAIN}")
        await browser.click("bob", "#answer")
        await browser.wait("bob", page_state("call-state", "connected"), timeout=20000)

        stats = await self.assert_media_flows(browser, "bob")
        self.assert_relay_carried_media(media_port)
        # epcscf offered actpass (it must accept a ClientHello); Chrome answered active.
        await self.assert_dtls_roles(browser, "bob", "active", "actpass", DtlsRole.SERVER)
        # What the browser receives is sipp's own stream (its SSRC, its tone), not an echo.
        streams = await browser.evaluate("bob", RTP_STREAMS)
        inbound = [stream for stream in streams if stream[0] == "inbound"]
        outbound = [stream for stream in streams if stream[0] == "outbound"]
        self.assertEqual(len(inbound), 1, streams)
        self.assertNotIn(inbound[0][1], [stream[1] for stream in outbound], streams)
        self.assertGreater(stats["audioLevel"], 0.05, "the tone is audible in the browser")
        self.assertFalse(uac.ended.done(), "sipp hung up before the media was checked")

        # sipp's BYE (after -d ms) reaches the browser through the core and epcscf.
        await self.browser_idle(browser, "bob")
        self.assertIn("(remote)", await browser.text("bob", "#peer"))
        await self.sipp_finished("uac", uac)
        await self.assert_released()
        [ended] = self.service.pcscf.calls.ended_calls()
        self.assertEqual(ended.release_cause, "BYE from the core")


class IceLiteBrowserMediaTests(BrowserMediaTests):
    """The same calls with epcscf as an ICE-lite agent (RFC 8445 §2.5): Chrome is always the
    controlling agent and nominates; epcscf only answers its checks."""

    media_config = "[media]\nice_mode = lite\n"
    ice_mode = "lite"
