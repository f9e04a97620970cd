"""[media] engine = rtpengine with real peers: Debian's rtpengine daemons (userspace), headless
Chromium + JsSIP (the WWSF page), sipp with RTP echo, epcscf with its embedded core.

1. the browser calls a sipp UAS that echoes RTP: ICE and DTLS connected in the browser, the
   echoed audio arrives, the browser's media peer is rtpengine's port range (not epcscf's);
   after the BYE rtpengine's ``list`` is empty;
2. a sipp UAC calls the browser (the reverse direction) and hangs up: ``list`` empty again;
3. two nodes (no browser): calls spread by Call-ID over both; one node killed → it is marked
   down, its call is released with a Reason, new calls go to the other node.

Run alone with
``unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m twisted.trial --reactor=asyncio tests.test_media_rtpengine'``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import random
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from epcscf.media.rtpengine_ng import NgClient, NgNode, NgSettings, NodeState, decode, encode
from epcscf.ops.metrics import LiveStateCollector
from epcscf.pcscf.call_model import MediaRejected
from epcscf.pcscf import rtpengine_media
from epcscf.pcscf.rtpengine_media import RtpengineEngine, RtpengineSettings
from epcscf.sip.proxy_rules import make_cancel
from tests import test_calls_w2_sipp as w2
from tests import test_media_browser as browser_media
from tests.support.browser import call_from_page, open_registered_page, page_state, require_browser, start_browser, start_wwsf_deployment
from tests.support.deployment import DOMAIN
from tests.support.processes import require_program, wait_for
from tests.support.sipp import free_port, received_requests
from tests.support.rtpengine import RtpengineDaemon, start_rtpengine
from tests.support.wic import as_deferred

LOCAL = "127.0.0.1"
NODE_PORTS = ((43000, 43499), (43500, 43999))
CHROME_OFFER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "sdp", "chrome_offer_loopback.sdp")

_daemons: list[RtpengineDaemon] = []


def settled(deferred: defer.Deferred) -> asyncio.Future:
    """A Deferred as something a coroutine driven by asyncio can await."""
    return deferred.asFuture(asyncio.get_event_loop())


def daemon(index: int) -> RtpengineDaemon:
    """The module's rtpengine number ``index`` (started on first use, restarted if killed)."""
    while len(_daemons) <= index:
        _daemons.append(None)  # type: ignore[arg-type]
    current = _daemons[index]
    if current is None or current.stopped:
        current = _daemons[index] = start_rtpengine(*NODE_PORTS[index])
        # trial calls no tearDownModule: the daemon goes when the test process does
        atexit.register(current.stop)
    return current


class BrowserThroughRtpengineTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        require_browser(self)
        self.sipp = require_program(self, "sipp", "sip-tester")
        self.rtpengine = daemon(0)
        extra = f"[media]\nengine = rtpengine\n[rtpengine]\nnodes = {self.rtpengine.node}\n"
        self.service, self.page_url = start_wwsf_deployment(self, extra)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    spawn_sipp = browser_media.BrowserMediaTests.spawn_sipp
    sipp_log = browser_media.BrowserMediaTests.sipp_log
    sipp_finished = browser_media.BrowserMediaTests.sipp_finished
    browser_idle = browser_media.BrowserMediaTests.browser_idle

    async def assert_media_through_rtpengine(self, browser: Any, user: str) -> None:
        verdict = await browser.wait_function(user, browser_media.PC_CONNECTED, timeout=20000, polling=100)
        self.assertEqual(verdict["connectionState"], "connected")  # ICE + DTLS (webrtc-pc §4.4.3)
        stats = await browser_media.wait_for_inbound_audio(browser, user, packets=25, timeout=20000)
        self.assertEqual(stats["dtlsState"], "connected")
        host, port = stats["selectedPair"]["remote"].split()[0].rsplit(":", 1)
        self.assertEqual(host, LOCAL)
        low, high = self.rtpengine.port_range
        self.assertTrue(low <= int(port) <= high, f"the browser's media peer is rtpengine: {stats['selectedPair']}")
        remote_sdp = await browser.evaluate(user, "() => window.wwsf.peerConnection.remoteDescription.sdp")
        self.assertIn("UDP/TLS/RTP/SAVPF", remote_sdp)
        self.assertIn("a=rtcp-mux", remote_sdp)
        [call] = self.service.pcscf.calls.calls()
        self.assertEqual(len(self.rtpengine.calls()), 1)
        self.assertIn("engine rtpengine, node " + self.rtpengine.node, [entry.text for entry in call.timeline])

    async def assert_released(self) -> None:
        calls = self.service.pcscf.calls
        await wait_for(lambda: not calls.calls(), 10, what=f"calls released: {calls.calls()}")
        await settled(calls.idle())
        self.assertEqual(self.rtpengine.calls(), [], "rtpengine still holds the call after its release")
        [ended] = calls.ended_calls()
        figures = ended.media_stats[0]
        self.assertEqual(figures["engine"], "rtpengine")
        return ended

    def test_browser_calls_sipp_echo(self) -> defer.Deferred:
        return as_deferred(self._browser_calls_sipp())

    async def _browser_calls_sipp(self) -> None:
        sip_port, media_port = browser_media.free_udp_port(), browser_media.free_udp_port()
        scenario = os.path.join(browser_media.SCENARIOS, "media_uas_echo.xml")
        uas = self.spawn_sipp("uas", ["-sf", scenario, "-i", LOCAL, "-p", str(sip_port), "-mi", LOCAL,
                                      "-mp", str(media_port), "-rtp_echo"])
        await wait_for(lambda: browser_media.udp_bound(sip_port) or uas.ended.done(), 10, what="sipp UAS listening")
        browser = await start_browser(self)
        await open_registered_page(browser, self.page_url, "alice")
        await call_from_page(browser, "alice", f"sip:echo@{LOCAL}:{sip_port}")
        await browser.wait("alice", page_state("call-state", "connected"), timeout=20000)
        await self.assert_media_through_rtpengine(browser, "alice")

        await browser.click("alice", "#hangup")
        await self.browser_idle(browser, "alice")
        await self.sipp_finished("uas", uas)
        ended = await self.assert_released()
        self.assertEqual(ended.release_cause, "BYE from the wic")
        deleted = [entry.text for entry in ended.timeline if "call deleted after" in entry.text]
        self.assertEqual(len(deleted), 1, [entry.text for entry in ended.timeline])
        self.assertGreater(ended.media_stats[0]["media"]["wic_to_core"]["packets"], 25)
        self.assertGreater(ended.media_stats[0]["media"]["core_to_wic"]["packets"], 25)
        # /metrics: the engine, the node's health and its ng commands (a registry of our collector only)
        registry = CollectorRegistry()
        registry.register(LiveStateCollector(lambda: self.service.pcscf.operations))
        text = generate_latest(registry).decode()
        node = self.rtpengine.node
        self.assertIn('epcscf_media_engine{engine="rtpengine"} 1.0', text)
        self.assertIn(f'epcscf_rtpengine_node_up{{node="{node}"}} 1.0', text)
        for command in ("offer", "answer", "query", "delete"):
            self.assertIn(f'epcscf_rtpengine_commands_total{{command="{command}",node="{node}"}} 1.0', text)
        self.assertIn('epcscf_rtpengine_deletes_total{result="ok"} 1.0', text)

    def test_sipp_calls_the_browser(self) -> defer.Deferred:
        return as_deferred(self._sipp_calls_browser())

    async def _sipp_calls_browser(self) -> None:
        browser = await start_browser(self)
        await open_registered_page(browser, self.page_url, "bob")
        core = self.service.core.addresses[0][1]
        media_port = browser_media.free_udp_port()
        with open(os.path.join(self.directory, "tone.pcmu"), "wb") as tone:
            tone.write(browser_media.pcmu_tone(2.0))
        scenario = os.path.join(browser_media.SCENARIOS, "media_uac_call.xml")
        uac = self.spawn_sipp("uac", ["-sf", scenario, "-s", "bob", "-set", "domain", DOMAIN, "-i", LOCAL,
                                      "-p", str(browser_media.free_udp_port()), "-mi", LOCAL, "-mp", str(media_port),
                                      "-d", "6000", f"{core.host}:{core.port}"])
        await browser.wait("bob", page_state("call-state", "incoming"), timeout=20000)
        await browser.click("bob", "#answer")
        await browser.wait("bob", page_state("call-state", "connected"), timeout=20000)
        await self.assert_media_through_rtpengine(browser, "bob")

        await self.browser_idle(browser, "bob")  # sipp's BYE after -d ms
        await self.sipp_finished("uac", uac)
        ended = await self.assert_released()
        self.assertEqual(ended.release_cause, "BYE from the core")


class FakeCall:
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.wic_flow = type("Flow", (), {"id": "ws-1"})()


class TwoNodesTests(unittest.TestCase):
    """Node choice by Call-ID and failover, on two real daemons (no SIP, no browser)."""

    timeout = 30

    def setUp(self) -> None:
        self.daemons = [daemon(0), daemon(1)]
        nodes = tuple(NgNode("127.0.0.1", d.ng_port) for d in self.daemons)
        self.client = NgClient(reactor, nodes, NgSettings(timeout=0.5, ping_interval=0.5))
        self.engine = RtpengineEngine(reactor, self.client, RtpengineSettings(query_interval=30))
        self.engine.start()
        self.addCleanup(self.engine.stop)
        with open(CHROME_OFFER, "rb") as handle:
            self.offer = handle.read()

    def test_calls_spread_and_fail_over(self) -> defer.Deferred:
        return as_deferred(self._spread_and_fail_over())

    async def _spread_and_fail_over(self) -> None:
        failures: list[tuple[str, str, str]] = []
        medias = []
        # Rendezvous hashing over two nodes on random ports puts 8 Call-IDs on one node once in 128
        # runs: offer calls until both carry some (at least 8; 64 Call-IDs all on one node: 2^-63).
        for n in range(64):
            if n >= 8 and all(d.calls() for d in self.daemons):
                break
            media = self.engine(FakeCall(f"spread-{n}@test"))
            media.on_failure = lambda layer, reason, call_id=media.call_id: failures.append((call_id, layer, reason))
            body = await settled(media.offer_from_wic(self.offer))
            self.assertIn(b"RTP/AVP", body)
            self.assertNotIn(b"a=candidate", body)
            medias.append(media)
        by_node = {d.node: d.calls() for d in self.daemons}
        self.assertEqual(sum(len(calls) for calls in by_node.values()), len(medias))
        self.assertTrue(all(by_node.values()), f"both nodes carry calls: {by_node}")
        for media in medias:  # each call is on the node its Call-ID hashes to
            self.assertIn(media.ng_call_id, by_node[str(media.node)])

        victim = self.daemons[1]
        on_victim = [m for m in medias if str(m.node) == victim.node]
        victim.kill()
        await wait_for(lambda: self.client.state(on_victim[0].node) is NodeState.DOWN, 5, what="node marked down")
        self.assertEqual(sorted(f[0] for f in failures), sorted(m.call_id for m in on_victim))
        self.assertTrue(all(f[1] == "media" and "stopped answering" in f[2] for f in failures), failures)
        for n in range(4):  # new calls, whatever their Call-ID, go to the live node
            media = self.engine(FakeCall(f"after-{n}@test"))
            await settled(media.offer_from_wic(self.offer))
            self.assertEqual(str(media.node), self.daemons[0].node)
            medias.append(media)
        await settled(defer.DeferredList([m.close() for m in medias]))
        self.assertEqual(self.daemons[0].calls(), [])


    def test_a_call_rtpengine_dropped_is_released(self) -> defer.Deferred:
        return as_deferred(self._dropped_by_rtpengine())

    async def _dropped_by_rtpengine(self) -> None:
        # rtpengine's own media timeout deletes a call; the next query finds it gone and the call
        # is released (the call manager sends BYE/CANCEL with this Reason).
        engine = RtpengineEngine(reactor, self.client, RtpengineSettings(query_interval=0.2))
        media = engine(FakeCall("dropped@test"))
        failures: list[tuple[str, str]] = []
        media.on_failure = lambda layer, reason: failures.append((layer, reason))
        with open(CHROME_OFFER, "rb") as handle:
            await settled(media.offer_from_wic(handle.read()))
        core_answer = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                       b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        answer = (await settled(media.answer_from_core(core_answer))).decode()
        self.assertIn("UDP/TLS/RTP/SAVPF", answer)
        self.assertIn("a=ice-ufrag:", answer)
        self.assertIn("a=rtcp-mux", answer)
        node = next(d for d in self.daemons if d.node == str(media.node))
        node.ng({"command": "delete", "call-id": media.ng_call_id})
        await wait_for(lambda: failures, 5, what="the dropped call released")
        self.assertEqual(failures[0][0], "media")
        self.assertIn("no longer has the call", failures[0][1])
        await settled(media.close())

class _Datagrams(DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []

    def datagramReceived(self, data: bytes, address: Any) -> None:  # noqa: N802
        self.received.append((data, address))


class TrickleToRtpengineTests(unittest.TestCase):
    """RFC 8840 candidates the WIC trickles (INFO) reach rtpengine's ICE agent: a candidate
    that is in no SDP is checked by rtpengine itself (a STUN Binding request arrives there)."""

    timeout = 30

    def setUp(self) -> None:
        self.rtpengine = daemon(0)
        client = NgClient(reactor, (NgNode("127.0.0.1", self.rtpengine.ng_port),), NgSettings(timeout=0.5, ping_interval=5))
        self.engine = RtpengineEngine(reactor, client, RtpengineSettings(query_interval=0))
        self.engine.start()
        self.addCleanup(self.engine.stop)

    def test_a_trickled_candidate_is_checked_by_rtpengine(self) -> defer.Deferred:
        return as_deferred(self._trickled())

    async def _trickled(self) -> None:
        wic = _Datagrams()
        port = reactor.listenUDP(0, wic, interface=LOCAL)
        self.addCleanup(port.stopListening)
        media = self.engine(FakeCall("trickle@test"))
        events: list[str] = []
        media.on_event = lambda kind, text: events.append(text)
        with open(CHROME_OFFER, "rb") as handle:  # a trickling browser's offer: no candidate yet
            offer = b"".join(line for line in handle.read().replace(b"\r\n", b"\n").splitlines(keepends=True)
                             if not line.startswith(b"a=candidate")).replace(b"\n", b"\r\n")
        await settled(media.offer_from_wic(offer))
        core_answer = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                       b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        await settled(media.answer_from_core(core_answer))
        with self.assertRaises(MediaRejected) as refused:
            media.add_trickle(b"not an sdpfrag")
        self.assertEqual(refused.exception.status, 400)
        # RFC 8840 §4.3 / RFC 8839 §5.1: the candidate of a socket only this INFO names
        fragment = (f"a=ice-ufrag:Ep9W\r\na=ice-pwd:Lk3ll9AbOLM1XbHSzn0BldiN\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
                    f"a=mid:0\r\na=candidate:2 1 udp 2122260223 {LOCAL} {port.getHost().port} typ host\r\n").encode()
        media.add_trickle(fragment)
        stun = lambda: [data for data, _ in wic.received if data[:2] == b"\x00\x01" and data[4:8] == b"\x21\x12\xa4\x42"]
        await wait_for(stun, 5, what=lambda: f"no STUN request from rtpengine to the trickled candidate: {events}")
        self.assertIn(b"Ep9W:", stun()[0])  # RFC 8445 §7.2.2: USERNAME is the WIC's ufrag first
        self.assertTrue(any("trickled candidates forwarded" in text for text in events), events)
        await settled(media.close())
        self.assertEqual(self.rtpengine.calls(), [])


class SweepAtStartTests(unittest.TestCase):
    """A restarted process deletes the sessions its predecessor left on a node (ng call-ids
    ending in its mark), however many: the ng ``list`` has no offset and a UDP reply holds a
    page only (``SWEEP_LIMIT``, made 5 here), so the whole list is read over TCP
    (``tcp_ng_port``), or page after page over UDP."""

    timeout = 30
    OWNER = "127.0.0.1:45999"

    def setUp(self) -> None:
        self.rtpengine = daemon(0)
        self.patch(rtpengine_media, "SWEEP_LIMIT", 5)
        self.addCleanup(self._delete_left_overs)

    def _delete_left_overs(self) -> None:
        for call in self.rtpengine.calls():
            if "sweep-" in call:
                self.rtpengine.ng({"command": "delete", "call-id": call})

    def session(self, call_id: str) -> None:
        offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
        self.assertEqual(self.rtpengine.ng({"command": "offer", "call-id": call_id, "from-tag": "wic", "sdp": offer})["result"], b"ok")

    def engine(self, tcp_ng_port: int) -> RtpengineEngine:
        # a generous ng timeout: on a loaded host a page lost to a timeout would end the sweep early
        client = NgClient(reactor, (NgNode("127.0.0.1", self.rtpengine.ng_port),), NgSettings(timeout=3, ping_interval=5))
        engine = RtpengineEngine(reactor, client, RtpengineSettings(query_interval=0, owner=self.OWNER, tcp_ng_port=tcp_ng_port))
        self.addCleanup(engine.stop)
        return engine

    def test_the_whole_list_is_read_over_tcp(self) -> defer.Deferred:
        return as_deferred(self._over_tcp())

    async def _over_tcp(self) -> None:
        engine = self.engine(self.rtpengine.tcp_ng_port)
        live = engine(FakeCall("sweep-live@test"))  # a call this process holds is not an orphan
        keep = [live.ng_call_id] + [f"sweep-other-{n}@test ws-1 10.9.9.9:5060" for n in range(6)]  # another process's
        orphans = [f"sweep-orphan-{n}@test ws-{n} {self.OWNER}" for n in range(12)]
        for call_id in keep + orphans:
            self.session(call_id)
        self.assertEqual(await settled(engine.start()), 12)
        self.assertEqual(sorted(c for c in self.rtpengine.calls() if "sweep-" in c), sorted(keep))
        self.assertEqual(engine.swept, 12)
        self.assertEqual(self.client_sent(engine, "list"), 0)  # no UDP page was needed

    def test_udp_pages_when_tcp_is_not_there(self) -> defer.Deferred:
        return as_deferred(self._over_udp())

    async def _over_udp(self) -> None:
        engine = self.engine(free_port())  # nothing listens there: UDP pages instead
        orphans = [f"sweep-orphan-{n}@test ws-{n} {self.OWNER}" for n in range(12)]
        # The node's other sessions (another test's) would share the pages: none may be there.
        self.assertEqual(self.rtpengine.calls(), [])
        for call_id in orphans:
            self.session(call_id)
        # three pages of 5, emptied one after the other; if not, the ng timeouts and retransmissions say why
        self.assertEqual(await settled(engine.start()), 12, engine.client.snapshot())
        self.assertEqual([c for c in self.rtpengine.calls() if "sweep-" in c], [])
        self.assertEqual(self.client_sent(engine, "list"), 3, engine.client.snapshot())

    @staticmethod
    def client_sent(engine: RtpengineEngine, command: str) -> int:
        return engine.client.snapshot()[str(engine.client.nodes[0])]["sent"][command]


class ReleasePathsTests(unittest.TestCase):
    """WS drop and CANCEL with engine = rtpengine: the call's session leaves rtpengine (``list``).
    The WIC is the simulated one of tests.test_calls_w2_sipp (real WebSocket, aioice candidates)."""

    timeout = 60

    def setUp(self) -> None:
        self.sipp = w2.require_sipp(self)
        self.loop = w2.asyncio_loop()
        self.patch(w2.aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOCAL])
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.rtpengine = daemon(0)
        self.service = w2.start_deployment(
            self, extra=f"[sip]\nt1 = 0.05\nt2 = 0.4\nt4 = 0.2\nwic_t1 = 0.05\nwic_t2 = 0.4\nwic_t4 = 0.2\n"
                        f"[media]\nengine = rtpengine\n[rtpengine]\nnodes = {self.rtpengine.node}\n" + w2.NOT_ABOUT_OVERLOAD)
        self.calls = self.service.pcscf.calls
        self.clients: list[Any] = []
        self.wics: list[Any] = []

    def tearDown(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._cleanup())

    async def _cleanup(self) -> None:
        for wic in self.wics:
            await wic.close()
        for client in self.clients:
            await as_deferred(client.close())

    spawn_sipp = w2.CallsThroughTheEdgeTests.spawn_sipp
    start_uas = w2.CallsThroughTheEdgeTests.start_uas
    registered = w2.CallsThroughTheEdgeTests.registered
    wic = w2.CallsThroughTheEdgeTests.wic
    call_sipp = w2.CallsThroughTheEdgeTests.call_sipp
    in_dialog = w2.CallsThroughTheEdgeTests.in_dialog

    async def test_websocket_drop_mid_call_deletes_the_session(self) -> None:
        uas, trace, port, _ = await self.start_uas()
        client = await self.registered("alice")
        wic = await self.wic(controlling=True)
        await self.call_sipp(client, wic, port)
        self.assertEqual(len(self.rtpengine.calls()), 1)
        await as_deferred(client.drop())
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        [core_bye] = received_requests(trace, "BYE")
        self.assertIn('Reason: SIP;cause=480;text="WebSocket closed"', core_bye)
        await self.calls.idle()
        self.assertEqual(self.calls.calls(), [])
        self.assertEqual(self.rtpengine.calls(), [])

    async def test_node_killed_mid_call_releases_it_with_a_reason(self) -> None:
        # A second daemon, killed mid-call: the ping finds it silent, the call ends with BYEs
        # carrying the Reason (RFC 3326), and nothing is sent to the dead node any more.
        victim = daemon(1)
        await self.service.stopService()
        self.service = w2.start_deployment(
            self, extra=f"[media]\nengine = rtpengine\n[rtpengine]\nnodes = {victim.node}\n"
                        f"timeout = 0.3\nping_interval = 0.3\n" + w2.NOT_ABOUT_OVERLOAD)
        self.calls = self.service.pcscf.calls
        uas, trace, port, _ = await self.start_uas()
        client = await self.registered("alice")
        wic = await self.wic(controlling=True)
        await self.call_sipp(client, wic, port)
        self.assertEqual(len(victim.calls()), 1)
        victim.kill()
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        [core_bye] = received_requests(trace, "BYE")
        self.assertIn(f'Reason: SIP;cause=480;text="rtpengine {victim.node} stopped answering"', core_bye)
        await self.calls.idle()
        self.assertEqual(self.calls.calls(), [])

    async def test_cancel_while_ringing_deletes_the_session(self) -> None:
        peer = w2.UdpSipPeer()
        port = peer.start()
        self.addCleanup(peer.stop)
        client = await self.registered("alice")
        wic = await self.wic(controlling=True)
        invite = client.request("INVITE", f"sip:service@{LOCAL}:{port}", body=wic.sdp("actpass"), content_type="application/sdp")
        invite.headers.add("Contact", f"<sip:alice@{client.host};transport=ws;ob>")
        await as_deferred(client.send(invite))
        core_invite, addr = await as_deferred(peer.next_request())
        self.assertIn(b"RTP/AVP", core_invite.body)
        self.assertNotIn(b"a=candidate", core_invite.body)
        peer.reply(core_invite, addr, 180)
        while True:
            message = await as_deferred(client.next_message(10))
            if isinstance(message, w2.Response) and message.status == 180:
                break
        self.assertEqual(len(self.rtpengine.calls()), 1)
        cancel = make_cancel(invite)  # RFC 3261 §9.1
        await as_deferred(client.send(cancel))
        core_cancel, addr = await as_deferred(peer.next_request())
        self.assertEqual(core_cancel.method, "CANCEL")
        peer.reply(core_cancel, addr, 200)
        peer.reply(core_invite, addr, 487)
        statuses = set()
        while 487 not in statuses:
            message = await as_deferred(client.next_message(10))
            if isinstance(message, w2.Response):
                statuses.add(message.status)
        await self.calls.idle()
        self.assertEqual(self.calls.calls(), [])
        self.assertEqual(self.rtpengine.calls(), [])



class NgCookieTests(unittest.TestCase):
    """rtpengine replies to a cookie it has seen from its cache, whoever asks: every client's
    cookies must be its own, even for clients made one after another in one process (the
    module's tests share their daemons and got an earlier test's cached reply)."""

    def test_clients_made_in_turn_have_distinct_cookie_prefixes(self) -> None:
        prefixes = set()
        for _ in range(200):
            client = NgClient(reactor, (NgNode("127.0.0.1", 1),))
            prefixes.add(client._prefix)
            del client  # its memory, and so its id(), is free for the next one
        self.assertEqual(len(prefixes), 200)


class NgCodecTests(unittest.TestCase):
    """The ng datagram codec over bencode.py: replies as rtpengine writes them (keys in any
    order), and anything else a ValueError — never another exception — so that a stray or
    hostile datagram on the client's socket is one log line."""

    def test_rtpengine_reply_with_unsorted_keys(self) -> None:
        cookie, reply = decode(b"5_1 d6:result2:ok5:callsl2:x1ee")
        self.assertEqual((cookie, reply), (b"5_1", {"result": "ok", "calls": ["x1"]}))

    def test_round_trip(self) -> None:
        message = {"command": "offer", "call-id": "a b", "flags": ["trust-address"], "sdp": b"v=0\r\n\xff"}
        cookie, decoded = decode(encode(b"c1", message))
        self.assertEqual(cookie, b"c1")
        self.assertEqual(decoded["flags"], ["trust-address"])
        self.assertEqual(decoded["sdp"], b"v=0\r\n\xff")  # not UTF-8: stays bytes

    def test_garbage_is_a_value_error(self) -> None:
        samples = [b"", b"nospace", b" d4:testi1ee", b"c i12e", b"c l1:ae", b"c d", b"c di1e1:ae", b"c 9999999:a"]
        rng = random.Random(7)
        valid = encode(b"c", {"result": "ok", "sdp": "v=0", "totals": {"RTP": {"packets": 3}}})
        for _ in range(3000):
            data = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            samples.append(bytes(data[: rng.randint(1, len(data))]))
        for sample in samples:
            try:
                decode(sample)
            except ValueError:
                pass
