"""RFC 3264 offer/answer in a call, as a table.

Theory of operation
-------------------
An SDP body in a call is either an offer or an answer, and only the history of the dialog
says which (RFC 3264 §4: "at any time, one agent has an offer outstanding" at most).  The
eP-CSCF stands between two different SDP worlds (WebRTC toward the WIC, plain RTP toward the
core, TS 24.371 §7.4), so it must know, for every body it relays, what to turn it into: an
offer toward the other side (``offer_from_wic``/``offer_from_core``), an answer
(``answer_from_core``/``answer_from_wic``), or nothing at all — never one side's SDP relayed
raw to the other.

The state is *who has an offer outstanding* (``Call.pending_offer``: nobody, the WIC, the
core).  The table is written from the point of view of the side that sent the message
(``Holder``: nobody, the sender, its peer), so the originating (TS 24.371 §7.4.2) and the
terminating (§7.4.3) direction share every row.  The events are what the message is:

* requests (RFC 3261 §13.2.1, §14; RFC 3311 §5 UPDATE; RFC 3262 §5 PRACK): an INVITE or
  UPDATE with SDP is an offer, unless the sender owes an answer (then it is taken as that
  answer, as before this table existed); one without SDP asks the peer to offer in its
  response (RFC 3261 §13.2.1 "late offer"); an ACK or PRACK with SDP answers the peer's
  offer made in a 2xx or reliable 18x; an ACK without SDP while that answer is owed is a
  protocol error (RFC 3261 §13.2.1: the answer MUST be in the ACK);
* responses to a request that carried an offer: SDP in a 18x or 2xx is the answer (RFC
  3264 §5, RFC 3261 §13.2.1; each fork answers in its own 18x and 2xx, RFC 6337 §3, and
  only the 2xx settles it here); a 2xx without SDP to the initial INVITE (its answer came in
  a reliable 18x, RFC 3262) makes us repeat the last answer toward the WIC, whose WebRTC
  stack wants it in the 2xx; an error response to a re-offer rolls the media back to the
  previous offer/answer (RFC 3264 §8, RFC 3261 §14.1, RFC 3311 §5.1: a refused re-offer
  changes nothing);
* responses to a request that asked for an offer: SDP in a 18x/2xx of an INVITE is the
  responder's offer (RFC 3261 §13.2.1), the same offer again in a later 18x/2xx is
  transformed again; in a response to an UPDATE without offer it is SDP where RFC 3311 §5.2
  allows none.

``step(holder, event)`` gives the ``Step``: the ``OfferAction`` and the holder afterwards.
Every (holder, event) pair has a row: what RFC 3264 does not allow is a row whose
``protocol_error`` names the clause, which the call manager logs with the Call-ID and
counts, and whose action keeps the other side safe (the SDP is removed, or the message goes
on unchanged).  The call manager (``epcscf.pcscf.calls``) classifies each message
(``request_event``/``response_event``), asks the table, and performs the action.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from epcscf.pcscf.dialogs import Side


class Holder(enum.Enum):
    """Who has an offer outstanding, seen from the side that sent the message (RFC 3264 §4)."""

    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    NOBODY = "no offer outstanding"
    SENDER = "the sender's offer outstanding"
    PEER = "the peer's offer outstanding"


class OfferEvent(enum.Enum):
    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    # requests
    OFFER_REQUEST = "INVITE/UPDATE with SDP"
    OFFERLESS_REQUEST = "INVITE/UPDATE without SDP"
    SDP_IN_OTHER_REQUEST = "ACK/PRACK/other request with SDP"
    ACK_WITHOUT_SDP = "ACK without SDP"
    BARE_REQUEST = "PRACK/other request without SDP"
    # responses to a request that carried an offer
    ANSWER_18X = "18x with SDP to an offer"
    ANSWER_2XX = "2xx with SDP to an offer"
    BARE_2XX_TO_INITIAL_OFFER = "2xx without SDP to the initial INVITE's offer"
    BARE_TO_OFFER = "1xx, or 2xx to a re-offer, without SDP"
    ERROR_TO_REOFFER = "3xx-6xx to a re-offer"
    # responses to a request without an offer (and errors to the initial INVITE)
    SDP_TO_OFFERLESS_INVITE = "18x/2xx with SDP to an INVITE without SDP"
    SDP_TO_OFFERLESS_UPDATE = "18x/2xx with SDP to an UPDATE without SDP"
    BARE_TO_OFFERLESS = "response without SDP to a request without SDP"
    FINAL_FAILURE = "3xx-6xx to an initial INVITE or a request without offer"


class OfferAction(enum.Enum):
    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    FORWARD = "forward unchanged"
    OFFER = "transform as the sender's offer toward the peer"
    REPEAT_OFFER = "transform the sender's outstanding offer again"
    ANSWER = "transform as the sender's answer toward the peer"
    #: when the 2xx goes to the WIC and an answer was sent before; else it goes on unchanged
    #: and the state stays
    REPEAT_ANSWER = "put the last answer toward the WIC in the 2xx"
    ROLLBACK = "keep the previous media (the re-offer was refused)"
    STRIP = "remove the SDP"


@dataclass(frozen=True)
class Step:
    action: OfferAction
    holder: Holder  # afterwards, from the same sender's point of view
    protocol_error: str | None = None  # the clause broken, when RFC 3264 does not allow the event


# Members read on every call, as module constants (``dialogs.SIDE_WIC`` says why).
ACTION_FORWARD = OfferAction.FORWARD
ACTION_OFFER = OfferAction.OFFER
ACTION_REPEAT_OFFER = OfferAction.REPEAT_OFFER
ACTION_ANSWER = OfferAction.ANSWER
ACTION_REPEAT_ANSWER = OfferAction.REPEAT_ANSWER
ACTION_ROLLBACK = OfferAction.ROLLBACK
ACTION_STRIP = OfferAction.STRIP

H, V, A = Holder, OfferEvent, OfferAction
_ANY = tuple(Holder)


def _rows() -> dict[tuple[Holder, OfferEvent], Step]:
    rows: dict[tuple[Holder, OfferEvent], Step] = {}
    for h in _ANY:
        rows[h, V.OFFERLESS_REQUEST] = Step(A.FORWARD, h)  # the offer comes in the response
        rows[h, V.BARE_REQUEST] = Step(A.FORWARD, h)
        # Every fork answers in its own 18x/2xx (RFC 6337 §3): each answer is transformed.
        rows[h, V.ANSWER_18X] = Step(A.ANSWER, h)  # only the 2xx settles it
        rows[h, V.ANSWER_2XX] = Step(A.ANSWER, H.NOBODY)
        rows[h, V.BARE_2XX_TO_INITIAL_OFFER] = Step(A.REPEAT_ANSWER, H.NOBODY)
        rows[h, V.BARE_TO_OFFER] = Step(A.FORWARD, h)
        rows[h, V.BARE_TO_OFFERLESS] = Step(A.FORWARD, h)
        rows[h, V.FINAL_FAILURE] = Step(A.FORWARD, h)
        rows[h, V.SDP_TO_OFFERLESS_UPDATE] = Step(A.STRIP, h, "RFC 3311 §5.2: no offer in the response to an UPDATE without one")
    # Offers in requests (RFC 3261 §13.2.1, §14.1; RFC 3311 §5.1).
    rows[H.NOBODY, V.OFFER_REQUEST] = Step(A.OFFER, H.SENDER)
    # A new offer before the answer: passed on, the peer UA refuses it (RFC 3261 §14.2: 500).
    rows[H.SENDER, V.OFFER_REQUEST] = Step(A.OFFER, H.SENDER)
    # SDP from the side that owes an answer is that answer (the peer's 2xx/18x offer).
    rows[H.PEER, V.OFFER_REQUEST] = Step(A.ANSWER, H.NOBODY)
    # Answers in ACK (RFC 3261 §13.2.1) and PRACK (RFC 3262 §5).
    rows[H.PEER, V.SDP_IN_OTHER_REQUEST] = Step(A.ANSWER, H.NOBODY)
    for h in (H.NOBODY, H.SENDER):
        rows[h, V.SDP_IN_OTHER_REQUEST] = Step(A.STRIP, h, "RFC 3264 §4: SDP in a request that can be neither offer nor answer")
        rows[h, V.ACK_WITHOUT_SDP] = Step(A.FORWARD, h)
    rows[H.PEER, V.ACK_WITHOUT_SDP] = Step(A.FORWARD, H.PEER, "RFC 3261 §13.2.1: the answer to an offer in a 2xx must be in the ACK")
    # Error responses to a re-offer (RFC 3264 §8; RFC 3261 §14.1; RFC 3311 §5.1).
    rows[H.PEER, V.ERROR_TO_REOFFER] = Step(A.ROLLBACK, H.NOBODY)
    rows[H.NOBODY, V.ERROR_TO_REOFFER] = Step(A.FORWARD, H.NOBODY)
    rows[H.SENDER, V.ERROR_TO_REOFFER] = Step(A.FORWARD, H.SENDER)
    # Offers in responses to an INVITE without SDP (RFC 3261 §13.2.1).
    rows[H.NOBODY, V.SDP_TO_OFFERLESS_INVITE] = Step(A.OFFER, H.SENDER)
    rows[H.SENDER, V.SDP_TO_OFFERLESS_INVITE] = Step(A.REPEAT_OFFER, H.SENDER)  # 18x then 2xx: the same offer
    rows[H.PEER, V.SDP_TO_OFFERLESS_INVITE] = Step(A.STRIP, H.PEER, "RFC 3264 §4: an offer while the peer's is outstanding")
    return rows


TABLE: dict[tuple[Holder, OfferEvent], Step] = _rows()

# The members the functions below return or compare, as module constants (``ACTION_FORWARD``).
_NOBODY = Holder.NOBODY
_SENDER = Holder.SENDER
_PEER = Holder.PEER
_ACK_WITHOUT_SDP = OfferEvent.ACK_WITHOUT_SDP
_ANSWER_18X = OfferEvent.ANSWER_18X
_ANSWER_2XX = OfferEvent.ANSWER_2XX
_BARE_2XX_TO_INITIAL_OFFER = OfferEvent.BARE_2XX_TO_INITIAL_OFFER
_BARE_REQUEST = OfferEvent.BARE_REQUEST
_BARE_TO_OFFER = OfferEvent.BARE_TO_OFFER
_BARE_TO_OFFERLESS = OfferEvent.BARE_TO_OFFERLESS
_ERROR_TO_REOFFER = OfferEvent.ERROR_TO_REOFFER
_FINAL_FAILURE = OfferEvent.FINAL_FAILURE
_OFFERLESS_REQUEST = OfferEvent.OFFERLESS_REQUEST
_OFFER_REQUEST = OfferEvent.OFFER_REQUEST
_SDP_IN_OTHER_REQUEST = OfferEvent.SDP_IN_OTHER_REQUEST
_SDP_TO_OFFERLESS_INVITE = OfferEvent.SDP_TO_OFFERLESS_INVITE
_SDP_TO_OFFERLESS_UPDATE = OfferEvent.SDP_TO_OFFERLESS_UPDATE


def holder(pending_offer: Side | None, sender: Side) -> Holder:
    """``Call.pending_offer`` as seen from ``sender``."""
    if pending_offer is None:
        return _NOBODY
    return _SENDER if pending_offer is sender else _PEER


def pending_after(step: Step, sender: Side) -> Side | None:
    """``Call.pending_offer`` after ``step`` (the inverse of ``holder``)."""
    if step.holder is _NOBODY:
        return None
    return sender if step.holder is _SENDER else sender.other


def step(current: Holder, event: OfferEvent) -> Step:
    return TABLE[current, event]


def request_event(method: str, has_sdp: bool) -> OfferEvent:
    """What a request means for offer/answer (RFC 3261 §13.2.1, RFC 3311 §5, RFC 3262 §5)."""
    if method in ("INVITE", "UPDATE"):
        return _OFFER_REQUEST if has_sdp else _OFFERLESS_REQUEST
    if has_sdp:
        return _SDP_IN_OTHER_REQUEST
    return _ACK_WITHOUT_SDP if method == "ACK" else _BARE_REQUEST


def response_event(status: int, has_sdp: bool, request_offered: bool, initial: bool, method: str) -> OfferEvent:
    """What a 18x–6xx response means (100 Trying never reaches here).  ``request_offered``:
    the request carried an offer; ``initial``: it is the dialog's first INVITE."""
    if status >= 300:
        return _ERROR_TO_REOFFER if request_offered and not initial else _FINAL_FAILURE
    if request_offered:
        if has_sdp:
            return _ANSWER_2XX if status >= 200 else _ANSWER_18X
        return _BARE_2XX_TO_INITIAL_OFFER if initial and status >= 200 else _BARE_TO_OFFER
    if not has_sdp:
        return _BARE_TO_OFFERLESS
    return _SDP_TO_OFFERLESS_INVITE if method == "INVITE" else _SDP_TO_OFFERLESS_UPDATE
