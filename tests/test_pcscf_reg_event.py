"""The eP-CSCF's reg-event duties on real sockets (TS 24.229 §5.2.3, §5.2.5; RFC 3680, RFC 6665).

Against the embedded core (its ``RegEventNotifier`` is the other side): the subscription is
created after the WIC registers, refreshed, and ended when the WIC de-registers, as the core
sees it; the core ending a registration closes the WIC's WebSocket; a forged NOTIFY is
refused.  Against sipp playing a core (registrar + notifier): the SUBSCRIBE as a core receives
it, a ``rejected`` contact ends the binding.  The WIC's own reg subscription is routed to the
core and its NOTIFYs reach the WIC over its flow.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from twisted.trial import unittest

from epcscf.sip.message import Request, Response, make_response
from epcscf.pcscf.reg_event import SubscriptionState
from tests.support.deployment import DOMAIN, USERS, start_deployment, ws_url
from tests.support.processes import wait_for
from tests.support.sipp import (
    SCENARIOS, free_port, one_per_transaction, port_bound, received_requests, require_sipp, sipp_messages,
    spawn_sipp,
)
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import WsSipClient, as_deferred
from tests.test_ops_metrics import METRICS, samples


def asyncio_test(method):
    def wrapper(self):
        return as_deferred(method(self))

    wrapper.__name__ = method.__name__
    return wrapper


def reg_event_counts(figures: dict) -> dict[str, float]:
    return {dict(labels)["event"]: value for (name, labels), value in figures.items() if name == "epcscf_reg_event_total"}


async def ended(process) -> int | None:
    return await process.ended.asFuture(asyncio.get_running_loop())


class WicsMixin:
    service: object

    async def registered(self, user: str = "alice") -> WsSipClient:
        client = WsSipClient(ws_url(self.service), user, USERS[user], DOMAIN)
        await client.connect()
        self.clients.append(client)
        response = await client.register()
        self.assertEqual(response.status, 200, response.serialize())
        return client

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()

    def forged_notify(self, to_tag: str, call_id: str, port: int) -> Request:
        core_side = self.service.pcscf.listener("UDP").address
        notify = Request("NOTIFY", f"sip:{core_side.host}:{core_side.port};transport=udp")
        notify.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)}")
        notify.headers.add("Max-Forwards", "70")
        notify.headers.add("From", f"<sip:alice@{DOMAIN}>;tag=forger")
        notify.headers.add("To", f"<sip:127.0.0.1>;tag={to_tag}")
        notify.headers.add("Call-ID", call_id)
        notify.headers.add("CSeq", "7 NOTIFY")
        notify.headers.add("Event", "reg")
        notify.headers.add("Subscription-State", "terminated;reason=rejected")
        return notify


class RegEventWithTheEmbeddedCoreTests(WicsMixin, unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.service = start_deployment(
            self, extra="[reg_event]\nsubscribe = yes\nexpires = 2\nclose_grace = 0.2\n" + METRICS
        )
        self.clients: list[WsSipClient] = []

    def tearDown(self):
        return as_deferred(self.close_clients())

    def core_subscriptions(self) -> list:
        return list(self.service.core.notifier.subscriptions.values())

    async def subscribed(self) -> tuple[object, object]:
        node = self.service.pcscf
        await wait_for(lambda: len(self.core_subscriptions()) == 1, what="the core's subscription")
        await wait_for(lambda: [s.state for s in node.reg_events.subscriptions()] == [SubscriptionState.ACTIVE])
        [ours] = node.reg_events.subscriptions()
        [theirs] = self.core_subscriptions()
        return ours, theirs

    @asyncio_test
    async def test_subscription_created_refreshed_and_ended_as_the_core_sees_it(self) -> None:
        client = await self.registered()
        ours, theirs = await self.subscribed()
        self.assertEqual(theirs.aor, f"sip:alice@{DOMAIN}")
        self.assertEqual(theirs.call_id, ours.call_id)
        core_side = self.service.pcscf.listener("UDP").address
        self.assertEqual(theirs.remote_target, f"sip:{core_side.host}:{core_side.port};transport=udp")
        await wait_for(lambda: ours.version is not None, what="the first NOTIFY")  # RFC 6665 §4.2.1.2
        # Granted 2 s: refreshed at half (TS 24.229 §5.2.3), the same dialog at the core.
        first_expiry = theirs.expires_at
        await wait_for(lambda: theirs.expires_at > first_expiry + 0.5, timeout=5.0, what="a refresh")
        self.assertEqual(self.core_subscriptions(), [theirs])
        # The WIC de-registers: the core ends its subscription, and ours is gone.
        response = await client.transact(client.register_request(expires=0))
        self.assertEqual(response.status, 200)
        await wait_for(lambda: self.core_subscriptions() == [] and self.service.pcscf.reg_events.subscriptions() == [])
        self.assertIsNone(client.socket.close_code)  # its own de-registration: the flow stays
        counts = reg_event_counts(await samples(self.service))
        self.assertEqual(counts["subscribed"], 1.0)
        self.assertGreaterEqual(counts["refreshed"], 1.0)
        self.assertGreaterEqual(counts["notify"], 2.0)

    @asyncio_test
    async def test_the_core_ending_the_registration_closes_the_flow(self) -> None:
        client = await self.registered()
        await self.subscribed()
        location = self.service.core.location
        [aor] = list(location.aors())
        for binding in location.bindings(aor):
            location.remove(binding)  # the network de-registers (TS 24.229 §5.4.1.5)
        await wait_for(lambda: self.service.pcscf.registrations.all() == [], what="the binding removed")
        await wait_for(lambda: client.socket.close_code is not None, what="the WebSocket closed")
        self.assertEqual((client.socket.close_code, client.socket.close_reason), (1000, "de-registered by the network"))
        figures = await samples(self.service)
        ended = {dict(labels)["reason"]: v for (name, labels), v in figures.items() if name == "epcscf_registrations_ended_total"}
        self.assertEqual(ended.get("network_unregistered"), 1.0)

    @asyncio_test
    async def test_a_wic_subscribed_to_its_reg_event_hears_of_the_end_before_its_flow_closes(self) -> None:
        client = await self.registered()
        await self.subscribed()
        await self.own_subscription(client)
        location = self.service.core.location
        [aor] = list(location.aors())
        for binding in location.bindings(aor):
            location.remove(binding)
        notify = await client.next_message()
        self.assertEqual((notify.method, notify.headers.get("Subscription-State")), ("NOTIFY", "terminated;reason=noresource"))
        self.assertIn(b'state="terminated"', notify.body)
        await client.answer(notify)
        await wait_for(lambda: client.socket.close_code is not None, what="the WebSocket closed")
        self.assertEqual(client.socket.close_reason, "de-registered by the network")
        self.assertTrue(client.received.empty(), "the core ended the WIC's subscription: no NOTIFY of ours")

    async def own_subscription(self, client: WsSipClient) -> tuple[Response, Request]:
        """The WIC subscribes to its own reg event (TS 24.229 §5.1.1.3): the 200 and first NOTIFY."""
        subscribe = client.request("SUBSCRIBE", client.aor)
        subscribe.headers.add("Contact", f"<sip:alice@{client.host};transport=ws;ob>")
        subscribe.headers.add("Event", "reg")
        subscribe.headers.add("Expires", "600")
        await client.send(subscribe)
        notify = None
        ok = None
        while notify is None or ok is None:
            message = await client.next_message()
            if isinstance(message, Response) and message.status >= 200:
                ok = message
            elif isinstance(message, Request) and message.method == "NOTIFY":
                notify = message
                await client.answer(message)
        return ok, notify

    @asyncio_test
    async def test_a_forged_notify_is_refused(self) -> None:
        await self.registered()
        ours, _ = await self.subscribed()
        forger = UdpSipPeer()
        port = forger.start()
        self.addCleanup(forger.stop)
        core_side = self.service.pcscf.listener("UDP").address
        forger.send(self.forged_notify(ours.local_tag, ours.call_id, port), (core_side.host, core_side.port))
        response, _ = await asyncio.wait_for(forger.received.get(), 5.0)
        self.assertEqual(response.status, 403)  # not the core's address: a border element trusts nobody
        self.assertEqual(len(self.service.pcscf.registrations.all()), 1)

    @asyncio_test
    async def test_the_wics_own_reg_subscription_goes_to_the_core_and_its_notify_comes_back(self) -> None:
        client = await self.registered()
        await self.subscribed()
        ok, notify = await self.own_subscription(client)
        self.assertEqual(ok.status, 200)
        self.assertEqual(notify.headers.get("Event"), "reg")
        self.assertIn(b"urn:ietf:params:xml:ns:reginfo", notify.body)
        self.assertIn(client.host.encode(), notify.body)
        self.assertEqual(len(self.core_subscriptions()), 2)  # ours and the WIC's


class RegEventWithSippAsTheCoreTests(WicsMixin, unittest.TestCase):
    """A core other than ours: sipp as registrar and notifier (tests/sipp/uas_reg_event_core.xml)."""

    timeout = 40

    def setUp(self) -> None:
        self.sipp = require_sipp(self)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.port = free_port()
        self.service = start_deployment(
            self,
            extra=f"[core]\nmode = external\nnext_hop = sip:127.0.0.1:{self.port}\n"
            "[reg_event]\nsubscribe = yes\nclose_grace = 0.2\n" + METRICS,
        )
        self.clients: list[WsSipClient] = []

    def tearDown(self):
        return as_deferred(self.close_clients())

    async def core(self, scenario: str, replacements: dict[str, str], calls: int):
        with open(os.path.join(SCENARIOS, scenario)) as handle:
            text = handle.read()
        for key, value in replacements.items():
            text = text.replace(key, value)
        path = os.path.join(self.directory, scenario)
        with open(path, "w") as handle:
            handle.write(text)
        errors = os.path.join(self.directory, "errors.log")
        process, trace = spawn_sipp(
            self, self.sipp,
            ["-sf", path, "-i", "127.0.0.1", "-p", str(self.port), "-m", str(calls), "-timeout", "20s", "-timeout_error",
             "-trace_err", "-error_file", errors],
            self.directory, "core",
        )
        await wait_for(lambda: port_bound(self.port, "UDP"), timeout=5.0)
        return process, trace

    @asyncio_test
    async def test_a_rejected_contact_ends_the_binding_and_the_flow(self) -> None:
        client = WsSipClient(ws_url(self.service), "alice", USERS["alice"], DOMAIN)
        contact = f"sip:alice@{client.host};transport=ws;ob"
        process, trace = await self.core("uas_reg_event_core.xml", {"@CONTACT@": contact, "@AOR@": client.aor}, 2)
        await client.connect()
        self.clients.append(client)
        response = await client.register()
        self.assertEqual(response.status, 200)
        await wait_for(lambda: client.socket.close_code is not None, timeout=10.0, what="the WebSocket closed")
        self.assertEqual((client.socket.close_code, client.socket.close_reason), (1000, "de-registered by the network"))
        self.assertEqual(self.service.pcscf.registrations.all(), [])
        self.assertEqual(await ended(process), 0, process.output.decode(errors="replace")[-2000:])
        [subscribe] = received_requests(trace, "SUBSCRIBE")
        lines = subscribe.splitlines()
        self.assertEqual(lines[0], f"SUBSCRIBE {client.aor} SIP/2.0")  # TS 24.229 §5.2.3: the IMPU
        for header in ("Event: reg", "Expires: 600000", f"To: <{client.aor}>"):
            self.assertIn(header, lines)
        counts = reg_event_counts(await samples(self.service))
        self.assertEqual((counts["subscribed"], counts["notify"]), (1.0, 2.0))

    @asyncio_test
    async def test_a_notify_of_a_trusted_source_for_no_subscription_of_ours_gets_481(self) -> None:
        await wait_for(lambda: len(self.service.pcscf.trusted_sources) > 0)
        peer = UdpSipPeer()
        port = peer.start()
        self.addCleanup(peer.stop)
        core_side = self.service.pcscf.listener("UDP").address
        peer.send(self.forged_notify("nosuchtag", "nosuchcall", port), (core_side.host, core_side.port))
        response, _ = await asyncio.wait_for(peer.received.get(), 5.0)
        self.assertEqual(response.status, 481)  # RFC 6665 §4.1.3
        counts = reg_event_counts(await samples(self.service))
        self.assertEqual(counts["notify_unknown"], 1.0)

    @asyncio_test
    async def test_ims_aka_keys_are_stripped_from_the_challenge_and_the_answer_passes_untouched(self) -> None:
        process, trace = await self.core("uas_aka_register.xml", {}, 1)
        client = WsSipClient(ws_url(self.service), "alice", USERS["alice"], DOMAIN)
        await client.connect()
        self.clients.append(client)
        await client.send(client.register_request())
        challenge = await client.final_response()
        self.assertEqual(challenge.status, 401)
        # TS 24.229 §5.2.2.1: ck and ik removed, every other parameter as the core wrote it.
        self.assertEqual(
            challenge.headers.get_all("WWW-Authenticate"),
            ['Digest realm="ims.localdomain", nonce="CjPk9mRqNuT25eRkajM09uTl9nM09uTl9nMz5OX25PZz==", '
             'algorithm=AKAv1-MD5, qop="auth,auth-int", opaque="5ccc069c403ebaf9f0171e9517f40e41"'],
        )
        retry = client.register_request()
        answer = (
            'Digest username="alice@ims.localdomain", realm="ims.localdomain", '
            'nonce="CjPk9mRqNuT25eRkajM09uTl9nM09uTl9nMz5OX25PZz==", uri="sip:ims.localdomain", '
            'response="6629fae49393a05397450978507c4ef1", algorithm=AKAv1-MD5, qop=auth-int, nc=00000001, '
            'cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
        )
        retry.headers.add("Authorization", answer)
        retry.headers.add("Security-Client", "ipsec-3gpp; alg=hmac-sha-1-96; spi-c=1111; spi-s=2222; port-c=5062; port-s=5064")
        await client.send(retry)
        self.assertEqual((await client.final_response()).status, 200)
        self.assertEqual(await ended(process), 0, process.output.decode(errors="replace")[-2000:])
        # sipp's message trace is complete once it has exited (it writes it buffered)
        [sent] = [m for m in one_per_transaction(sipp_messages(trace, "sent")) if m.startswith("SIP/2.0 401")]
        [core_value] = [l.split(":", 1)[1].strip() for l in sent.splitlines() if l.startswith("WWW-Authenticate:")]
        self.assertIn('ck="', core_value)  # the core did send the keys that the WIC never saw
        registers = received_requests(trace, "REGISTER")
        self.assertEqual(len(registers), 2)
        self.assertIn(f"Authorization: {answer}", registers[1].splitlines())
        # TS 24.371 §6: TLS on W2, no sec-agree with the core.
        self.assertNotIn("Security-Client", registers[1])


class RegEventWithABareCoreTests(WicsMixin, unittest.TestCase):
    """The core is a bare UDP peer the test drives message by message (``UdpSipPeer``)."""

    timeout = 30

    def setUp(self) -> None:
        self.core = UdpSipPeer()
        port = self.core.start()
        self.addCleanup(self.core.stop)
        self.service = start_deployment(
            self, extra=f"[core]\nmode = external\nnext_hop = sip:127.0.0.1:{port}\n[reg_event]\nsubscribe = yes\nclose_grace = 0.2\n" + METRICS
        )
        self.clients: list[WsSipClient] = []

    def tearDown(self):
        return as_deferred(self.close_clients())

    async def subscribed_wic(self) -> tuple[WsSipClient, Request, tuple[str, int]]:
        client = WsSipClient(ws_url(self.service), "alice", USERS["alice"], DOMAIN)
        await client.connect()
        self.clients.append(client)
        await client.send(client.register_request())
        register, address = await self.core.next_request()
        ok = make_response(register, 200, to_tag="core1")
        ok.headers.add("Contact", (register.headers.get("Contact") or "").replace(";expires=600", "") + ";expires=600")
        self.core.send(ok, address)
        self.assertEqual((await client.final_response()).status, 200)
        subscribe, address = await self.core.next_request()
        self.assertEqual((subscribe.method, subscribe.headers.get("Event")), ("SUBSCRIBE", "reg"))
        accepted = make_response(subscribe, 200, to_tag="core2")
        accepted.headers.add("Contact", f"<sip:127.0.0.1:{self.core.port.getHost().port}>")
        accepted.headers.add("Expires", "600000")
        self.core.send(accepted, address)
        await wait_for(lambda: [s.state for s in self.service.pcscf.reg_events.subscriptions()] == [SubscriptionState.ACTIVE])
        return client, subscribe, address

    def notify(self, subscribe: Request, body: bytes, content_type: str = "application/reginfo+xml") -> Request:
        contact = subscribe.headers.get("Contact") or ""
        notify = Request("NOTIFY", contact.strip("<>"))
        notify.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{self.core.port.getHost().port};branch=z9hG4bK{secrets.token_hex(6)}")
        notify.headers.add("Max-Forwards", "70")
        notify.headers.add("From", (subscribe.headers.get("To") or "") + ";tag=core2")
        notify.headers.add("To", subscribe.headers.get("From") or "")
        notify.headers.add("Call-ID", subscribe.headers.get("Call-ID") or "")
        notify.headers.add("CSeq", "1 NOTIFY")
        notify.headers.add("Event", "reg")
        notify.headers.add("Subscription-State", "active;expires=600000")
        notify.headers.add("Content-Type", content_type)
        notify.body = body
        return notify

    async def answer_to(self, notify: Request, address: tuple[str, int]) -> Response:
        core_side = self.service.pcscf.listener("UDP").address
        self.core.send(notify, (core_side.host, core_side.port))
        while True:
            message, _ = await asyncio.wait_for(self.core.received.get(), 5.0)
            if isinstance(message, Response) and message.headers.get("CSeq") == notify.headers.get("CSeq"):
                return message

    @asyncio_test
    async def test_shortened_moves_the_expiry_and_a_body_that_is_not_reginfo_gets_400(self) -> None:
        client, subscribe, address = await self.subscribed_wic()
        [binding] = self.service.pcscf.registrations.all()
        self.assertGreater(binding.expires_at - self.service.pcscf.reactor.seconds(), 500)
        shortened = (
            '<?xml version="1.0"?><reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
            f'<registration aor="{client.aor}" id="a1" state="active">'
            f'<contact id="c1" state="active" event="shortened" expires="30"><uri>sip:alice@{client.host};transport=ws;ob</uri></contact>'
            "</registration></reginfo>"
        ).encode()
        self.assertEqual((await self.answer_to(self.notify(subscribe, shortened), address)).status, 200)
        left = binding.expires_at - self.service.pcscf.reactor.seconds()
        self.assertTrue(25 < left <= 30, left)  # TS 24.229 §5.2.5.2
        entity = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><reginfo>&a;</reginfo>'
        for body, content_type in ((entity, "application/reginfo+xml"), (b"<reginfo", "application/reginfo+xml"), (b"{}", "application/json")):
            notify = self.notify(subscribe, body, content_type)
            notify.headers.set("CSeq", f"{secrets.randbelow(1000) + 2} NOTIFY")
            self.assertEqual((await self.answer_to(notify, address)).status, 400)
        self.assertEqual(len(self.service.pcscf.registrations.all()), 1)
        counts = reg_event_counts(await samples(self.service))
        self.assertEqual((counts["shortened"], counts["notify_bad"]), (1.0, 3.0))

    @asyncio_test
    async def test_a_core_that_does_not_tell_the_wic_leaves_it_to_the_edge_before_the_flow_closes(self) -> None:
        client, subscribe, address = await self.subscribed_wic()
        # The WIC subscribes to its own reg event; the core answers and notifies it once.
        own = client.request("SUBSCRIBE", client.aor)
        own.headers.add("Contact", f"<sip:alice@{client.host};transport=ws;ob>")
        own.headers.add("Event", "reg")
        own.headers.add("Expires", "600")
        await client.send(own)
        at_core, wic_address = await self.core.next_request()
        accepted = make_response(at_core, 200, to_tag="wicsub")
        for value in at_core.headers.get_all("Record-Route"):
            accepted.headers.add("Record-Route", value)
        accepted.headers.add("Contact", f"<sip:127.0.0.1:{self.core.port.getHost().port}>")
        self.core.send(accepted, wic_address)
        self.assertEqual((await client.final_response()).status, 200)
        notify = Request("NOTIFY", f"sip:alice@{client.host};transport=ws;ob")
        notify.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{self.core.port.getHost().port};branch=z9hG4bK{secrets.token_hex(6)}")
        for value in at_core.headers.get_all("Record-Route"):
            notify.headers.add("Route", value)
        notify.headers.add("Max-Forwards", "70")
        notify.headers.add("From", f"<{client.aor}>;tag=wicsub")
        notify.headers.add("To", at_core.headers.get("From") or "")
        notify.headers.add("Call-ID", at_core.headers.get("Call-ID") or "")
        notify.headers.add("CSeq", "5 NOTIFY")
        notify.headers.add("Event", "reg")
        notify.headers.add("Subscription-State", "active;expires=600")
        notify.headers.add("Content-Type", "application/reginfo+xml")
        notify.body = (
            '<?xml version="1.0"?><reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="3" state="full">'
            f'<registration aor="{client.aor}" id="a1" state="active">'
            f'<contact id="c1" state="active" event="registered"><uri>sip:alice@{client.host};transport=ws;ob</uri></contact>'
            "</registration></reginfo>"
        ).encode()
        core_side = self.service.pcscf.listener("UDP").address
        self.core.send(notify, (core_side.host, core_side.port))
        relayed = await client.next_message()
        self.assertEqual((relayed.method, relayed.headers.get("CSeq")), ("NOTIFY", "5 NOTIFY"))
        await client.answer(relayed)
        # The network de-registers the WIC, but tells only the eP-CSCF.
        ended = (
            '<?xml version="1.0"?><reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="1" state="full">'
            f'<registration aor="{client.aor}" id="a1" state="terminated">'
            f'<contact id="c1" state="terminated" event="deactivated"><uri>sip:alice@{client.host};transport=ws;ob</uri></contact>'
            "</registration></reginfo>"
        ).encode()
        self.assertEqual((await self.answer_to(self.notify(subscribe, ended), address)).status, 200)
        final = await client.next_message()
        self.assertEqual(final.method, "NOTIFY")
        self.assertEqual(final.headers.get("CSeq"), "6 NOTIFY")  # after the core's 5 (RFC 3261 §12.2.1.1)
        self.assertEqual(final.headers.get("Call-ID"), at_core.headers.get("Call-ID"))
        self.assertEqual(final.headers.get("To"), at_core.headers.get("From"))
        self.assertTrue((final.headers.get("From") or "").endswith(";tag=wicsub"))
        self.assertEqual(final.headers.get("Subscription-State"), "terminated;reason=rejected")
        self.assertIn(b'version="4"', final.body)
        self.assertIn(b'state="terminated" event="deactivated"', final.body)
        self.assertIsNone(client.socket.close_code)
        await client.answer(final)
        await wait_for(lambda: client.socket.close_code is not None, what="the WebSocket closed")
        self.assertEqual((client.socket.close_code, client.socket.close_reason), (1000, "de-registered by the network"))
