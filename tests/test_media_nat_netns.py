"""A WIC on another host behind a NAT, as deployed (RFC 8445 §5.1.1.1, §7.3.1.3; RFC 7675; RFC 4787).

Inside the suite's namespace the test builds four hosts, each its own network namespace, joined
by veth pairs (``tests.support.netns``):

    WIC 10.66.1.2 ── 10.66.1.1 NAT 10.66.2.2 ── 10.66.2.1 eP-CSCF 10.66.3.1 ── 10.66.3.2 core
    (Chromium: the WWSF page      (masquerade)   (this process:    ([sip] and       (embedded core
     over https, SIP over wss)                    wss, WWSF, ICE)   c= toward core)   and sipp)

The eP-CSCF has no route to 10.66.1.0/24: the WIC's only usable address is the NAT's, which
none of its candidates carries, so the edge learns it from the WIC's first check as a
peer-reflexive candidate (RFC 8445 §7.3.1.3), pairs and nominates it (or Chrome does), relays
media on it, and sends its consent checks to it (RFC 7675 §5.1).  The edge has three
addresses (lo, the WIC side, the core side): it must advertise the WIC-side one only
([media] bind_address, RFC 8445 §5.1.1.1) and write the core-side one in c= toward the core
([media] core_address).

One test, one browser, one network, three calls:
(a) the WIC calls a sipp UAS (echo) behind the embedded core, through an endpoint-independent
    NAT (Linux masquerade keeps the inside port);
(c) a sipp UAC calls the WIC through the same NAT (the edge offers and is the controlling agent);
(b) as (a) through a symmetric NAT (a random outside port for every new flow).
Each call: audio both ways (RTP counted by the relay and by Chromium), the pair on the NAT's
address, the SDP each side got, and the edge's own consent checks answered through the NAT.
Keeping a call up past the 30 s consent window is tested on ``task.Clock`` in
tests.test_ice_consent; here the edge's answered consent checks show that the window would
be refreshed.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from contextlib import ExitStack
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from epcscf.service import EpcscfService
from tests.support.browser import (
    Browser,
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
from tests.support.deployment import DOMAIN
from tests.support.netns import Host, TestNetwork, require_network
from tests.support.processes import wait_for
from tests.support.wic import as_deferred
from tests.support.sipp import SCENARIOS, SippProcess, require_sipp, sipp_messages, spawn_sipp
from tests.test_media_browser import CONSENT_ANSWERED, PC_CONNECTED, pcmu_tone

WIC = "10.66.1.2"
NAT_INSIDE = "10.66.1.1"
NAT_OUTSIDE = "10.66.2.2"
EDGE_WIC_SIDE = "10.66.2.1"
EDGE_CORE_SIDE = "10.66.3.1"
CORE = "10.66.3.2"
EDGE_GATEWAY = "10.66.3.254"  # no host has it
MEDIA_PORTS = range(40000, 41000)
#: how long the sipp UAC keeps its call up before its BYE: answer, ICE/DTLS, media and consent checks
UAC_TALK_MS = 14000
# The edge on its three interfaces; consent checks at RFC 7675's floor of 4 s.
EDGE_CONFIG = f"""\
[sip]
listen = udp:{EDGE_CORE_SIDE}:0
[core]
listen = udp:{CORE}:0
[media]
bind_address = {EDGE_WIC_SIDE}
core_address = {EDGE_CORE_SIDE}
port_range = {MEDIA_PORTS.start}-{MEDIA_PORTS.stop - 1}
consent_interval = 4
"""
# RFC 8839 §5.1: transport, address, port and type of each a=candidate line; RFC 4566 §5.7: c= lines.
CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ (\S+) \d+ (\S+) (\d+) typ (\w+)", re.MULTILINE)
CONNECTION = re.compile(r"^c=IN IP4 (\S+)", re.MULTILINE)
ORIGIN = re.compile(r"^o=\S+ \d+ \d+ IN IP4 (\S+)", re.MULTILINE)
# In the page: every SDP body of the page's calls as JsSIP sent or received it ("sdp" events:
# [originator, type, body]), from the last ``SDP_RESET`` on.
RECORD_SDP = """() => {
  window.sdpBodies = [];
  window.wwsf.ua.on('newRTCSession', (e) => e.session.on('sdp', (d) => window.sdpBodies.push([d.originator, d.type, d.sdp])));
}"""
SDP_RESET = "() => { window.sdpBodies = []; }"
SDP_BODIES = "() => window.sdpBodies"


def deployed_network(test: unittest.TestCase) -> tuple[TestNetwork, dict[str, Host], str]:
    """The four hosts and their links (see the module docstring); (network, hosts, the NAT's outside interface)."""
    network = TestNetwork()
    test.addCleanup(network.remove)
    hosts = {name: network.host(name) for name in ("wic", "nat", "edge", "core")}
    network.link(hosts["wic"], f"{WIC}/24", hosts["nat"], f"{NAT_INSIDE}/24")
    outside, _ = network.link(hosts["nat"], f"{NAT_OUTSIDE}/24", hosts["edge"], f"{EDGE_WIC_SIDE}/24")
    network.link(hosts["edge"], f"{EDGE_CORE_SIDE}/24", hosts["core"], f"{CORE}/24")
    # The WIC reaches the eP-CSCF through the NAT; the eP-CSCF knows no way back but the NAT's
    # address: its default route leads to the operator's network (a gateway that never answers
    # here), so its checks toward the WIC's private host candidate are lost, as on the Internet.
    network.route(hosts["wic"], "default", NAT_INSIDE)
    network.route(hosts["edge"], "default", EDGE_GATEWAY)
    return network, hosts, outside


def free_udp_port(host: Host) -> int:
    """A UDP port the kernel just had free on ``host`` (sipp needs its ports on the command line)."""
    with host.inside(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def nat_mappings(wic: Host, edge: Host) -> tuple[int, int, int]:
    """One WIC socket sends to two edge sockets: (inside port, outside port seen by each)."""
    with ExitStack() as sockets:
        with edge.inside():
            receivers = [sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(2)]
            for receiver in receivers:
                receiver.bind((EDGE_WIC_SIDE, 0))
                receiver.settimeout(5)
        with wic.inside():
            sender = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sender.bind((WIC, 0))
        seen = []
        for receiver in receivers:
            sender.sendto(b"probe", receiver.getsockname())
            source = receiver.recvfrom(16)[1]
            assert source[0] == NAT_OUTSIDE, f"the NAT did not map the probe: {source}"
            seen.append(source[1])
        return sender.getsockname()[1], seen[0], seen[1]


class WicBehindNatTests(unittest.TestCase):
    timeout = 150

    def setUp(self) -> None:
        require_browser(self)
        require_network(self)
        self.sipp = require_sipp(self)
        self.network, self.hosts, self.nat_outside = deployed_network(self)
        self.network.nat(self.hosts["nat"], self.nat_outside)
        # This process is the eP-CSCF host: the reactor's thread joins its namespace for the test.
        edge = ExitStack()
        edge.enter_context(self.hosts["edge"].inside())
        self.addCleanup(edge.close)
        self.tls = certificate_chain(os.path.abspath(self.mktemp()))
        self.service, self.page_url = start_wwsf_deployment(
            self, EDGE_CONFIG, tls=self.tls, host=EDGE_WIC_SIDE, before_start=self._core_on_its_host
        )
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def _core_on_its_host(self, service: EpcscfService) -> None:
        """The embedded core binds its listener in the core's namespace (its socket stays there)."""
        core = service.core
        assert core is not None
        start = core.startService

        def start_on_core_host() -> None:
            with self.hosts["core"].inside():
                start()

        core.startService = start_on_core_host  # type: ignore[method-assign]

    # --- helpers -------------------------------------------------------------------------------

    def spawn_sipp(self, name: str, args: list[str]) -> tuple[SippProcess, str]:
        """sipp on the core host, bounded to one call and 40 s; (process, its message trace)."""
        bounded = [*args, "-m", "1", "-timeout", "40s", "-timeout_error"]
        return spawn_sipp(self, self.sipp, bounded, self.directory, name, prefix=self.hosts["core"].command([]))

    async def sipp_finished(self, name: str, process: SippProcess) -> None:
        await wait_for(lambda: process.ended.called, 20, what=f"sipp {name} done")
        self.assertEqual(process.exit_code, 0, f"sipp {name} failed:\n{process.output.decode(errors='replace')[-1500:]}")

    def live_stream(self) -> Any:
        calls = self.service.pcscf.calls.calls()
        self.assertEqual(len(calls), 1, calls)
        return calls[0].media.streams[0]

    async def assert_call_through_nat(self, browser: Browser, user: str, sipp_trace: str, sipp_media_port: int) -> tuple[int, int]:
        """Audio both ways on a pair on the NAT's address, the SDP of each side, and consent
        both ways through the NAT; (the WIC's host candidate port, the NAT's port for it)."""
        verdict = await browser.wait_function(user, PC_CONNECTED, timeout=20000, polling=100)
        self.assertEqual(verdict["connectionState"], "connected")
        stats = await wait_for_inbound_audio(browser, user, packets=25, timeout=20000)
        self.assertEqual(stats["dtlsState"], "connected")

        # What the edge advertised (RFC 8445 §5.1.1.1): its WIC-side address only, never the
        # core side nor loopback, in every a=candidate, in c= (RFC 8839 §5.1 default address)
        # and in o=.  The bodies as they came over the WebSocket (Chromium's remoteDescription
        # is re-serialised: its o= always says 127.0.0.1).
        bodies = await browser.evaluate(user, SDP_BODIES)
        remote_sdp = "".join(sdp for originator, _, sdp in bodies if originator == "remote")
        local_sdp = "".join(sdp for originator, _, sdp in bodies if originator == "local")
        self.assertTrue(remote_sdp and local_sdp, bodies)
        ours = CANDIDATE.findall(remote_sdp)
        self.assertTrue(ours, remote_sdp)
        self.assertEqual({(transport.lower(), address, kind) for transport, address, _, kind in ours}, {("udp", EDGE_WIC_SIDE, "host")}, remote_sdp)
        self.assertEqual(set(CONNECTION.findall(remote_sdp)), {EDGE_WIC_SIDE}, remote_sdp)
        self.assertEqual(set(ORIGIN.findall(remote_sdp)), {EDGE_WIC_SIDE}, remote_sdp)
        for other in (EDGE_CORE_SIDE, "127.0.0.1", CORE):
            self.assertNotIn(other, remote_sdp)
        # Chromium's selected pair: our candidate as signalled.
        remote = stats["selectedPair"]["remote"].split()
        host, port = remote[0].rsplit(":", 1)
        self.assertEqual((host, int(port) in MEDIA_PORTS), (EDGE_WIC_SIDE, True), stats["selectedPair"])

        # The edge's selected pair: the NAT's address, which none of the WIC's candidates carries
        # (RFC 8445 §7.3.1.3: a peer-reflexive candidate learnt from the WIC's check).
        theirs = [(address, int(port)) for transport, address, port, _ in CANDIDATE.findall(local_sdp) if transport.lower() == "udp"]
        self.assertIn(WIC, [address for address, _ in theirs], local_sdp)
        self.assertNotIn(NAT_OUTSIDE, local_sdp)
        stream = self.live_stream()
        selected = stream.agent.selected_pair
        self.assertIsNotNone(selected)
        (local_host, local_port), (remote_host, remote_port) = selected
        self.assertEqual((local_host, local_port), (EDGE_WIC_SIDE, int(port)))
        self.assertEqual(remote_host, NAT_OUTSIDE, selected)
        self.assertNotIn((remote_host, remote_port), theirs)
        [wic_port] = [candidate_port for address, candidate_port in theirs if address == WIC]

        # The relay toward the core: plain RTP from our core-side address to sipp's, both ways.
        session = stream.session.stats()
        self.assertEqual(stream.session.core_address, EDGE_CORE_SIDE)
        self.assertEqual(session.core_rtp_target, (CORE, sipp_media_port))
        self.assertGreater(session.wic_to_core.packets, 25, "WIC → core: SRTP decrypted, sent as RTP")
        self.assertGreater(session.core_to_wic.packets, 25, "core → WIC: RTP encrypted, sent as SRTP")
        # What sipp (the core side) was sent: the core-side address in c= and o=, no ICE.
        received = "\n".join(sipp_messages(sipp_trace, "received"))
        self.assertEqual(set(CONNECTION.findall(received)), {EDGE_CORE_SIDE}, received)
        self.assertEqual(set(ORIGIN.findall(received)), {EDGE_CORE_SIDE}, received)
        self.assertNotIn("a=candidate", received)

        # RFC 7675 §5.1 both ways: Chromium's consent requests answered, and ours (full ICE, on
        # the selected pair: to the NAT's address) answered by Chromium through the NAT.
        consent = await browser.wait_function(user, CONSENT_ANSWERED, arg=1, timeout=15000, polling=250)
        self.assertGreaterEqual(consent["responsesReceived"], consent["requestsSent"] - 1, consent)
        await wait_for(lambda: stream.agent.stats.consent_responses >= 1, 15, what=f"the edge's consent answered: {stream.agent.stats}")
        self.assertEqual(stream.agent.stats.consent_failures, 0, stream.agent.stats)
        return wic_port, remote_port

    async def hang_up_from_page(self, browser: Browser, user: str) -> None:
        await browser.click(user, "#hangup")
        await browser.wait(user, page_state("call-state", "idle"), timeout=15000)

    async def released(self) -> None:
        await wait_for(lambda: not self.service.pcscf.calls.calls(), 10, what="the call released")

    # --- the test ------------------------------------------------------------------------------

    def test_wic_behind_nat_calls_and_is_called_with_audio_both_ways(self) -> defer.Deferred:
        return as_deferred(self._calls())

    async def _calls(self) -> None:
        inside, first, second = nat_mappings(self.hosts["wic"], self.hosts["edge"])
        self.assertEqual((first, second), (inside, inside), "masquerade keeps the port: endpoint-independent mapping")
        wic = self.hosts["wic"]
        browser = await start_browser(self, flags=trust_certificate_flags(self.tls), prefix=wic.command([]))
        for user in ("alice", "bob"):
            await open_registered_page(browser, self.page_url, user)
            await browser.evaluate(user, RECORD_SDP)
        # The WICs' WebSockets come from the NAT's address.
        self.assertEqual({flow.connection.remote.host for flow in self.service.pcscf.flows}, {NAT_OUTSIDE})

        # (a) WIC-originated, endpoint-independent NAT: the NAT's port is the WIC's own.
        wic_port, nat_port = await self.call_echo_from(browser, "alice")
        self.assertEqual(nat_port, wic_port)

        # (c) WIC-terminated: sipp calls bob through the embedded core.
        await self.sipp_calls(browser, "bob")

        # (b) WIC-originated through a symmetric NAT: a new random port per flow.
        self.network.nat(self.hosts["nat"], self.nat_outside, random_ports=True)
        inside, first, second = nat_mappings(self.hosts["wic"], self.hosts["edge"])
        self.assertNotEqual(first, second, "a symmetric NAT maps each destination to its own port")
        wic_port, nat_port = await self.call_echo_from(browser, "alice", name="uas_symmetric")
        # A new flow, a random outside port (equal to the inside one by chance once in ~64 000 calls).
        self.assertNotEqual(nat_port, wic_port)

        errors = [line for line in browser.console(last=1000) if line.split(":")[0].endswith("error")]
        self.assertEqual(errors, [])

    async def call_echo_from(self, browser: Browser, user: str, name: str = "uas") -> tuple[int, int]:
        core = self.hosts["core"]
        sip_port, media_port = free_udp_port(core), free_udp_port(core)
        uas, trace = self.spawn_sipp(name, ["-sf", os.path.join(SCENARIOS, "media_uas_echo.xml"), "-i", CORE,
                                     "-p", str(sip_port), "-mi", CORE, "-mp", str(media_port), "-rtp_echo"])
        await wait_for(lambda: sip_port in core.udp_ports() or uas.ended.called, 10, what="sipp UAS listening")
        self.assertFalse(uas.ended.called, uas.output.decode(errors="replace"))
        await browser.evaluate(user, SDP_RESET)
        # The embedded core proxies a Request-URI outside its domain as is (to the sipp UAS).
        await call_from_page(browser, user, f"sip:echo@{CORE}:{sip_port}")
        await browser.wait(user, page_state("call-state", "connected"), timeout=20000)
        ports = await self.assert_call_through_nat(browser, user, trace, media_port)
        await self.hang_up_from_page(browser, user)
        await self.sipp_finished(name, uas)
        await self.released()
        return ports

    async def sipp_calls(self, browser: Browser, user: str) -> None:
        core_host = self.hosts["core"]
        core = self.service.core
        assert core is not None
        core_address = core.addresses[0][1]
        self.assertEqual(core_address.host, CORE)
        media_port = free_udp_port(core_host)
        await browser.evaluate(user, SDP_RESET)
        with open(os.path.join(self.directory, "tone.pcmu"), "wb") as tone:  # sipp runs in self.directory
            tone.write(pcmu_tone(2.0))
        uac, trace = self.spawn_sipp("uac", ["-sf", os.path.join(SCENARIOS, "media_uac_call.xml"), "-s", user,
                                      "-set", "domain", DOMAIN, "-i", CORE, "-p", str(free_udp_port(core_host)),
                                      "-mi", CORE, "-mp", str(media_port), "-d", str(UAC_TALK_MS),
                                      f"{core_address.host}:{core_address.port}"])
        await browser.wait(user, page_state("call-state", "incoming"), timeout=20000)
        await browser.click(user, "#answer")
        await browser.wait(user, page_state("call-state", "connected"), timeout=20000)
        self.assertTrue(self.live_stream().agent.controlling, "the offerer toward the WIC is the controlling agent")
        await self.assert_call_through_nat(browser, user, trace, media_port)
        # sipp's BYE (after -d ms) reaches the WIC through the core and the edge.
        await browser.wait(user, page_state("call-state", "idle"), timeout=20000)
        await self.sipp_finished("uac", uac)
        await self.released()
