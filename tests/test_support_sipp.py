"""The sipp trace readers of ``tests.support.sipp``: a UDP retransmission counts once, another
transaction or another answer does not (what the end-to-end tests' counts rely on)."""

from __future__ import annotations

from twisted.trial import unittest

from tests.support.sipp import messages_in_trace, one_per_transaction, received_requests, received_responses, sipp_messages

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
