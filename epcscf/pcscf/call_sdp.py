"""The SDP side of a call: performs the ``offer_answer`` table's actions on a call's media.

The call manager (``epcscf.pcscf.calls``) classifies each SIP message of a call and asks
``offer_answer`` what it means; this module does what the table says to the message body
and the call's media (``CallMediaLike``): transform an offer or an answer for the other
side (TS 24.371 §7.4.2, §7.4.3), repeat the last answer, roll a refused re-offer back (RFC
3264 §8), remove SDP that must not cross.  It never parses SDP itself.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from epcscf.pcscf import offer_answer as oa
from epcscf.pcscf.call_model import Call, CallLeg, MediaRejected, sdp_body, set_sdp, strip_body, succeeded_already
from epcscf.pcscf.call_state import ORIGINATING
from epcscf.pcscf.dialogs import SIDE_CORE, SIDE_WIC, Side
from epcscf.sip.connection import WEBSOCKET_TRANSPORTS
from epcscf.sip.headers import HeaderError, cseq, to_tag, top_via
from epcscf.sip.message import Message, Response

#: ``(call, what)``: an event the offer/answer table does not allow (logged and counted)
ProtocolErrorReport = Callable[[Call, str], None]
#: ``(call, reason, cause)``: end a dialog whose SDP cannot be served, once its 2xx has gone
ReleaseForSdp = Callable[[Call, int, str], None]

R = TypeVar("R")

def offer_step(call: Call, sender: Side, event: oa.OfferEvent, report: ProtocolErrorReport) -> oa.Step:
    """The table's step for ``event`` sent by ``sender``; a protocol error is reported."""
    step = oa.step(oa.holder(call.pending_offer, sender), event)
    if step.protocol_error is not None:
        report(call, f"{event.value} from the {sender.value}: {step.protocol_error}")
    return step


def transform_offer(call: Call, sender: Side, body: bytes) -> bytes | defer.Deferred:
    """``sender``'s offer, for the other side (TS 24.371 §7.4.2 / §7.4.3): the media's result
    as it gives it (bytes at once, or a Deferred), its refusal raised."""
    assert call.media is not None
    transform = call.media.offer_from_wic if sender is SIDE_WIC else call.media.offer_from_core
    return transform(body)


def transform_answer(call: Call, sender: Side, body: bytes, message: Message) -> defer.Deferred:
    """``sender``'s answer, for the other side; remembered for a 2xx that must repeat it."""
    assert call.media is not None
    if sender is SIDE_CORE:
        return defer.maybeDeferred(core_answer, call, body, message)

    def remember_for_core(answer: bytes) -> bytes:
        call.last_core_answer = answer
        return answer

    return defer.maybeDeferred(call.media.answer_from_wic, body).addCallback(remember_for_core)


def core_answer(call: Call, body: bytes, message: Message) -> bytes | defer.Deferred:
    """The core's answer for the WIC (bytes, or a Deferred of them from a media that answers
    later); remembered for a 2xx that must repeat it.  Raises ``MediaRejected``."""
    assert call.media is not None
    try:
        fork = to_tag(message)  # each fork's answer has its own media (RFC 3261 §13.2.2.4)
    except HeaderError:
        fork = None

    def remember_for_wic(answer: bytes) -> bytes:
        call.last_wic_answer = answer
        return answer

    answer = call.media.answer_from_core(body, fork)
    if isinstance(answer, defer.Deferred):
        return answer.addCallback(remember_for_wic)
    return remember_for_wic(answer)


def then_at_once(thunk: Callable[[], Any], on_result: Callable[[Any], R],
                 on_failure: Callable[[Failure], R]) -> R | defer.Deferred:
    """``maybeDeferred(thunk).addCallbacks(on_result, on_failure)``, at once (no callback chain)
    when ``thunk`` returns a plain value, a Deferred that has fired with one, or raises: the
    builtin media answers the core at once, and offers toward it at once when the call's sockets
    come from the shelf (every call on a busy node)."""
    try:
        result = thunk()
    except Exception:
        return on_failure(Failure())
    if isinstance(result, defer.Deferred):
        if not succeeded_already(result):
            return result.addCallbacks(on_result, on_failure)
        result = result.result  # fired: what ``on_result`` would be called back with now
    return on_result(result)


def rewrite_response(
    call: Call, leg: CallLeg, response: Response, initial: bool, report: ProtocolErrorReport, release: ReleaseForSdp
) -> bool | defer.Deferred:
    """Offer/answer in a response of ``leg`` (RFC 3264); ``initial``: to the dialog's first
    INVITE.  True (or a Deferred of it) when it carried an answer toward the request's sender."""
    assert call.media is not None
    media = call.media
    status = response.status
    if status == 100:
        return False
    responder = leg.sender.other
    body = sdp_body(response)
    event = oa.response_event(status, body is not None, leg.offer_from is not None, initial, method_of(response))
    step = offer_step(call, responder, event, report)
    action = step.action
    if action is oa.ACTION_FORWARD:
        return False
    if action is oa.ACTION_ROLLBACK:
        media.offer_failed()  # RFC 3264 §8: the previous offer/answer stays in force
        call.pending_offer = oa.pending_after(step, responder)
        return False
    if action is oa.ACTION_REPEAT_ANSWER:
        if responder is not SIDE_CORE or not call.last_wic_answer:
            return False
        # The WIC needs the answer in the 2xx: repeat the last one unchanged.
        set_sdp(response, call.last_wic_answer)
        call.note("sip-out", "2xx without SDP: repeated the last WebRTC answer")
        call.pending_offer = oa.pending_after(step, responder)
        return True
    if action is oa.ACTION_STRIP or body is None:
        call.note("media", f"unexpected SDP in {status} from the {responder.value} dropped")
        strip_body(response)  # never let one side's SDP reach the other raw
        return False
    if action is oa.ACTION_ANSWER:
        def answered(new_body: bytes) -> bool:
            set_sdp(response, new_body)
            call.pending_offer = oa.pending_after(step, responder)  # settled by the 2xx only
            return True

        def bad_answer(failure: Failure) -> bool:
            failure.trap(MediaRejected)
            reason = failure.value.reason
            call.note("media", f"unusable answer from the {responder.value}: {reason}")
            strip_body(response)
            if status >= 200:
                release(call, reason, f"unusable SDP answer: {reason}")  # the dialog has no usable media
            return False

        if responder is SIDE_CORE:
            return then_at_once(lambda: core_answer(call, body, response), answered, bad_answer)
        return transform_answer(call, responder, body, response).addCallbacks(answered, bad_answer)
    if action is oa.ACTION_REPEAT_OFFER:
        # The same offer again (18x then 2xx): the same transformed offer.
        return defer.maybeDeferred(transform_offer, call, responder, body).addCallback(lambda new: set_sdp(response, new))
    # OFFER: the responder offers in the 18x/2xx of an INVITE without SDP (RFC 3261 §13.2.1).
    call.pending_offer = oa.pending_after(step, responder)

    def offered(new_body: bytes) -> bool:
        set_sdp(response, new_body)
        return False

    def bad_offer(failure: Failure) -> bool:
        failure.trap(MediaRejected)
        call.pending_offer = None
        strip_body(response)
        if status >= 200:
            release(call, failure.value.reason, f"unusable SDP offer: {failure.value.reason}")
        return False

    return defer.maybeDeferred(transform_offer, call, responder, body).addCallbacks(offered, bad_offer)


def repeat_answer_in_retransmission(call: Call, response: Response) -> bool:
    """A retransmitted 2xx of the callee carries the answer already sent (RFC 3261
    §13.3.1.4): put that answer in again.  False when there is none to repeat."""
    toward_wic = next_hop_is_websocket(response)
    if call.direction is ORIGINATING:
        repeat = call.last_wic_answer if toward_wic else None
    else:
        repeat = call.last_core_answer if not toward_wic else None
    if repeat is None or sdp_body(response) is None:
        return False
    set_sdp(response, repeat)
    return True


def method_of(response: Response) -> str:
    try:
        sequence = cseq(response)
    except HeaderError:
        return ""
    return sequence.method if sequence is not None else ""


def next_hop_is_websocket(response: Response) -> bool:
    """True when the response's next Via (ours already removed) is a WIC's (RFC 7118 §5.2)."""
    try:
        via = top_via(response)
    except HeaderError:
        return False
    return via is not None and via.transport.upper() in WEBSOCKET_TRANSPORTS
