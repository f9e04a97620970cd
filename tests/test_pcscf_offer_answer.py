"""The RFC 3264 offer/answer table itself (``offer_answer``), and how the call manager reports
what the table does not allow."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.pcscf.dialogs import Side
from epcscf.pcscf.offer_answer import (
    TABLE,
    Holder,
    OfferAction,
    OfferEvent,
    holder,
    pending_after,
    request_event,
    response_event,
    step,
)
from tests import test_calls_manager as manager_tests
from tests.test_calls_manager import CORE_SDP, WIC_OFFER, response_to

H, V, A = Holder, OfferEvent, OfferAction

WITH_SDP = {
    V.OFFER_REQUEST, V.SDP_IN_OTHER_REQUEST, V.ANSWER_18X, V.ANSWER_2XX,
    V.SDP_TO_OFFERLESS_INVITE, V.SDP_TO_OFFERLESS_UPDATE,
}


def walk(start: Side | None, *messages: tuple[Side, OfferEvent]) -> list[tuple[OfferAction, Side | None, str | None]]:
    """Feed (sender, event) pairs from ``start`` (whose offer is outstanding); the actions, the
    pending offer after each, and each protocol error."""
    pending = start
    seen = []
    for sender, event in messages:
        found = step(holder(pending, sender), event)
        pending = pending_after(found, sender)
        seen.append((found.action, pending, found.protocol_error))
    return seen


class TableTests(unittest.TestCase):
    def test_every_holder_and_event_has_a_row(self) -> None:
        # Nothing a peer sends can fall through the table: every pair is decided.
        self.assertEqual(set(TABLE), {(h, e) for h in Holder for e in OfferEvent})

    def test_no_row_relays_one_sides_sdp_raw_to_the_other(self) -> None:
        for (h, event), found in TABLE.items():
            if event in WITH_SDP:
                self.assertIn(found.action, {A.OFFER, A.ANSWER, A.REPEAT_OFFER, A.STRIP}, (h, event))

    def test_protocol_errors_name_their_clause_and_never_transform(self) -> None:
        errors = {key: found for key, found in TABLE.items() if found.protocol_error is not None}
        self.assertEqual(
            set(errors),
            {
                (H.NOBODY, V.SDP_IN_OTHER_REQUEST), (H.SENDER, V.SDP_IN_OTHER_REQUEST),
                (H.PEER, V.ACK_WITHOUT_SDP), (H.PEER, V.SDP_TO_OFFERLESS_INVITE),
                (H.NOBODY, V.SDP_TO_OFFERLESS_UPDATE), (H.SENDER, V.SDP_TO_OFFERLESS_UPDATE),
                (H.PEER, V.SDP_TO_OFFERLESS_UPDATE),
            },
        )
        for found in errors.values():
            self.assertRegex(found.protocol_error or "", r"^RFC \d+ §")
            self.assertIn(found.action, {A.STRIP, A.FORWARD})

    def test_holder_is_seen_from_the_sender_and_pending_after_inverts_it(self) -> None:
        self.assertIs(holder(None, Side.WIC), H.NOBODY)
        self.assertIs(holder(Side.WIC, Side.WIC), H.SENDER)
        self.assertIs(holder(Side.WIC, Side.CORE), H.PEER)
        for pending in (None, Side.WIC, Side.CORE):
            for sender in Side:
                found = step(holder(pending, sender), V.BARE_REQUEST)  # leaves the holder as it is
                self.assertIs(pending_after(found, sender), pending)


class ClassificationTests(unittest.TestCase):
    def test_requests(self) -> None:
        self.assertIs(request_event("INVITE", True), V.OFFER_REQUEST)
        self.assertIs(request_event("UPDATE", True), V.OFFER_REQUEST)  # RFC 3311 §5.1
        self.assertIs(request_event("INVITE", False), V.OFFERLESS_REQUEST)
        self.assertIs(request_event("ACK", True), V.SDP_IN_OTHER_REQUEST)
        self.assertIs(request_event("PRACK", True), V.SDP_IN_OTHER_REQUEST)  # RFC 3262 §5
        self.assertIs(request_event("ACK", False), V.ACK_WITHOUT_SDP)
        self.assertIs(request_event("PRACK", False), V.BARE_REQUEST)

    def test_responses(self) -> None:
        self.assertIs(response_event(183, True, True, True, "INVITE"), V.ANSWER_18X)
        self.assertIs(response_event(200, True, True, False, "UPDATE"), V.ANSWER_2XX)
        self.assertIs(response_event(200, False, True, True, "INVITE"), V.BARE_2XX_TO_INITIAL_OFFER)
        self.assertIs(response_event(200, False, True, False, "INVITE"), V.BARE_TO_OFFER)
        self.assertIs(response_event(180, False, True, True, "INVITE"), V.BARE_TO_OFFER)
        self.assertIs(response_event(488, False, True, False, "INVITE"), V.ERROR_TO_REOFFER)
        self.assertIs(response_event(486, False, True, True, "INVITE"), V.FINAL_FAILURE)
        self.assertIs(response_event(491, False, False, False, "UPDATE"), V.FINAL_FAILURE)
        self.assertIs(response_event(200, True, False, True, "INVITE"), V.SDP_TO_OFFERLESS_INVITE)
        self.assertIs(response_event(200, True, False, False, "UPDATE"), V.SDP_TO_OFFERLESS_UPDATE)
        self.assertIs(response_event(200, False, False, False, "UPDATE"), V.BARE_TO_OFFERLESS)


class ExchangeTests(unittest.TestCase):
    """Whole exchanges of RFC 3261 §13.2.1 and RFC 6337 §3, fed to the table."""

    W, C = Side.WIC, Side.CORE

    def test_offer_in_invite_answer_in_18x_and_2xx(self) -> None:
        self.assertEqual(
            walk(None, (self.W, V.OFFER_REQUEST), (self.C, V.ANSWER_18X), (self.C, V.ANSWER_2XX), (self.W, V.ACK_WITHOUT_SDP)),
            [(A.OFFER, self.W, None), (A.ANSWER, self.W, None), (A.ANSWER, None, None), (A.FORWARD, None, None)],
        )

    def test_late_offer_in_2xx_answer_in_ack(self) -> None:
        self.assertEqual(
            walk(None, (self.W, V.OFFERLESS_REQUEST), (self.C, V.SDP_TO_OFFERLESS_INVITE), (self.W, V.SDP_IN_OTHER_REQUEST)),
            [(A.FORWARD, None, None), (A.OFFER, self.C, None), (A.ANSWER, None, None)],
        )

    def test_late_offer_repeated_from_18x_to_2xx_is_transformed_again(self) -> None:
        [_, again] = walk(None, (self.C, V.SDP_TO_OFFERLESS_INVITE), (self.C, V.SDP_TO_OFFERLESS_INVITE))
        self.assertEqual(again, (A.REPEAT_OFFER, self.C, None))

    def test_ack_without_the_answer_owed_is_a_protocol_error(self) -> None:
        [_, ack] = walk(None, (self.C, V.SDP_TO_OFFERLESS_INVITE), (self.W, V.ACK_WITHOUT_SDP))
        self.assertEqual(ack[:2], (A.FORWARD, self.C))
        self.assertIn("RFC 3261 §13.2.1", ack[2] or "")

    def test_refused_reoffer_rolls_back(self) -> None:
        self.assertEqual(
            walk(None, (self.C, V.OFFER_REQUEST), (self.W, V.ERROR_TO_REOFFER)),
            [(A.OFFER, self.C, None), (A.ROLLBACK, None, None)],
        )

    def test_bodiless_2xx_to_the_initial_offer_repeats_the_answer(self) -> None:
        [_, _, ok] = walk(None, (self.W, V.OFFER_REQUEST), (self.C, V.ANSWER_18X), (self.C, V.BARE_2XX_TO_INITIAL_OFFER))
        self.assertEqual(ok, (A.REPEAT_ANSWER, None, None))

    def test_sdp_where_no_offer_or_answer_can_be_is_stripped(self) -> None:
        [info] = walk(None, (self.W, V.SDP_IN_OTHER_REQUEST))
        self.assertEqual(info[:2], (A.STRIP, None))
        self.assertIn("RFC 3264 §4", info[2] or "")


class CallManagerReportsTests(unittest.TestCase):
    """What the tables do not allow is logged with the Call-ID and counted, never dropped."""

    # The fakes and helpers of the call manager's own tests (not its tests: those run there).
    setUp = manager_tests.CallManagerTests.setUp
    originate = manager_tests.CallManagerTests.originate
    respond = manager_tests.CallManagerTests.respond
    confirmed_originating_call = manager_tests.CallManagerTests.confirmed_originating_call
    in_dialog = manager_tests.CallManagerTests.in_dialog

    def test_ack_without_the_answer_to_a_2xx_offer_is_counted_and_noted(self) -> None:
        context, _ = self.originate(b"")
        self.respond(context, response_to(context.request, 200, CORE_SDP))
        _, forward, decision = self.in_dialog("ACK", True)
        self.assertIs(decision, forward)  # still forwarded: the dialog is the UAs' to end
        self.assertEqual(self.manager.protocol_errors, 1)
        [call] = self.manager.calls()
        self.assertTrue(any("RFC 3261 §13.2.1" in entry.text for entry in call.timeline))

    def test_sdp_in_an_info_is_removed_and_counted(self) -> None:
        self.confirmed_originating_call()
        _, forward, decision = self.in_dialog("INFO", True, WIC_OFFER)
        self.assertIs(decision, forward)
        self.assertEqual(decision.request.body, b"")
        self.assertEqual(self.manager.protocol_errors, 1)

    def test_event_the_call_state_table_refuses_is_counted_not_silently_dropped(self) -> None:
        self.originate()  # OFFER_FORWARDED: no ACK is possible before a 2xx
        self.in_dialog("ACK", True)
        [call] = self.manager.calls()
        self.assertEqual(self.manager.protocol_errors, 1)
        self.assertTrue(any("ack not allowed in call state offer-forwarded" in entry.text for entry in call.timeline))

    def test_a_good_call_has_no_protocol_error(self) -> None:
        context, _ = self.confirmed_originating_call()
        self.in_dialog("ACK", True)
        self.assertEqual(self.manager.protocol_errors, 0)
