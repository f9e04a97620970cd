"""The sipp trace readers of ``tests.support.sipp``: a UDP retransmission counts once, another
transaction or another answer does not (what the end-to-end tests' counts rely on)."""

from __future__ import annotations

import asyncio
import os

from twisted.internet import defer
from twisted.trial import unittest

from epcscf.sip.message import Request, Response
from tests.support.processes import wait_for
from tests.support.sipp import (
    SCENARIOS, free_port, messages_in_trace, one_per_transaction, port_bound, received_requests, received_responses,
    require_sipp, sipp_messages, spawn_sipp,
)
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import as_deferred

INVITE = (
    "INVITE sip:service@127.0.0.1:5090 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
    "From: <sip:alice@ims.localdomain>;tag=a1\r\n"
    "To: <sip:service@ims.localdomain>\r\n"
    "Call-ID: call-1\r\n"
    "CSeq: {cseq} INVITE\r\n"
    "Content-Length: 0\r\n\r\n"
)
OK = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
    "From: <sip:alice@ims.localdomain>;tag=a1\r\n"
    "To: <sip:service@ims.localdomain>;tag={tag}\r\n"
    "Call-ID: call-1\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Content-Length: 0\r\n\r\n"
)


def as_read(message: str) -> str:
    """``message`` as the readers return it: the file is read as text (CRLF → LF), stripped."""
    return message.replace("\r\n", "\n").strip()


class SippTraceTests(unittest.TestCase):
    def trace(self, *messages: tuple[str, str]) -> str:
        """A -trace_msg file as sipp 3.6 writes it: (direction, message) pairs."""
        path = self.mktemp()
        with open(path, "w", newline="") as handle:
            for index, (direction, message) in enumerate(messages):
                handle.write(f"----------------------------------------------- 2026-12-07 14:49:00.{index:06d}\n")
                handle.write(f"UDP message {direction} [{len(message)}] bytes :\n\n{message}\n")
        return path

    def test_a_udp_retransmission_of_a_request_counts_once(self) -> None:
        invite = INVITE.format(branch="z9hG4bK-1", cseq=1)
        path = self.trace(("received", invite), ("received", invite), ("sent", OK.format(branch="z9hG4bK-1", tag="u1", cseq=1, method="INVITE")))
        self.assertEqual(len(sipp_messages(path, "received")), 2)
        self.assertEqual(received_requests(path, "INVITE"), [as_read(invite)])

    def test_a_copy_that_reached_a_dead_call_is_not_glued_to_the_message_before_it(self) -> None:
        # Under load the edge's BYE and its Timer E copy (T1 50 ms) reach sipp together: sipp logs
        # the copy, answers the first, ends the call, then logs the copy again as a dead call's.
        bye = INVITE.format(branch="z9hG4bK-1", cseq=2).replace("INVITE", "BYE")
        path = self.trace(("received", bye), ("sent", OK.format(branch="z9hG4bK-1", tag="u1", cseq=2, method="BYE")), ("received", bye))
        with open(path, "a", newline="") as handle:
            handle.write(f"-----------------------------------------------\nDead call call-1 received a UDP message:\n\n{bye}\n")
        self.assertEqual(sipp_messages(path, "received"), [as_read(bye), as_read(bye)])
        self.assertEqual(received_requests(path, "BYE"), [as_read(bye)])
        self.assertEqual(len(messages_in_trace(path)), 3)

    def test_a_new_transaction_counts_again(self) -> None:
        # RFC 3261 §17.2.3: another branch is another transaction, even with the same CSeq
        path = self.trace(("received", INVITE.format(branch="z9hG4bK-1", cseq=1)), ("received", INVITE.format(branch="z9hG4bK-2", cseq=1)),
                          ("received", INVITE.format(branch="z9hG4bK-3", cseq=2)))
        self.assertEqual(len(received_requests(path, "INVITE")), 3)

    def test_a_retransmitted_200_is_not_a_second_answer(self) -> None:
        ok = OK.format(branch="z9hG4bK-1", tag="u1", cseq=1, method="INVITE")
        path = self.trace(("received", ok), ("received", ok), ("received", OK.format(branch="z9hG4bK-9", tag="u1", cseq=2, method="BYE")))
        self.assertEqual(received_responses(path, 200, "INVITE"), [as_read(ok)])
        self.assertEqual(len(received_responses(path, 200, "BYE")), 1)

    def test_the_200s_of_two_forks_are_two_answers(self) -> None:
        # RFC 3261 §13.2.2.4: each To tag is its own dialog
        first, second = (OK.format(branch="z9hG4bK-1", tag=tag, cseq=1, method="INVITE") for tag in ("u1", "u2"))
        path = self.trace(("received", first), ("received", second), ("received", first))
        self.assertEqual(received_responses(path, 200, "INVITE"), [as_read(first), as_read(second)])

    def test_copies_keep_the_order_of_their_first_copy(self) -> None:
        invite, ok = INVITE.format(branch="z9hG4bK-1", cseq=1), OK.format(branch="z9hG4bK-1", tag="u1", cseq=1, method="INVITE")
        bye = INVITE.format(branch="z9hG4bK-2", cseq=2).replace("INVITE", "BYE")
        unique = one_per_transaction([invite, invite, ok, bye, ok, bye])
        self.assertEqual([m.split(" ", 2)[:2] for m in unique], [["INVITE", "sip:service@127.0.0.1:5090"], ["SIP/2.0", "200"], ["BYE", "sip:service@127.0.0.1:5090"]])


class UasScenarioTests(unittest.TestCase):
    """``tests/sipp/calls_uas_answer.xml``, the IMS party of the calls tests, against a bare UDP peer."""

    timeout = 30

    def test_copies_of_the_invite_read_in_one_go_do_not_abort_the_call(self) -> defer.Deferred:
        # A proxy's Timer A (RFC 3261 §17.1.1.2; T1 50 ms in the tests) sends the INVITE again
        # when sipp, on a loaded host, has not answered within T1: sipp then reads the copies together.
        return defer.Deferred.fromCoroutine(self._copies_of_the_invite())

    async def _copies_of_the_invite(self) -> None:
        sipp = require_sipp(self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port, media_port = free_port(), free_port()
        uas, trace = spawn_sipp(self, sipp, ["-sf", os.path.join(SCENARIOS, "calls_uas_answer.xml"), "-i", "127.0.0.1",
                                             "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media_port), "-m", "1",
                                             "-timeout", "20s", "-timeout_error"], directory, "uas")
        await wait_for(lambda: port_bound(port, "UDP"), timeout=10.0, interval=0.02)
        peer = UdpSipPeer()
        peer_port = peer.start()
        self.addCleanup(peer.stop)
        target = ("127.0.0.1", port)
        invite = self.request("INVITE", port, peer_port, "z9hG4bK-invite", 1)
        for _ in range(3):
            peer.send(invite, target)
        ok = await as_deferred(self.final_response(peer, "INVITE"))
        self.assertEqual(ok.status, 200)
        to = ok.headers.get("To") or ""
        peer.send(self.request("ACK", port, peer_port, "z9hG4bK-ack", 1, to), target)
        peer.send(self.request("BYE", port, peer_port, "z9hG4bK-bye", 2, to), target)
        self.assertEqual((await as_deferred(self.final_response(peer, "BYE"))).status, 200)
        self.assertEqual(await uas.ended, 0, uas.output.decode(errors="replace")[-2000:])
        self.assertEqual(len(received_requests(trace, "INVITE")), 1)

    @staticmethod
    def request(method: str, port: int, peer_port: int, branch: str, cseq: int, to: str = "<sip:service@ims.localdomain>") -> Request:
        request = Request(method, f"sip:service@127.0.0.1:{port}")
        request.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{peer_port};branch={branch}")
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", "<sip:alice@ims.localdomain>;tag=a1")
        request.headers.add("To", to)
        request.headers.add("Call-ID", "uas-scenario-1")
        request.headers.add("CSeq", f"{cseq} {method}")
        request.headers.add("Contact", f"<sip:alice@127.0.0.1:{peer_port}>")
        request.headers.add("Content-Length", "0")
        return request

    @staticmethod
    async def final_response(peer: UdpSipPeer, method: str) -> Response:
        while True:
            message, _ = await asyncio.wait_for(peer.received.get(), 10)
            if isinstance(message, Response) and message.status >= 200 and (message.headers.get("CSeq") or "").endswith(method):
                return message
