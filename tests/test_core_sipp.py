"""Interop: sipp UAC → embedded core (originating, Service-Route) → sipp UAS outside the domain.

The call is a whole dialog (INVITE/180/200/ACK/BYE) over real UDP on 127.0.0.1: the UAC
puts the core's Service-Route URI on top of Route and targets ``sip:service@127.0.0.1:<uas>``
(a non-home URI), so the core acts as the originating S-CSCF and forwards on the
Request-URI; it Record-Routes, so ACK and BYE pass through it as well.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial import unittest

from epcscf.core.service import EmbeddedCore, EmbeddedCoreSettings
from epcscf.sip.transaction_machine import TimerSettings
from tests.support.processes import wait_for
from tests.support.sipp import (
    SippProcess, free_port, headers_named, messages_in_trace, one_per_transaction, port_bound, require_sipp,
    spawn_sipp,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "core")
DOMAIN = "ims.localdomain"


class CoreSippTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.sipp = require_sipp(self)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        users = os.path.join(self.directory, "users")
        with open(users, "w") as handle:
            handle.write("alice:alice-secret\nbob:bob-secret\n")
        self.core_port = free_port()
        self.core = EmbeddedCore(
            EmbeddedCoreSettings(DOMAIN, (f"udp:127.0.0.1:{self.core_port}",), users, timers=TimerSettings()), reactor
        )
        self.core.startService()
        self.addCleanup(self.core.stopService)

    def spawn_sipp(self, name: str, args: list[str]) -> tuple[SippProcess, str]:
        return spawn_sipp(self, self.sipp, [*args, "-timeout", "20s", "-timeout_error"], self.directory, name)

    async def test_originating_call_to_a_non_domain_uas_passes_the_core_both_ways(self) -> None:
        uas_port, uac_port = free_port(), free_port()
        uas, uas_trace = self.spawn_sipp("uas", ["-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1"])
        await wait_for(lambda: port_bound(uas_port, "UDP") or uas.ended.called, timeout=10)
        self.assertFalse(uas.ended.called, f"sipp UAS exited early: {uas.output[-2000:]!r}")
        uac, uac_trace = self.spawn_sipp(
            "uac",
            [
                f"127.0.0.1:{self.core_port}",
                "-sf", os.path.join(FIXTURES, "uac_originating_call.xml"),
                "-key", "uas_port", str(uas_port),
                "-i", "127.0.0.1", "-p", str(uac_port), "-m", "1",
            ],
        )
        uac_code = await uac.ended
        uas_code = await uas.ended
        self.assertEqual(uac_code, 0, f"sipp UAC failed ({uac_code}): {uac.output[-3000:]!r}")
        self.assertEqual(uas_code, 0, f"sipp UAS failed ({uas_code}): {uas.output[-3000:]!r}")

        requests = [m for m in one_per_transaction(messages_in_trace(uas_trace)) if not m.startswith("SIP/2.0")]
        self.assertEqual([m.split()[0] for m in requests], ["INVITE", "ACK", "BYE"])
        invite = requests[0]
        self.assertTrue(invite.startswith(f"INVITE sip:service@127.0.0.1:{uas_port} SIP/2.0"))
        # The Service-Route entry was consumed (RFC 3261 §16.4) and the core Record-Routed.
        self.assertEqual(headers_named(invite, "Route"), [])
        self.assertEqual(
            headers_named(invite, "Record-Route"), [f"Record-Route: <sip:127.0.0.1:{self.core_port};transport=udp;lr>"]
        )
        # ACK and BYE came through the core: its Via is on top of the UAC's.
        for request in requests[1:]:
            vias = headers_named(request, "Via")
            self.assertEqual(len(vias), 2, request)
            self.assertIn(f"127.0.0.1:{self.core_port}", vias[0])
        self.assertEqual(self.core.proxy.active(), [])

    async def test_sipp_registers_with_digest_and_receives_a_call_through_the_core(self) -> None:
        uas_port, register_port, uac_port = free_port(), free_port(), free_port()
        uas, uas_trace = self.spawn_sipp("uas", ["-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1"])
        await wait_for(lambda: port_bound(uas_port, "UDP") or uas.ended.called, timeout=10)
        registrar_client, register_trace = self.spawn_sipp(
            "register",
            [
                f"127.0.0.1:{self.core_port}",
                "-sf", os.path.join(FIXTURES, "uac_register_digest.xml"),
                "-key", "uas_port", str(uas_port),
                # sipp's digest uri defaults to the peer address; RFC 7616 §3.4.6 wants the R-URI
                "-auth_uri", DOMAIN,
                "-i", "127.0.0.1", "-p", str(register_port), "-m", "1",
            ],
        )
        register_code = await registrar_client.ended
        self.assertEqual(register_code, 0, f"sipp REGISTER failed: {registrar_client.output[-3000:]!r}")
        [binding] = self.core.location.bindings(f"sip:bob@{DOMAIN}")
        self.assertEqual(binding.contact, f"sip:bob@127.0.0.1:{uas_port}")
        registers = [m for m in one_per_transaction(messages_in_trace(register_trace)) if m.startswith("REGISTER ")]
        self.assertIn('algorithm=MD5', headers_named(registers[1], "Authorization")[0])

        uac, _ = self.spawn_sipp(
            "uac",
            [
                f"127.0.0.1:{self.core_port}",
                "-sf", os.path.join(FIXTURES, "uac_call_to_bob.xml"),
                "-i", "127.0.0.1", "-p", str(uac_port), "-m", "1",
            ],
        )
        self.assertEqual(await uac.ended, 0, f"sipp UAC failed: {uac.output[-3000:]!r}")
        self.assertEqual(await uas.ended, 0, f"sipp UAS failed: {uas.output[-3000:]!r}")
        requests = [m for m in one_per_transaction(messages_in_trace(uas_trace)) if not m.startswith("SIP/2.0")]
        self.assertEqual([m.split()[0] for m in requests], ["INVITE", "ACK", "BYE"])
        # Terminating: the Request-URI became bob's registered contact (no Path was stored).
        self.assertTrue(requests[0].startswith(f"INVITE sip:bob@127.0.0.1:{uas_port} SIP/2.0"))
        self.assertEqual(headers_named(requests[0], "P-Called-Party-ID"), [f"P-Called-Party-ID: <sip:bob@{DOMAIN}>"])
