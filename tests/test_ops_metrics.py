"""Prometheus metrics: scraped over real HTTP from a running epcscf with a registered WIC."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import sys
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from epcscf.config import load
from epcscf.ops.metrics import EventLoopLag, registration_result
from epcscf.pcscf.call_state import CallDirection
from epcscf.service import EpcscfService, StartupError
from tests.support.deployment import start_deployment, write_deployment_config
from tests.support.processes import wait_for
from tests.support.reactor import asyncio_loop
from epcscf.ops.console import Console
from tests.test_ops_console import add_call, asyncio_test, install_call_manager, registered_wic, wait

METRICS = "[metrics]\nenabled = true\nport = 0\n"


def scrape_url(service: EpcscfService, path: str = "/metrics") -> str:
    assert service.metrics_service is not None
    return f"http://127.0.0.1:{service.metrics_service.port}{path}"


async def fetch(url: str) -> tuple[int, str, bytes]:
    response = await wait(Agent(reactor).request(b"GET", url.encode()))
    body = await wait(readBody(response))
    content_type = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
    return response.code, content_type, body


async def samples(service: EpcscfService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from one scrape."""
    code, content_type, body = await fetch(scrape_url(service))
    assert code == 200, code
    assert content_type.startswith("text/plain"), content_type
    result = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


class ScrapeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.service = start_deployment(self, METRICS)

    def test_listener_on_loopback(self) -> None:
        assert self.service.metrics_service is not None
        self.assertEqual(self.service.metrics_service._listener.getHost().host, "127.0.0.1")

    @asyncio_test
    async def test_idle_service(self) -> None:
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_ws_connections"), 0)
        self.assertEqual(value(scraped, "epcscf_ws_connections_opened_total"), 0)
        self.assertEqual(value(scraped, "epcscf_registrations"), 0)
        self.assertEqual(value(scraped, "epcscf_calls", direction="originating"), 0)
        self.assertEqual(value(scraped, "epcscf_draining"), 0)
        self.assertEqual(value(scraped, "epcscf_registration_results_total", result="ok"), 0)

    @asyncio_test
    async def test_after_a_registration(self) -> None:
        client = await registered_wic(self, self.service)
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_ws_connections"), 1)
        self.assertEqual(value(scraped, "epcscf_ws_connections_opened_total"), 1)
        self.assertEqual(value(scraped, "epcscf_registrations"), 1)
        self.assertIn(("epcscf_sip_transactions", (("kind", "server"),)), scraped)
        # Over WebSocket a REGISTER server transaction ends with its final response (Timer J = 0).
        self.assertLessEqual(value(scraped, "epcscf_sip_transactions", kind="server"), 2)
        # De-registration: the binding ends, counted by reason.
        await client.transact(client.register_request(expires=0))
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_registrations"), 0)
        self.assertEqual(value(scraped, "epcscf_registrations_ended_total", reason="deregistered"), 1)
        await client.close()
        for _ in range(50):
            if not self.service.pcscf.flows:
                break
            await task.deferLater(reactor, 0.02, lambda: None).asFuture(asyncio.get_running_loop())
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_ws_connections"), 0)
        self.assertEqual(value(scraped, "epcscf_ws_connections_opened_total"), 1)

    @asyncio_test
    async def test_calls_and_media(self) -> None:
        await registered_wic(self, self.service)
        (flow,) = list(self.service.pcscf.flows)
        manager = install_call_manager(self.service)
        add_call(manager, "a@wic", flow.connection, CallDirection.ORIGINATING, packets=100)
        add_call(manager, "b@core", flow.connection, CallDirection.TERMINATING, packets=10)
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_calls", direction="originating"), 1)
        self.assertEqual(value(scraped, "epcscf_calls", direction="terminating"), 1)
        self.assertEqual(value(scraped, "epcscf_media_packets_total", direction="wic_to_core"), 110)
        self.assertEqual(value(scraped, "epcscf_media_packets_total", direction="core_to_wic"), 112)
        self.assertEqual(value(scraped, "epcscf_media_bytes_total", direction="wic_to_core"), 110 * 172)
        # A released call: counted once by cause, and its media stays in the totals.
        manager.release("b@core", "maintenance")
        manager._media_failed(manager.find("a@wic")[0], "ice", "ICE failed")
        for _ in range(2):  # two scrapes: each ended call is counted once
            scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_calls", direction="originating"), 0)
        self.assertEqual(value(scraped, "epcscf_calls_ended_total", direction="terminating", cause="maintenance", layer=""), 1)
        self.assertEqual(value(scraped, "epcscf_calls_ended_total", direction="originating", cause="ICE failed", layer="ice"), 1)
        self.assertEqual(value(scraped, "epcscf_media_failures_total", layer="ice"), 1)
        self.assertEqual(value(scraped, "epcscf_media_failures_total", layer="dtls"), 0)
        self.assertEqual(value(scraped, "epcscf_media_packets_total", direction="wic_to_core"), 110)
        self.assertEqual(value(scraped, "epcscf_media_packets_total", direction="core_to_wic"), 112)

    @asyncio_test
    async def test_consent_loss_is_told_apart_from_ice_failure(self) -> None:
        await registered_wic(self, self.service)
        (flow,) = list(self.service.pcscf.flows)
        manager = install_call_manager(self.service)
        for name, reason in (("c1", "ICE consent lost on m-line 0: no response"), ("c2", "DTLS: handshake timed out")):
            add_call(manager, name, flow.connection, CallDirection.ORIGINATING, packets=1)
            layer = "dtls" if reason.startswith("DTLS") else "ice"
            manager._media_failed(manager.find(name)[0], layer, reason)
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_media_failures_total", layer="consent"), 1)
        self.assertEqual(value(scraped, "epcscf_media_failures_total", layer="dtls"), 1)
        self.assertEqual(value(scraped, "epcscf_media_failures_total", layer="ice"), 0)
        # Never scraped while live: their media figures come from the snapshot kept at the end.
        self.assertEqual(value(scraped, "epcscf_media_packets_total", direction="wic_to_core"), 2)

    @asyncio_test
    async def test_counted_events(self) -> None:
        metrics = self.service.metrics
        metrics.ws_refused("origin")
        metrics.ws_refused("origin")
        metrics.parse_error("WS")
        metrics.register_response(401)
        metrics.register_response(200)
        metrics.register_response(180)  # provisional: not a result
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_ws_connections_refused_total", reason="origin"), 2)
        self.assertEqual(value(scraped, "epcscf_sip_parse_errors_total", transport="ws"), 1)
        self.assertEqual(value(scraped, "epcscf_registration_results_total", result="challenged"), 1)
        self.assertEqual(value(scraped, "epcscf_registration_results_total", result="ok"), 1)

    @asyncio_test
    async def test_events_from_real_traffic_are_counted(self) -> None:
        import websockets

        from tests.support.deployment import ws_url

        with self.assertRaises(websockets.InvalidStatus):  # no "sip" subprotocol → 406
            await websockets.connect(ws_url(self.service), subprotocols=["chat"])
        with self.assertRaises(websockets.InvalidStatus):  # foreign browser origin → 403
            await websockets.connect(ws_url(self.service), subprotocols=["sip"], additional_headers={"Origin": "https://evil.example"})
        client = await registered_wic(self, self.service)  # one 401, then 200
        # A CSeq that is not a number: unparseable, answered 400 on the same connection.
        await client.socket.send(
            "MESSAGE sip:x@ims.localdomain SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n"
            "From: <sip:alice@ims.localdomain>;tag=1\r\nTo: <sip:x@ims.localdomain>\r\nCall-ID: c1\r\n"
            "CSeq: one MESSAGE\r\nMax-Forwards: 70\r\n\r\n"
        )
        await wait_for(lambda: bool(client.unparsed), timeout=5)
        self.assertTrue(client.unparsed[0].startswith(b"SIP/2.0 400 "), client.unparsed)
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_ws_connections_refused_total", reason="subprotocol"), 1)
        self.assertEqual(value(scraped, "epcscf_ws_connections_refused_total", reason="origin"), 1)
        self.assertEqual(value(scraped, "epcscf_sip_parse_errors_total", transport="ws"), 1)
        self.assertEqual(value(scraped, "epcscf_registration_results_total", result="challenged"), 1)
        self.assertEqual(value(scraped, "epcscf_registration_results_total", result="ok"), 1)

    @asyncio_test
    async def test_openmetrics_on_request_and_404_elsewhere(self) -> None:
        response = await wait(
            Agent(reactor).request(
                b"GET",
                scrape_url(self.service).encode(),
                Headers({b"Accept": [b"application/openmetrics-text; version=1.0.0"]}),
            )
        )
        body = await wait(readBody(response))
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))
        code, _, _ = await fetch(scrape_url(self.service, "/"))
        self.assertEqual(code, 404)

    def test_two_services_have_separate_registries(self) -> None:
        other = start_deployment(self, METRICS)
        self.service.metrics.ws_refused("subprotocol")
        mine = self.service.metrics.render()[0]
        theirs = other.metrics.render()[0]
        self.assertIn(b'epcscf_ws_connections_refused_total{reason="subprotocol"} 1.0', mine)
        self.assertNotIn(b'reason="subprotocol"', theirs)

    def test_port_in_use_stops_the_start_with_one_line(self) -> None:
        assert self.service.metrics_service is not None
        port = self.service.metrics_service.port
        directory = os.path.abspath(self.mktemp())
        override = os.path.join(directory, "override.ini")
        base = write_deployment_config(directory)
        with open(override, "w") as handle:
            handle.write(f"[metrics]\nenabled = true\nport = {port}\n")
        config = load([base, override])
        service = EpcscfService(config)
        error = self.assertRaises(StartupError, service.startService)
        self.addCleanup(service.stopService)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", str(error))


class EventLoopLagTests(unittest.TestCase):
    def test_lag_is_how_late_the_timer_ran(self) -> None:
        clock = task.Clock()
        histogram = Histogram("lag_seconds", "test", registry=CollectorRegistry())
        lag = EventLoopLag(clock, histogram, interval=1.0)
        lag.start()
        clock.advance(1.0)
        self.assertEqual(lag.last, 0.0)
        clock.advance(1.75)  # the reactor was busy: the 2.0 s timer ran at 2.75 s
        self.assertAlmostEqual(lag.last, 0.75)
        clock.advance(1.0)  # rescheduled from when it ran: due 3.75
        self.assertEqual(lag.last, 0.0)
        self.assertAlmostEqual(lag.worst, 0.75)
        self.assertEqual(histogram._sum.get(), 0.75)
        lag.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_registration_result_labels(self) -> None:
        self.assertEqual(
            [registration_result(status) for status in (200, 401, 407, 403, 423, 500, 503)],
            ["ok", "challenged", "challenged", "rejected", "interval_too_brief", "server_error", "server_error"],
        )


# Short SIP timers so that every transaction visibly ends within the test (Timers K, L, M).
SHORT_TIMERS = "[sip]\nt1 = 0.05\nt2 = 0.4\nt4 = 0.2\nwic_t1 = 0.05\nwic_t2 = 0.4\nwic_t4 = 0.2\n"
#: the leak-accounting gauges that must come back to exactly zero once a call is over
CALL_HELD = ("epcscf_ice_agents", "epcscf_dtls_sessions", "epcscf_media_ports_in_use", "epcscf_sip_timers")


class LeakAccountingTests(unittest.TestCase):
    """The live counts of what a call holds, over a real call: WIC (WebSocket, aioice, DTLS) →
    epcscf → embedded core → sipp UAS, then BYE; every count returns to its idle value."""

    timeout = 60

    def setUp(self) -> None:
        import aioice.ice

        from tests.support.sipp import require_sipp
        from tests.test_calls_media import LOCAL

        asyncio_loop()
        self.sipp = require_sipp(self)
        self.patch(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOCAL])
        self.service = start_deployment(self, METRICS + SHORT_TIMERS)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.until = functools.partial(wait_for, interval=0.05, what=lambda: str(self.service.pcscf.resource_counts()))

    async def sipp_uas(self) -> int:
        from tests.support.sipp import SCENARIOS, free_port, port_bound, spawn_sipp

        port = free_port()
        args = ["-sf", os.path.join(SCENARIOS, "calls_uas_answer.xml"), "-i", "127.0.0.1", "-p", str(port),
                "-m", "1", "-timeout", "30s", "-timeout_error"]
        spawn_sipp(self, self.sipp, args, self.directory, "uas")
        await self.until(lambda: port_bound(port, "UDP"), 10)
        return port

    def stats(self) -> dict[str, Any]:
        output = io.StringIO()
        self.patch(sys, "stdout", output)
        try:
            return {row["name"]: row["value"] for row in Console(self.service).stats()}
        finally:
            self.patch(sys, "stdout", sys.__stdout__)

    @asyncio_test
    async def test_counts_follow_a_real_call_and_return_to_idle(self) -> None:
        from epcscf.media import DtlsRole
        from epcscf.sip.message import Response
        from tests.test_calls_media import SimulatedWic
        from tests.test_calls_w2_sipp import CallsThroughTheEdgeTests

        node = self.service.pcscf
        port = await self.sipp_uas()
        client = await registered_wic(self, self.service)
        await self.until(lambda: node.resource_counts()["server_transactions"] == node.resource_counts()["client_transactions"]
                         == node.resource_counts()["sip_timers"] == 0)
        idle = await samples(self.service)
        for name in CALL_HELD:
            self.assertEqual(value(idle, name), 0, name)
        self.assertGreater(value(idle, "process_open_fds"), 0)  # prometheus-client's ProcessCollector

        wic = SimulatedWic(controlling=True)
        # SimulatedWic awaits Deferreds: it runs as a Deferred coroutine, this test as an asyncio task.
        self.addCleanup(lambda: defer.ensureDeferred(wic.close()))
        await wait(defer.ensureDeferred(wic.gather()))
        invite = client.request("INVITE", f"sip:echo@127.0.0.1:{port}", body=wic.sdp("actpass"), content_type="application/sdp")
        invite.headers.add("Contact", f"<sip:alice@{client.host};transport=ws;ob>")
        await client.send(invite)
        ok = await client.final_response(timeout=15)
        self.assertEqual(ok.status, 200)
        in_dialog = CallsThroughTheEdgeTests.in_dialog
        await client.send(in_dialog(self, client, "ACK", invite, ok))
        await wait(defer.ensureDeferred(wic.connect(ok.body, DtlsRole.SERVER)))  # we answered a=setup:active

        during = await samples(self.service)
        self.assertEqual(value(during, "epcscf_calls", direction="originating"), 1)
        self.assertEqual(value(during, "epcscf_ice_agents"), 1)
        self.assertEqual(value(during, "epcscf_dtls_sessions"), 1)
        # one ICE host candidate socket toward the WIC, RTP and RTCP toward the core
        self.assertEqual(value(during, "epcscf_media_ports_in_use"), 3)
        self.assertGreater(value(during, "epcscf_sip_timers"), 0)  # RFC 6026 Timer L/M of the INVITE
        self.assertGreater(value(during, "epcscf_asyncio_tasks"), value(idle, "epcscf_asyncio_tasks"))
        self.assertGreater(value(during, "epcscf_reactor_delayed_calls"), value(idle, "epcscf_reactor_delayed_calls"))
        self.assertGreaterEqual(value(during, "process_open_fds"), value(idle, "process_open_fds") + 3)
        console = self.stats()
        self.assertEqual((console["ice agents"], console["dtls sessions"], console["media ports in use"]), (1, 1, 3))
        self.assertGreater(console["open fds"], 0)

        await client.send(in_dialog(self, client, "BYE", invite, ok))
        bye_answer = await client.final_response()
        self.assertIsInstance(bye_answer, Response)
        self.assertEqual(bye_answer.status, 200)
        await wait(defer.ensureDeferred(wic.close()))
        await self.until(lambda: all(node.resource_counts()[key] == 0 for key in
                                     ("calls", "ice_agents", "dtls_sessions", "media_ports_in_use",
                                      "server_transactions", "client_transactions", "sip_timers")), 15)
        after = await samples(self.service)
        self.assertEqual(value(after, "epcscf_calls", direction="originating"), 0)
        for name in CALL_HELD:
            self.assertEqual(value(after, name), 0, name)
        # the call's ICE socket and RTP/RTCP pair stay bound for the next calls (epcscf.ice.shelf)
        self.assertEqual(value(after, "epcscf_media_ports_parked"), 3)
        self.assertEqual(value(after, "epcscf_sip_transactions", kind="server"), 0)
        self.assertEqual(value(after, "epcscf_sip_transactions", kind="client"), 0)
        self.assertEqual(value(after, "epcscf_asyncio_tasks"), value(idle, "epcscf_asyncio_tasks"))
        # The scrapes' own HTTP connections (their timeouts, their sockets) live in this process too
        # and come and go; nothing of the call stays but the one timer that forgets the ended-call
        # history ([calls] history), due when the oldest ended call expires, the shelf's one timer
        # that closes its parked sockets if no call takes them (one for the shelf, not per socket), and
        # the one timer that forgets the bytes kept for copies of the 200 and the ACK after 64·T1
        # (epcscf.sip.replay, RFC 3261 §13.3.1.4).
        self.assertEqual(len(node.calls.ended_calls()), 1)
        self.assertLessEqual(value(after, "epcscf_reactor_delayed_calls"), value(idle, "epcscf_reactor_delayed_calls") + 3)
        self.assertLessEqual(value(after, "process_open_fds"), value(idle, "process_open_fds"))
        console = self.stats()
        for label in ("server transactions", "client transactions", "ice agents", "dtls sessions", "media ports in use"):
            self.assertEqual(console[label], 0, label)
