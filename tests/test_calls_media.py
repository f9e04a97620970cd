"""CallMedia with real sockets on 127.0.0.1: a WIC simulator (aioice + DTLS + SRTP) on one side,
a plain UDP "core" on the other (needs trial --reactor=asyncio)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aioice.ice
from aioice import Candidate
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from epcscf.ice import IceAgentConfig, UdpPortPool
from epcscf.ice.agent import as_deferred
from epcscf.media import Certificate, DtlsEndpoint, DtlsRole, MediaSessionConfig, SrtpContext
from epcscf.media.certificate import Fingerprint
from epcscf.pcscf.call_media import CallMedia, CallMediaEngine, CallMediaSettings
from epcscf.pcscf.call_streams import all_done, gather
from epcscf.pcscf.calls import MediaRejected
from epcscf.sdp import SessionDescription
from tests.support.processes import wait_for
from tests.support.reactor import asyncio_loop

# Real sockets and DTLS: poll for the visible effect, fail after 5 s.
until = functools.partial(wait_for, timeout=5.0, interval=0.02)

LOCAL = "127.0.0.1"
# Below the kernel's range for automatically chosen ports (ip_local_port_range, 32768–60999 by
# default): the 503 test binds every port of the range itself, and an ephemeral socket of another
# test or process sitting on one of them made that bind fail ("Address already in use").
PORTS = (21000, 21019)


def rtp(seq: int, ssrc: int = 0x11223344, payload: bytes = b"\xd5" * 160) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload


class SimulatedWic:
    """A browser in miniature: an aioice agent, a DTLS endpoint and SRTP, writing Chrome-like SDP."""

    def __init__(self, controlling: bool) -> None:
        self.certificate = Certificate.generate("wic")
        self.ice = aioice.ice.Connection(ice_controlling=controlling, use_ipv6=False)
        self.dtls: DtlsEndpoint | None = None
        self.srtp: SrtpContext | None = None
        self.received: list[bytes] = []
        self.dtls_failed: list[str] = []
        self._reader: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()

    async def gather(self) -> None:
        await as_deferred(self.ice.gather_candidates())

    def sdp(self, setup: str, direction: str = "sendrecv", ufrag: str | None = None) -> bytes:
        lines = [
            "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
            "a=group:BUNDLE 0", "a=msid-semantic: WMS",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
        ]
        lines += [f"a=candidate:{c.to_sdp()}" for c in self.ice.local_candidates]
        lines += [
            f"a=ice-ufrag:{ufrag or self.ice.local_username}", f"a=ice-pwd:{self.ice.local_password}",
            "a=ice-options:trickle", f"a=fingerprint:{self.certificate.fingerprint.to_sdp()}",
            f"a=setup:{setup}", "a=mid:0", f"a={direction}", "a=rtcp-mux",
            "a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:126 telephone-event/8000",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    async def connect(self, remote_sdp: bytes, role: DtlsRole) -> None:
        """Apply the eP-CSCF's SDP, run ICE, then DTLS in ``role``; fires when SRTP keys exist."""
        sdp = SessionDescription.parse(remote_sdp)
        media = sdp.media[0]
        self.ice.remote_username = sdp.media_attribute_value(media, "ice-ufrag")
        self.ice.remote_password = sdp.media_attribute_value(media, "ice-pwd")
        self.ice.remote_is_lite = sdp.has_attribute("ice-lite")
        for value in media.attribute_values("candidate"):
            await as_deferred(self.ice.add_remote_candidate(Candidate.from_sdp(value)))
        await as_deferred(self.ice.add_remote_candidate(None))
        await as_deferred(self.ice.connect())
        fingerprint = Fingerprint.from_sdp(sdp.media_attribute_value(media, "fingerprint") or "")
        connected: defer.Deferred = defer.Deferred()
        self.dtls = DtlsEndpoint(role, self.certificate, fingerprint, global_reactor, self._send,
                                 on_connected=connected.callback, on_failed=self.dtls_failed.append)
        self._reader = asyncio.ensure_future(self._read())
        self.dtls.start()
        keys = await connected
        self.srtp = SrtpContext(keys)

    def _send(self, data: bytes) -> None:
        task = asyncio.ensure_future(self.ice.send(data))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _read(self) -> None:
        while True:
            data = await self.ice.recv()
            if 20 <= data[0] <= 63 and self.dtls is not None:
                self.dtls.datagram_received(data)
            elif 128 <= data[0] <= 191 and self.srtp is not None:
                plain = self.srtp.unprotect(data)
                if plain is not None:
                    self.received.append(plain)

    def send_rtp(self, packet: bytes) -> None:
        assert self.srtp is not None
        protected = self.srtp.protect(packet)
        assert protected is not None
        self._send(protected)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await as_deferred(asyncio.gather(self._reader, return_exceptions=True))
            except Exception:
                pass
        if self.dtls is not None:
            self.dtls.close()
        if self._sending:
            await as_deferred(asyncio.gather(*self._sending, return_exceptions=True))
        await as_deferred(self.ice.close())


class CoreSocket(DatagramProtocol):
    """The IMS side's RTP endpoint: records what arrives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.received.append((data, addr))


def core_sdp(port: int, direction: str = "sendrecv") -> bytes:
    return (f"v=0\r\no=core 1 1 IN IP4 {LOCAL}\r\ns=-\r\nc=IN IP4 {LOCAL}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 126\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:126 telephone-event/8000\r\n"
            f"a={direction}\r\n").encode()


def no_asyncio_tasks_left(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task]:
    current = asyncio.current_task(loop)
    return [t for t in asyncio.all_tasks(loop) if t is not current and not t.done()]


class CallMediaTestCase(unittest.TestCase):
    timeout = 30
    mode = "full"

    def setUp(self) -> None:
        self.loop = asyncio_loop()
        self.patch(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOCAL])
        self.pool = UdpPortPool(*PORTS)
        self.engine = CallMediaEngine(global_reactor, self.settings(), self.pool)
        self.medias: list[CallMedia] = []
        self.wics: list[SimulatedWic] = []
        self.core = CoreSocket()
        self.core_port = global_reactor.listenUDP(0, self.core, interface=LOCAL)
        self.failures: list[tuple[str, str]] = []

    def settings(self, **ice: Any) -> CallMediaSettings:
        config = {"bind_addresses": (LOCAL,), "port_range": PORTS, "mode": self.mode, "connect_timeout": 5.0}
        config.update(ice)
        return CallMediaSettings(ice=IceAgentConfig(**config), media=MediaSessionConfig(core_address=LOCAL))

    def media(self) -> CallMedia:
        media = self.engine(None)
        media.on_failure = lambda layer, reason: self.failures.append((layer, reason))
        self.medias.append(media)
        return media

    async def wic(self, controlling: bool) -> SimulatedWic:
        wic = SimulatedWic(controlling)
        self.wics.append(wic)
        await wic.gather()
        return wic

    async def cleanup(self) -> None:
        for wic in self.wics:
            await wic.close()
        for media in self.medias:
            await media.close()
        await self.core_port.stopListening()
        await deferLater(global_reactor, 0.01, lambda: None)

    def tearDown(self) -> defer.Deferred:
        def check(_: object) -> None:
            self.assertEqual(no_asyncio_tasks_left(self.loop), [], "asyncio tasks left running")
            self.assertEqual(self.pool.free_count, self.pool.size, "ports left allocated")

        return defer.Deferred.fromCoroutine(self.cleanup()).addCallback(check)

    async def originating_call(self) -> tuple[CallMedia, SimulatedWic, bytes, bytes]:
        wic = await self.wic(controlling=True)
        media = self.media()
        offer = await media.offer_from_wic(wic.sdp("actpass"))
        answer = media.answer_from_core(core_sdp(self.core_port.getHost().port), "fork1")
        await wic.connect(answer, DtlsRole.SERVER)
        await until(lambda: media.streams[0].session.connected)
        return media, wic, offer, answer

    async def assert_media_both_ways(self, media: CallMedia, wic: SimulatedWic) -> None:
        wic.send_rtp(rtp(1))
        await until(lambda: bool(self.core.received))
        packet, source = self.core.received[0]
        self.assertEqual(packet, rtp(1))  # decrypted, SSRC/seq/timestamp unchanged (RFC 3711)
        self.assertEqual(source, (LOCAL, media.streams[0].session.core_rtp_port))
        self.core.transport.write(rtp(7, ssrc=0x55), source)
        await until(lambda: bool(wic.received))
        self.assertEqual(wic.received[0], rtp(7, ssrc=0x55))


class OriginatingMediaTests(CallMediaTestCase):
    async def test_wic_offer_becomes_plain_rtp_offer_from_the_pool(self) -> None:
        wic = await self.wic(controlling=True)
        media = self.media()
        offer = SessionDescription.parse(await media.offer_from_wic(wic.sdp("actpass")))
        [line] = offer.media
        self.assertEqual((line.media, line.proto, line.formats), ("audio", "RTP/AVP", ["0", "8", "126"]))
        self.assertTrue(PORTS[0] <= line.port <= PORTS[1] and line.port % 2 == 0)
        self.assertEqual(offer.connection.host, LOCAL)
        text = offer.to_text()
        for attribute in ("ice-", "candidate", "fingerprint", "setup", "rtcp-mux", "mid", "group"):
            self.assertNotIn(f"a={attribute}", text)
        # one ICE socket + one RTP/RTCP pair from the same pool
        self.assertEqual(self.pool.used_count, 3)

    async def test_ice_dtls_and_srtp_relay_end_to_end(self) -> None:
        media, wic, offer, answer = await self.originating_call()
        parsed = SessionDescription.parse(answer)
        line = parsed.media[0]
        self.assertEqual(line.proto, "UDP/TLS/RTP/SAVPF")
        self.assertEqual(line.attribute_value("setup"), "active")  # we answer actpass with active
        self.assertEqual(line.attribute_value("fingerprint"), self.engine.certificate.fingerprint.to_sdp())
        self.assertEqual(line.attribute_value("mid"), "0")
        self.assertTrue(line.has_attribute("rtcp-mux"))
        self.assertNotIn("trickle", parsed.to_text())  # we never trickle
        await self.assert_media_both_ways(media, wic)

    async def test_every_answer_keeps_credentials_and_same_content_keeps_the_version(self) -> None:
        # Same ICE/DTLS in every answer (RFC 8445 §9); same content, same o= version (RFC 3264 §8)
        wic = await self.wic(controlling=True)
        media = self.media()
        await media.offer_from_wic(wic.sdp("actpass"))
        port = self.core_port.getHost().port
        first = SessionDescription.parse(media.answer_from_core(core_sdp(port), "a"))
        again = SessionDescription.parse(media.answer_from_core(core_sdp(port), "a"))
        held = SessionDescription.parse(media.answer_from_core(core_sdp(port, "recvonly"), "b"))
        self.assertEqual(first.origin.session_version, again.origin.session_version)
        self.assertEqual(held.origin.session_version, first.origin.session_version + 1)
        for name in ("ice-ufrag", "ice-pwd", "fingerprint", "candidate"):
            self.assertEqual(first.media[0].attribute_values(name), held.media[0].attribute_values(name))

    async def test_unusable_offer_is_rejected_before_anything_is_allocated(self) -> None:
        media = self.media()
        no_ice = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
                  b"c=IN IP4 0.0.0.0\r\na=rtpmap:0 PCMU/8000\r\na=setup:actpass\r\n")
        failure = self.failureResultOf(defer.maybeDeferred(media.offer_from_wic, no_ice), MediaRejected)
        self.assertEqual(failure.value.status, 488)
        self.assertIn("ice", failure.value.reason.lower())
        self.assertEqual(self.pool.used_count, 0)
        garbage = self.failureResultOf(defer.maybeDeferred(media.offer_from_wic, b"hello"), MediaRejected)
        self.assertEqual(garbage.value.status, 400)

    async def test_ports_exhausted_is_503(self) -> None:
        wic = await self.wic(controlling=True)
        self.pool.allocate_pair()  # leave too few ports: (ICE socket + RTP/RTCP pair) needs 3
        while self.pool.free_count > 1:
            self.pool.allocate()
        await self.assert_offer_refused_503(wic)
        for port in range(PORTS[0], PORTS[1] + 1):
            self.pool.release(port)

    async def assert_offer_refused_503(self, wic: SimulatedWic) -> None:
        media = self.media()
        try:
            await media.offer_from_wic(wic.sdp("actpass"))
        except MediaRejected as error:
            self.assertEqual(error.status, 503)
        else:
            self.fail("expected a 503")
        await media.close()

    async def test_ice_ports_held_by_another_process_is_503(self) -> None:
        # Found by benchmarks/fuzz.py on a shared machine: the core-side pair binds, but every
        # port the ICE agent tries is bound by someone else. That is a 503 like an exhausted
        # pool (RFC 3261 §21.5.4), not a 500 with a traceback.
        import socket

        wic = await self.wic(controlling=True)
        blockers = []
        for port in range(PORTS[0] + 2, PORTS[1] + 1):  # the first pair stays free for RTP/RTCP
            blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            blocker.bind((LOCAL, port))
            blockers.append(blocker)
        self.addCleanup(lambda: [blocker.close() for blocker in blockers])
        await self.assert_offer_refused_503(wic)

    async def test_consent_loss_reports_an_ice_failure(self) -> None:
        self.engine = CallMediaEngine(global_reactor, self.settings(consent_interval=0.2, consent_min_interval=0.1,
                                                                    consent_timeout=1.0), self.pool)
        media, wic, _, _ = await self.originating_call()
        await as_deferred(wic.ice.close())  # the browser vanishes: no more consent responses
        await until(lambda: bool(self.failures), timeout=5.0)
        self.assertEqual(self.failures[0][0], "ice")
        self.assertIn("consent", self.failures[0][1])

    async def test_wic_dtls_close_is_a_failure_only_if_no_bye_follows(self) -> None:
        from epcscf.pcscf import call_dtls

        self.patch(call_dtls, "PEER_CLOSE_GRACE", 0.6)
        media, wic, _, _ = await self.originating_call()
        wic.dtls.close()  # close_notify, as a browser sends it while hanging up
        await until(lambda: media.streams[0].session.dtls_closed_by_peer)
        await deferLater(global_reactor, 0.3, lambda: None)
        self.assertEqual(self.failures, [])  # within the grace period the BYE is still expected
        await until(lambda: bool(self.failures), timeout=3.0)
        self.assertEqual(self.failures[0][0], "dtls")
        self.assertIn("closed DTLS", self.failures[0][1])

    async def test_wic_dtls_close_followed_by_the_end_of_the_call_reports_nothing(self) -> None:
        from epcscf.pcscf import call_dtls

        self.patch(call_dtls, "PEER_CLOSE_GRACE", 0.6)
        media, wic, _, _ = await self.originating_call()
        wic.dtls.close()
        await until(lambda: media.streams[0].session.dtls_closed_by_peer)
        await media.close()  # the BYE arrived: the call ends and frees its media
        await deferLater(global_reactor, 0.8, lambda: None)
        self.assertEqual(self.failures, [])

    async def test_hold_reoffer_keeps_ports_credentials_and_dtls(self) -> None:
        # RFC 3264 §8, §5.1
        media, wic, offer, answer = await self.originating_call()
        session = media.streams[0].session
        first_offer, first_answer = SessionDescription.parse(offer), SessionDescription.parse(answer)
        reoffer = SessionDescription.parse(await media.offer_from_wic(wic.sdp("actpass", direction="sendonly")))
        self.assertEqual(reoffer.media[0].port, first_offer.media[0].port)
        self.assertEqual(reoffer.media[0].direction, "sendonly")
        self.assertEqual(reoffer.origin.session_version, first_offer.origin.session_version + 1)
        reanswer = SessionDescription.parse(media.answer_from_core(core_sdp(self.core_port.getHost().port, "recvonly"), None))
        for name in ("ice-ufrag", "ice-pwd", "fingerprint", "candidate"):
            self.assertEqual(reanswer.media[0].attribute_values(name), first_answer.media[0].attribute_values(name))
        self.assertEqual(reanswer.media[0].direction, "recvonly")
        self.assertIs(media.streams[0].session, session)
        self.assertTrue(session.connected)  # no new DTLS handshake
        self.assertEqual(session.direction.value, "sendonly")  # the WIC sends, the core does not
        await self.assert_media_both_ways_on_hold(media, wic)

    async def assert_media_both_ways_on_hold(self, media: CallMedia, wic: SimulatedWic) -> None:
        wic.send_rtp(rtp(1))
        await until(lambda: bool(self.core.received))
        self.core.transport.write(rtp(9), self.core.received[0][1])
        await deferLater(global_reactor, 0.2, lambda: None)
        self.assertEqual(wic.received, [])  # gated: on hold the core's RTP does not reach the WIC

    async def test_reoffer_adding_a_stream_allocates_it_and_keeps_the_first(self) -> None:
        # RFC 3264 §8.1: the new m= line gets its own ICE transport and core ports; the first is unchanged.
        media, wic, offer, answer = await self.originating_call()
        first_port = SessionDescription.parse(offer).media[0].port
        text = wic.sdp("actpass").decode()
        head, _, block = text.partition("m=audio")
        second = "m=audio" + block.replace("a=mid:0", "a=mid:1")
        reoffer = SessionDescription.parse(await media.offer_from_wic((head + "m=audio" + block + second).encode()))
        self.assertEqual([m.port for m in reoffer.media][0], first_port)
        self.assertNotIn(reoffer.media[1].port, (0, first_port))
        self.assertEqual(sorted(media.streams), [0, 1])
        self.assertEqual(self.pool.used_count, 6)  # two ICE sockets, two RTP/RTCP pairs
        port = self.core_port.getHost().port
        two = core_sdp(port) + core_sdp(port).split(b"t=0 0\r\n", 1)[1]
        reanswer = SessionDescription.parse(media.answer_from_core(two, None))
        self.assertEqual(reanswer.media[0].attribute_value("ice-ufrag"), SessionDescription.parse(answer).media[0].attribute_value("ice-ufrag"))
        self.assertEqual([m.attribute_value("mid") for m in reanswer.media], ["0", "1"])

    async def test_refused_reoffer_keeps_the_previous_answer_base(self) -> None:
        # RFC 3261 §14.1
        media, wic, offer, answer = await self.originating_call()
        await media.offer_from_wic(wic.sdp("actpass", direction="inactive"))
        media.offer_failed()
        again = SessionDescription.parse(media.answer_from_core(core_sdp(self.core_port.getHost().port), None))
        self.assertEqual(again.media[0].direction, "sendrecv")

    async def test_wic_ice_restart_gets_new_local_credentials(self) -> None:
        # RFC 8445 §9
        media, wic, offer, answer = await self.originating_call()
        before = SessionDescription.parse(answer).media[0].attribute_value("ice-ufrag")
        await media.offer_from_wic(wic.sdp("actpass", ufrag="RestartedUfrag"))
        after = SessionDescription.parse(media.answer_from_core(core_sdp(self.core_port.getHost().port), None))
        self.assertNotEqual(after.media[0].attribute_value("ice-ufrag"), before)
        self.assertEqual(media.streams[0].agent.stats.restarts, 1)
        await self.assert_media_both_ways(media, wic)  # the old pair keeps carrying media

    async def test_close_frees_ports_sockets_and_tasks(self) -> None:
        media, wic, _, _ = await self.originating_call()
        await media.close()
        self.assertEqual(self.pool.free_count, self.pool.size)


class TerminatingMediaTests(CallMediaTestCase):
    async def test_core_offer_to_wic_and_wic_answer_to_core(self) -> None:
        media = self.media()
        offer = SessionDescription.parse(await media.offer_from_core(core_sdp(self.core_port.getHost().port)))
        line = offer.media[0]
        self.assertEqual(line.proto, "UDP/TLS/RTP/SAVPF")
        self.assertEqual(line.attribute_value("setup"), "actpass")
        wic = await self.wic(controlling=False)  # full ICE: we offered, so we control
        answer = SessionDescription.parse(await media.answer_from_wic(wic.sdp("active")))
        self.assertEqual(answer.media[0].proto, "RTP/AVP")
        self.assertEqual(answer.media[0].port, media.streams[0].session.core_rtp_port)
        await wic.connect(offer.serialize(), DtlsRole.CLIENT)
        await until(lambda: media.streams[0].session.connected)
        await self.assert_media_both_ways(media, wic)


class LiteOriginatingMediaTests(OriginatingMediaTests):
    mode = "lite"

    async def test_lite_answer_says_ice_lite(self) -> None:
        media, wic, _, answer = await self.originating_call()
        self.assertIn(b"a=ice-lite", answer)


class IceRestartCrossingTests(CallMediaTestCase):
    """Full ICE only: a restart binds new sockets, so a crossing offer can find none gathered yet."""

    async def test_core_reoffer_while_an_ice_restart_gathers_is_491(self) -> None:
        # Found by benchmarks/fuzz.py: while a restart gathers (RFC 8445 §9) the stream has no
        # local candidate to offer; a crossing offer from the core is refused with 491 (RFC 3261
        # §14.2, try again later), not a 500 with a ValueError from the SDP transformation.
        from epcscf.ice.full import FullGeneration

        media, wic, _, _ = await self.originating_call()
        agent = media.streams[0].agent
        # Hold the new generation's gathering until the core's offer has been handled.
        release: asyncio.Future = self.loop.create_future()
        gather = FullGeneration.gather

        async def held_gather(generation: FullGeneration) -> None:
            await release
            await gather(generation)

        self.patch(FullGeneration, "gather", held_gather)
        restarted = agent.restart()
        await until(lambda: not agent.local_candidates())
        try:
            await media.offer_from_core(core_sdp(self.core_port.getHost().port))
        except MediaRejected as error:
            self.assertEqual(error.status, 491)
        else:
            self.fail("expected a 491")
        release.set_result(None)
        await restarted
        self.assertTrue(agent.local_candidates())


class NewDtlsAssociationTests(CallMediaTestCase):
    """A WIC with a new RTCPeerConnection (a new certificate) in the same call: RFC 8842 §5.5."""

    async def replaced_wic(self, media: CallMedia, old: SimulatedWic) -> SimulatedWic:
        """The page's old connection closes (close_notify, ICE gone); its new one re-offers with
        new ICE credentials and a new certificate; the core answers as before."""
        old.dtls.close()
        await until(lambda: media.streams[0].session.dtls_closed_by_peer)
        new = await self.wic(controlling=True)
        self.assertNotEqual(new.certificate.fingerprint, old.certificate.fingerprint)
        await media.offer_from_wic(new.sdp("actpass"))
        answer = media.answer_from_core(core_sdp(self.core_port.getHost().port), None)
        await new.connect(answer, DtlsRole.SERVER)
        await until(lambda: media.streams[0].session.connected)
        return new

    async def test_reoffer_with_a_new_fingerprint_gets_a_new_association_and_new_keys(self) -> None:
        media, old, _, _ = await self.originating_call()
        events: list[str] = []
        media.on_event = lambda kind, text: events.append(text)
        media.wic_flow = lambda: None  # the page is away: its close_notify does not end the call
        session = media.streams[0].session
        new = await self.replaced_wic(media, old)
        self.assertIs(media.streams[0].session, session, "the same relay and core ports")
        self.assertEqual(len([e for e in events if "new DTLS association (client)" in e]), 1, events)
        await self.assert_media_both_ways(media, new)
        self.assertEqual(self.failures, [])

    async def test_reoffer_with_the_same_fingerprint_keeps_the_association(self) -> None:
        media, wic, _, _ = await self.originating_call()
        endpoint = media.streams[0].session._dtls
        await media.offer_from_wic(wic.sdp("actpass", direction="sendonly"))
        media.answer_from_core(core_sdp(self.core_port.getHost().port, "recvonly"), None)
        self.assertIs(media.streams[0].session._dtls, endpoint)
        self.assertIsNone(media.streams[0].next_association)

    async def test_refused_reoffer_forgets_the_new_association(self) -> None:
        media, wic, _, _ = await self.originating_call()
        other = await self.wic(controlling=True)
        await media.offer_from_wic(other.sdp("actpass"))
        self.assertIsNotNone(media.streams[0].next_association)
        media.offer_failed()  # the core refused it (488, 491): the old association goes on
        self.assertIsNone(media.streams[0].next_association)
        self.assertTrue(media.streams[0].session.connected)

    async def test_dtls_closed_while_away_ends_the_call_only_if_no_reoffer_follows_the_return(self) -> None:
        from epcscf.pcscf import call_dtls

        self.patch(call_dtls, "PEER_CLOSE_GRACE", 0.3)
        media, wic, _, _ = await self.originating_call()
        flow: list[str | None] = [None]  # suspended: no flow
        media.wic_flow = lambda: flow[0]
        wic.dtls.close()
        await until(lambda: media.streams[0].session.dtls_closed_by_peer)
        await deferLater(global_reactor, 1.0, lambda: None)
        self.assertEqual(self.failures, [], "while away, the grace period of the suspension decides")
        flow[0] = "ws-2"  # back on a new flow, and no re-offer with a new association
        await until(lambda: bool(self.failures), timeout=3.0)
        self.assertEqual(self.failures[0][0], "dtls")
        self.assertIn("closed DTLS", self.failures[0][1])


class GatherTests(unittest.TestCase):
    """``call_streams.gather`` behaves as ``defer.gatherResults(consumeErrors=True)``."""

    @staticmethod
    def reference(deferreds: list[defer.Deferred]) -> defer.Deferred:
        return defer.gatherResults(deferreds, consumeErrors=True)

    @staticmethod
    def outcome(gatherer: Any, fire: Any) -> tuple[list[Any], list[Any]]:
        """(what the gathered Deferred gives, what is left on the inner one afterwards)."""
        inner: defer.Deferred = defer.Deferred()
        gathered = gatherer([inner])
        results: list[Any] = []
        gathered.addBoth(results.append)
        fire(inner)
        left: list[Any] = []
        inner.addBoth(left.append)
        return results, left

    def test_one_deferred_succeeds_like_gather_results(self) -> None:
        self.assertEqual(self.outcome(gather, lambda d: d.callback(7)), ([[7]], [7]))
        self.assertEqual(self.outcome(self.reference, lambda d: d.callback(7)), ([[7]], [7]))

    def test_one_deferred_fails_like_gather_results(self) -> None:
        for gatherer in (gather, self.reference):
            [failure], left = self.outcome(gatherer, lambda d: d.errback(ValueError("no port")))
            self.assertIsInstance(failure.value, defer.FirstError)
            self.assertEqual((failure.value.index, str(failure.value.subFailure.value)), (0, "no port"))
            self.assertEqual(left, [None])  # consumed: no unhandled error left behind

    def test_cancelling_cancels_the_one_deferred(self) -> None:
        for gatherer in (gather, self.reference):
            inner: defer.Deferred = defer.Deferred()
            gathered = gatherer([inner])
            gathered.cancel()
            failure = self.failureResultOf(gathered, defer.FirstError)
            self.assertTrue(failure.value.subFailure.check(defer.CancelledError))
            self.assertIsNone(self.successResultOf(inner))  # cancelled, and its failure consumed

    def test_none_or_several_go_to_gather_results(self) -> None:
        self.assertEqual(self.successResultOf(gather([])), [])
        self.assertEqual(self.successResultOf(gather([defer.succeed(1), defer.succeed(2)])), [1, 2])


class AllDoneTests(unittest.TestCase):
    """``call_streams.all_done`` fires when ``DeferredList(consumeErrors=True)`` does, and
    leaves the same behind on the Deferreds it waited for."""

    @staticmethod
    def reference(deferreds: list[defer.Deferred]) -> defer.Deferred:
        return defer.DeferredList(deferreds, consumeErrors=True)

    def test_fires_after_the_last_whatever_their_results(self) -> None:
        for waiter in (all_done, self.reference):
            first, second, third = defer.Deferred(), defer.Deferred(), defer.Deferred()
            done = waiter([first, second, third])
            first.callback(1)
            second.errback(ValueError("socket"))
            self.assertNoResult(done)
            third.callback(None)
            self.successResultOf(done)
            # results left as they were, failures consumed
            self.assertEqual([self.successResultOf(d) for d in (first, second, third)], [1, None, None])

    def test_already_fired_and_none(self) -> None:
        for waiter in (all_done, self.reference):
            self.successResultOf(waiter([defer.succeed(1), defer.fail(ValueError("x"))]))
            self.successResultOf(waiter([]))

    def test_cancelling_cancels_those_still_waiting(self) -> None:
        for waiter in (all_done, self.reference):
            fired, waiting = defer.succeed(1), defer.Deferred()
            done = waiter([fired, waiting])
            done.cancel()
            self.successResultOf(done)  # the cancelled one fired it, with its failure consumed
            self.assertIsNone(self.successResultOf(waiting))
