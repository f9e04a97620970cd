"""Interop: sipp UAC → our stateful proxy → sipp UAS, over UDP and TCP on 127.0.0.1.

The proxy service is assembled here from the real pieces (TransportManager +
TransactionLayer + StatefulProxy + DefaultRoutingPolicy with the sipp UAS as static next
hop).  Each sipp runs as a child process bounded by ``-m``, ``-timeout`` and
``-timeout_error``; assertions use sipp's exit code and its ``-trace_msg`` log.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from epcscf.sip.proxy import ProxySettings, StatefulProxy
from epcscf.sip.proxy_policy import DefaultRoutingPolicy
from epcscf.sip.resolver import NextHopResolver
from epcscf.sip.transaction import TransactionLayer
from epcscf.sip.transaction_machine import TimerSettings
from epcscf.sip.transport import TransportManager
from tests.support.processes import wait_for
from tests.support.sipp import (
    SippProcess, free_port, headers_named, messages_in_trace, one_per_transaction, port_bound, require_sipp,
    spawn_sipp,
)
from tests.test_sip_resolver import MemoryAuthority

SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sipp")


class SippInteropTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> Any:
        self.sipp = require_sipp(self)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def start_proxy(self, transport: str, uas_port: int) -> int:
        """Our proxy on 127.0.0.1 (UDP and TCP listeners); next hop: the sipp UAS."""
        self.proxy_port = free_port()
        policy_holder: dict[str, Any] = {}
        layer_holder: dict[str, TransactionLayer] = {}
        transports = TransportManager(reactor, lambda message, connection: layer_holder["layer"].receive(message, connection))
        transports.listen(f"udp:127.0.0.1:{self.proxy_port}")
        transports.listen(f"tcp:127.0.0.1:{self.proxy_port}")
        resolver = NextHopResolver(MemoryAuthority([]))
        policy = DefaultRoutingPolicy(transports, resolver, [f"sip:127.0.0.1:{uas_port};transport={transport.lower()}"])
        policy_holder["policy"] = policy
        proxy = StatefulProxy(reactor, transports, resolver, policy, ProxySettings(timer_c=181.0))
        layer = TransactionLayer(reactor, proxy, lambda connection: TimerSettings())
        layer_holder["layer"] = layer
        proxy.transactions = layer
        self.proxy = proxy

        def stop() -> defer.Deferred:
            layer.close()
            return transports.close()

        self.addCleanup(stop)
        return self.proxy_port

    def spawn_sipp(self, name: str, args: list[str]) -> tuple[SippProcess, str]:
        errors = os.path.join(self.directory, f"{name}_errors.log")
        bounded = [*args, "-timeout", "20s", "-timeout_error", "-trace_err", "-error_file", errors]
        return spawn_sipp(self, self.sipp, bounded, self.directory, name)

    async def run_pair(self, transport: str, uas_args: list[str], uac_args: list[str]) -> tuple[str, str]:
        uas_port, uac_port = free_port(), free_port()
        flag = ["-t", "t1"] if transport == "TCP" else ["-t", "u1"]
        uas, uas_trace = self.spawn_sipp("uas", [*uas_args, "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1", *flag])
        await wait_for(lambda: port_bound(uas_port, transport) or uas.ended.called, timeout=10)
        self.assertFalse(uas.ended.called, f"sipp UAS exited early: {uas.output[-2000:]!r}")
        proxy_port = self.start_proxy(transport, uas_port)
        uac, uac_trace = self.spawn_sipp(
            "uac",
            [f"127.0.0.1:{proxy_port}", *uac_args, "-i", "127.0.0.1", "-p", str(uac_port), "-m", "1", *flag],
        )
        uac_code = await uac.ended
        uas_code = await uas.ended
        self.assertEqual(uac_code, 0, f"sipp UAC failed ({uac_code}): {uac.output[-3000:]!r}\n{_tail(uac_trace)}")
        self.assertEqual(uas_code, 0, f"sipp UAS failed ({uas_code}): {uas.output[-3000:]!r}\n{_tail(uas_trace)}")
        return uac_trace, uas_trace

    def assert_proxied(self, uas_trace: str, method: str, transport: str, record_routed: bool, rport: bool = False) -> str:
        received = [m for m in messages_in_trace(uas_trace) if m.startswith(f"{method} ")]
        self.assertTrue(received, f"the UAS never logged a {method}")
        first = received[0]
        vias = headers_named(first, "Via")
        self.assertEqual(len(vias), 2, first)  # the UAC's Via and ours
        self.assertIn(f"SIP/2.0/{transport} 127.0.0.1:{self.proxy_port};branch=z9hG4bK", vias[0])
        if rport:
            # RFC 3581 §4: the UAC asked for rport → we filled it in and added received.
            self.assertRegex(vias[1], r";rport=\d+")
            self.assertIn(";received=127.0.0.1", vias[1])
        else:
            # RFC 3261 §18.2.1: sent-by already equals the source address: nothing added.
            self.assertNotIn("received=", vias[1])
        record_routes = headers_named(first, "Record-Route")
        if record_routed:
            self.assertEqual(
                record_routes, [f"Record-Route: <sip:127.0.0.1:{self.proxy_port};transport={transport.lower()};lr>"]
            )
        else:
            self.assertEqual(record_routes, [])
        self.assertIn("Max-Forwards: 69", first)
        return first

    async def test_invite_call_over_udp(self) -> None:
        uac_trace, uas_trace = await self.run_pair("UDP", ["-sn", "uas"], ["-sn", "uac", "-s", "bob", "-d", "100"])
        self.assert_proxied(uas_trace, "INVITE", "UDP", record_routed=True)
        # over UDP a late answer brings retransmissions (RFC 3261 §17): each transaction counts once
        uas_methods = [m.split()[0] for m in one_per_transaction(messages_in_trace(uas_trace)) if not m.startswith("SIP/2.0")]
        self.assertEqual(uas_methods, ["INVITE", "ACK", "BYE"])
        uac_statuses = [m.split()[1] for m in one_per_transaction(messages_in_trace(uac_trace)) if m.startswith("SIP/2.0")]
        self.assertIn("180", uac_statuses)
        self.assertEqual(uac_statuses.count("200"), 2)  # INVITE and BYE
        self.assertEqual(self.proxy.active(), [])

    async def test_invite_call_over_tcp(self) -> None:
        uac_trace, uas_trace = await self.run_pair("TCP", ["-sn", "uas"], ["-sn", "uac", "-s", "bob", "-d", "100"])
        self.assert_proxied(uas_trace, "INVITE", "TCP", record_routed=True)
        uas_methods = [m.split()[0] for m in messages_in_trace(uas_trace) if not m.startswith("SIP/2.0")]
        self.assertEqual(uas_methods, ["INVITE", "ACK", "BYE"])

    async def test_register_passes_through(self) -> None:
        uac_trace, uas_trace = await self.run_pair(
            "UDP", ["-sf", os.path.join(SCENARIOS, "uas_register.xml")], ["-sf", os.path.join(SCENARIOS, "uac_register.xml")]
        )
        register = self.assert_proxied(uas_trace, "REGISTER", "UDP", record_routed=False, rport=True)
        self.assertIn("Contact: <sip:alice@127.0.0.1:", register)

    async def test_cancel_before_answer_gives_487(self) -> None:
        uac_trace, uas_trace = await self.run_pair(
            "UDP", ["-sf", os.path.join(SCENARIOS, "uas_cancel.xml")], ["-sf", os.path.join(SCENARIOS, "uac_cancel.xml")]
        )
        uas_messages = one_per_transaction(messages_in_trace(uas_trace))
        self.assert_proxied(uas_trace, "INVITE", "UDP", record_routed=True, rport=True)
        (cancel,) = [m for m in uas_messages if m.startswith("CANCEL ")]
        (invite,) = [m for m in uas_messages if m.startswith("INVITE ")]
        # RFC 3261 §16.10 / §9.1: our CANCEL carries the same Via (branch) as our INVITE.
        self.assertEqual(headers_named(cancel, "Via"), headers_named(invite, "Via")[:1])
        uac_statuses = [m.split()[1] for m in messages_in_trace(uac_trace) if m.startswith("SIP/2.0")]
        self.assertIn("487", uac_statuses)
        # The UAS got the hop-by-hop ACK for its 487 from our client transaction.
        self.assertTrue(any(m.startswith("ACK ") for m in uas_messages))


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-3000:]
    except OSError:
        return "(no trace)"
