"""The embedded core end to end over real UDP on 127.0.0.1.

Two plain UDP peers stand in for what talks to the core: ``edge`` plays the eP-CSCF
(it sends the REGISTER with a Path pointing at itself and later receives the
terminating INVITE through that Path) and ``caller`` sends an originating INVITE
through the Service-Route.  The digest responses are computed here from RFC 7616
§3.4.1, independently of ``epcscf.core.digest``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets

from twisted.internet import defer, reactor, task
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ClientCreator, DatagramProtocol, Protocol
from twisted.trial import unittest

from epcscf.config import load
from epcscf.core.service import EmbeddedCore, EmbeddedCoreSettings, HostsFileResolver
from epcscf.sip.resolver import NextHopResolver
from epcscf.sip.uri import parse_uri
from epcscf.sip.message import Headers, Request, Response
from epcscf.sip.parser import MessageFramed, StreamFramer, parse_message
from epcscf.sip.transaction_machine import TimerSettings
from tests.test_sipp_proxy import free_port

DOMAIN = "ims.localdomain"
USERS = "alice:alice-secret tel:+15550001\nbob:bob-secret\n"
WAIT = 5.0


class SipPeer(DatagramProtocol):
    """A UDP socket on 127.0.0.1 that queues every SIP message it receives."""

    def __init__(self) -> None:
        self.queue: defer.DeferredQueue = defer.DeferredQueue()
        self.port = None

    def datagramReceived(self, data: bytes, addr) -> None:  # noqa: N802
        self.queue.put(parse_message(data))

    @property
    def address(self) -> str:
        host = self.transport.getHost()
        return f"{host.host}:{host.port}"

    def send(self, message: Request | Response, to: tuple[str, int]) -> None:
        self.transport.write(message.serialize(), to)

    async def receive(self, skip_provisional: bool = True) -> Request | Response:
        while True:
            message = await self.queue.get().addTimeout(WAIT, reactor)
            if skip_provisional and isinstance(message, Response) and message.status < 200:
                continue
            return message


def digest_authorization(challenge: str, method: str, uri: str, user: str, password: str) -> str:
    """RFC 7616 §3.4: the Authorization value for one WWW-Authenticate challenge (qop=auth)."""
    fields = {name: quoted or bare for name, quoted, bare in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', challenge)}
    algorithm = fields.get("algorithm", "MD5")
    digest = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

    def h(text: str) -> str:
        return digest(text.encode()).hexdigest()

    cnonce = secrets.token_hex(8)
    nc = "00000001"
    ha1 = h(f"{user}:{fields['realm']}:{password}")
    ha2 = h(f"{method}:{uri}")
    response = h(f"{ha1}:{fields['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    opaque = f', opaque="{fields["opaque"]}"' if "opaque" in fields else ""
    return (
        f'Digest username="{user}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"{opaque}'
    )


def new_request(
    method: str,
    uri: str,
    peer: SipPeer,
    to: str,
    from_: str,
    call_id: str,
    cseq: int,
    extra: list[tuple[str, str]] = (),
    to_tag: str | None = None,
) -> Request:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP {peer.address};branch=z9hG4bK{secrets.token_hex(8)};rport")
    headers.add("Max-Forwards", "70")
    headers.add("To", f"<{to}>" + (f";tag={to_tag}" if to_tag else ""))
    headers.add("From", f"<{from_}>;tag=f{call_id}")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} {method}")
    for name, value in extra:
        headers.add(name, value)
    return Request(method, uri, headers)


class EmbeddedCoreTestCase(unittest.TestCase):
    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as handle:
            handle.write(USERS)
        self.core = EmbeddedCore(
            EmbeddedCoreSettings(
                DOMAIN, ("udp:127.0.0.1:0",), users, timers=TimerSettings(t1=0.1, t2=0.4, t4=0.5, d=0.5)
            ),
            reactor,
        )
        self.core.startService()
        self.addCleanup(self.core.stopService)
        self.core_address = (self.core.udp_address.host, self.core.udp_address.port)
        self.edge = self.peer()
        self.caller = self.peer()

    def peer(self) -> SipPeer:
        peer = SipPeer()
        port = reactor.listenUDP(0, peer, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return peer

    def register(
        self, user: str, password: str, contact: str, call_id: str, cseq: int = 1, auth: str | None = None,
        edge: SipPeer | None = None,
    ) -> Request:
        edge = edge or self.edge
        extra = [
            ("Path", f"<sip:tok-{user}@{edge.address};lr;ob>"),
            ("Require", "path"),
            ("Supported", "path, outbound"),
            ("Contact", contact),
            ("Expires", "600"),
        ]
        if auth:
            extra.append(("Authorization", auth))
        aor = f"sip:{user}@{DOMAIN}"
        return new_request("REGISTER", f"sip:{DOMAIN}", edge, aor, aor, call_id, cseq, extra)

    async def registered(
        self, user: str, password: str, contact: str, expires: int = 600, edge: SipPeer | None = None
    ) -> Response:
        edge = edge or self.edge
        call_id = f"reg-{user}-{secrets.token_hex(4)}"
        first = self.register(user, password, contact, call_id, edge=edge)
        first.headers.set("Expires", str(expires))
        edge.send(first, self.core_address)
        challenge = await edge.receive()
        self.assertEqual(challenge.status, 401)
        [sha256] = [v for v in challenge.headers.get_all("www-authenticate") if "SHA-256" in v]
        auth = digest_authorization(sha256, "REGISTER", f"sip:{DOMAIN}", user, password)
        second = self.register(user, password, contact, call_id, 2, auth, edge=edge)
        second.headers.set("Expires", str(expires))
        edge.send(second, self.core_address)
        return await edge.receive()


class RegistrationOverUdpTests(EmbeddedCoreTestCase):
    async def test_digest_registration_returns_bindings_and_ims_headers(self) -> None:
        ok = await self.registered("bob", "bob-secret", "<sip:bob@bob.invalid;transport=ws>")
        self.assertEqual(ok.status, 200)
        self.assertEqual(ok.headers.get_all("contact"), ["<sip:bob@bob.invalid;transport=ws>;expires=600"])
        self.assertEqual(ok.headers.get("path"), f"<sip:tok-bob@{self.edge.address};lr;ob>")
        self.assertEqual(ok.headers.get("service-route"), f"<{self.core.service_route}>")
        self.assertEqual(ok.headers.get("p-associated-uri"), f"<sip:bob@{DOMAIN}>")
        self.assertEqual(len(self.core.location.bindings(f"sip:bob@{DOMAIN}")), 1)

    async def test_md5_challenge_works_too(self) -> None:
        call_id = "reg-md5"
        contact = "<sip:alice@a.invalid;transport=ws>"
        self.edge.send(self.register("alice", "alice-secret", contact, call_id), self.core_address)
        challenge = await self.edge.receive()
        [md5] = [v for v in challenge.headers.get_all("www-authenticate") if "MD5" in v]
        auth = digest_authorization(md5, "REGISTER", f"sip:{DOMAIN}", "alice", "alice-secret")
        self.edge.send(self.register("alice", "alice-secret", contact, call_id, 2, auth), self.core_address)
        ok = await self.edge.receive()
        self.assertEqual(ok.status, 200)
        self.assertEqual(ok.headers.get("p-associated-uri"), f"<sip:alice@{DOMAIN}>, <tel:+15550001>")

    async def test_wrong_password_is_refused(self) -> None:
        response = await self.registered("bob", "not-the-password", "<sip:bob@bob.invalid>")
        self.assertEqual(response.status, 403)
        self.assertEqual(self.core.location.bindings(f"sip:bob@{DOMAIN}"), [])

    async def test_merged_register_is_482(self) -> None:
        first = self.register("bob", "bob-secret", "<sip:bob@bob.invalid>", "merged-1")
        self.edge.send(first, self.core_address)
        self.assertEqual((await self.edge.receive()).status, 401)
        # RFC 3261 §8.2.2.2: same From tag, Call-ID and CSeq, but another branch (another path).
        second = first.copy()
        second.headers.set("Via", f"SIP/2.0/UDP {self.edge.address};branch=z9hG4bKother;rport")
        self.edge.send(second, self.core_address)
        self.assertEqual((await self.edge.receive()).status, 482)

    async def test_options_to_the_core_is_answered(self) -> None:
        request = new_request("OPTIONS", f"sip:{DOMAIN}", self.caller, f"sip:{DOMAIN}", f"sip:alice@{DOMAIN}", "opt-1", 1)
        self.caller.send(request, self.core_address)
        response = await self.caller.receive()
        self.assertEqual(response.status, 200)
        self.assertIn("REGISTER", response.headers.get("allow"))


class RoutingOverUdpTests(EmbeddedCoreTestCase):
    def invite(self, target: str, call_id: str) -> Request:
        return new_request(
            "INVITE",
            target,
            self.caller,
            target,
            f"sip:alice@{DOMAIN}",
            call_id,
            1,
            [
                ("Route", f"<{self.core.service_route}>"),
                ("Contact", f"<sip:alice@{self.caller.address}>"),
                ("Content-Type", "application/sdp"),
            ],
        )

    async def test_invite_reaches_registered_user_through_stored_path(self) -> None:
        ok = await self.registered("bob", "bob-secret", "<sip:bob@bob.invalid;transport=ws>")
        self.assertEqual(ok.status, 200)
        self.caller.send(self.invite(f"sip:bob@{DOMAIN}", "call-1"), self.core_address)
        trying = await self.caller.receive(skip_provisional=False)
        self.assertEqual(trying.status, 100)

        arrived = await self.edge.receive()
        self.assertIsInstance(arrived, Request)
        self.assertEqual(arrived.method, "INVITE")
        self.assertEqual(arrived.uri, "sip:bob@bob.invalid;transport=ws")
        self.assertEqual(arrived.headers.get_all("route"), [f"<sip:tok-bob@{self.edge.address};lr;ob>"])
        self.assertEqual(arrived.headers.get("p-called-party-id"), f"<sip:bob@{DOMAIN}>")
        self.assertIn(f"{self.core.udp_address}", arrived.headers.get("record-route"))
        self.assertEqual(len(arrived.headers.get_all("via")), 2)

        # The callee's answer travels back through the core to the caller.
        busy = Response(486, "Busy Here", Headers(list(_response_headers(arrived, "b1"))))
        self.edge.send(busy, self.core_address)
        final = await self.caller.receive()
        self.assertEqual(final.status, 486)
        self.assertEqual(final.headers.get("call-id"), "call-1")
        ack = await self.edge.receive()  # RFC 3261 §17.1.1.3: the core ACKs the 486 hop by hop
        self.assertEqual(ack.method, "ACK")

    async def test_invite_forks_to_every_binding_and_the_first_answer_wins(self) -> None:
        other_edge = self.peer()
        self.assertEqual((await self.registered("bob", "bob-secret", "<sip:bob@one.invalid>")).status, 200)
        self.assertEqual((await self.registered("bob", "bob-secret", "<sip:bob@two.invalid>", edge=other_edge)).status, 200)
        self.caller.send(self.invite(f"sip:bob@{DOMAIN}", "call-fork"), self.core_address)
        first = await self.edge.receive()
        second = await other_edge.receive()
        self.assertEqual((first.method, first.uri), ("INVITE", "sip:bob@one.invalid"))
        self.assertEqual((second.method, second.uri), ("INVITE", "sip:bob@two.invalid"))
        self.assertEqual(second.headers.get("route"), f"<sip:tok-bob@{other_edge.address};lr;ob>")

        answer = Response(200, "OK", Headers(list(_response_headers(second, "two"))))
        answer.headers.add("Contact", "<sip:bob@two.invalid>")
        other_edge.send(answer, self.core_address)
        final = await self.caller.receive()
        self.assertEqual(final.status, 200)
        self.assertIn("tag=two", final.headers.get("to"))
        # RFC 3261 §16.7 step 10: the branch still ringing is CANCELled (after a provisional, §9.1).
        ringing = Response(180, "Ringing", Headers(list(_response_headers(first, "one"))))
        self.edge.send(ringing, self.core_address)
        cancel = await self.edge.receive()
        self.assertEqual(cancel.method, "CANCEL")
        self.assertEqual(cancel.uri, "sip:bob@one.invalid")
        self.edge.send(Response(200, "OK", Headers(list(_response_headers(cancel, "one")))), self.core_address)
        self.edge.send(Response(487, "Request Terminated", Headers(list(_response_headers(first, "one")))), self.core_address)
        self.assertEqual((await self.edge.receive()).method, "ACK")  # hop-by-hop ACK of the 487

    async def test_invite_for_unregistered_user_is_480(self) -> None:
        self.caller.send(self.invite(f"sip:bob@{DOMAIN}", "call-2"), self.core_address)
        final = await self.caller.receive()
        self.assertEqual(final.status, 480)

    async def test_invite_for_unknown_user_is_404(self) -> None:
        self.caller.send(self.invite(f"sip:carol@{DOMAIN}", "call-3"), self.core_address)
        final = await self.caller.receive()
        self.assertEqual(final.status, 404)


def _response_headers(request: Request, to_tag: str | None):
    for name, value in request.headers:
        lowered = name.lower()
        if lowered in ("via", "from", "call-id", "cseq", "record-route"):
            yield name, value
        elif lowered == "to":
            yield name, f"{value};tag={to_tag}" if to_tag else value


class LifecycleTests(unittest.TestCase):
    def users_file(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "users")
        with open(path, "w") as handle:
            handle.write(USERS)
        return path

    async def test_busy_port_fails_start_and_closes_the_other_listeners(self) -> None:
        busy = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        first = free_port()
        core = EmbeddedCore(
            EmbeddedCoreSettings(DOMAIN, (f"udp:127.0.0.1:{first}", f"udp:127.0.0.1:{busy.getHost().port}"), self.users_file()),
            reactor,
        )
        self.assertRaises(CannotListenError, core.startService)
        self.assertEqual(core.addresses, [])
        # The first listener's port is free again (UDP ports close on the next reactor turn).
        await task.deferLater(reactor, 0, lambda: None)
        again = reactor.listenUDP(first, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(again.stopListening)

    async def test_register_over_tcp_is_answered_on_the_same_connection(self) -> None:
        core = EmbeddedCore(EmbeddedCoreSettings(DOMAIN, ("tcp:127.0.0.1:0",), self.users_file()), reactor)
        core.startService()
        self.addCleanup(core.stopService)
        self.assertEqual(core.service_route, f"sip:orig@{core.addresses[0][1]};transport=tcp;lr")
        received: defer.Deferred = defer.Deferred()

        class Client(Protocol):
            def __init__(self) -> None:
                self.framer = StreamFramer()

            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                for event in self.framer.feed(data):
                    if isinstance(event, MessageFramed) and not received.called:
                        received.callback(event.message)

        address = core.addresses[0][1]
        client = await ClientCreator(reactor, Client).connectTCP(address.host, address.port)
        self.addCleanup(client.transport.loseConnection)
        local = client.transport.getHost()
        request = Request("REGISTER", f"sip:{DOMAIN}", Headers([
            ("Via", f"SIP/2.0/TCP 127.0.0.1:{local.port};branch=z9hG4bKtcp1"),
            ("To", f"<sip:alice@{DOMAIN}>"),
            ("From", f"<sip:alice@{DOMAIN}>;tag=t1"),
            ("Call-ID", "tcp-1"),
            ("CSeq", "1 REGISTER"),
            ("Contact", f"<sip:alice@127.0.0.1:{local.port};transport=tcp>"),
            ("Max-Forwards", "70"),
        ]))
        client.transport.write(request.serialize())
        response = await received.addTimeout(WAIT, reactor)
        self.assertEqual(response.status, 401)


class RegEventOverUdpTests(EmbeddedCoreTestCase):
    """RFC 3680: the core notifies the reg state of a user to a subscriber (the eP-CSCF)."""

    def subscribe(self, user: str, expires: int = 600000) -> Request:
        aor = f"sip:{user}@{DOMAIN}"
        return new_request(
            "SUBSCRIBE",
            aor,
            self.edge,
            aor,
            f"sip:pcscf@{self.edge.address}",
            f"sub-{user}",
            1,
            [
                ("Event", "reg"),
                ("Expires", str(expires)),
                ("Accept", "application/reginfo+xml"),
                ("Contact", f"<sip:pcscf@{self.edge.address}>"),
                ("Record-Route", f"<sip:rr@{self.edge.address};lr>"),
            ],
        )

    async def next_notify(self) -> Request:
        notify = await self.edge.receive()
        self.assertIsInstance(notify, Request)
        self.assertEqual(notify.method, "NOTIFY")
        ok = Response(200, "OK", Headers(list(_response_headers(notify, None))))
        self.edge.send(ok, self.core_address)
        return notify

    async def test_subscriber_is_told_of_registration_and_deregistration(self) -> None:
        contact = "<sip:bob@bob.invalid;transport=ws>"
        self.assertEqual((await self.registered("bob", "bob-secret", contact)).status, 200)
        self.edge.send(self.subscribe("bob"), self.core_address)
        ok = await self.edge.receive()
        self.assertEqual(ok.status, 200)
        self.assertEqual(ok.headers.get("expires"), "600000")
        self.assertEqual(ok.headers.get("record-route"), f"<sip:rr@{self.edge.address};lr>")

        notify = await self.next_notify()
        self.assertEqual(notify.uri, f"sip:pcscf@{self.edge.address}")
        self.assertEqual(notify.headers.get("route"), f"<sip:rr@{self.edge.address};lr>")
        self.assertEqual(notify.headers.get("event"), "reg")
        self.assertTrue(notify.headers.get("subscription-state").startswith("active;expires="))
        self.assertEqual(notify.headers.get("content-type"), "application/reginfo+xml")
        body = notify.body.decode()
        self.assertIn('version="0"', body)
        self.assertIn(f'aor="sip:bob@{DOMAIN}"', body)
        self.assertIn('state="active"', body)
        self.assertIn("<uri>sip:bob@bob.invalid;transport=ws</uri>", body)
        self.assertIn(ok.headers.get("to"), notify.headers.get("from"))

        # Deregistration: the registration and the subscription end together.
        self.assertEqual((await self.registered("bob", "bob-secret", contact, expires=0)).status, 200)
        final = await self.next_notify()
        self.assertEqual(final.headers.get("subscription-state"), "terminated;reason=noresource")
        body = final.body.decode()
        self.assertIn('version="1"', body)
        self.assertIn('<registration aor="sip:bob@' + DOMAIN + '" id="reg0" state="terminated">', body)
        self.assertIn('event="unregistered"', body)
        self.assertEqual(self.core.notifier.subscriptions, {})

    async def test_unsubscribe_gets_a_final_notify(self) -> None:
        self.edge.send(self.subscribe("alice"), self.core_address)
        ok = await self.edge.receive()
        first = await self.next_notify()
        self.assertIn('state="init"', first.body.decode())
        self.assertIn("tel:+15550001", first.body.decode())
        refresh = self.subscribe("alice", expires=0)
        refresh.headers.set("To", ok.headers.get("to"))
        refresh.headers.set("CSeq", "2 SUBSCRIBE")
        self.edge.send(refresh, self.core_address)
        self.assertEqual((await self.edge.receive()).status, 200)
        final = await self.next_notify()
        self.assertEqual(final.headers.get("subscription-state"), "terminated;reason=timeout")
        self.assertEqual(self.core.notifier.subscriptions, {})

    async def test_in_dialog_request_for_an_unknown_dialog_of_the_core_is_481(self) -> None:
        stray = new_request("SUBSCRIBE", f"sip:{self.core.udp_address}", self.edge, f"sip:bob@{DOMAIN}",
                            "sip:pcscf@127.0.0.1", "nope", 2, [("Event", "reg"), ("Contact", "<sip:p@127.0.0.1>")], to_tag="gone")
        self.edge.send(stray, self.core_address)
        self.assertEqual((await self.edge.receive()).status, 481)


class SettingsTests(unittest.TestCase):
    def test_default_ini_gives_an_embedded_core_on_loopback(self) -> None:
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        settings = EmbeddedCoreSettings.from_config(load([os.path.join(top, "etc", "epcscf.ini")]))
        self.assertEqual(settings.domain, DOMAIN)
        self.assertEqual([str(listener) for listener in settings.listen], ["tcp:127.0.0.1:5070", "udp:127.0.0.1:5070"])
        self.assertEqual(settings.max_expires, 3600)
        self.assertEqual(settings.timers.t1, 0.5)
        core = EmbeddedCore(settings, reactor)  # users file parses; nothing listens before start
        self.assertEqual(core.registration_sets[f"sip:alice@{DOMAIN}"], (f"sip:alice@{DOMAIN}", "tel:+15550001"))
        self.assertEqual(core.identities["tel:+15550002"], f"sip:bob@{DOMAIN}")
        core.notifier.close()

    async def test_names_resolve_from_the_hosts_file_without_dns(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        hosts_file = os.path.join(directory, "hosts")
        with open(hosts_file, "w") as handle:
            handle.write("127.0.0.1 localhost core.test\n")
        resolver = NextHopResolver(HostsFileResolver(file=hosts_file))
        targets = await resolver.resolve_uri(parse_uri("sip:service@core.test"))
        self.assertEqual([(t.transport, t.host, t.port) for t in targets], [("UDP", "127.0.0.1", 5060)])
        self.assertEqual(await resolver.resolve_uri(parse_uri("sip:service@unknown.test")), [])


class ShutdownTests(EmbeddedCoreTestCase):
    async def test_stop_with_a_call_in_progress_leaves_no_timer_behind(self) -> None:
        self.assertEqual((await self.registered("bob", "bob-secret", "<sip:bob@bob.invalid>")).status, 200)
        invite = new_request(
            "INVITE", f"sip:bob@{DOMAIN}", self.caller, f"sip:bob@{DOMAIN}", f"sip:alice@{DOMAIN}", "call-stop", 1,
            [("Route", f"<{self.core.service_route}>"), ("Contact", f"<sip:alice@{self.caller.address}>")],
        )
        self.caller.send(invite, self.core_address)
        self.assertEqual((await self.edge.receive()).method, "INVITE")  # ringing forever: Timer C runs
        self.assertEqual(len(self.core.proxy.active()), 1)
        await self.core.stopService()
        self.assertEqual(self.core.proxy.active(), [])
        self.assertEqual(self.core.transactions.transactions(), [])
        # Any Timer C or transaction timer left pending would make trial fail this test (dirty reactor).
