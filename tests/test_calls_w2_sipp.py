"""Calls end to end on 127.0.0.1: a WIC (real WebSocket + aioice + DTLS-SRTP) ⇄ epcscf (eP-CSCF +
embedded core, with the CallManager attached) ⇄ sipp as the IMS party (plain RTP/AVP).

The WIC registers through the eP-CSCF; its originating INVITE follows the Service-Route to the
embedded core, which routes the foreign Request-URI to the sipp UAS; the sipp UAC reaches the WIC
through the core (Path → flow token).  Assertions use the SDP each side received (sipp's
``-trace_msg`` and the WebSocket client), ICE/DTLS/SRTP state, and resource accounting (port pool
full, no call, no asyncio task).  Needs ``--reactor=asyncio`` and sipp.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from typing import Any

import aioice.ice
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from epcscf.ice import IceAgentConfig, UdpPortPool
from epcscf.media import DtlsRole, MediaSessionConfig
from epcscf.pcscf.call_media import CallMediaEngine, CallMediaSettings
from epcscf.pcscf.call_state import CallState
from epcscf.pcscf.calls import CallManager, CallSettings
from epcscf.sdp import SessionDescription
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_rules import list_values, make_cancel, name_addr_uri
from tests.support.deployment import DOMAIN, USERS, start_deployment, ws_url
from tests.support.processes import wait_for
from tests.support.reactor import asyncio_loop
from tests.support.sipp import SippProcess, received_requests, received_responses, require_sipp, sipp_messages, spawn_sipp
from tests.support.raw_ws import client_frame
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import WsSipClient, as_deferred
from tests.test_calls_media import LOCAL, SimulatedWic, no_asyncio_tasks_left, rtp

# Real sockets and sipp: poll for the visible effect, fail after 10 s.
until = functools.partial(wait_for, timeout=10.0, interval=0.02)

SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sipp")
PORTS = (42000, 42099)
# These tests are about calls, not overload: on a loaded host (loadavg 10+) the edge's event loop
# lags behind its 50 ms samples for reasons of its own host, and the lag-driven overload control
# would then answer a test's REGISTER or INVITE with 503 (tests.test_pcscf_overload covers that).
NOT_ABOUT_OVERLOAD = "[overload]\nenabled = false\n"


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


class CallsThroughTheEdgeTests(unittest.TestCase):
    timeout = 60
    ice_mode = "lite"

    def setUp(self) -> None:
        self.sipp = require_sipp(self)
        self.loop = asyncio_loop()
        self.patch(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOCAL])
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        # Short timers so that every transaction visibly ends within the test: Timer K (T4) for
        # our BYEs, Timers L/M (64*T1, RFC 6026) for the proxied INVITEs in the Accepted state.
        self.service = start_deployment(
            self, extra="[sip]\nt1 = 0.05\nt2 = 0.4\nt4 = 0.2\nwic_t1 = 0.05\nwic_t2 = 0.4\nwic_t4 = 0.2\n" + NOT_ABOUT_OVERLOAD
        )
        self.pool = UdpPortPool(*PORTS)
        self.engine = CallMediaEngine(global_reactor, self.media_settings(), self.pool)
        node = self.service.pcscf
        self.calls = CallManager(global_reactor, node.policy.addresses, self.engine, CallSettings(), node.proxy)
        node.policy.calls = self.calls
        node.calls = self.calls
        self.clients: list[WsSipClient] = []
        self.wics: list[SimulatedWic] = []

    def media_settings(self, **ice: Any) -> CallMediaSettings:
        config: dict[str, Any] = {"bind_addresses": (LOCAL,), "port_range": PORTS, "mode": self.ice_mode, "connect_timeout": 5.0}
        config.update(ice)
        return CallMediaSettings(ice=IceAgentConfig(**config), media=MediaSessionConfig(core_address=LOCAL))

    def tearDown(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._cleanup())

    async def _cleanup(self) -> None:
        for wic in self.wics:
            await wic.close()
        for client in self.clients:
            await as_deferred(client.close())
        await self.calls.close()
        await deferLater(global_reactor, 0.05, lambda: None)
        # Trial does not see asyncio leaks: every aioice/ws task of the calls must be gone.
        self.assertEqual(no_asyncio_tasks_left(self.loop), [], "asyncio tasks left running")
        self.assertEqual(self.pool.free_count, self.pool.size, "media ports left allocated")

    # --- helpers -------------------------------------------------------------------------------

    def spawn_sipp(self, name: str, args: list[str]) -> tuple[SippProcess, str]:
        errors = os.path.join(self.directory, f"{name}_errors.log")
        bounded = [*args, "-m", "1", "-timeout", "25s", "-timeout_error", "-trace_err", "-error_file", errors]
        return spawn_sipp(self, self.sipp, bounded, self.directory, name)

    async def start_uas(self, scenario: str = "calls_uas_answer.xml") -> tuple[SippProcess, str, int, int]:
        port, media_port = free_udp_port(), free_udp_port()
        process, trace = self.spawn_sipp("uas", ["-sf", os.path.join(SCENARIOS, scenario), "-i", LOCAL, "-p", str(port),
                                                 "-mi", LOCAL, "-mp", str(media_port), "-rtp_echo"])
        await until(lambda: _udp_bound(port), timeout=5.0)
        return process, trace, port, media_port

    async def registered(self, user: str) -> WsSipClient:
        client = WsSipClient(ws_url(self.service), user, USERS[user], DOMAIN)
        await as_deferred(client.connect())
        self.clients.append(client)
        response = await as_deferred(client.register())
        self.assertEqual(response.status, 200)
        return client

    async def wic(self, controlling: bool) -> SimulatedWic:
        wic = SimulatedWic(controlling)
        self.wics.append(wic)
        await wic.gather()
        return wic

    async def call_sipp(self, client: WsSipClient, wic: SimulatedWic, uas_port: int) -> tuple[Request, Response]:
        invite = client.request("INVITE", f"sip:service@{LOCAL}:{uas_port}", body=wic.sdp("actpass"),
                                content_type="application/sdp")
        invite.headers.add("Contact", f"<sip:{client.user}@{client.host};transport=ws;ob>")
        await as_deferred(client.send(invite))
        statuses = []
        while True:
            message = await as_deferred(client.next_message(10))
            if isinstance(message, Response):
                statuses.append(message.status)
                if message.status >= 200:
                    break
        self.assertEqual(statuses[-1], 200, statuses)
        self.assertIn(180, statuses)
        await as_deferred(client.send(self.in_dialog(client, "ACK", invite, message)))
        return invite, message

    def in_dialog(self, client: WsSipClient, method: str, invite: Request, ok: Response, cseq: int | None = None) -> Request:
        """A request in the dialog the WIC formed as UAC (RFC 3261 §12.2.1.1)."""
        target = name_addr_uri(list_values(ok.headers, "Contact")[0])
        request = Request(method, target)
        request.headers.add("Via", f"SIP/2.0/WS {client.host};branch=z9hG4bK{secrets.token_hex(6)}")
        routes = list(reversed(list_values(ok.headers, "Record-Route")))
        if routes:
            request.headers.replace_all("Route", routes)
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", invite.headers.get("From") or "")
        request.headers.add("To", ok.headers.get("To") or "")
        request.headers.add("Call-ID", invite.headers.get("Call-ID") or "")
        number = (invite.headers.get("CSeq") or "1").split()[0]
        request.headers.add("CSeq", f"{number if method == 'ACK' else cseq or int(number) + 1} {method}")
        return request

    async def established_originating_call(self) -> tuple[WsSipClient, SimulatedWic, Request, Response, SippProcess, str, int]:
        uas, trace, port, media_port = await self.start_uas()
        client = await self.registered("alice")
        wic = await self.wic(controlling=True)
        invite, ok = await self.call_sipp(client, wic, port)
        await wic.connect(ok.body, DtlsRole.SERVER)  # we answered a=setup:active
        [call] = self.calls.calls()
        await until(lambda: call.media is not None and call.media.streams[0].session.connected)
        return client, wic, invite, ok, uas, trace, media_port

    def assert_everything_freed(self) -> None:
        self.assertEqual(self.calls.calls(), [])
        self.assertEqual(self.pool.free_count, self.pool.size, "media ports left allocated")

    async def assert_no_transaction_left(self) -> None:
        """Every transaction of the eP-CSCF (ours and the proxy's) ends (Timer K = T4 on UDP)."""
        node = self.service.pcscf
        try:
            await until(lambda: node.transactions.transactions() == [] and node.proxy.active() == [], timeout=8.0)
        except self.failureException:
            self.fail(f"left: {node.transactions.transactions()} {node.proxy.active()}")

    # --- originating (§7.4.2) ------------------------------------------------------------------

    async def test_wic_calls_ims_ice_dtls_srtp_to_plain_rtp_and_bye_frees_everything(self) -> None:
        client, wic, invite, ok, uas, trace, media_port = await self.established_originating_call()
        # What the IMS side received: a plain RTP/AVP offer on our core-side port.
        [core_invite] = received_requests(trace, "INVITE")
        core_offer = SessionDescription.parse(core_invite.split("\n\n", 1)[1].replace("\n", "\r\n"))
        self.assertEqual([(m.media, m.proto) for m in core_offer.media], [("audio", "RTP/AVP")])
        self.assertEqual(core_offer.connection.host, LOCAL)
        self.assertTrue(PORTS[0] <= core_offer.media[0].port <= PORTS[1])
        for forbidden in ("a=ice-", "a=candidate", "a=fingerprint", "a=setup", "a=group", "a=mid", "a=rtcp-mux"):
            self.assertNotIn(forbidden, core_invite)
        # RFC 5658 §4: our two Record-Route entries (core-facing, then WIC-facing with the flow token)
        record_route = ",".join(l.split(":", 1)[1] for l in core_invite.splitlines() if l.lower().startswith("record-route:"))
        core_side = self.service.pcscf.listener("UDP").address
        self.assertIn(f"sip:{core_side.host}:{core_side.port};transport=udp;lr", record_route)
        self.assertIn(";transport=ws;lr", record_route)
        # What the WIC received: a WebRTC answer with our ICE/DTLS parameters.
        answer = SessionDescription.parse(ok.body)
        line = answer.media[0]
        self.assertEqual(line.proto, "UDP/TLS/RTP/SAVPF")
        self.assertEqual(line.attribute_value("setup"), "active")
        self.assertEqual(line.attribute_value("fingerprint"), self.engine.certificate.fingerprint.to_sdp())
        self.assertEqual(answer.has_attribute("ice-lite"), self.ice_mode == "lite")
        self.assertEqual(line.formats[0], "0")
        # Media: SRTP from the WIC → RTP to sipp (-rtp_echo) → back as SRTP to the WIC.
        for seq in range(1, 6):
            wic.send_rtp(rtp(seq))
        await until(lambda: len(wic.received) >= 3)
        self.assertEqual(wic.received[0], rtp(1))
        [call] = self.calls.calls()
        self.assertIs(call.state, CallState.CONFIRMED)
        kinds = {entry.kind for entry in call.timeline}
        self.assertTrue({"sip-in", "sip-out", "state", "ice", "dtls"} <= kinds, kinds)
        # The WIC hangs up.
        await as_deferred(client.send(self.in_dialog(client, "BYE", invite, ok)))
        response = await as_deferred(client.final_response())
        self.assertEqual(response.status, 200)
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        await self.calls.idle()
        self.assert_everything_freed()
        self.assertEqual(call.release_cause, "BYE from the wic")
        await self.assert_no_transaction_left()

    async def test_the_wics_own_token_with_another_route_set_is_refused_inside_the_call(self) -> None:
        """TS 24.229 §5.2.6.3: behind our entries the Route set must be the one saved for the
        dialog; a WIC that writes its own gets 403 and nothing leaves (the genuine BYE then works)."""
        client, wic, invite, ok, uas, trace, media_port = await self.established_originating_call()
        sink = UdpSipPeer()
        sink_port = sink.start()
        self.addCleanup(sink.stop)
        anywhere = f"<sip:{LOCAL}:{sink_port};lr>"
        genuine = self.in_dialog(client, "BYE", invite, ok)
        routes = list_values(genuine.headers, "Route")
        self.assertGreaterEqual(len(routes), 3)  # ours (WIC side, core side) and the core's
        for tampered in (routes + [anywhere], routes[:2] + [anywhere], routes[:2]):
            for method in ("BYE", "INFO", "MESSAGE"):
                request = self.in_dialog(client, method, invite, ok)
                request.headers.replace_all("Route", tampered)
                await as_deferred(client.send(request))
                response = await as_deferred(client.final_response())
                self.assertEqual((response.status, response.reason), (403, "Forbidden (Route does not match the dialog)"))
        await deferLater(global_reactor, 0.3, lambda: None)
        self.assertTrue(sink.received.empty(), "a request reached the sink")
        await as_deferred(client.send(genuine))
        self.assertEqual((await as_deferred(client.final_response())).status, 200)
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        await self.calls.idle()
        self.assert_everything_freed()

    async def test_consent_loss_sends_bye_to_both_sides_with_reason(self) -> None:
        # RFC 7675 §5.1 (short consent timers through the ICE configuration)
        self.engine.settings = self.media_settings(consent_timeout=1.0, consent_interval=0.2, consent_min_interval=0.1)
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        await as_deferred(wic.ice.close())  # the browser's media stack vanishes; signalling stays
        bye = await as_deferred(client.next_message(10))
        self.assertIsInstance(bye, Request)
        self.assertEqual(bye.method, "BYE")
        self.assertIn("consent", bye.headers.get("Reason") or "")
        await as_deferred(client.answer(bye, 200))
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        [core_bye] = received_requests(trace, "BYE")
        self.assertRegex(core_bye, r'(?im)^Reason: SIP;cause=480;text=".*consent')
        await self.calls.idle()
        self.assert_everything_freed()
        [ended] = self.calls.ended_calls()
        self.assertEqual(ended.failing_layer, "ice")
        await self.assert_no_transaction_left()

    async def test_websocket_drop_mid_call_sends_bye_to_the_core(self) -> None:
        # TS 23.228 §5.10; RFC 3326 Reason with our cause 480
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        await as_deferred(client.drop())
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        [core_bye] = received_requests(trace, "BYE")
        self.assertIn('Reason: SIP;cause=480;text="WebSocket closed"', core_bye)
        await self.calls.idle()
        self.assert_everything_freed()
        await self.assert_no_transaction_left()

    async def test_release_meeting_a_websocket_autobahn_has_failed_still_ends_the_call(self) -> None:
        # The WIC sends a text frame that is not UTF-8: Autobahn fails the WebSocket (1007) and
        # drops TCP, but reports the end a loop turn later.  A release running in that same turn
        # (a timer: here the operator's) sends its BYE toward the WIC on a WebSocket that refuses
        # to send: the flow is gone (ConnectionLost), and the call must still end and free all.
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        [call] = self.calls.calls()
        client.socket.transport.write(client_frame(b"\xff\xfe not UTF-8"))
        global_reactor.callLater(0, self.calls.release, call.call_id, "operator")
        time.sleep(0.1)  # holds the loop: the next turn reads the frame, then runs the release
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        [core_bye] = received_requests(trace, "BYE")
        self.assertIn("operator", core_bye)
        await self.calls.idle()
        self.assert_everything_freed()
        await self.assert_no_transaction_left()

    async def test_cancel_while_ringing_frees_everything(self) -> None:
        # RFC 3261 §9.1 (the IMS side is a bare UDP peer here: it must answer the INVITE's own Vias)
        peer = UdpSipPeer()
        port = peer.start()
        self.addCleanup(peer.stop)
        client = await self.registered("alice")
        wic = await self.wic(controlling=True)
        invite = client.request("INVITE", f"sip:service@{LOCAL}:{port}", body=wic.sdp("actpass"), content_type="application/sdp")
        invite.headers.add("Contact", f"<sip:alice@{client.host};transport=ws;ob>")
        await as_deferred(client.send(invite))
        core_invite, addr = await as_deferred(peer.next_request())
        self.assertIn(b"RTP/AVP", core_invite.body)
        peer.reply(core_invite, addr, 180)
        while True:
            message = await as_deferred(client.next_message(10))
            if isinstance(message, Response) and message.status == 180:
                break
        self.assertEqual(self.pool.used_count, 3)  # ICE socket + RTP/RTCP pair while ringing
        cancel = make_cancel(invite)  # RFC 3261 §9.1
        await as_deferred(client.send(cancel))
        core_cancel, addr = await as_deferred(peer.next_request())
        self.assertEqual(core_cancel.method, "CANCEL")
        peer.reply(core_cancel, addr, 200)
        peer.reply(core_invite, addr, 487)
        statuses = set()
        while 487 not in statuses:
            message = await as_deferred(client.next_message(10))
            if isinstance(message, Response):
                statuses.add(message.status)
        self.assertIn(200, statuses)  # the CANCEL's own 200
        ack, _ = await as_deferred(peer.next_request())
        self.assertEqual(ack.method, "ACK")
        await self.calls.idle()
        self.assert_everything_freed()
        [ended] = self.calls.ended_calls()
        self.assertIs(ended.state, CallState.TERMINATED)

    async def test_unusable_offer_gets_488_and_nothing_reaches_the_core(self) -> None:
        # RFC 3261 §21.4.26
        client = await self.registered("alice")
        offer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\nc=IN IP4 127.0.0.1\r\n"
        invite = client.request("INVITE", f"sip:service@{LOCAL}:9", body=offer, content_type="application/sdp")
        invite.headers.add("Contact", f"<sip:alice@{client.host};transport=ws;ob>")
        response = await as_deferred(client.transact(invite))
        self.assertEqual(response.status, 488)
        self.assertRegex(response.headers.get("Warning") or "", r'^\d{3} \S+ ".+"$')
        self.assert_everything_freed()

    # --- terminating (§7.4.3) ------------------------------------------------------------------

    async def test_ims_calls_the_wic(self) -> None:
        client = await self.registered("alice")
        core = self.service.core.addresses[0][1]
        media_port = free_udp_port()
        uac, trace = self.spawn_sipp("uac", ["-sf", os.path.join(SCENARIOS, "calls_uac_offer.xml"), "-s", "alice",
                                             "-set", "domain", DOMAIN, "-i", LOCAL, "-p", str(free_udp_port()),
                                             "-mi", LOCAL, "-mp", str(media_port), "-rtp_echo",
                                             f"{core.host}:{core.port}"])
        invite = await as_deferred(client.next_message(10))
        while not isinstance(invite, Request):
            invite = await as_deferred(client.next_message(10))
        self.assertEqual(invite.method, "INVITE")
        offer = SessionDescription.parse(invite.body)
        line = offer.media[0]
        self.assertEqual(line.proto, "UDP/TLS/RTP/SAVPF")
        self.assertEqual(line.attribute_value("setup"), "actpass")
        self.assertEqual(line.formats, ["0", "8", "101"])
        self.assertTrue(line.has_attribute("rtcp-mux"))
        wic = await self.wic(controlling=self.ice_mode == "lite")  # lite: the WIC controls; full: the offerer (us)
        ok = Response(200, "OK")
        from epcscf.sip.message import make_response

        ok = make_response(invite, 200, to_tag=secrets.token_hex(4))
        for value in invite.headers.get_all("Record-Route"):
            ok.headers.add("Record-Route", value)
        ok.headers.add("Contact", f"<sip:alice@{client.host};transport=ws>")
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = wic.sdp("active")
        await as_deferred(client.send(ok))
        await wic.connect(invite.body, DtlsRole.CLIENT)
        [call] = self.calls.calls()
        await until(lambda: call.media is not None and call.media.streams[0].session.connected)
        wic.send_rtp(rtp(1))
        await until(lambda: bool(wic.received))  # echoed by sipp through the relay
        # sipp's BYE reaches the WIC; answering it ends the call.
        bye = await as_deferred(client.next_message(10))
        while not (isinstance(bye, Request) and bye.method == "BYE"):
            bye = await as_deferred(client.next_message(10))
        await as_deferred(client.answer(bye, 200))
        self.assertEqual(await uac.ended, 0, uac.output.decode(errors="replace")[-2000:])
        [core_ok] = received_responses(trace, 200, "INVITE")
        self.assertIn("RTP/AVP", core_ok)
        self.assertNotIn("a=ice-", core_ok)
        await self.calls.idle()
        self.assert_everything_freed()


    def wic_response(self, client: WsSipClient, request: Request, body: bytes, tag: str) -> Response:
        """The WIC's 200 (RFC 3261 §12.1.1: Record-Route copied, Contact) with an SDP body."""
        from epcscf.sip.message import make_response

        ok = make_response(request, 200, to_tag=tag)
        for value in request.headers.get_all("Record-Route"):
            ok.headers.add("Record-Route", value)
        ok.headers.add("Contact", f"<sip:alice@{client.host};transport=ws>")
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = body
        return ok

    async def next_request(self, client: WsSipClient, method: str) -> Request:
        while True:
            message = await as_deferred(client.next_message(10))
            if isinstance(message, Request) and message.method == method:
                return message

    def spawn_uac(self, scenario: str) -> tuple[SippProcess, str]:
        core = self.service.core.addresses[0][1]
        return self.spawn_sipp("uac", ["-sf", os.path.join(SCENARIOS, scenario), "-s", "alice", "-set", "domain", DOMAIN,
                                       "-i", LOCAL, "-p", str(free_udp_port()), "-mi", LOCAL, "-mp", str(free_udp_port()),
                                       "-rtp_echo", f"{core.host}:{core.port}"])

    async def test_ims_late_offer_gets_the_wic_offer_and_answers_in_the_ack(self) -> None:
        # RFC 3261 §13.2.1: INVITE without SDP; the WIC offers in its 200, the core answers in the ACK.
        client = await self.registered("alice")
        uac, trace = self.spawn_uac("calls_uac_late_offer.xml")
        invite = await self.next_request(client, "INVITE")
        self.assertEqual(invite.body, b"")
        wic = await self.wic(controlling=True)  # the WIC offers: it controls
        await as_deferred(client.send(self.wic_response(client, invite, wic.sdp("actpass"), "late1")))
        ack = await self.next_request(client, "ACK")
        answer = SessionDescription.parse(ack.body)
        self.assertEqual(answer.media[0].proto, "UDP/TLS/RTP/SAVPF")
        self.assertEqual(answer.media[0].attribute_value("setup"), "active")
        await wic.connect(ack.body, DtlsRole.SERVER)
        [call] = self.calls.calls()
        await until(lambda: call.media is not None and call.media.streams[0].session.connected)
        wic.send_rtp(rtp(1))
        await until(lambda: bool(wic.received))
        bye = await self.next_request(client, "BYE")
        await as_deferred(client.answer(bye, 200))
        self.assertEqual(await uac.ended, 0, uac.output.decode(errors="replace")[-2000:])
        [core_ok] = received_responses(trace, 200, "INVITE")
        self.assertIn("RTP/AVP", core_ok)
        self.assertNotIn("a=fingerprint", core_ok)
        await self.calls.idle()
        self.assert_everything_freed()

    async def test_ims_hold_reinvite_keeps_credentials_and_media(self) -> None:
        # RFC 3264 §8: the core's re-offer (a=sendonly) → WebRTC re-offer, same ICE/DTLS, actpass.
        client = await self.registered("alice")
        uac, trace = self.spawn_uac("calls_uac_hold.xml")
        invite = await self.next_request(client, "INVITE")
        wic = await self.wic(controlling=self.ice_mode == "lite")
        await as_deferred(client.send(self.wic_response(client, invite, wic.sdp("active"), "hold1")))
        await wic.connect(invite.body, DtlsRole.CLIENT)
        [call] = self.calls.calls()
        await until(lambda: call.media is not None and call.media.streams[0].session.connected)
        reinvite = await self.next_request(client, "INVITE")
        first, again = SessionDescription.parse(invite.body).media[0], SessionDescription.parse(reinvite.body).media[0]
        for name in ("ice-ufrag", "ice-pwd", "fingerprint", "candidate", "mid"):
            self.assertEqual(again.attribute_values(name), first.attribute_values(name))
        self.assertEqual(again.attribute_value("setup"), "actpass")
        self.assertEqual(again.direction, "sendonly")
        self.assertGreater(SessionDescription.parse(reinvite.body).origin.session_version,
                           SessionDescription.parse(invite.body).origin.session_version)
        session = call.media.streams[0].session
        await as_deferred(client.send(self.wic_response(client, reinvite, wic.sdp("active", direction="recvonly"), "hold1")))
        await self.next_request(client, "ACK")
        self.assertIs(call.media.streams[0].session, session)
        self.assertTrue(session.connected)  # no new DTLS association (RFC 5763 §5)
        self.assertEqual(session.direction.value, "recvonly")  # on hold: only core → WIC (RFC 3264 §5.1)
        bye = await self.next_request(client, "BYE")
        await as_deferred(client.answer(bye, 200))
        self.assertEqual(await uac.ended, 0, uac.output.decode(errors="replace")[-2000:])
        _, held_ok = received_responses(trace, 200, "INVITE")
        self.assertIn("CSeq: 2 INVITE", held_ok.splitlines())
        self.assertIn("a=recvonly", held_ok)
        self.assertIn("RTP/AVP", held_ok)
        await self.calls.idle()
        self.assert_everything_freed()


    async def test_core_cancel_is_relayed_to_the_wic_and_its_487_back(self) -> None:
        # RFC 3261 §9.1, §16.10
        client = await self.registered("alice")
        uac, trace = self.spawn_uac("calls_uac_cancel.xml")
        invite = await self.next_request(client, "INVITE")
        from epcscf.sip.message import make_response

        await as_deferred(client.send(make_response(invite, 180, to_tag="ring1")))
        cancel = await self.next_request(client, "CANCEL")
        self.assertEqual(cancel.headers.get("Call-ID"), invite.headers.get("Call-ID"))
        await as_deferred(client.send(make_response(cancel, 200, to_tag="ring1")))
        await as_deferred(client.send(make_response(invite, 487, to_tag="ring1")))
        self.assertEqual(await uac.ended, 0, uac.output.decode(errors="replace")[-2000:])
        await self.calls.idle()
        self.assert_everything_freed()
        [ended] = self.calls.ended_calls()
        self.assertIs(ended.state, CallState.TERMINATED)
        self.assertIn("CANCEL from the core", [entry.text for entry in ended.timeline])

    async def test_websocket_drop_while_ringing_answers_480_to_the_core(self) -> None:
        # TS 23.228 §5.10: an early terminating call whose flow dies gets 480 upstream; media freed.
        client = await self.registered("alice")
        uac, trace = self.spawn_uac("calls_uac_unanswered.xml")
        invite = await self.next_request(client, "INVITE")
        self.assertIn(b"a=setup:actpass", invite.body)
        self.assertEqual(len(self.calls.calls()), 1)
        await as_deferred(client.drop())
        self.assertEqual(await uac.ended, 0, uac.output.decode(errors="replace")[-2000:])
        # Over UDP the 480 is retransmitted (Timer G, RFC 3261 §17.2.1) until sipp's ACK arrives, which
        # under a loaded host can take more than T1; every copy is the same response.
        finals = [m for m in sipp_messages(trace, "received") if m.startswith("SIP/2.0 480")]
        self.assertGreaterEqual(len(finals), 1)
        self.assertEqual(len(set(finals)), 1, finals)
        self.assertIn('Reason: SIP;cause=480;text="WebSocket closed"', finals[0])
        await self.calls.idle()
        self.assert_everything_freed()
        [ended] = self.calls.ended_calls()
        self.assertEqual(ended.failing_layer, "ws")
        await self.assert_no_transaction_left()


class FullIceCallsThroughTheEdgeTests(CallsThroughTheEdgeTests):
    """The same with full ICE toward the WIC (aioice agent, RFC 8445 roles)."""

    ice_mode = "full"


def _udp_bound(port: int) -> bool:
    needle = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as handle:
        return any(line.split()[1] == needle for line in handle.readlines()[1:])
