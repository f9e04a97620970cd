"""Drain on stop and reload of the ini files, on a running epcscf with real WICs."""

from __future__ import annotations

import asyncio
import os
import signal

import websockets
from twisted.internet import reactor, task
from twisted.trial import unittest

from epcscf.logging import LEVELS, level_predicate, set_log_level
from epcscf.ops.console import Console
from epcscf.pcscf.call_state import CallDirection
from epcscf.service import EpcscfService
from epcscf.sip.message import Request
from tests.support.deployment import DOMAIN, start_deployment, ws_url
from tests.test_ops_console import add_call, asyncio_test, install_call_manager, registered_wic, wait

ORIGIN = "http://127.0.0.1:8081"


def override_path(service: EpcscfService) -> str:
    """The second ini file of a deployment started with ``extra`` (what a reload re-reads)."""
    return service.config.files[-1]


async def handshake_status(url: str, origin: str) -> int:
    """101 when the WebSocket opens, else the HTTP status of the refusal."""
    try:
        socket = await websockets.connect(url, subprotocols=["sip"], additional_headers={"Origin": origin})
    except websockets.InvalidStatus as error:
        return error.response.status_code
    await socket.close()
    return 101


class ReloadTests(unittest.TestCase):
    def setUp(self) -> None:
        # The overload control on, as deployed: one test reloads its thresholds.
        self.service = start_deployment(self, "[log]\nlevel = info\n[overload]\nenabled = true\n")
        self.console = Console(self.service)
        self.addCleanup(set_log_level, "", "info")

    def rewrite(self, text: str) -> None:
        with open(override_path(self.service), "w") as handle:
            handle.write(text)

    @asyncio_test
    async def test_good_file_applies_live_keys_and_lists_the_others(self) -> None:
        url = ws_url(self.service)
        self.assertEqual(await handshake_status(url, "https://new.example.com"), 403)
        self.rewrite(
            "[log]\nlevel = debug\n"
            f"[ws]\nallowed_origins = {ORIGIN}, https://new.example.com\nmax_message_size = 4096\n"
            "[core]\nregistration_max_expires = 120\n"
        )
        shown: list[str] = []
        self.patch(self.console, "_say", shown.append)
        rows = self.console.reload()
        self.assertRegex(shown[0], r"\[ws\] allowed_origins\s+http://127.0.0.1:8081\s+http://127.0.0.1:8081, https://new.example.com\s+yes")
        by_setting = {row["setting"]: row for row in rows}
        self.assertEqual(by_setting["[log] level"]["applied"], "yes")
        self.assertEqual(by_setting["[ws] allowed_origins"]["new"], f"{ORIGIN}, https://new.example.com")
        self.assertEqual(by_setting["[ws] allowed_origins"]["applied"], "yes")
        self.assertEqual(by_setting["[ws] max_message_size"]["applied"], "yes")
        self.assertEqual(by_setting["[core] registration_max_expires"]["applied"], "restart needed")
        # Applied: the new Origin is let in, the log level and message limit changed.
        self.assertEqual(await handshake_status(url, "https://new.example.com"), 101)
        self.assertEqual(level_predicate.logLevelForNamespace("epcscf.pcscf"), LEVELS["debug"])
        self.assertEqual(self.service.pcscf.ws_factory.settings.max_message_size, 4096)
        self.assertEqual(self.service.pcscf.ws_factory.limits.max_message_size, 4096)
        # Not applied keys stay out of the running configuration.
        self.assertEqual(self.service.config.core.registration_max_expires, 3600)
        self.assertEqual(self.service.config.ws.max_message_size, 4096)
        self.assertIs(self.service.pcscf.config, self.service.config)

    def test_bad_file_is_refused_in_one_line_and_changes_nothing(self) -> None:
        before = self.service.config
        settings = self.service.pcscf.ws_factory.settings
        self.rewrite("[ws]\nallowed_origins = https://new.example.com\n[sip]\nt1 = soon\n")
        output = []
        self.patch(self.console, "_say", output.append)
        self.assertEqual(self.console.reload(), [])
        self.assertEqual(
            output,
            [
                "reload refused, running configuration kept: "
                f"{override_path(self.service)}: [sip] t1: expected a number of seconds, got 'soon'"
            ],
        )
        self.assertIs(self.service.config, before)
        self.assertIs(self.service.pcscf.ws_factory.settings, settings)

    @asyncio_test
    async def test_sighup_reloads(self) -> None:
        self.rewrite("[log]\nlevel = warn\n[sip]\nmax_headers = 64\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if self.service.config.sip.max_headers == 64:
                break
            await asyncio.sleep(0.01)
        self.assertEqual(self.service.config.sip.max_headers, 64)
        self.assertEqual(self.service.pcscf.transports.settings.limits.max_headers, 64)
        self.assertEqual(level_predicate.logLevelForNamespace(""), LEVELS["warn"])

    @asyncio_test
    async def test_sighup_applies_overload_thresholds_and_the_window_of_calls_in_setup(self) -> None:
        node = self.service.pcscf
        self.rewrite("[overload]\nenabled = true\nlag_high = 0.4\nlag_low = 0.2\nretry_after = 17\nsetup_target = 0\n"
                     "max_calls_in_setup = 3\nauth_failures = 4\nlag_interval = 0.5\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if self.service.config.overload.retry_after == 17:
                break
            await asyncio.sleep(0.01)
        # What the next decision reads changed at once …
        self.assertEqual((node.overload.settings.lag_high, node.overload.settings.lag_low), (0.4, 0.2))
        self.assertEqual(node.new_work_gate.controller.settings.retry_after, 17)
        self.assertEqual(node.auth_failures.settings.auth_failures, 4)
        self.assertEqual(node.setup_window.limit, 3)  # a configured capacity alone
        # … the probe's interval needs a restart.
        self.assertEqual(self.service.config.overload.lag_interval, 0.05)
        self.assertEqual(node.overload_settings.lag_interval, 0.05)

    @asyncio_test
    async def test_sighup_with_a_bad_file_keeps_running(self) -> None:
        before = self.service.config
        self.rewrite("[sip]\nmax_headers = lots\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.1)
        self.assertIs(self.service.config, before)

    def test_signal_handler_restored_on_stop(self) -> None:
        previous = signal.getsignal(signal.SIGHUP)
        self.assertNotEqual(previous, signal.SIG_DFL)  # ours, while running
        other = start_deployment(self)
        ours = signal.getsignal(signal.SIGHUP)
        self.assertIsNot(ours, previous)
        return other.stopService().addCallback(lambda _: self.assertIs(signal.getsignal(signal.SIGHUP), previous))


class DrainTests(unittest.TestCase):
    def setUp(self) -> None:
        self.service = start_deployment(self, "[service]\ndrain_timeout = 10\n")
        self.clock = task.Clock()
        self.service.lifecycle.clock = self.clock
        # Clean-up (last in, first out): finish a drain stuck on the test clock, then let a drain
        # that has not started yet run on the real reactor.
        self.addCleanup(setattr, self.service.lifecycle, "clock", reactor)
        self.addCleanup(self.clock.advance, 60)

    @asyncio_test
    async def test_idle_service_stops_at_once(self) -> None:
        await wait(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.service.running)

    @asyncio_test
    async def test_drain_with_a_registration_a_transaction_and_a_call(self) -> None:
        alice = await registered_wic(self, self.service, "alice")
        bob = await registered_wic(self, self.service, "bob")
        manager = install_call_manager(self.service)
        (alice_flow,) = [f for f in self.service.pcscf.flows if self.service.pcscf.registrations.for_flow(f.id)[0].aor.startswith("sip:alice")]
        call = add_call(manager, "up@wic", alice_flow.connection, CallDirection.ORIGINATING, packets=5)
        # A MESSAGE from alice that bob has not answered yet: a transaction in progress.
        message = alice.request("MESSAGE", f"sip:bob@{DOMAIN}", content_type="text/plain", body=b"hi")
        await alice.send(message)
        received = await bob.next_message()
        self.assertIsInstance(received, Request)
        self.assertEqual(received.method, "MESSAGE")
        self.assertEqual(self.service.operations.pending_transactions(), 2)  # at the WIC edge and toward bob

        stopped = self.service.stopService()
        self.assertTrue(self.service.lifecycle.draining)
        await asyncio.sleep(0.05)  # the listening socket closes in the next reactor turn
        # 1. no new WebSocket connections
        with self.assertRaises(OSError):
            await websockets.connect(ws_url(self.service), subprotocols=["sip"])
        # 2. registrations still answered on the flows that exist
        refreshed = await alice.register()
        self.assertEqual(refreshed.status, 200)
        # 3. a new INVITE gets 503 + Retry-After
        invite = alice.request("INVITE", f"sip:bob@{DOMAIN}")
        invite.headers.add("Contact", f"<sip:alice@{alice.host};transport=ws;ob>")
        await alice.send(invite)
        refused = await alice.final_response()
        self.assertEqual(refused.status, 503)
        self.assertEqual(refused.headers.get("Retry-After"), "10")
        # 4. the transaction in progress completes
        await bob.answer(received, 200)
        delivered = await alice.final_response()
        self.assertEqual(delivered.status, 200)
        self.assertEqual(self.service.operations.pending_transactions(), 0)
        # 5. the call may continue until drain_timeout, then it is released
        self.clock.advance(9.5)
        self.assertFalse(stopped.called)
        self.assertEqual(manager.calls(), [call])
        self.clock.advance(0.5)
        self.assertEqual(manager.calls(), [])
        self.assertEqual(call.release_cause, "service shutting down")
        await wait(stopped)
        self.assertFalse(self.service.running)
        self.assertEqual(len(self.service.pcscf.registrations.all()), 0)

    @asyncio_test
    async def test_an_unanswered_transaction_holds_the_stop_no_longer_than_the_timeout_and_grace(self) -> None:
        from epcscf.ops.lifecycle import RELEASE_GRACE

        alice = await registered_wic(self, self.service, "alice")
        bob = await registered_wic(self, self.service, "bob")
        await alice.send(alice.request("MESSAGE", f"sip:bob@{DOMAIN}", content_type="text/plain", body=b"hi"))
        await bob.next_message()  # bob never answers
        stopped = self.service.stopService()
        self.clock.advance(10)  # drain_timeout: nothing to release, but a request is still out toward bob
        # alice's MESSAGE toward the core, and the core's toward bob: both through the eP-CSCF
        self.assertEqual(self.service.operations.pending_client_transactions(), 2)
        self.clock.advance(RELEASE_GRACE - 0.5)
        self.assertFalse(stopped.called)
        self.clock.advance(0.5)
        await wait(stopped)
        self.assertFalse(self.service.running)
