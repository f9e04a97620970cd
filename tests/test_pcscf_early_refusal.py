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

from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_policy import ProxiedRequest
from tests.support.udp_peer import UdpSipPeer
from tests.test_pcscf_border import BorderTestCase, asyncio_test
from tests.test_pcscf_overload import answered_by, dialog_request


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
    extra_config = "[overload]\nmin_calls_in_setup = 1\nmax_calls_in_setup = 1\nretry_after = 7\n"
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
        subscribe = alice.request("SUBSCRIBE", bob.aor)
        subscribe.headers.add("Event", "presence")
        subscribe.headers.add("Contact", f"<sip:alice@{alice.host};transport=ws>")
        await alice.send(subscribe)
        await answered_by(bob, "SUBSCRIBE")
        ok = await alice.final_response()
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



class UntrustedSourceRateTests(BorderTestCase):
    """A core-side UDP source that is no trusted core address has a message rate
    (``[overload] untrusted_source_messages_per_second``): beyond it, 503 + Retry-After without a
    transaction; other sources are served as before."""

    extra_config = "[overload]\nuntrusted_source_messages_per_second = 1\nflow_burst = 5\nretry_after = 7\n"
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
