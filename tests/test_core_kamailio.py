"""A core nobody here wrote: epcscf in ``[core] mode = external`` in front of Kamailio (Debian's,
our ``tests/peers/kamailio/core.cfg``: registrar + location + stateful proxy, Path, no
authentication), with JsSIP in Node as the WIC over a real WebSocket and the test's own ICE
agent, DTLS endpoint and SRTP carrying the media (full ICE toward the WIC), and sipp as the
IMS party behind Kamailio (``-rtp_echo``).

Two variants, one Kamailio each: without Service-Route (a plain RFC 3261 registrar: every
originating request must go to ``[core] next_hop``) and with one (RFC 3608: originating
requests follow it; Kamailio marks what arrived that way with ``X-Core-Route``).  Scenarios:
register / refresh / unregister; a WIC call to ``uas`` answered by sipp with media, BYE from
the WIC; a call from a sipp UAC to the WIC with media, BYE from the core side; CANCEL before
answer; a request over 1300 bytes reaching Kamailio over TCP (RFC 3261 §18.1.1).
INVITE→180 and INVITE→200 as seen at the WIC are printed per originating call.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
from typing import Any

import aioice.ice
from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from epcscf.media import DtlsRole
from epcscf.sdp import SessionDescription
from tests.support.deployment import start_deployment
from tests.support.kamailio import KamailioCore, start_kamailio
from tests.support.node_peer import NodePeer, require_node_modules, start_node_peer
from tests.support.processes import wait_for
from tests.support.reactor import asyncio_loop
from tests.support.udp_peer import UdpSipPeer
from tests.support.sipp import SCENARIOS, SippProcess, free_port, port_bound, received_requests, received_responses, require_sipp, spawn_sipp
from tests.support.wic import as_deferred
from tests.test_calls_media import LOCAL, SimulatedWic, no_asyncio_tasks_left, rtp

# Kamailio, sipp and JsSIP: poll for the visible effect, fail after 10 s.
until = functools.partial(wait_for, timeout=10.0, interval=0.02)

DOMAIN = "ims.test"
REGISTER_EXPIRES = 10  # JsSIP refreshes 5 s before expiry: one refresh within the test
#: the INVITE→180/200 times measured, appended by every originating call (in trial's directory)
TIMINGS = "kamailio_call_timings.txt"
_cores: dict[bool, tuple[KamailioCore, int]] = {}  # one Kamailio per variant for the whole module
_tests_left: dict[bool, int] = {}
_users = itertools.count(1)


class KamailioWithoutServiceRouteTests(unittest.TestCase):
    timeout = 60
    service_route = False

    @classmethod
    def kamailio(cls) -> tuple[KamailioCore, int]:
        """This class's Kamailio and its sipp UAS port: started by the class's first test (trial
        has no setUpClass), stopped after its last one (or when the test process exits, when
        only some of its tests run)."""
        if cls.service_route not in _cores:
            uas_port = free_port()
            core = start_kamailio(f"sip:127.0.0.1:{uas_port}", service_route=cls.service_route)
            atexit.register(core.stop)
            _cores[cls.service_route] = (core, uas_port)
            _tests_left[cls.service_route] = sum(1 for name in dir(cls) if name.startswith("test_"))
        return _cores[cls.service_route]

    def _test_done(self) -> None:
        _tests_left[self.service_route] -= 1
        if _tests_left[self.service_route] == 0:
            _cores[self.service_route][0].stop()

    def report(self, name: str, ringing: float, answered: float) -> None:
        variant = "with Service-Route" if self.service_route else "without Service-Route"
        line = f"through Kamailio, {variant}, {name}: INVITE→180 {ringing:.1f} ms, INVITE→200 {answered:.1f} ms"
        print("\n  " + line)
        with open(TIMINGS, "a") as handle:
            handle.write(line + "\n")

    def setUp(self) -> None:
        self.sipp = require_sipp(self)
        require_node_modules(self, "jssip", "jssip-node-websocket")
        self.loop = asyncio_loop()
        self.patch(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOCAL])
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.log_lines: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "epcscf.pcscf.edge":
                self.log_lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.core, self.uas_port = self.kamailio()
        self.addCleanup(self._test_done)  # runs last: after epcscf and the peers have stopped
        self.service = start_deployment(
            self, extra=f"[core]\nmode = external\ndomain = {DOMAIN}\nnext_hop = {self.core.next_hop}\n[media]\nice_mode = full\n"
        )
        self.wics: list[SimulatedWic] = []
        self.addCleanup(self._close_wics)
        self.user = f"wic{next(_users)}"  # one AOR per test: Kamailio's location outlives each test

    async def _close_wics_async(self) -> None:
        wics, self.wics = self.wics, []
        for wic in wics:
            await wic.close()

    def _close_wics(self) -> Any:
        return defer.Deferred.fromCoroutine(self._close_wics_async())

    # --- helpers -------------------------------------------------------------------------------

    def jssip(self, user: str) -> NodePeer:
        url = f"ws://127.0.0.1:{self.service.pcscf.listener('WS').address.port}"
        return start_node_peer(self, "jssip_wic.js", url, user, DOMAIN, str(REGISTER_EXPIRES))

    @staticmethod
    def command(peer: NodePeer, **command: Any) -> None:
        peer.transport.write((json.dumps(command) + "\n").encode())

    async def event(self, peer: NodePeer, name: str, count: int = 1, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """The ``count``-th event ``name`` (with ``fields``) the peer printed; waits for it."""

        def matching() -> list[dict[str, Any]]:
            return [e for e in peer.log if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())]

        await until(lambda: len(matching()) >= count, timeout=timeout,
                    what=f"{name} {fields} (#{count}) from JsSIP: {peer.log[-12:]} {peer.stderr[-1500:]!r}\n"
                    f"kamailio: {self.core.log()[-2500:]}")
        return matching()[count - 1]

    async def registered(self, user: str | None = None) -> NodePeer:
        peer = self.jssip(user or self.user)
        await self.event(peer, "connected")
        self.command(peer, do="register")
        event = await self.event(peer, "registered")
        self.assertEqual(event["status"], 200)
        return peer

    def spawn_sipp(self, name: str, args: list[str]) -> tuple[SippProcess, str]:
        errors = os.path.join(self.directory, f"{name}_errors.log")
        bounded = [*args, "-m", "1", "-timeout", "25s", "-timeout_error", "-trace_err", "-error_file", errors]
        return spawn_sipp(self, self.sipp, bounded, self.directory, name)

    async def start_uas(self, scenario: str) -> tuple[SippProcess, str]:
        uas, trace = self.spawn_sipp("uas", ["-sf", os.path.join(SCENARIOS, scenario), "-i", LOCAL, "-p", str(self.uas_port),
                                             "-mi", LOCAL, "-mp", str(free_port()), "-rtp_echo"])
        await until(lambda: port_bound(self.uas_port, "UDP") or uas.ended.called)
        return uas, trace

    async def sipp_done(self, process: SippProcess) -> None:
        self.assertEqual(await process.ended, 0, process.output.decode(errors="replace")[-2000:])

    def assert_route_taken(self, core_request: str) -> None:
        """Which way the originating request reached the core (the far end sees Kamailio's mark)."""
        if self.service_route:
            self.assertIn("X-Core-Route: service-route", core_request)
        else:
            self.assertNotIn("X-Core-Route", core_request)

    async def media_flows(self, wic: SimulatedWic) -> None:
        """SRTP from the WIC → RTP to sipp (-rtp_echo) → back as SRTP (TS 24.371 §7.4)."""
        for seq in range(1, 6):
            wic.send_rtp(rtp(seq))
        await until(lambda: len(wic.received) >= 3, what="RTP echoed back to the WIC")
        self.assertEqual(wic.received[0], rtp(1))

    async def calls_gone(self) -> None:
        calls = self.service.pcscf.calls
        await until(lambda: not calls.calls(), what=f"calls ended: {calls.calls()}")
        await calls.idle()
        await self._close_wics_async()
        await task.deferLater(global_reactor, 0.05, lambda: None)
        # Trial does not see asyncio leaks: every aioice/ws task of the call must be gone.
        self.assertEqual(no_asyncio_tasks_left(self.loop), [], "asyncio tasks left running")

    def hints(self) -> list[str]:
        return [line for line in self.log_lines if "has no Service-Route" in line]

    # --- scenarios -----------------------------------------------------------------------------

    async def test_register_refresh_unregister(self) -> None:
        peer = await self.registered()
        first = await self.event(peer, "registered")
        self.assertEqual(first["service_route"] != [], self.service_route, first)
        [binding] = self.service.pcscf.registrations.all()
        self.assertEqual(binding.aor, f"sip:{self.user}@{DOMAIN}")
        self.assertEqual(bool(binding.service_route), self.service_route)
        # JsSIP refreshes by itself (RFC 3261 §10.2.4); the binding is refreshed in place.
        registered_at = binding.registered_at
        await self.event(peer, "registering", count=2, timeout=REGISTER_EXPIRES)
        await until(lambda: binding.registered_at > registered_at, what="the refresh reaching the binding")
        self.assertEqual(self.service.pcscf.registrations.all(), [binding])
        # The hint names the next hop once per binding, and only when there is no Service-Route.
        expected = [f"sip:{self.user}@{DOMAIN}"] if not self.service_route else []
        self.assertEqual([line.split()[2] for line in self.hints()], expected, self.hints())
        if not self.service_route:
            self.assertIn(self.core.next_hop, self.hints()[0])
        self.command(peer, do="unregister")
        await self.event(peer, "unregistered")
        await until(lambda: not self.service.pcscf.registrations.all(), what="the binding removed")
        self.assertIn(f"REGISTER sip:{DOMAIN}", self.core.log())

    async def test_wic_calls_uas_with_media_and_hangs_up(self) -> None:
        uas, trace = await self.start_uas("calls_uas_answer.xml")
        peer = await self.registered()
        wic = SimulatedWic(controlling=True)  # the offerer controls (RFC 8445 §6.1.1)
        self.wics.append(wic)
        await wic.gather()
        self.command(peer, do="call", target=f"sip:uas@{DOMAIN}", sdp=wic.sdp("actpass").decode())
        ringing = await self.event(peer, "progress", status=180)
        accepted = await self.event(peer, "accepted")
        self.assertEqual(accepted["status"], 200)
        answer = await self.event(peer, "remote-description", type="answer")
        self.assertIn("UDP/TLS/RTP/SAVPF", answer["sdp"])
        await wic.connect(answer["sdp"].encode(), DtlsRole.SERVER)  # we answered a=setup:active
        await self.media_flows(wic)
        self.report("WIC → sipp UAS", ringing["ms"], accepted["ms"])
        [core_invite] = received_requests(trace, "INVITE")
        self.assert_route_taken(core_invite)
        offer = SessionDescription.parse(core_invite.split("\n\n", 1)[1].replace("\n", "\r\n"))
        self.assertEqual([m.proto for m in offer.media], ["RTP/AVP"])  # TS 24.371 §7.4.2
        self.command(peer, do="terminate")  # BYE from the WIC
        ended = await self.event(peer, "ended")
        self.assertEqual(ended["originator"], "local")
        await self.sipp_done(uas)
        await self.calls_gone()

    async def test_uac_calls_wic_with_media_and_core_hangs_up(self) -> None:
        peer = await self.registered()
        uac, trace = self.spawn_sipp("uac", ["-sf", os.path.join(SCENARIOS, "calls_uac_offer.xml"), "-s", self.user,
                                             "-set", "domain", DOMAIN, "-i", LOCAL, "-p", str(free_port()),
                                             "-mi", LOCAL, "-mp", str(free_port()), "-rtp_echo",
                                             f"127.0.0.1:{self.core.port}"])
        incoming = await self.event(peer, "incoming")
        offer = incoming["sdp"].encode()
        self.assertIn(b"UDP/TLS/RTP/SAVPF", offer)  # TS 24.371 §7.4.3: the WIC gets a WebRTC offer
        wic = SimulatedWic(controlling=False)  # full ICE: the offerer (the eP-CSCF) controls
        self.wics.append(wic)
        await wic.gather()
        self.command(peer, do="answer", sdp=wic.sdp("active").decode())
        await wic.connect(offer, DtlsRole.CLIENT)
        await self.event(peer, "confirmed")
        await self.media_flows(wic)
        ended = await self.event(peer, "ended")  # sipp's BYE, through Kamailio
        self.assertEqual(ended["originator"], "remote")
        await self.sipp_done(uac)
        [core_ok] = received_responses(trace, 200, "INVITE")
        self.assertIn("RTP/AVP", core_ok)
        self.assertNotIn("a=ice-", core_ok)
        await self.calls_gone()

    async def test_wic_cancels_before_answer(self) -> None:
        # The IMS side is a bare UDP peer here: sipp builds a 487 after a CANCEL from the
        # CANCEL's Via (one entry, Kamailio's), which a stateful proxy cannot relay upstream.
        ims = UdpSipPeer()
        ims.port = global_reactor.listenUDP(self.uas_port, ims, interface=LOCAL)
        self.addCleanup(ims.stop)
        peer = await self.registered()
        wic = SimulatedWic(controlling=True)
        self.wics.append(wic)
        await wic.gather()
        self.command(peer, do="call", target=f"sip:uas-ringing@{DOMAIN}", sdp=wic.sdp("actpass").decode())
        invite, address = await as_deferred(ims.next_request(10))
        self.assertEqual(invite.method, "INVITE")
        self.assert_route_taken(invite.serialize().decode())
        ims.reply(invite, address, 180)
        await self.event(peer, "progress", status=180)
        self.command(peer, do="terminate")  # CANCEL (RFC 3261 §9.1)
        cancel, address = await as_deferred(ims.next_request(10))
        self.assertEqual(cancel.method, "CANCEL")
        ims.reply(cancel, address, 200)
        ims.reply(invite, address, 487)
        ack, _ = await as_deferred(ims.next_request(10))
        self.assertEqual(ack.method, "ACK")  # Kamailio's own, hop by hop (RFC 3261 §17.1.1.3)
        failed = await self.event(peer, "failed")
        self.assertEqual(failed["cause"], "Canceled")
        await self.calls_gone()
        [ended] = self.service.pcscf.calls.ended_calls()
        self.assertIn("CANCEL from the wic", [entry.text for entry in ended.timeline])


    async def test_large_request_reaches_the_core_over_tcp(self) -> None:
        # RFC 3261 §18.1.1: over 1300 bytes toward a UDP next hop → TCP to the same address.
        # One WIC sends another a MESSAGE: epcscf → Kamailio (TCP) → location → Path → epcscf.
        receiver = await self.registered(f"{self.user}b")
        sender = await self.registered()
        self.command(sender, do="message", target=f"sip:{self.user}b@{DOMAIN}", body="x" * 1400)
        received = await self.event(receiver, "message-received")
        self.assertEqual(received["length"], 1400)
        sent = await self.event(sender, "message-sent")
        self.assertEqual(sent["status"], 200)
        self.assertRegex(self.core.log(), rf"core: MESSAGE sip:{self.user}b@{DOMAIN} from 127\.0\.0\.1:\d+ \(tcp\)")


class KamailioWithServiceRouteTests(KamailioWithoutServiceRouteTests):
    """The same Kamailio returning ``Service-Route: <sip:orig@…;lr>`` (RFC 3608)."""

    service_route = True
