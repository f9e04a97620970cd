"""The non-SIP WIC of TS 24.371 §7.2.1: the real ``janus.js`` (npm ``janus-gateway``, in Node)
speaks the Janus API with the SIP plugin's requests to epcscf, which is the SIP UA toward the
embedded core on its behalf.  The sipp party must see exactly what a SIP WIC's call gives it
(plain RTP/AVP, no WebRTC attribute), and the calls and registrations show in operations."""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import websockets
from twisted.trial import unittest

from epcscf.sdp import SessionDescription
from tests.support.deployment import DOMAIN, USERS, start_deployment
from tests.support.node_peer import require_node_modules, start_node_peer
from tests.support.processes import TOP, wait_for
from tests.support.sipp import (
    SCENARIOS, SippProcess, free_port, messages_in_trace, one_per_transaction, port_bound, received_responses,
    require_sipp, sipp_messages, spawn_sipp,
)
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import as_deferred

CHROME_OFFER = os.path.join(TOP, "tests", "fixtures", "sdp", "chrome_offer_loopback.sdp")
CHROME_ANSWER = os.path.join(TOP, "tests", "fixtures", "sdp", "chrome_answer_2_4.sdp")
WEBRTC_ONLY = re.compile(r"^a=(ice-|candidate|end-of-candidates|fingerprint|setup|group|mid|msid|ssrc|extmap|rtcp-mux|rtcp-fb)", re.M)
NONSIP = "[nonsip]\nlisten = ws:127.0.0.1:0\n"


def janus_url(service: Any) -> str:
    listener = service.pcscf.listener("JANUS-WS")
    assert listener is not None
    return f"ws://127.0.0.1:{listener.address.port}"


def body_of(message: str) -> str:
    text = message.replace("\r\n", "\n")
    return text.split("\n\n", 1)[1] if "\n\n" in text else ""


class JanusJsThroughEpcscfTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.sipp = require_sipp(self)
        require_node_modules(self, "janus-gateway", "websocket")
        self.service = start_deployment(self, extra=NONSIP)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def spawn_sipp(self, name: str, args: list[str]) -> tuple[SippProcess, str]:
        return spawn_sipp(self, self.sipp, [*args, "-m", "1", "-timeout", "30s", "-timeout_error"], self.directory, name)

    async def start_uas(self, scenario: str) -> tuple[SippProcess, str, int]:
        """A sipp UAS on a free port running ``scenario``, listening: (process, trace, port)."""
        port = free_port()
        uas, trace = self.spawn_sipp("uas", ["-sf", os.path.join(SCENARIOS, scenario), "-i", "127.0.0.1", "-p", str(port)])
        await wait_for(lambda: port_bound(port, "UDP") or uas.ended.called, timeout=10)
        return uas, trace, port

    def assert_plain_ims_sdp(self, text: str) -> None:
        """What sipp gets from a SIP WIC's call too (TS 24.371 §7.4.2 b, §7.4.3)."""
        description = SessionDescription.parse(text.replace("\n", "\r\n"))
        self.assertEqual([m.proto for m in description.media], ["RTP/AVP"])
        self.assertIsNone(WEBRTC_ONLY.search(text), text)
        self.assertNotIn("54400", text)  # the browser's transport never reaches the core
        low, high = self.service.config.media.port_range
        self.assertTrue(low <= description.media[0].port <= high)

    def test_janus_js_registers_calls_a_sipp_uas_and_hangs_up(self):
        return as_deferred(self._outgoing())

    async def _outgoing(self) -> None:
        uas, trace, port = await self.start_uas("calls_uas_answer.xml")
        # the plugin's custom headers: the allowed ones reach the far end (epcscf.pcscf.nonsip_headers)
        headers = {"Subject": "Quarterly review", "user-to-user": "56a390f3d2b7310023a2;encoding=hex"}
        peer = start_node_peer(self, "janus_sip.js", janus_url(self.service), "alice", USERS["alice"], DOMAIN,
                               "call", f"sip:echo@127.0.0.1:{port}", CHROME_OFFER, json.dumps(headers))
        await peer.wait_for("registered", timeout=20)
        [binding] = self.service.pcscf.registrations.all()
        self.assertEqual(binding.aor, f"sip:alice@{DOMAIN}")
        accepted = await peer.wait_for("accepted", timeout=20)
        # The WIC gets our WebRTC answer (ICE and DTLS of the eP-CSCF), as a SIP WIC would.
        for pattern in (r"^m=audio [1-9]\d* UDP/TLS/RTP/SAVPF ", r"^a=ice-ufrag:\S{4,}", r"^a=fingerprint:sha-256 ",
                        r"^a=setup:active", r"^a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 \d+ typ host"):
            self.assertRegex(accepted["sdp"], re.compile(pattern, re.M))
        ended = await peer.wait_for("ended", timeout=20)
        self.assertEqual(ended["code"], 200)
        self.assertEqual(await peer.ended, 0)
        self.assertEqual(await uas.ended.asFuture(asyncio.get_event_loop()), 0, uas.output[-2000:])
        invite = next(m for m in messages_in_trace(trace) if m.startswith("INVITE "))
        self.assert_plain_ims_sdp(body_of(invite))
        self.assertRegex(invite, re.compile(r"^Subject: Quarterly review\r?$", re.M))
        self.assertRegex(invite, re.compile(r"^User-to-User: 56a390f3d2b7310023a2;encoding=hex\r?$", re.M))
        self.assertIn("BYE ", "\n".join(m.split("\n", 1)[0] for m in messages_in_trace(trace)))
        # the call and the registration show in operations and /metrics like any other
        [record] = self.service.pcscf.operations.calls()
        self.assertFalse(record["live"])
        self.assertEqual(record["direction"], "originating")
        self.assertTrue(self.service.pcscf.operations.call_timeline(record["call_id"]))
        registry = self.service.metrics.registry
        # REGISTER and un-REGISTER: each challenged once (RFC 3261 §22.2), then accepted
        self.assertEqual(registry.get_sample_value("epcscf_registration_results_total", {"result": "challenged"}), 2.0)
        self.assertEqual(registry.get_sample_value("epcscf_registration_results_total", {"result": "ok"}), 2.0)
        ended = [sample for metric in registry.collect() if metric.name == "epcscf_calls_ended" for sample in metric.samples
                 if sample.labels.get("direction") == "originating"]
        self.assertEqual(sum(sample.value for sample in ended), 1.0, ended)
        await wait_for(lambda: not self.service.pcscf.registrations.all() and not self.service.pcscf.flows.__len__(), timeout=10)

    def test_janus_js_holds_resumes_and_sends_dtmf_in_a_call(self):
        return as_deferred(self._hold())

    async def _hold(self) -> None:
        uas, trace, port = await self.start_uas("nonsip_uas_hold_dtmf.xml")
        peer = start_node_peer(self, "janus_sip.js", janus_url(self.service), "alice", USERS["alice"], DOMAIN,
                               "call-hold", f"sip:echo@127.0.0.1:{port}", CHROME_OFFER)
        ended = await peer.wait_for("ended", timeout=25)
        self.assertEqual(ended["code"], 200)
        self.assertEqual(await peer.ended, 0)
        self.assertEqual(await uas.ended.asFuture(asyncio.get_event_loop()), 0, uas.output[-2000:])
        requests = [m for m in one_per_transaction(messages_in_trace(trace)) if not m.startswith("SIP/2.0")]
        self.assertEqual([m.split(" ", 1)[0] for m in requests], ["INVITE", "ACK", "INVITE", "ACK", "INVITE", "ACK", "INFO", "BYE"])
        hold, resume, info = body_of(requests[2]), body_of(requests[4]), requests[6]
        self.assert_plain_ims_sdp(hold)
        self.assertIn("a=sendonly", hold)  # RFC 3264 §8.4
        self.assertNotIn("a=sendonly", resume)
        self.assertIn("application/dtmf-relay", info)
        self.assertIn("Signal=5", body_of(info))

    def test_an_update_the_far_end_refuses_is_reported_and_the_call_goes_on(self):
        return as_deferred(self._refused_update())

    async def _refused_update(self) -> None:
        uas, trace, port = await self.start_uas("nonsip_uas_refuse_update.xml")
        peer = start_node_peer(self, "janus_sip.js", janus_url(self.service), "alice", USERS["alice"], DOMAIN,
                               "call-update", f"sip:echo@127.0.0.1:{port}", CHROME_OFFER)
        await peer.wait_for("accepted", timeout=20)
        failed = await peer.wait_for("updatefailed", timeout=10)
        names = [e.get("name") for e in peer.log if e.get("event") == "sip-event"]
        self.assertEqual(names[names.index("accepted"):], ["accepted", "updating", "updatefailed"])
        self.assertEqual((failed["code"], failed["reason"]), (488, "Not Acceptable Here"))
        [accepted] = [e for e in peer.log if e.get("event") == "sip-event" and e.get("name") == "accepted"]
        self.assertEqual(failed["call_id"], accepted["call_id"])
        # RFC 3261 §14.1: the session stays as it was; no answer, no hangup, until the WIC's own
        self.assertIsNone(next(e for e in peer.log if e.get("name") == "updatefailed")["jsep"])
        ended = await peer.wait_for("ended", timeout=10)
        self.assertEqual(ended["code"], 200)
        self.assertEqual(await peer.ended, 0)
        self.assertEqual(await uas.ended.asFuture(asyncio.get_event_loop()), 0, uas.output[-2000:])
        requests = [m for m in one_per_transaction(messages_in_trace(trace)) if not m.startswith("SIP/2.0")]
        self.assertEqual([m.split(" ", 1)[0] for m in requests], ["INVITE", "ACK", "INVITE", "ACK", "BYE"])
        self.assert_plain_ims_sdp(body_of(requests[2]))  # the re-offer as any SIP WIC's (ICE restart gone)
        [record] = self.service.pcscf.operations.calls()
        self.assertEqual(record["direction"], "originating")
        timeline = " ".join(str(entry) for entry in self.service.pcscf.operations.call_timeline(record["call_id"]))
        self.assertIn("488", timeline)

    def test_janus_js_transfers_the_call_and_hears_how_it_went(self):
        return as_deferred(self._transfer())

    async def _transfer(self) -> None:
        uas, trace, port = await self.start_uas("nonsip_uas_refer.xml")
        target = f"sip:carol@{DOMAIN}"
        peer = start_node_peer(self, "janus_sip.js", janus_url(self.service), "alice", USERS["alice"], DOMAIN,
                               "call-transfer", f"sip:echo@127.0.0.1:{port}", CHROME_OFFER, target)
        # RFC 3515 §2.4.4-2.4.5: the transferee's NOTIFYs (message/sipfrag), as the plugin's notify events
        trying = await peer.wait_for("notify", timeout=20)
        self.assertIn("transferring", [e.get("name") for e in peer.log if e.get("event") == "sip-event"])
        self.assertEqual((trying["notify"], trying["substate"], trying["content"].strip()), ("refer", "active", "SIP/2.0 100 Trying"))
        done = await peer.wait_for("notify", timeout=10)
        self.assertEqual((done["substate"], done["content_type"], done["content"].strip()),
                         ("terminated", "message/sipfrag;version=2.0", "SIP/2.0 200 OK"))
        self.assertEqual((await peer.wait_for("ended", timeout=10))["code"], 200)  # the transferee's BYE
        self.assertEqual(await peer.ended, 0)
        self.assertEqual(await uas.ended.asFuture(asyncio.get_event_loop()), 0, uas.output[-2000:])
        requests = [m for m in one_per_transaction(messages_in_trace(trace)) if not m.startswith("SIP/2.0")]
        self.assertEqual([m.split(" ", 1)[0] for m in requests], ["INVITE", "ACK", "REFER", "NOTIFY", "NOTIFY", "BYE"])
        refer = requests[2]
        self.assertRegex(refer, re.compile(rf"^Refer-To: <{re.escape(target)}>\r?$", re.M))
        self.assertRegex(refer, re.compile(r"^Contact: <sip:alice@\S+;transport=ws;ob>\r?$", re.M))  # RFC 3515 §2.4.1
        answers = [m.split("\n", 1)[0].strip() for m in one_per_transaction(sipp_messages(trace, "received")) if m.startswith("SIP/2.0")]
        self.assertEqual(answers.count("SIP/2.0 200 OK"), 3)  # the two NOTIFYs and the BYE, answered by the eP-CSCF's UA

    def test_a_hold_from_the_far_end_is_accepted_on_the_wics_behalf(self):
        return as_deferred(self._held_by_far_end())

    async def _held_by_far_end(self) -> None:
        uas, trace, port = await self.start_uas("nonsip_uas_reinvite.xml")
        peer = start_node_peer(self, "janus_sip.js", janus_url(self.service), "alice", USERS["alice"], DOMAIN,
                               "call-wait", f"sip:echo@127.0.0.1:{port}", CHROME_OFFER)
        ended = await peer.wait_for("ended", timeout=25)  # sipp's BYE after its re-INVITE
        self.assertEqual(ended["code"], 200)
        self.assertEqual(await uas.ended.asFuture(asyncio.get_event_loop()), 0, uas.output[-2000:])
        self.assertEqual(await peer.ended, 0)
        [ok] = received_responses(trace, 200, "INVITE")  # to sipp's re-INVITE
        self.assert_plain_ims_sdp(body_of(ok))
        self.assertIn("a=recvonly", body_of(ok))  # RFC 3264 §6.1: sendonly answered recvonly

    def test_janus_js_receives_a_call_from_a_sipp_uac_and_accepts_it(self):
        return as_deferred(self._incoming())

    async def _incoming(self) -> None:
        peer = start_node_peer(self, "janus_sip.js", janus_url(self.service), "alice", USERS["alice"], DOMAIN, "answer", CHROME_ANSWER,
                               json.dumps({"Accept-Language": "fr, en;q=0.8"}))
        await peer.wait_for("waiting", timeout=20)
        core = self.service.core.addresses[0][1]
        # the IMS caller also puts the WIC on hold (re-INVITE a=sendonly) before its BYE
        uac, trace = self.spawn_sipp("uac", ["-sf", os.path.join(SCENARIOS, "calls_uac_hold.xml"), "-s", "alice",
                                             "-set", "domain", DOMAIN, "-i", "127.0.0.1", "-p", str(free_port()),
                                             f"{core.host}:{core.port}"])
        incoming = await peer.wait_for("incomingcall", timeout=20)
        self.assertEqual(incoming["username"], f"sip:ims-caller@{DOMAIN}")
        offer = SessionDescription.parse(incoming["sdp"])
        self.assertEqual(offer.media[0].proto, "UDP/TLS/RTP/SAVPF")
        self.assertEqual(offer.media[0].attribute_value("setup"), "actpass")
        ended = await peer.wait_for("ended", timeout=20)  # sipp's BYE
        self.assertEqual(ended["code"], 200)
        self.assertEqual(await uac.ended.asFuture(asyncio.get_event_loop()), 0, uac.output[-2000:])
        ok, held = received_responses(trace, 200, "INVITE")
        self.assert_plain_ims_sdp(body_of(ok))
        self.assertRegex(ok, re.compile(r"^Accept-Language: fr, en;q=0.8\r?$", re.M))  # accept's custom header
        self.assert_plain_ims_sdp(body_of(held))
        self.assertIn("a=recvonly", body_of(held))  # RFC 3264 §6.1: sendonly answered recvonly
        self.assertEqual(await peer.ended, 0)
        await wait_for(lambda: not self.service.pcscf.registrations.all(), timeout=10)


    def test_hangup_while_ringing_cancels_the_invite(self):
        return as_deferred(self._cancel())

    async def _cancel(self) -> None:
        # The IMS side is a bare UDP peer: its 487 must carry the INVITE's own Vias (RFC 3261 §9.2),
        # which sipp's CANCEL scenario cannot give back through a proxy.
        ims = UdpSipPeer()
        port = ims.start()
        self.addCleanup(ims.stop)
        peer = start_node_peer(self, "janus_sip.js", janus_url(self.service), "alice", USERS["alice"], DOMAIN,
                               "call-cancel", f"sip:echo@127.0.0.1:{port}", CHROME_OFFER)
        invite, address = await ims.next_request(timeout=20)
        self.assertEqual(invite.method, "INVITE")
        ims.reply(invite, address, 180)
        cancel, address = await ims.next_request(timeout=10)
        self.assertEqual(cancel.method, "CANCEL")  # janus.js hung up on "ringing": RFC 3261 §9.1
        ims.reply(cancel, address, 200)
        ims.reply(invite, address, 487)
        ack, _ = await ims.next_request(timeout=10)
        self.assertEqual(ack.method, "ACK")
        self.assertEqual((await peer.wait_for("ended", timeout=20))["code"], 487)
        self.assertEqual(await peer.ended, 0)
        await wait_for(lambda: not any(record["live"] for record in self.service.pcscf.operations.calls()), timeout=10)

    def test_a_ringing_non_sip_wic_is_cancelled_then_declines(self):
        return as_deferred(self._ringing())

    async def _ringing(self) -> None:
        peer = start_node_peer(self, "janus_sip.js", janus_url(self.service), "alice", USERS["alice"], DOMAIN, "ring")
        await peer.wait_for("waiting", timeout=20)
        core = self.service.core.addresses[0][1]
        for scenario, status in (("calls_uac_cancel.xml", 487), ("calls_uac_unanswered.xml", 480)):
            # RFC 3261 §9.2: the caller's CANCEL ends the ringing call with 487; then `decline` 480
            uac, _ = self.spawn_sipp(f"uac-{status}", ["-sf", os.path.join(SCENARIOS, scenario), "-s", "alice", "-set", "domain", DOMAIN,
                                                       "-i", "127.0.0.1", "-p", str(free_port()), f"{core.host}:{core.port}"])
            await peer.wait_for("incomingcall", timeout=20)
            self.assertEqual((await peer.wait_for("ended", timeout=20))["code"], status)
            self.assertEqual(await uac.ended.asFuture(asyncio.get_event_loop()), 0, uac.output[-2000:])
        self.assertEqual(await peer.ended, 0)
        await wait_for(lambda: not any(record["live"] for record in self.service.pcscf.operations.calls()), timeout=10)


class JanusClient:
    """A raw Janus API client (the ``websockets`` package): what janus.js cannot be made to send."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.socket: Any = None
        self.counter = 0

    async def connect(self) -> None:
        self.socket = await websockets.connect(self.url, subprotocols=["janus-protocol"])

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.socket.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.socket.recv(), timeout))

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.counter += 1
        frame = {**frame, "transaction": f"t{self.counter}"}
        await self.send(frame)
        return await self.receive()

    async def event(self, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            reply = await self.receive(timeout)
            if reply["janus"] == "event":
                return reply["plugindata"]["data"]


class JanusBadInputTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.service = start_deployment(self, extra=NONSIP + "session_timeout = 1.5\n")
        self.core_requests: list[str] = []

    async def session(self) -> tuple[JanusClient, int, int]:
        client = JanusClient(janus_url(self.service))
        await client.connect()
        self.addCleanup(lambda: as_deferred(client.socket.close()))
        created = await client.request({"janus": "create"})
        session = created["data"]["id"]
        attached = await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": session})
        return client, session, attached["data"]["id"]

    def test_bad_requests_get_janus_errors_nothing_reaches_the_core_and_the_session_survives(self):
        return as_deferred(self._bad())

    async def _bad(self) -> None:
        client, session, handle = await self.session()
        ids = {"session_id": session, "handle_id": handle}
        await client.send(b"{not json")
        self.assertEqual((await client.receive())["error"]["code"], 454)
        await client.send("x" * 70000)  # over [ws] max_message_size
        self.assertEqual((await client.receive())["error"]["code"], 454)
        self.assertEqual((await client.request({"janus": "frobnicate", "session_id": session}))["error"]["code"], 453)
        self.assertEqual((await client.request({"janus": "keepalive", "session_id": 1}))["error"]["code"], 458)
        self.assertEqual((await client.request({"janus": "message", "session_id": session, "handle_id": 1, "body": {}}))["error"]["code"], 459)
        self.assertEqual((await client.request({"janus": "attach", "plugin": "janus.plugin.echotest", "session_id": session}))["error"]["code"], 460)
        self.assertEqual((await client.request({"janus": "message", **ids, "body": {"request": "recording"}}))["janus"], "ack")
        self.assertEqual((await client.event())["error_code"], 442)
        await client.request({"janus": "message", **ids, "body": {"request": "call", "uri": f"sip:bob@{DOMAIN}"}})
        self.assertEqual((await client.event())["error_code"], 447)  # not registered
        await client.request({"janus": "message", **ids, "body": {"request": "register", "username": f"sip:alice@{DOMAIN}", "secret": USERS["alice"]}})
        self.assertEqual((await client.event())["result"]["event"], "registering")
        self.assertEqual((await client.event())["result"]["event"], "registered")
        await client.request({"janus": "message", **ids, "body": {"request": "call", "uri": f"sip:bob@{DOMAIN}"}})
        self.assertEqual((await client.event())["error_code"], 448)  # no jsep
        # a call waiting for its browser's candidates (none in the offer yet) is a call in progress
        offer = open(CHROME_OFFER).read().replace("a=candidate:1 1 udp 2122260223 127.0.0.1 54400 typ host generation 0\n", "")
        await client.request({"janus": "message", **ids, "body": {"request": "call", "uri": f"sip:bob@{DOMAIN}"}, "jsep": {"type": "offer", "sdp": offer}})
        await client.request({"janus": "message", **ids, "body": {"request": "call", "uri": f"sip:bob@{DOMAIN}"}, "jsep": {"type": "offer", "sdp": offer}})
        self.assertEqual((await client.event())["error_code"], 447)  # already in a call
        await client.request({"janus": "message", **ids, "body": {"request": "hangup"}})
        self.assertEqual((await client.event())["result"]["event"], "hangup")
        self.assertEqual(self.service.pcscf.operations.calls(), [])  # no INVITE left the UA
        self.assertEqual((await client.request({"janus": "keepalive", "session_id": session}))["janus"], "ack")
        # the operator ends the handle's flow (console disconnect): the WIC hears of it, may register again
        [flow] = self.service.pcscf.operations.flows()
        self.assertTrue(self.service.pcscf.operations.disconnect_flow(flow["flow"], 1000, "operator"))
        self.assertEqual((await client.event())["result"], {"event": "registration_failed", "code": 430, "reason": "Flow Failed"})
        await client.request({"janus": "message", **ids, "body": {"request": "register", "username": f"sip:alice@{DOMAIN}", "secret": USERS["alice"]}})
        self.assertEqual((await client.event())["result"]["event"], "registering")
        self.assertEqual((await client.event())["result"]["event"], "registered")
        [binding] = self.service.pcscf.registrations.all()  # RFC 5626 §6: moved to the new flow
        self.assertNotEqual(binding.flow_id, flow["flow"])
        # Janus's session timeout: no request for session_timeout → timeout, registration gone
        reply = await client.receive(timeout=5)
        while reply["janus"] != "timeout":
            reply = await client.receive(timeout=5)
        self.assertEqual(reply["session_id"], session)
        await wait_for(lambda: not self.service.pcscf.registrations.all() and not len(self.service.pcscf.flows), timeout=10)
        self.assertEqual((await client.request({"janus": "keepalive", "session_id": session}))["error"]["code"], 458)
        registry = self.service.metrics.registry
        for code, count in ((454, 2), (453, 1), (458, 2), (459, 1), (460, 1), (442, 1), (447, 2), (448, 1)):
            self.assertEqual(registry.get_sample_value("epcscf_janus_requests_refused_total", {"code": str(code)}), count, code)

    def test_handshake_needs_janus_protocol_and_an_allowed_origin(self):
        return as_deferred(self._handshakes())

    async def _handshakes(self) -> None:
        url = janus_url(self.service)
        for subprotocols, headers, status in ((["sip"], None, 406), (["janus-protocol"], {"Origin": "http://evil.example"}, 403)):
            with self.assertRaises(websockets.InvalidStatus) as caught:
                await websockets.connect(url, subprotocols=subprotocols, additional_headers=headers)
            self.assertEqual(caught.exception.response.status_code, status)
        registry = self.service.metrics.registry
        for reason in ("subprotocol", "origin"):
            self.assertEqual(registry.get_sample_value("epcscf_ws_connections_refused_total", {"reason": reason}), 1.0, reason)
        allowed = await websockets.connect(url, subprotocols=["janus-protocol"], additional_headers={"Origin": "http://127.0.0.1:8081"})
        self.assertEqual(allowed.subprotocol, "janus-protocol")
        await allowed.close()
        # a reload of [ws] (the console's reload) changes the Janus listener's Origin policy too
        ws = self.service.config.ws
        self.service.pcscf.operations.update_ws_settings(("http://evil.example",), False, ws.allow_missing_origin,
                                                          ws.max_message_size, ws.ping_interval, ws.ping_timeout)
        now_allowed = await websockets.connect(url, subprotocols=["janus-protocol"], additional_headers={"Origin": "http://evil.example"})
        await now_allowed.close()

    def test_a_connection_cannot_make_sessions_handles_or_headers_without_end(self):
        return as_deferred(self._limits())

    async def _limits(self) -> None:
        client, session, handle = await self.session()
        for _ in range(3):
            self.assertEqual((await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": session}))["janus"], "success")
        refused = await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": session})
        self.assertEqual(refused["error"]["code"], 461)
        self.assertEqual(len(self.service.pcscf.operations.flows()), 4)  # one flow per handle, no more
        for _ in range(3):
            self.assertEqual((await client.request({"janus": "create"}))["janus"], "success")
        self.assertEqual((await client.request({"janus": "create"}))["error"]["code"], 472)
        ids = {"session_id": session, "handle_id": handle}
        for bad in ({"display_name": "alice\r\nP-Asserted-Identity: <sip:boss@x>"}, {"authuser": 'al"ice'}, {"authuser": 7}):
            body = {"request": "register", "username": f"sip:alice@{DOMAIN}", "secret": USERS["alice"], **bad}
            await client.request({"janus": "message", **ids, "body": body})
            self.assertEqual((await client.event())["error_code"], 444, bad)
        for bad_uri in ("sip:bob@x>;evil", "tel:+123", "mailto:bob@x"):
            body = {"request": "register", "username": bad_uri, "secret": "x"}
            await client.request({"janus": "message", **ids, "body": body})
            self.assertEqual((await client.event())["error_code"], 446, bad_uri)
        self.assertEqual(self.service.pcscf.registrations.all(), [])
        # a display name with quotes is written as a quoted-pair (RFC 3261 §25.1): the WIC registers
        body = {"request": "register", "username": f"sip:alice@{DOMAIN}", "secret": USERS["alice"], "display_name": 'Alice "A" \\ Smith'}
        await client.request({"janus": "message", **ids, "body": body})
        self.assertEqual((await client.event())["result"]["event"], "registering")
        self.assertEqual((await client.event())["result"]["event"], "registered")


class JanusWebLoginTests(unittest.TestCase):
    """A non-SIP WIC logged in at its WWSF ([auth] mode = token): janus.js's ``token`` option
    carries the WWSF's JWT, which the UA sends as ``Authorization: Bearer`` (RFC 8898 §2.1) for
    the eP-CSCF's web-credential access to verify; no password anywhere."""

    timeout = 60

    def setUp(self) -> None:
        from tests.test_web_login import KEYS, auth_config, write_keys

        directory = os.path.abspath(self.mktemp())
        self.keys = KEYS
        self.service = start_deployment(self, extra=NONSIP + auth_config(write_keys(directory, KEYS.wwsf)))

    def test_a_token_registers_and_a_foreign_one_is_refused_before_the_core(self):
        return as_deferred(self._tokens())

    async def _tokens(self) -> None:
        from tests.test_web_login import token

        client = JanusClient(janus_url(self.service))
        await client.connect()
        self.addCleanup(lambda: as_deferred(client.socket.close()))
        session = (await client.request({"janus": "create"}))["data"]["id"]
        handles = []
        for _ in range(2):
            handles.append((await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": session}))["data"]["id"])
        register = {"request": "register", "username": f"sip:alice@{DOMAIN}"}
        # a token signed by a stranger: 401 from the eP-CSCF, nothing registered at the core
        foreign = token("alice", key=self.keys.stranger)
        await client.request({"janus": "message", "session_id": session, "handle_id": handles[0], "body": register, "token": foreign})
        self.assertEqual((await client.event())["result"]["event"], "registering")
        failed = (await client.event())["result"]
        self.assertEqual((failed["event"], failed["code"]), ("registration_failed", 401))
        self.assertEqual(self.service.pcscf.registrations.all(), [])
        await client.request({"janus": "message", "session_id": session, "handle_id": handles[1], "body": register, "token": "not a jwt\r\nX: y"})
        self.assertEqual((await client.event())["error_code"], 444)
        # the WWSF's own token: registered, with no digest exchange
        await client.request({"janus": "message", "session_id": session, "handle_id": handles[1], "body": register, "token": token("alice")})
        self.assertEqual((await client.event())["result"]["event"], "registering")
        self.assertEqual((await client.event())["result"]["event"], "registered")
        [binding] = self.service.pcscf.registrations.all()
        self.assertEqual(binding.aor, f"sip:alice@{DOMAIN}")
        registry = self.service.metrics.registry
        self.assertEqual(registry.get_sample_value("epcscf_registration_results_total", {"result": "challenged"}), 0.0)
        self.assertEqual(registry.get_sample_value("epcscf_token_refusals_total", {"reason": "signature"}), 1.0)
