"""Overload control and per-source limits end to end: real WebSocket WICs ⇄ epcscf (eP-CSCF +
embedded core) on 127.0.0.1, figures read from ``/metrics``.

The overload is real: the test blocks the reactor until the 50 ms lag probe has seen it late
twice in a row, exactly what a saturated CPU does to it."""

from __future__ import annotations

import asyncio
import secrets
import time

import websockets
from twisted.trial import unittest

from epcscf.sip.message import Request, Response, make_response
from tests.support.deployment import DOMAIN, USERS, start_deployment, ws_url
from tests.support.processes import wait_for
from tests.support.wic import WsSipClient, as_deferred
from tests.test_ops_console import asyncio_test, registered_wic
from tests.test_ops_metrics import METRICS, samples, value

ORIGIN = "http://127.0.0.1:8081"


async def connected_wic(test: unittest.TestCase, service: object, user: str, password: str | None = None) -> WsSipClient:
    client = WsSipClient(ws_url(service), user, password or USERS[user], DOMAIN, origin=ORIGIN)  # type: ignore[arg-type]
    await client.connect()
    test.addCleanup(lambda: as_deferred(client.close()))
    return client


async def block_reactor_until(condition: object, each: float = 0.25, most: int = 20) -> None:
    """Keep the event loop busy (as a saturated CPU would) until ``condition()`` holds."""
    for _ in range(most):
        if condition():  # type: ignore[operator]
            return
        time.sleep(each)  # blocks the reactor: its timers run late
        await asyncio.sleep(0.01)
    raise AssertionError("the node never noticed the blocked event loop")


def dialog_request(client: WsSipClient, method: str, ok: Response, first: Request) -> Request:
    """A request inside the dialog that ``first`` created and ``ok`` confirmed (RFC 3261 §12.2.1.1)."""
    client.cseq += 1
    contact = ok.headers.get("Contact") or ""
    target = contact[contact.index("<") + 1 : contact.index(">")]
    request = Request(method, target)
    request.headers.add("Via", f"SIP/2.0/WS {client.host};branch=z9hG4bK{secrets.token_hex(6)}")
    request.headers.add("Max-Forwards", "70")
    for value in reversed(ok.headers.get_all("Record-Route")):
        for route in reversed([v.strip() for v in value.split(",")]):
            request.headers.add("Route", route)
    request.headers.add("From", first.headers.get("From") or "")
    request.headers.add("To", ok.headers.get("To") or "")
    request.headers.add("Call-ID", first.headers.get("Call-ID") or "")
    request.headers.add("CSeq", f"{client.cseq} {method}")
    request.headers.add("Event", "presence")
    request.headers.add("Expires", "600")
    request.headers.add("Contact", f"<sip:{client.user}@{client.host};transport=ws>")
    return request


async def answered_by(callee: WsSipClient, method: str) -> None:
    """``callee`` answers the next ``method`` it gets with 200, Record-Route and a Contact."""
    while True:
        message = await callee.next_message()
        if isinstance(message, Request) and message.method == method:
            break
    response = make_response(message, 200, to_tag=secrets.token_hex(4))
    for value in message.headers.get_all("Record-Route"):
        response.headers.add("Record-Route", value)  # RFC 3261 §12.1.1
    response.headers.add("Contact", f"<sip:{callee.user}@{callee.host};transport=ws>")
    response.headers.add("Expires", "600")
    await callee.send(response)


async def presence_dialog(subscriber: WsSipClient, notifier: WsSipClient) -> tuple[Request, Response]:
    """A SUBSCRIBE from ``subscriber`` answered 200 by ``notifier``: the request and its final response."""
    subscribe = subscriber.request("SUBSCRIBE", notifier.aor)
    subscribe.headers.add("Event", "presence")
    subscribe.headers.add("Contact", f"<sip:{subscriber.user}@{subscriber.host};transport=ws>")
    await subscriber.send(subscribe)
    await answered_by(notifier, "SUBSCRIBE")
    return subscribe, await subscriber.final_response()


class OverloadTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        # recover is long so that the node stays overloaded for the whole test once it is.
        self.service = start_deployment(
            self, METRICS + "[overload]\nenabled = true\nlag_interval = 0.05\nlag_high = 0.1\nlag_low = 0.02\nhigh_samples = 2\nrecover = 60\nretry_after = 9\n"
            "min_new_per_second = 0\n"
        )

    @asyncio_test
    async def test_overload_refuses_new_work_while_dialogs_and_refreshes_flow(self) -> None:
        alice = await registered_wic(self, self.service, "alice")
        bob = await registered_wic(self, self.service, "bob")
        subscribe, ok = await presence_dialog(alice, bob)
        self.assertEqual(ok.status, 200)
        self.assertEqual(value(await samples(self.service), "epcscf_overloaded"), 0)

        await block_reactor_until(lambda: self.service.pcscf.overload.overloaded)

        # A flood of new work is refused at once (the throttle lets a trickle in at most) …
        carol = await connected_wic(self, self.service, "carol")
        await carol.send(carol.register_request())
        for _ in range(20):  # to nobody: one the throttle lets in is answered by the core (404)
            await alice.send(alice.request("MESSAGE", f"sip:nobody@{DOMAIN}", body=b"hi", content_type="text/plain"))
        refused = [await alice.final_response() for _ in range(20)]
        refused.append(await carol.final_response())
        unavailable = [r for r in refused if r.status == 503]
        self.assertGreaterEqual(len(unavailable), 18, [r.status for r in refused])
        self.assertTrue(all(r.headers.get("Retry-After") == "9" for r in unavailable))
        # … while what the node already took on goes on: a request inside the dialog, a refresh.
        await alice.send(dialog_request(alice, "SUBSCRIBE", ok, subscribe))
        await answered_by(bob, "SUBSCRIBE")
        self.assertEqual((await alice.final_response()).status, 200)
        self.assertEqual((await alice.register()).status, 200)

        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_overloaded"), 1)
        self.assertEqual(value(scraped, "epcscf_overload_refusals_total", reason="overloaded"), len(unavailable))


class SpreadRetryAfterOverRateTests(unittest.TestCase):
    """``[overload] retry_after_spread`` holds for the admission gate's 503s too (RFC 6357 §4)."""

    timeout = 30

    @asyncio_test
    async def test_new_work_over_the_rate_cap_gets_retry_after_spread_over_the_range(self) -> None:
        # One token in ten seconds: the REGISTER's first (challenged) request takes it; the
        # answer to the challenge is not new work (NewWorkGate); every MESSAGE then is.
        self.service = start_deployment(
            self, "[overload]\nmax_new_per_second = 0.1\nretry_after = 7\nretry_after_spread = 2\n"
        )
        alice = await registered_wic(self, self.service, "alice")
        for _ in range(12):
            await alice.send(alice.request("MESSAGE", f"sip:nobody@{DOMAIN}", body=b"hi", content_type="text/plain"))
        refused = [await alice.final_response() for _ in range(12)]
        self.assertEqual([r.status for r in refused], [503] * 12)
        delays = [int(r.headers.get("Retry-After") or "0") for r in refused]
        self.assertTrue(set(delays) <= {7, 8, 9}, delays)
        self.assertGreater(len(set(delays)), 1, delays)  # all alike: (1/3)^11 by chance


class PerSourceLimitTests(unittest.TestCase):
    timeout = 30

    @asyncio_test
    async def test_a_flooding_flow_gets_503s_then_1008_while_other_flows_are_served(self) -> None:
        self.service = start_deployment(
            self, METRICS + "[overload]\nflow_messages_per_second = 20\nflow_burst = 10\nflow_close_after = 30\n"
        )
        alice = await registered_wic(self, self.service, "alice")
        bob = await registered_wic(self, self.service, "bob")
        nobody = f"sip:nobody@{DOMAIN}"
        for _ in range(80):  # all at once, as a flood does
            # OPTIONS with Max-Forwards 0: the eP-CSCF answers it itself (RFC 3261 §16.3 step 3),
            # so every answer the limit lets through is sent before the flow is closed.
            options = alice.request("OPTIONS", nobody)
            options.headers.set("Max-Forwards", "0")
            await alice.send(options)
        await asyncio.wait_for(alice._reader, 10)  # type: ignore[arg-type]
        self.assertEqual(alice.socket.close_code, 1008)
        statuses: list[tuple[int, str | None]] = []
        while not alice.received.empty():
            message = alice.received.get_nowait()
            if isinstance(message, Response) and message.status >= 200:
                statuses.append((message.status, message.headers.get("Retry-After")))
        unavailable = [s for s in statuses if s[0] == 503]
        self.assertGreaterEqual(len(unavailable), 25)
        self.assertTrue(all(retry == "5" for _, retry in unavailable))
        self.assertIn((200, None), statuses)  # the burst was served
        await bob.send(bob.request("MESSAGE", nobody, body=b"x", content_type="text/plain"))
        self.assertNotEqual((await bob.final_response()).status, 503)
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_overload_refusals_total", reason="flow_rate"), 30)

    @asyncio_test
    async def test_connections_per_ip_over_the_limit_get_http_503(self) -> None:
        self.service = start_deployment(self, METRICS + "[overload]\nmax_connections_per_ip = 2\n")
        first = await connected_wic(self, self.service, "alice")
        await connected_wic(self, self.service, "bob")
        with self.assertRaises(websockets.InvalidStatus) as refused:
            await websockets.connect(ws_url(self.service), subprotocols=["sip"], additional_headers={"Origin": ORIGIN})
        self.assertEqual(refused.exception.response.status_code, 503)
        await first.close()
        factory = self.service.pcscf.ws_factory
        await wait_for(lambda: list(factory.peers.hosts().values()) == [1], 5, 0.02, "the closed connection's slot freed")
        await connected_wic(self, self.service, "carol")  # a slot is free again
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_ws_connections_refused_total", reason="per_ip_limit"), 1)

    @asyncio_test
    async def test_an_aor_with_too_many_failed_authentications_is_refused_locally(self) -> None:
        self.service = start_deployment(self, METRICS + "[overload]\nauth_failures = 2\n")
        mallory = await connected_wic(self, self.service, "alice", password="guessed")
        for _ in range(2):
            failed = await mallory.register()
            self.assertIn(failed.status, (401, 403))
        locked = await mallory.register()
        self.assertEqual(locked.status, 403)
        self.assertIn("too many failed authentications", locked.reason)
        # The right password does not help until the lockout ends: the core is not asked.
        alice = await connected_wic(self, self.service, "alice")
        self.assertEqual((await alice.register()).status, 403)
        bob = await connected_wic(self, self.service, "bob")
        self.assertEqual((await bob.register()).status, 200)
        scraped = await samples(self.service)
        self.assertEqual(value(scraped, "epcscf_overload_refusals_total", reason="auth_failures"), 2)
