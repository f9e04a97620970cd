"""New INVITEs refused statelessly while the window of calls in setup is full
(``epcscf.pcscf.early_refusal``, ``epcscf.sip.early_admission``).

Real sockets: WebSocket WICs and UDP peers on the core side against epcscf with its embedded
core, a UDP sink standing for any next hop.  The window is pinned to one call and held by a
request that stays "being routed" (the window's own notion of a call in setup): every new
INVITE beyond it must get 503 + Retry-After with no transaction, no 100 Trying, nothing sent
on, and its ACK must end at the edge.
"""

from __future__ import annotations

import asyncio
import secrets

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.admission import OverloadController, OverloadSettings
from epcscf.pcscf.early_refusal import EarlyInviteGate, RetryAfter
from epcscf.pcscf.limits import FlowRateLimiter, FlowVerdict
from epcscf.pcscf.setup_window import SetupWindow, WindowSettings
from epcscf.sip.early_admission import EarlyRefusal, StatelessResponder
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_policy import ProxiedRequest
from epcscf.sip.transaction import request_identity
from tests.support.fakes import FakeWsFlow
from tests.support.udp_peer import UdpSipPeer
from tests.test_pcscf_admission import request
from tests.test_pcscf_border import BorderTestCase, asyncio_test
from tests.test_pcscf_overload import answered_by, dialog_request, presence_dialog


def ack_for(invite: Request, final: Response) -> Request:
    """RFC 3261 §17.1.1.3: the ACK of a non-2xx final response."""
    ack = Request("ACK", invite.uri)
    ack.headers.add("Via", invite.headers.get("Via") or "")
    ack.headers.add("Max-Forwards", "70")
    for name in ("From", "Call-ID"):
        ack.headers.add(name, invite.headers.get(name) or "")
    ack.headers.add("To", final.headers.get("To") or "")
    ack.headers.add("CSeq", (invite.headers.get("CSeq") or "").replace("INVITE", "ACK"))
    return ack


class EarlyRefusalTests(BorderTestCase):
    extra_config = "[overload]\nenabled = true\nmin_calls_in_setup = 1\nmax_calls_in_setup = 1\nretry_after = 7\n"
    timeout = 30

    def fill_window(self) -> None:
        """One initial INVITE being routed holds the window's only place (``setup_window.phase``)."""
        window = self.service.pcscf.setup_window
        holder = Request("INVITE", "sip:holder@127.0.0.1")
        self.assertTrue(window.admit(ProxiedRequest(holder, None)))  # type: ignore[arg-type]
        self.assertTrue(window.refuses())  # full: the check itself counts one refusal
        window.refused -= 1

    def stats(self) -> dict:
        return self.service.pcscf.operations.stats()

    def invite_transactions(self, call_id: str) -> list:
        return [t for t in self.service.pcscf.transactions.transactions()
                if t.request is not None and t.request.headers.get("Call-ID") == call_id]

    def overload_refusals(self) -> float:
        value = self.service.metrics.registry.get_sample_value("epcscf_overload_refusals_total", {"reason": "calls_in_setup"})
        return value or 0.0

    def sampled_logs(self) -> list[dict]:
        return [e for e in self.log_events if "without a transaction" in e.get("log_format", "")]

    @asyncio_test
    async def test_a_new_invite_over_ws_gets_a_stateless_503_and_its_ack_ends_here(self) -> None:
        alice = await self.registered("alice")
        self.fill_window()
        invite = alice.request("INVITE", f"sip:bob@{alice.domain}", body=b"v=0\r\n", content_type="application/sdp")
        call_id = invite.headers.get("Call-ID")
        await alice.send(invite)
        response = await alice.next_message()  # the 503 itself: no 100 Trying before it
        assert isinstance(response, Response)
        self.assertEqual((response.status, response.headers.get("Retry-After")), (503, "7"))
        self.assertIn(";tag=", response.headers.get("To") or "")
        self.assertEqual(response.headers.get("Call-ID"), call_id)
        self.assertEqual(self.invite_transactions(call_id), [])
        await alice.send(ack_for(invite, response))
        await asyncio.sleep(0.2)
        stats = self.stats()
        self.assertEqual((stats["stateless_responses"], stats["stateless_acks_absorbed"]), (1, 1))
        self.assertEqual(self.invite_transactions(call_id), [])
        self.assertEqual(self.overload_refusals(), 1)
        self.assertEqual(self.service.pcscf.setup_window.refused, 1)
        [logged] = self.sampled_logs()
        self.assertEqual((logged["call_id"], logged["log_level"].name, logged["count"]), (call_id, "info", 1))
        # The next refusals within the second are counted, not logged one by one.
        for _ in range(3):
            again = alice.request("INVITE", f"sip:bob@{alice.domain}")
            await alice.send(again)
            self.assertEqual((await alice.final_response()).status, 503)
        self.assertEqual((self.overload_refusals(), len(self.sampled_logs())), (4, 1))
        await self.assert_sink_silent()

    @asyncio_test
    async def test_in_dialog_requests_and_registration_refreshes_still_flow_while_full(self) -> None:
        alice = await self.registered("alice")
        bob = await self.registered("bob")
        subscribe, ok = await presence_dialog(alice, bob)
        self.assertEqual(ok.status, 200)
        self.fill_window()
        await alice.send(alice.request("INVITE", bob.aor))
        self.assertEqual((await alice.final_response()).status, 503)  # the window is full …
        # … but a BYE (and an INVITE) inside the dialog, and a refresh, finish admitted work.
        for method in ("BYE", "INVITE"):
            await alice.send(dialog_request(alice, method, ok, subscribe))
            await answered_by(bob, method)
            self.assertEqual((await alice.final_response()).status, 200, method)
        self.assertEqual((await alice.register()).status, 200)
        self.assertEqual(self.stats()["stateless_responses"], 1)

    @asyncio_test
    async def test_a_new_invite_over_udp_and_its_retransmission_get_the_same_503_and_nothing_goes_on(self) -> None:
        peer: UdpSipPeer = self.peer()
        edge = self.service.pcscf.listener("UDP").address
        self.fill_window()
        invite = self.request_to_edge(peer, "INVITE")  # toward the sink
        first = await self.response_to(peer)
        peer.send(invite, (edge.host, edge.port))  # RFC 3261 §17.1.1.2: Timer A retransmission
        second = await self.response_to(peer)
        self.assertEqual((first.status, first.headers.get("Retry-After")), (503, "7"))
        self.assertEqual(second.serialize(), first.serialize())  # same To tag: the same answer
        call_id = invite.headers.get("Call-ID")
        self.assertEqual(self.invite_transactions(call_id), [])
        # An ACK with a tag of its own is not ours to absorb; the ACK of our 503 is.
        forged = ack_for(invite, first)
        forged.headers.replace_first("To", "<sip:victim@127.0.0.1>;tag=" + secrets.token_hex(6))
        peer.send(forged, (edge.host, edge.port))
        peer.send(ack_for(invite, first), (edge.host, edge.port))
        await asyncio.sleep(0.2)
        stats = self.stats()
        self.assertEqual((stats["stateless_responses"], stats["stateless_acks_absorbed"]), (2, 1))
        self.assertEqual(self.invite_transactions(call_id), [])
        self.assertTrue(peer.received.empty(), "nothing but the two 503s: no 100 Trying, nothing for the ACKs")
        self.assertEqual(self.overload_refusals(), 2)
        await self.assert_sink_silent()



class SpreadRetryAfterTests(BorderTestCase):
    """``[overload] retry_after_spread``: WICs refused together are told different delays."""

    extra_config = "[overload]\nenabled = true\nmin_calls_in_setup = 1\nmax_calls_in_setup = 1\nretry_after = 7\nretry_after_spread = 2\n"
    timeout = 30
    fill_window = EarlyRefusalTests.fill_window

    @asyncio_test
    async def test_refused_invites_get_retry_after_values_spread_over_the_configured_range(self) -> None:
        alice = await self.registered("alice")
        self.fill_window()
        delays = []
        for _ in range(12):
            await alice.send(alice.request("INVITE", f"sip:bob@{alice.domain}"))
            response = await alice.final_response()
            self.assertEqual(response.status, 503)
            delays.append(int(response.headers.get("Retry-After") or "0"))
        self.assertTrue(set(delays) <= {7, 8, 9}, delays)
        self.assertGreater(len(set(delays)), 1, delays)  # all alike: (1/3)^11 by chance
        await self.assert_sink_silent()


class UntrustedSourceRateTests(BorderTestCase):
    """A core-side UDP source that is no trusted core address has a message rate
    (``[overload] untrusted_source_messages_per_second``): beyond it, 503 + Retry-After without a
    transaction; other sources are served as before."""

    extra_config = "[overload]\nenabled = true\nuntrusted_source_messages_per_second = 1\nflow_burst = 5\nretry_after = 7\n"
    timeout = 30

    @asyncio_test
    async def test_a_flooding_udp_source_gets_503_while_another_source_is_answered(self) -> None:
        flooder, other = self.peer(), self.peer()
        for _ in range(12):
            self.request_to_edge(flooder, "OPTIONS")
        answers = [await self.response_to(flooder) for _ in range(12)]
        statuses = [response.status for response in answers]
        # The burst goes the ordinary way (the border refuses an untrusted source: 403) …
        self.assertEqual(statuses[:5], [403] * 5)
        # … the rest is over the rate: 503 + Retry-After, before any transaction.
        self.assertEqual(statuses[5:], [503] * 7)
        self.assertTrue(all(r.headers.get("Retry-After") == "7" for r in answers[5:]))
        self.request_to_edge(other, "OPTIONS")
        self.assertEqual((await self.response_to(other)).status, 403)  # its own budget
        refusals = self.service.metrics.registry.get_sample_value("epcscf_overload_refusals_total", {"reason": "source_rate"})
        self.assertEqual(refusals, 7)
        [logged] = [e for e in self.log_events if "without a transaction" in e.get("log_format", "")]
        self.assertEqual((logged["what"], logged["reason"], logged["log_level"].name), ("OPTIONS", "source_rate", "info"))
        await self.assert_sink_silent()


class StatelessResponderTests(unittest.TestCase):
    """The To tag of a stateless response, and the ACKs it lets the layer absorb (sans-IO)."""

    def setUp(self) -> None:
        self.responder = StatelessResponder(b"k" * 16)
        self.refusal = EarlyRefusal(503, "Service Unavailable (overloaded)", (("Retry-After", "5"),))

    def answer(self, invite: Request) -> Response:
        return self.responder.response(invite, request_identity(invite), self.refusal)

    def test_a_retransmission_gets_the_same_tag_another_branch_or_call_another(self) -> None:
        invite = request("INVITE")
        first, again = self.answer(invite), self.answer(invite.copy())
        self.assertEqual(first.serialize(), again.serialize())
        self.assertEqual((first.status, first.headers.get("Retry-After")), (503, "5"))
        other_branch = request("INVITE")
        other_branch.headers.replace_first("Via", "SIP/2.0/WS abc.invalid;branch=z9hG4bK9999")
        self.assertNotEqual(other_branch_tag := self.answer(other_branch).headers.get("To"), first.headers.get("To"))
        self.assertIn(";tag=", other_branch_tag or "")
        other_key = StatelessResponder(b"j" * 16).response(invite, request_identity(invite), self.refusal)
        self.assertNotEqual(other_key.headers.get("To"), first.headers.get("To"))  # unguessable without the key

    def test_only_the_ack_of_our_response_is_absorbed(self) -> None:
        invite = request("INVITE")
        tag = (self.answer(invite).headers.get("To") or "").rsplit("tag=", 1)[1]
        ours = request("ACK", to_tag=tag)
        self.assertTrue(self.responder.absorbs_ack(request_identity(ours)))
        for other_tag in (None, "b1", tag.upper() if tag.upper() != tag else tag + "0", "\u00e9" * 12):
            self.assertFalse(self.responder.absorbs_ack(request_identity(request("ACK", to_tag=other_tag))), other_tag)
        rfc2543 = request("INVITE")
        rfc2543.headers.replace_first("Via", "SIP/2.0/UDP 10.0.0.1;branch=old")
        self.assertFalse(self.responder.can_answer(request_identity(rfc2543)))  # no RFC 3261 branch: ordinary path
        self.assertEqual(self.responder.acks_absorbed, 1)


class EarlyInviteGateTests(unittest.TestCase):
    """The gate asks NewWorkGate's questions without spending what it lets through (sans-IO)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.refused: list[str] = []
        self.flow = FakeWsFlow("flow-1")

    def gate(self, settings: OverloadSettings, window: WindowSettings) -> EarlyInviteGate:
        self.controller = OverloadController(settings, self.clock)
        self.window = SetupWindow(window, self.clock)
        return EarlyInviteGate(self.controller, self.window, self.refused.append)

    def ask(self, gate: EarlyInviteGate, method: str = "INVITE", to_tag: str | None = None) -> EarlyRefusal | None:
        message = request(method, to_tag)
        return gate(message, request_identity(message), self.flow)  # type: ignore[arg-type]

    def test_a_full_window_refuses_new_invites_only(self) -> None:
        gate = self.gate(OverloadSettings(retry_after=9), WindowSettings(target=0.25, min_calls=1, max_calls=1))
        self.assertIsNone(self.ask(gate))  # room: the ordinary path admits it …
        self.assertTrue(self.window.admit(ProxiedRequest(request("INVITE"), self.flow)))  # … as the gate does
        refusal = self.ask(gate)
        assert refusal is not None
        self.assertEqual((refusal.status, refusal.headers), (503, (("Retry-After", "9"),)))
        for method, to_tag in (("INVITE", "b1"), ("BYE", "b1"), ("REGISTER", None), ("MESSAGE", None), ("CANCEL", None)):
            self.assertIsNone(self.ask(gate, method, to_tag), method)
        self.assertEqual((self.refused, self.window.refused), (["calls_in_setup"], 1))

    def test_retry_after_is_drawn_over_retry_after_to_retry_after_plus_spread(self) -> None:
        draws = iter([0.0, 0.26, 0.5, 0.99, 0.74])
        self.controller = OverloadController(OverloadSettings(retry_after=5, retry_after_spread=3), self.clock)
        self.window = SetupWindow(WindowSettings(target=0.25, min_calls=1, max_calls=1), self.clock)
        gate = EarlyInviteGate(self.controller, self.window, self.refused.append, uniform=lambda: next(draws))
        self.assertTrue(self.window.admit(ProxiedRequest(request("INVITE"), self.flow)))  # type: ignore[arg-type]
        values = [dict(self.ask(gate).headers)["Retry-After"] for _ in range(5)]  # type: ignore[union-attr]
        self.assertEqual(values, ["5", "6", "7", "8", "7"])
        # SIGHUP: new settings, new refusals; no spread: always retry_after.
        self.controller.settings = OverloadSettings(retry_after=9, retry_after_spread=0)
        self.assertEqual({dict(self.ask(gate).headers)["Retry-After"] for _ in range(20)}, {"9"})  # type: ignore[union-attr]

    def test_retry_after_spread_covers_its_range_and_stays_in_it(self) -> None:
        spread = RetryAfter(5, 5)
        drawn = {spread.seconds() for _ in range(2000)}
        self.assertEqual(drawn, set(range(5, 11)))
        self.assertEqual({RetryAfter(5).seconds() for _ in range(100)}, {5})

    def test_without_a_window_the_lag_throttle_decides_and_nothing_is_spent_on_admitted_invites(self) -> None:
        gate = self.gate(OverloadSettings(high_samples=1, min_new_per_second=1.0), WindowSettings(target=0.0, max_calls=0))
        self.assertIsNone(self.ask(gate))
        self.controller.sample(1.0)  # overloaded: the throttle starts with no token saved
        self.assertEqual(self.ask(gate).status, 503)  # type: ignore[union-attr]
        self.clock.advance(1.0)  # one token: the gate lets the INVITE by and leaves the token …
        self.assertIsNone(self.ask(gate))
        self.assertIsNone(self.controller.admit_new())  # … to the admission chain
        self.assertEqual(self.refused, ["overloaded"])


class SourceRateTests(unittest.TestCase):
    """A source that cannot be closed (UDP) is ignored for a window, then heard again; the
    sources remembered are bounded."""

    def test_a_flooding_source_is_dropped_for_the_window_then_heard_again(self) -> None:
        clock = Clock()
        settings = OverloadSettings(flow_burst=1, flow_close_after=2, flow_window=10.0, untrusted_source_messages_per_second=1.0)
        limiter = FlowRateLimiter(settings, clock, lambda s: s.untrusted_source_messages_per_second)
        verdicts = [limiter.arrived("udp:a") for _ in range(4)]
        self.assertEqual(verdicts, [FlowVerdict.ADMIT, FlowVerdict.REFUSE, FlowVerdict.CLOSE, FlowVerdict.DROP])
        clock.advance(10.0)
        self.assertIs(limiter.arrived("udp:a"), FlowVerdict.ADMIT)

    def test_the_sources_remembered_are_bounded(self) -> None:
        limiter = FlowRateLimiter(OverloadSettings(), Clock())
        limiter.MAX_FLOWS = 3  # type: ignore[misc]
        for number in range(5):
            limiter.arrived(f"udp:{number}")
        self.assertEqual(len(limiter), 3)
