"""A real call (WIC with ICE + DTLS-SRTP ⇄ epcscf ⇄ sipp) as the operator sees it: calls(),
call(id), the metrics, and release() from the console ending it on both sides."""

from __future__ import annotations

import io
import sys

from twisted.internet import reactor as global_reactor
from twisted.internet import task
from twisted.trial import unittest

from epcscf.ops.console import Console
from epcscf.sip.message import Request
from tests.support.wic import as_deferred
from tests.test_calls_media import rtp
from tests import test_calls_w2_sipp as w2  # the module, not its classes: trial would run their tests here


def metric(service, line_start: str) -> float:
    """The value of the first exposition line starting with ``line_start``."""
    text = service.metrics.render()[0].decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start!r} in\n{text}")


class RealCallOperationsTests(unittest.TestCase):
    # The W2 call tests' set-up and helpers (sipp UAS, simulated WIC), without their tests.
    _helpers = w2.CallsThroughTheEdgeTests
    timeout = 60
    ice_mode = "lite"
    setUp = _helpers.setUp
    tearDown = _helpers.tearDown
    _cleanup = _helpers._cleanup
    media_settings = _helpers.media_settings
    spawn_sipp = _helpers.spawn_sipp
    start_uas = _helpers.start_uas
    registered = _helpers.registered
    wic = _helpers.wic
    call_sipp = _helpers.call_sipp
    in_dialog = _helpers.in_dialog
    established_originating_call = _helpers.established_originating_call
    del _helpers

    async def test_release_from_the_console_ends_a_real_call(self) -> None:
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        for seq in range(1, 6):
            wic.send_rtp(rtp(seq))
        await w2.until(lambda: len(wic.received) >= 3)
        output = io.StringIO()
        self.patch(sys, "stdout", output)
        console = Console(self.service)
        call_id = invite.headers.get("Call-ID")

        [row] = console.calls()
        self.assertEqual(
            (row["call_id"], row["direction"], row["state"], row["ice"], row["dtls"]),
            (call_id, "originating", "confirmed", "connected", "connected"),
        )
        self.assertGreaterEqual(row["packets"], 8)  # 5 from the WIC, at least 3 echoed back
        kinds = {entry["kind"] for entry in console.call(call_id[:6])}
        self.assertTrue({"sip-in", "sip-out", "state", "ice", "dtls"} <= kinds, kinds)
        self.assertEqual(metric(self.service, 'epcscf_calls{direction="originating"}'), 1)
        self.assertGreaterEqual(metric(self.service, 'epcscf_media_packets_total{direction="wic_to_core"}'), 5)

        [released] = console.release(call_id, "ops test")
        self.assertEqual(released["released"], 1)
        bye = await as_deferred(client.next_message(10))
        self.assertIsInstance(bye, Request)
        self.assertEqual(bye.method, "BYE")
        self.assertIn('text="ops test"', bye.headers.get("Reason") or "")
        await as_deferred(client.answer(bye, 200))
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])  # sipp got its BYE
        await self.calls.idle()

        [row] = console.calls()
        self.assertEqual((row["state"], row["cause"]), ("terminated", "ops test"))
        self.assertGreaterEqual(row["packets"], 8)  # the figures stay after the end
        self.assertEqual(metric(self.service, 'epcscf_calls{direction="originating"}'), 0)
        self.assertEqual(
            metric(self.service, 'epcscf_calls_ended_total{cause="ops test",direction="originating",layer=""}'), 1
        )
        self.assertGreaterEqual(metric(self.service, 'epcscf_media_packets_total{direction="wic_to_core"}'), 5)

    async def test_drain_lets_a_real_call_run_then_releases_it_on_both_sides(self) -> None:
        client, wic, invite, ok, uas, trace, _ = await self.established_originating_call()
        clock = task.Clock()
        self.service.lifecycle.clock = clock
        self.addCleanup(setattr, self.service.lifecycle, "clock", global_reactor)
        self.addCleanup(clock.advance, 60)  # never leave a drain waiting on the test clock
        stopped = self.service.stopService()
        timeout = self.service.config.service.drain_timeout
        clock.advance(timeout - 1)
        # Still up while draining: media keeps flowing.
        [call] = self.calls.calls()
        wic.send_rtp(rtp(1))
        await w2.until(lambda: len(wic.received) >= 1)
        self.assertFalse(stopped.called)
        clock.advance(1)
        bye = await as_deferred(client.next_message(10))
        self.assertIsInstance(bye, Request)
        self.assertEqual(bye.method, "BYE")
        self.assertIn('text="service shutting down"', bye.headers.get("Reason") or "")
        await as_deferred(client.answer(bye, 200))
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])  # sipp got its BYE
        self.assertEqual(call.release_cause, "service shutting down")
        self.assertFalse(stopped.called)  # the WebSockets stay open until the BYEs are answered
        # sipp may exit before its 200 to our BYE has been read here: wait for both answers.
        await w2.until(lambda: self.service.operations.pending_client_transactions() == 0)
        clock.advance(0.5)
        await stopped
        await self.calls.idle()
        self.assertEqual(self.pool.free_count, self.pool.size, "media ports left allocated")
