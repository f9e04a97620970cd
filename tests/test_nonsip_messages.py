"""The Janus SIP plugin's requests beyond calls (janus_sip.c): ``message`` (RFC 3428 MESSAGE
out of a dialog and in the call's) and ``info`` (RFC 6086 INFO in the call's), both ways, and
``update`` (a re-INVITE with the WIC's new offer), with sipp as the IMS party behind the
embedded core; the plugin's error codes for what cannot be sent, with nothing reaching the
core; and ``[auth] handshake = required`` on the Janus listener."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import websockets
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from epcscf.sdp import SessionDescription
from tests.support.deployment import DOMAIN, USERS, start_deployment
from tests.support.processes import wait_for
from tests.support.sipp import (
    SCENARIOS, SippProcess, free_port, one_per_transaction, port_bound, received_requests, require_sipp,
    sipp_messages, spawn_sipp,
)
from tests.support.wic import as_deferred
from tests.test_nonsip_janus import CHROME_ANSWER, CHROME_OFFER, NONSIP, JanusClient, body_of, janus_url


def header(message: str, name: str) -> str:
    for line in message.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return ""


def updated_jsep(event: dict[str, Any]) -> str:
    """The SDP of the jsep that came with an event from ``JanusHandleTestCase.next_event``."""
    return event["_jsep"]["sdp"]


class JanusHandleTestCase(unittest.TestCase):
    """epcscf with the embedded core and a Janus listener; a raw Janus client's SIP handle; sipp."""

    timeout = 60

    def setUp(self) -> None:
        self.sipp = require_sipp(self)
        self.service = start_deployment(self, extra=NONSIP)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def spawn_sipp(self, name: str, args: list[str]) -> tuple[SippProcess, str]:
        return spawn_sipp(self, self.sipp, [*args, "-m", "1", "-timeout", "30s", "-timeout_error"], self.directory, name)

    async def sipp_done(self, process: SippProcess) -> None:
        self.assertEqual(await process.ended.asFuture(asyncio.get_event_loop()), 0, process.output[-2000:])

    async def handle(self) -> tuple[JanusClient, dict[str, int]]:
        client = JanusClient(janus_url(self.service))
        await client.connect()
        self.addCleanup(lambda: as_deferred(client.socket.close()))
        session = (await client.request({"janus": "create"}))["data"]["id"]
        handle = (await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": session}))["data"]["id"]
        return client, {"session_id": session, "handle_id": handle}

    async def registered_handle(self) -> tuple[JanusClient, dict[str, int]]:
        """A handle registered as alice (digest answered by the eP-CSCF's UA)."""
        client, ids = await self.handle()
        await self.register(client, ids)
        return client, ids

    async def register(self, client: JanusClient, ids: dict[str, int]) -> None:
        await self.send(client, ids, {"request": "register", "username": f"sip:alice@{DOMAIN}", "secret": USERS["alice"]})
        await self.next_event(client, "registered")

    async def send(self, client: JanusClient, ids: dict[str, int], body: dict[str, Any], jsep: dict[str, str] | None = None) -> None:
        frame: dict[str, Any] = {"janus": "message", **ids, "body": body}
        if jsep is not None:
            frame["jsep"] = jsep
        self.assertEqual((await client.request(frame))["janus"], "ack")

    async def next_event(self, client: JanusClient, name: str) -> dict[str, Any]:
        """The next plugin event named ``name`` (its data, and its jsep as ``_jsep``), skipping the others."""
        while True:
            reply = await client.receive(timeout=15)
            if reply["janus"] != "event":
                continue
            data = {**reply["plugindata"]["data"], "_jsep": reply.get("jsep")}
            if data.get("result", {}).get("event") == name:
                return data


class JanusMessageAndInfoTests(JanusHandleTestCase):
    """MESSAGE, INFO and update with sipp on the IMS side; refusals that reach nothing."""

    def test_message_and_info_both_ways_in_and_out_of_a_call(self):
        return as_deferred(self._both_ways())

    async def _both_ways(self) -> None:
        client, ids = await self.handle()
        # Not registered yet: an out-of-dialog MESSAGE has nowhere to come from (447).
        await self.send(client, ids, {"request": "message", "uri": f"sip:bob@{DOMAIN}", "content": "hi"})
        self.assertEqual((await client.event())["error_code"], 447)
        await self.register(client, ids)

        # IMS → WIC, out of dialog, through the core: a `message` event, then sipp's 200.
        core = self.service.core.addresses[0][1]
        uac, uac_trace = self.spawn_sipp("uac", ["-sf", os.path.join(SCENARIOS, "nonsip_uac_message.xml"), "-s", "alice",
                                                 "-set", "domain", DOMAIN, "-i", "127.0.0.1", "-p", str(free_port()),
                                                 f"{core.host}:{core.port}"])
        incoming = await self.next_event(client, "message")
        self.assertIsNone(incoming.pop("_jsep"))
        self.assertEqual(incoming["result"], {"event": "message", "sender": f"sip:ims-caller@{DOMAIN}", "displayname": "IMS Caller",
                                              "content_type": "text/plain", "content": "hello alice\r\n"})  # sipp ends its body with CRLF
        await self.sipp_done(uac)
        [sent] = [m for m in one_per_transaction(sipp_messages(uac_trace, "sent")) if m.startswith("MESSAGE ")]
        self.assertEqual(incoming["call_id"], header(sent, "Call-ID"))

        # WIC → IMS, out of dialog, with the Call-ID the WIC chose: messagesent, then the
        # delivery report carrying sipp's status.
        port = free_port()
        uas, uas_trace = self.spawn_sipp("uas-message", ["-sf", os.path.join(SCENARIOS, "uas_message.xml"), "-i", "127.0.0.1", "-p", str(port)])
        await wait_for(lambda: port_bound(port, "UDP") or uas.ended.called, timeout=10)
        await self.send(client, ids, {"request": "message", "uri": f"sip:echo@127.0.0.1:{port}", "content": "héllo ims",
                                      "content_type": "text/plain;charset=UTF-8", "call_id": "wic-chosen-1@alice"})
        sent_event = await self.next_event(client, "messagesent")
        self.assertEqual((sent_event["result"]["call_id"], sent_event["call_id"]), ("wic-chosen-1@alice", "wic-chosen-1@alice"))
        delivery = await self.next_event(client, "messagedelivery")
        self.assertEqual((delivery["result"]["code"], delivery["call_id"]), (200, "wic-chosen-1@alice"))
        await self.sipp_done(uas)
        [message] = received_requests(uas_trace, "MESSAGE")
        self.assertEqual(header(message, "Call-ID"), "wic-chosen-1@alice")
        self.assertEqual(header(message, "Content-Type"), "text/plain;charset=UTF-8")
        self.assertEqual(body_of(message).strip(), "héllo ims")
        self.assertIn(f"sip:alice@{DOMAIN}", header(message, "P-Asserted-Identity"))  # the core asserted who sent it
        # A MESSAGE nobody takes: the delivery report says so.
        await self.send(client, ids, {"request": "message", "uri": f"sip:nobody@{DOMAIN}", "content": "anyone?"})
        self.assertGreaterEqual((await self.next_event(client, "messagedelivery"))["result"]["code"], 400)

        # In a call: MESSAGE and INFO from the WIC along the dialog, then the far end's own.
        port = free_port()
        call, call_trace = self.spawn_sipp("uas-call", ["-sf", os.path.join(SCENARIOS, "nonsip_uas_messaging.xml"), "-i", "127.0.0.1", "-p", str(port)])
        await wait_for(lambda: port_bound(port, "UDP") or call.ended.called, timeout=10)
        with open(CHROME_OFFER) as handle:
            offer = handle.read()
        await self.send(client, ids, {"request": "call", "uri": f"sip:echo@127.0.0.1:{port}"}, {"type": "offer", "sdp": offer})
        accepted = await self.next_event(client, "accepted")
        # an attended transfer must name a call of this session (janus_sip.c's 454): none here
        await self.send(client, ids, {"request": "transfer", "uri": f"sip:carol@{DOMAIN}", "replace": "not-a-call"})
        self.assertEqual((await client.event())["error_code"], 454)
        await self.send(client, ids, {"request": "message", "content": "in the call"})
        self.assertEqual((await self.next_event(client, "messagesent"))["call_id"], accepted["call_id"])
        self.assertEqual((await self.next_event(client, "messagedelivery"))["result"]["code"], 200)
        # The plugin's update: the WIC's new offer (an ICE restart) as a re-INVITE; our answer
        # comes back in `accepted`, the core side sees a plain RTP/AVP re-offer.
        reoffer = offer.replace(" 2 IN IP4", " 3 IN IP4").replace("a=ice-ufrag:Ep9W", "a=ice-ufrag:Rs7X").replace(
            "a=ice-pwd:Lk3ll9AbOLM1XbHSzn0BldiN", "a=ice-pwd:Qw8mm2CdPKN4YcJTao1CmejO")
        await self.send(client, ids, {"request": "update"}, {"type": "answer", "sdp": reoffer})
        self.assertEqual((await client.event())["error_code"], 448)  # an update carries an offer
        await self.send(client, ids, {"request": "update"}, {"type": "offer", "sdp": reoffer})
        await self.next_event(client, "updating")
        updated = await self.next_event(client, "accepted")
        self.assertEqual(updated["call_id"], accepted["call_id"])
        answer = SessionDescription.parse(updated_jsep(updated))
        self.assertEqual(answer.media[0].proto, "UDP/TLS/RTP/SAVPF")
        # RFC 8839 §4.4.1.1.1: an ICE restart is answered with new credentials of ours too
        first_answer = SessionDescription.parse(updated_jsep(accepted))
        self.assertNotEqual(answer.media[0].attribute_value("ice-ufrag"), first_answer.media[0].attribute_value("ice-ufrag"))
        await self.send(client, ids, {"request": "info", "type": "application/x-epcscf-test", "content": "ping"})
        await self.next_event(client, "infosent")
        info = await self.next_event(client, "info")
        self.assertEqual(info["result"], {"event": "info", "sender": f"sip:echo@127.0.0.1:{port}", "displayname": "IMS Echo",
                                          "type": "application/dtmf-relay", "content": "Signal=7\r\nDuration=160\r\n"})
        self.assertEqual(info["call_id"], accepted["call_id"])
        text = await self.next_event(client, "message")
        self.assertEqual((text["result"]["content"], text["result"]["content_type"]), ("hello from the IMS side\r\n", "text/plain;charset=UTF-8"))
        self.assertEqual((await self.next_event(client, "hangup"))["result"]["code"], 200)  # sipp's BYE
        await self.sipp_done(call)
        received = [m for m in one_per_transaction(sipp_messages(call_trace, "received")) if not m.startswith("SIP/2.0")]
        self.assertEqual([m.split(" ", 1)[0] for m in received], ["INVITE", "ACK", "MESSAGE", "INVITE", "ACK", "INFO"])
        in_call_message, reinvite, in_call_info = received[2], received[3], received[5]
        self.assertEqual(header(reinvite, "Call-ID"), accepted["call_id"])
        reoffer_at_core = SessionDescription.parse(body_of(reinvite).replace("\n", "\r\n"))
        self.assertEqual([m.proto for m in reoffer_at_core.media], ["RTP/AVP"])
        self.assertNotIn("ice-ufrag", body_of(reinvite))
        for request in (in_call_message, in_call_info):
            self.assertEqual(header(request, "Call-ID"), accepted["call_id"])  # in the dialog (RFC 3261 §12.2.1.1)
            self.assertIn(";tag=", header(request, "To"))
        self.assertEqual(body_of(in_call_message).strip(), "in the call")
        self.assertEqual(header(in_call_info, "Content-Type"), "application/x-epcscf-test")
        # the far end's requests were answered 200 by the eP-CSCF's UA
        answers = [m.split("\n", 1)[0].strip() + " " + header(m, "CSeq") for m in sipp_messages(call_trace, "received") if m.startswith("SIP/2.0")]
        self.assertIn("SIP/2.0 200 OK 1 INFO", answers)
        self.assertIn("SIP/2.0 200 OK 2 MESSAGE", answers)

    def test_what_cannot_be_sent_gets_the_plugins_errors_and_nothing_reaches_the_core(self):
        return as_deferred(self._refused())

    async def _refused(self) -> None:
        client, ids = await self.registered_handle()
        # what the handle's UA has sent into the P-CSCF so far (its REGISTERs)
        [flow] = self.service.pcscf.flows
        sent_before = flow.connection.messages_received
        uri = f"sip:bob@{DOMAIN}"
        for body, code in (
            ({"request": "info", "type": "text/plain", "content": "x"}, 447),  # no call (RFC 6086 §4.2.1)
            ({"request": "message", "content": "x"}, 447),  # in-dialog without a call
            ({"request": "message", "uri": uri}, 443),
            ({"request": "info", "content": "x"}, 443),
            ({"request": "message", "uri": uri, "content": 5}, 444),
            ({"request": "message", "uri": uri, "content": "x", "content_type": "text/plain\r\nP-Asserted-Identity: <sip:boss@x>"}, 444),
            ({"request": "message", "uri": uri, "content": "x", "call_id": "a b\r\nVia: x"}, 444),
            ({"request": "message", "uri": uri, "content": "x", "headers": {"X-Foo": "bar"}}, 444),
            ({"request": "message", "uri": uri, "content": "x" * 16385}, 444),
            ({"request": "message", "uri": "tel:+1234", "content": "x"}, 446),
            ({"request": "update"}, 447),  # no call to update
            ({"request": "recording", "action": "start"}, 442),
            # custom headers: a short allow-list, on call and accept only (epcscf.pcscf.nonsip_headers)
            ({"request": "call", "uri": uri, "headers": {"P-Asserted-Identity": "<sip:boss@x>"}}, 444),
            ({"request": "call", "uri": uri, "headers": {"X-Billing": "free"}}, 444),
            ({"request": "call", "uri": uri, "headers": {"Subject": "a\r\nVia: x"}}, 444),
            ({"request": "register", "username": f"sip:alice@{DOMAIN}", "secret": "x", "headers": {"Subject": "x"}}, 444),
            ({"request": "hangup", "headers": {"Subject": "bye"}}, 444),
            ({"request": "transfer"}, 443),  # RFC 3515: a REFER needs its target
            ({"request": "transfer", "uri": "tel:+123"}, 446),
            ({"request": "transfer", "uri": f"{uri}?Replaces=forged"}, 446),  # the UA writes Replaces itself
            ({"request": "transfer", "uri": uri}, 447),  # no call to transfer
        ):
            await self.send(client, ids, body)
            self.assertEqual((await client.event())["error_code"], code, body)
        # the refused requests never left the UA: the P-CSCF got nothing more from the flow
        self.assertEqual(flow.connection.messages_received, sent_before)
        self.assertEqual((await client.request({"janus": "keepalive", "session_id": ids["session_id"]}))["janus"], "ack")
        registry = self.service.metrics.registry
        for code, count in ((447, 4), (443, 3), (444, 10), (446, 3), (442, 1)):
            self.assertEqual(registry.get_sample_value("epcscf_janus_requests_refused_total", {"code": str(code)}), count, code)


class _Datagrams(DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, address: Any) -> None:  # noqa: N802
        self.received.append(data)


class JanusLateTrickleTests(JanusHandleTestCase):
    """A candidate the browser trickles after its offer went out (janus.js sends each as it is
    gathered; the UA waits for them at most 2 s) reaches the eP-CSCF's ICE agent in an RFC 8840
    INFO: the agent checks it (a STUN Binding request arrives there), and the INFO stays at the
    P-CSCF (the core never sees it, RFC 8840 §5: the trickle-ice package is between the ICE peers)."""

    def test_a_late_candidate_is_checked_by_our_ice_agent_and_never_reaches_the_core(self):
        return as_deferred(self._late())

    async def _late(self) -> None:
        client, ids = await self.registered_handle()
        port = free_port()
        uas, trace = self.spawn_sipp("uas", ["-sf", os.path.join(SCENARIOS, "calls_uas_answer.xml"), "-i", "127.0.0.1", "-p", str(port)])
        await wait_for(lambda: port_bound(port, "UDP") or uas.ended.called, timeout=10)
        browser = _Datagrams()
        socket = reactor.listenUDP(0, browser, interface="127.0.0.1")
        self.addCleanup(socket.stopListening)
        with open(CHROME_OFFER) as handle:
            offer = handle.read()  # gathered already: it goes out at once, later candidates are late
        await self.send(client, ids, {"request": "call", "uri": f"sip:echo@127.0.0.1:{port}"}, {"type": "offer", "sdp": offer})
        accepted = await self.next_event(client, "accepted")
        candidate = {"candidate": f"candidate:2 1 udp 2122260223 127.0.0.1 {socket.getHost().port} typ host", "sdpMid": "0", "sdpMLineIndex": 0}
        self.assertEqual((await client.request({"janus": "trickle", **ids, "candidate": candidate}))["janus"], "ack")
        stun = lambda: [d for d in browser.received if d[:2] == b"\x00\x01" and d[4:8] == b"\x21\x12\xa4\x42"]
        await wait_for(stun, timeout=10, what="our ICE agent's STUN Binding request to the late candidate")
        self.assertIn(b"Ep9W:", stun()[0])  # RFC 8445 §7.2.2: the WIC's ufrag first
        [record] = self.service.pcscf.operations.calls()
        timeline = " ".join(str(entry) for entry in self.service.pcscf.operations.call_timeline(record["call_id"]))
        self.assertIn("trickled candidates from the WIC", timeline)
        await self.send(client, ids, {"request": "hangup"})
        self.assertEqual((await self.next_event(client, "hangup"))["call_id"], accepted["call_id"])
        await self.sipp_done(uas)
        requests = [m.split(" ", 1)[0] for m in one_per_transaction(sipp_messages(trace, "received")) if not m.startswith("SIP/2.0")]
        self.assertEqual(requests, ["INVITE", "ACK", "BYE"])


class JanusSubscribeTests(JanusHandleTestCase):
    """The plugin's ``subscribe``/``unsubscribe`` (RFC 6665) with sipp as the IMS notifier
    (RFC 3842 message-summary): SUBSCRIBE out of a dialog through the P-CSCF and the core, its
    NOTIFYs back over the flow as ``notify`` events, the un-SUBSCRIBE in the dialog."""

    def test_a_subscription_its_notifies_and_its_end(self):
        return as_deferred(self._subscribe())

    async def _subscribe(self) -> None:
        client, ids = await self.handle()
        await self.send(client, ids, {"request": "subscribe", "event": "message-summary"})
        self.assertEqual((await client.event())["error_code"], 447)  # not registered yet
        await self.register(client, ids)
        port = free_port()
        uas, trace = self.spawn_sipp("notifier", ["-sf", os.path.join(SCENARIOS, "nonsip_uas_subscribe.xml"), "-i", "127.0.0.1", "-p", str(port)])
        await wait_for(lambda: port_bound(port, "UDP") or uas.ended.called, timeout=10)
        for bad, code in (({"event": "message-summary\r\nX: y"}, 444), ({"event": "presence", "accept": "a\r\nb"}, 444),
                          ({"event": "presence", "subscribe_ttl": 5}, 444), ({"event": "presence", "to": "tel:+1"}, 446),
                          ({"event": "presence", "content": "x"}, 444)):
            await self.send(client, ids, {"request": "subscribe", **bad})
            self.assertEqual((await client.event())["error_code"], code, bad)
        await self.send(client, ids, {"request": "unsubscribe", "event": "presence"})
        self.assertEqual((await client.event())["error_code"], 447)  # nothing to end
        await self.send(client, ids, {"request": "subscribe", "event": "message-summary", "to": f"sip:mwi@127.0.0.1:{port}",
                                      "accept": "application/simple-message-summary", "subscribe_ttl": 600})
        subscribing = await self.next_event(client, "subscribing")
        succeeded = await self.next_event(client, "subscribe_succeeded")
        self.assertEqual((succeeded["result"]["code"], succeeded["result"]["expires"]), (200, 600))
        notify = await self.next_event(client, "notify")
        self.assertEqual({k: notify["result"][k] for k in ("notify", "substate", "content-type")},
                         {"notify": "message-summary", "substate": "active", "content-type": "application/simple-message-summary"})
        self.assertIn("Messages-Waiting: yes", notify["result"]["content"])
        self.assertEqual(notify["call_id"], subscribing["call_id"])
        await self.send(client, ids, {"request": "unsubscribe", "event": "message-summary"})
        await self.next_event(client, "unsubscribing")
        last = await self.next_event(client, "notify")
        self.assertEqual(last["result"]["substate"], "terminated")
        await self.sipp_done(uas)
        first, again = received_requests(trace, "SUBSCRIBE")
        self.assertEqual((header(first, "Event"), header(first, "Accept"), header(first, "Expires")),
                         ("message-summary", "application/simple-message-summary", "600"))
        self.assertIn(f"sip:alice@{DOMAIN}", header(first, "P-Asserted-Identity"))  # asserted by the core
        self.assertEqual((header(again, "Call-ID"), header(again, "Expires")), (subscribing["call_id"], "0"))
        self.assertIn(";tag=", header(again, "To"))  # RFC 6665 §4.1.2.3: in the subscription's dialog
        answers = [m.split("\n", 1)[0].strip() for m in one_per_transaction(sipp_messages(trace, "received")) if m.startswith("SIP/2.0")]
        self.assertEqual(answers, ["SIP/2.0 200 OK", "SIP/2.0 200 OK"])  # both NOTIFYs, by the eP-CSCF's UA
        # nothing left to refresh or to end
        await self.send(client, ids, {"request": "unsubscribe", "event": "message-summary"})
        self.assertEqual((await client.event())["error_code"], 447)


class JanusTransfereeTests(JanusHandleTestCase):
    """The WIC as transferee (RFC 3515): sipp calls it and REFERs it to a second sipp; the WIC
    hears ``transfer``, calls the target from another handle of its session with the
    ``refer_id`` (as the plugin's helpers do), and the transferor gets the NOTIFYs."""

    def test_a_refer_is_told_followed_from_another_handle_and_reported(self):
        return as_deferred(self._transferee())

    async def _transferee(self) -> None:
        client, alice = await self.registered_handle()
        bob = {"session_id": alice["session_id"],
               "handle_id": (await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": alice["session_id"]}))["data"]["id"]}
        await self.send(client, bob, {"request": "register", "username": f"sip:bob@{DOMAIN}", "secret": USERS["bob"]})
        await self.next_event(client, "registered")
        port = free_port()
        target, target_trace = self.spawn_sipp("target", ["-sf", os.path.join(SCENARIOS, "calls_uas_answer.xml"), "-i", "127.0.0.1", "-p", str(port)])
        await wait_for(lambda: port_bound(port, "UDP") or target.ended.called, timeout=10)
        core = self.service.core.addresses[0][1]
        refer_to = f"sip:carol@127.0.0.1:{port}"
        uac, uac_trace = self.spawn_sipp("transferor", ["-sf", os.path.join(SCENARIOS, "nonsip_uac_refer.xml"), "-s", "alice",
                                                        "-set", "domain", DOMAIN, "-set", "target", refer_to,
                                                        "-i", "127.0.0.1", "-p", str(free_port()), f"{core.host}:{core.port}"])
        await self.next_event(client, "incomingcall")
        with open(CHROME_ANSWER) as handle:
            await self.send(client, alice, {"request": "accept"}, {"type": "answer", "sdp": handle.read()})
        transfer = (await self.next_event(client, "transfer"))["result"]
        self.assertEqual((transfer["refer_to"], transfer["referred_by"]), (refer_to, f"sip:ims-caller@{DOMAIN}"))
        with open(CHROME_OFFER) as handle:
            offer = {"type": "offer", "sdp": handle.read()}
        await self.send(client, bob, {"request": "call", "uri": refer_to, "refer_id": transfer["refer_id"] + 1}, offer)
        self.assertEqual((await client.event())["error_code"], 444)  # no such transfer
        await self.send(client, bob, {"request": "call", "uri": refer_to, "refer_id": transfer["refer_id"]}, offer)
        await self.next_event(client, "accepted")
        self.assertEqual((await self.next_event(client, "hangup"))["result"]["code"], 200)  # the transferor's BYE
        await self.sipp_done(uac)
        await self.send(client, bob, {"request": "hangup"})
        await self.sipp_done(target)
        received = one_per_transaction(sipp_messages(uac_trace, "received"))
        self.assertIn("SIP/2.0 202", "\n".join(m.split("\n", 1)[0] for m in received))
        notifies = [m for m in received if m.startswith("NOTIFY ")]
        self.assertEqual([(header(m, "Event"), header(m, "Subscription-State").split(";")[0], body_of(m).strip()) for m in notifies],
                         [("refer", "active", "SIP/2.0 100 Trying"), ("refer", "terminated", "SIP/2.0 200 OK")])
        [invite] = received_requests(target_trace, "INVITE")
        self.assertEqual(header(invite, "Referred-By"), f"<sip:ims-caller@{DOMAIN}>")  # RFC 3892


class JanusHangupWhileAcceptWaitsTests(JanusHandleTestCase):
    """Found on the way: a ``hangup`` while an ``accept`` still waited for the browser's
    candidates used to report 487 to the WIC and leave the caller's INVITE unanswered; the UA
    now answers it (480), as for a hangup while ringing."""

    def test_hangup_before_the_answer_is_gathered_answers_the_callers_invite(self):
        return as_deferred(self._hangup())

    async def _hangup(self) -> None:
        client, ids = await self.registered_handle()
        core = self.service.core.addresses[0][1]
        uac, _ = self.spawn_sipp("uac", ["-sf", os.path.join(SCENARIOS, "calls_uac_unanswered.xml"), "-s", "alice",
                                         "-set", "domain", DOMAIN, "-i", "127.0.0.1", "-p", str(free_port()), f"{core.host}:{core.port}"])
        await self.next_event(client, "incomingcall")
        with open(CHROME_ANSWER) as handle:
            trickling = "".join(line for line in handle if not line.startswith("a=candidate"))  # candidates to come
        await self.send(client, ids, {"request": "accept"}, {"type": "answer", "sdp": trickling})
        await self.send(client, ids, {"request": "hangup"})
        self.assertEqual((await self.next_event(client, "hangup"))["result"]["code"], 480)
        await self.sipp_done(uac)  # sipp got its 480
        await wait_for(lambda: not any(record["live"] for record in self.service.pcscf.operations.calls()), timeout=10)


class JanusHandshakeTokenTests(unittest.TestCase):
    """``[auth] handshake = required`` covers the Janus listener too, the other door of a WIC:
    janus.js opens its WebSocket with the WWSF's token in the URL (``new Janus({ server:
    'wss://…/?access_token=…' })``, RFC 6750 §2.3); without one, or with a bad one, HTTP 401
    before any Janus request; with one, a handle registers on it with no password (the flow
    carries the handshake's grant, as a SIP WIC's WebSocket does)."""

    timeout = 30

    def setUp(self) -> None:
        from tests.test_web_login import KEYS, auth_config, write_keys

        directory = os.path.abspath(self.mktemp())
        self.keys = KEYS
        config = auth_config(write_keys(directory, KEYS.wwsf), auth="handshake = required\n")
        self.service = start_deployment(self, extra=NONSIP + config)

    def test_a_janus_socket_needs_a_good_token_and_registers_on_it(self):
        return as_deferred(self._handshakes())

    async def _handshakes(self) -> None:
        from tests.test_web_login import token

        url = janus_url(self.service)
        for query in ("", "?access_token=forged.token.value", f"?access_token={token('alice', key=self.keys.stranger)}"):
            with self.assertRaises(websockets.InvalidStatus) as caught:
                await websockets.connect(f"{url}/{query}", subprotocols=["janus-protocol"])
            self.assertEqual(caught.exception.response.status_code, 401, query)
        registry = self.service.metrics.registry
        self.assertEqual(registry.get_sample_value("epcscf_ws_connections_refused_total", {"reason": "token"}), 3.0)
        self.assertEqual(registry.get_sample_value("epcscf_token_refusals_total", {"reason": "missing"}), 1.0)
        self.assertEqual(self.service.pcscf.janus.sessions, {})
        client = JanusClient(f"{url}/?access_token={token('alice')}")
        await client.connect()
        self.addCleanup(lambda: as_deferred(client.socket.close()))
        session = (await client.request({"janus": "create"}))["data"]["id"]
        handle = (await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": session}))["data"]["id"]
        # no token in the request and no password: the handshake's grant admits the REGISTER
        body = {"request": "register", "username": f"sip:alice@{DOMAIN}", "secret": ""}
        await client.request({"janus": "message", "session_id": session, "handle_id": handle, "body": body})
        self.assertEqual((await client.event())["result"]["event"], "registering")
        self.assertEqual((await client.event())["result"]["event"], "registered")
        [binding] = self.service.pcscf.registrations.all()
        self.assertEqual(binding.aor, f"sip:alice@{DOMAIN}")
        self.assertEqual(registry.get_sample_value("epcscf_registration_results_total", {"result": "challenged"}), 0.0)
        # the grant names alice only: bob's identity on the same socket is refused (403)
        bob = (await client.request({"janus": "attach", "plugin": "janus.plugin.sip", "session_id": session}))["data"]["id"]
        body = {"request": "register", "username": f"sip:bob@{DOMAIN}", "secret": ""}
        await client.request({"janus": "message", "session_id": session, "handle_id": bob, "body": body})
        self.assertEqual((await client.event())["result"]["event"], "registering")
        failed = (await client.event())["result"]
        self.assertEqual((failed["event"], failed["code"]), ("registration_failed", 403))


class JanusPerAddressLimitTests(unittest.TestCase):
    """``[overload] max_connections_per_ip`` holds on the Janus listener as on the SIP one: each
    Janus connection may make 16 handles, each a SIP UA with a flow, so one address may not hold
    every slot (HTTP 503 before the upgrade); a closed connection frees its slot."""

    timeout = 30

    def setUp(self) -> None:
        self.service = start_deployment(self, extra=NONSIP + "[overload]\nmax_connections_per_ip = 2\n")

    def test_a_third_janus_socket_from_one_address_is_refused_until_one_closes(self):
        return as_deferred(self._limit())

    async def _limit(self) -> None:
        url = janus_url(self.service)
        first, second = [await websockets.connect(url, subprotocols=["janus-protocol"]) for _ in range(2)]
        with self.assertRaises(websockets.InvalidStatus) as caught:
            await websockets.connect(url, subprotocols=["janus-protocol"])
        self.assertEqual(caught.exception.response.status_code, 503)
        registry = self.service.metrics.registry
        self.assertEqual(registry.get_sample_value("epcscf_ws_connections_refused_total", {"reason": "per_ip_limit"}), 1.0)
        await first.close()
        await wait_for(lambda: list(self.service.pcscf.janus_factory.peers.hosts().values()) == [1], timeout=5)
        third = await websockets.connect(url, subprotocols=["janus-protocol"])
        for socket in (second, third):
            await socket.close()
