"""The call manager: every INVITE dialog between a WIC and the core (TS 24.371 §7.4).

Theory of operation
-------------------
The edge policy (``epcscf.pcscf.edge``) hands us each INVITE dialog it proxies through the
``CallHooks`` methods; the proxy core (RFC 3261 §16) still does all the forwarding, and what
we may ask of it is ``ProxyOperations`` (CANCEL branches, answer upstream, send a BYE of our
own), given at construction.  A ``Call`` follows the table of ``call_state``; this module
feeds it events and does the SIP side of the work:

* **SDP** by RFC 3264 offer/answer, whatever the method: each message is classified and the
  table of ``offer_answer`` says what its SDP is (an offer, an answer, nothing allowed) and
  what to do; ``call_sdp`` does it with the call's media (``CallMediaLike``,
  ``epcscf.pcscf.call_media``): the call manager never parses SDP.  A request of a call
  carries a ``CallLeg`` (``ProxiedRequest.attached``) so that its responses are rewritten
  by the same rules.
* **Initial INVITEs**, both directions by one path: originating (§7.4.2: the WIC's offer →
  media allocated → offer toward the core; the INVITE is forwarded at once, ICE runs in
  parallel) and terminating (§7.4.3: the core's offer → WebRTC offer to the WIC; the WIC's
  answer → answer toward the core).  Unusable offer → 488 + Warning (RFC 5763 §5, RFC 8839:
  what WebRTC SDP must carry), malformed → 400, no ports → 503 + Retry-After (TS 24.229
  §5.2.7.2); no INVITE goes on then.
  An INVITE without SDP is a late offer: the offer in the 2xx, the answer in the ACK.
* **Release from the middle** (TS 23.228 §5.10, TS 24.229 §5.2.8: the P-CSCF releases a
  session whose signalling is lost; RFC 7675 §5.1: consent lost): WebSocket closed, ICE/DTLS
  failure or the operator.  A confirmed call gets a BYE (built by ``dialogs.Dialog``, with a Reason
  header, RFC 3326) toward each reachable side; an early one is CANCELled downstream and
  answered upstream by the proxy; a 2xx racing the release is ACKed and BYEd.
* An event the call state table does not allow, or one RFC 3264 does not allow, is a
  protocol error: a log line with the Call-ID, a timeline entry and ``protocol_errors``
  counted — never silently dropped.
* Every call's media is closed when it ends, whatever the path; an ended call stays in
  ``ended_calls()`` for ``CallSettings.keep_ended`` seconds, one that never got a 2xx for
  ``keep_unanswered``, as a compact record (``call_history``).
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from epcscf.pcscf import call_refusals as refusals
from epcscf.pcscf import call_sdp
from epcscf.pcscf import offer_answer as oa
from epcscf.pcscf.call_history import CallHistory, HistoryEntry
from epcscf.pcscf.call_model import (
    LAYERS,
    TRICKLE_SDPFRAG,
    WS_CLOSED_REASON,
    Call,
    CallLeg,
    CallMediaLike,
    CallSettings,
    MediaFactory,
    MediaRejected,
    TimelineEntry,
    call_leg,
    content_type,
    sdp_body,
    set_sdp,
    strip_body,
)
from epcscf.pcscf.call_requests import CallRequests, quoted
from epcscf.pcscf.call_state import (
    EVENT_ACK,
    EVENT_BYE,
    EVENT_CANCEL,
    EVENT_EARLY_ANSWER,
    EVENT_FINAL_2XX,
    EVENT_FINAL_FAILURE,
    EVENT_OFFER_FORWARDED,
    EVENT_PROVISIONAL,
    EVENT_REJECTED,
    EVENT_RELEASE,
    EVENT_RELEASED,
    EVENT_REOFFER,
    ORIGINATING,
    STATE_CONFIRMED,
    STATE_EARLY,
    STATE_OFFER_RECEIVED,
    STATE_TERMINATED,
    STATE_TERMINATING,
    TERMINATING,
    CallDirection,
    CallEvent,
)
from epcscf.pcscf.call_suspension import CallSuspensions, InstanceKey
from epcscf.pcscf.dialogs import SIDE_CORE, SIDE_WIC, Dialog, Side
from epcscf.pcscf.edge import EdgeAddresses
from epcscf.sip.connection import Connection
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy import Decision, Forward, ProxiedRequest, Reject
from epcscf.sip.proxy_policy import ProxyOperations
from epcscf.sip.proxy_rules import make_local_response
from epcscf.sip.uri import SipUri, UriError, shared_uri

__all__ = [
    "LAYERS", "Call", "CallManager", "CallMediaLike", "CallSettings", "MediaFactory", "MediaRejected",
    "TimelineEntry", "WS_CLOSED_REASON",
]

log = Logger(namespace="epcscf.pcscf.calls")

class CallManager:
    """``CallHooks`` of the edge policy (see module docstring)."""

    def __init__(
        self,
        clock: IReactorTime,
        addresses: EdgeAddresses,
        media_factory: MediaFactory,
        settings: CallSettings | None = None,
        proxy: ProxyOperations | None = None,  # None: nothing to CANCEL or BYE with (unit tests)
    ) -> None:
        self.clock = clock
        self.addresses = addresses
        self.media_factory = media_factory
        self.settings = settings or CallSettings()
        self.proxy = proxy
        self._requests = CallRequests(addresses, proxy)
        #: events the call state or offer/answer tables do not allow (see ``_protocol_error``)
        self.protocol_errors = 0
        self._live: dict[tuple[str, str], Call] = {}
        #: ended calls, kept for the console (``call_history``)
        self.history = CallHistory(clock, lambda: self.settings)
        self._closing: set[defer.Deferred] = set()
        #: calls outliving a lost flow until their WIC registers again (``call_suspension``)
        self.suspensions = CallSuspensions(
            clock, self.settings.reconnect_grace, self._move,
            lambda call, cause: self._release(call, WS_CLOSED_REASON, 480, (SIDE_CORE,), cause, "ws"),
            self._finish, self._requests.send_bye,
            lambda flow_id: [call for call in self._live.values() if call.wic_flow.id == flow_id],
        ) if self.settings.reconnect_grace > 0 else None

    # --- views for the console and tests ----------------------------------------------------

    def calls(self) -> list[Call]:
        return list(self._live.values())

    def ended_calls(self) -> list[HistoryEntry]:
        return self.history.calls()

    def find(self, call_id: str) -> list[Call]:
        return [call for call in self._live.values() if call.call_id == call_id]

    def idle(self) -> defer.Deferred:
        """Fires once every media close started so far has finished (tests, shutdown)."""
        return defer.DeferredList(list(self._closing), consumeErrors=True).addCallback(lambda _: None)

    def is_own_uri(self, uri: str) -> bool:
        try:
            parsed = shared_uri(uri)  # read only: the memo's object, not a copy of it
        except UriError:
            return False
        return isinstance(parsed, SipUri) and self.addresses.is_own(parsed)

    # --- CallHooks: initial INVITEs -----------------------------------------------------------

    def originating_invite(self, context: ProxiedRequest, identity: str, forward: Forward) -> Decision | defer.Deferred:
        """TS 24.371 §7.4.2: the WIC's INVITE with its offer."""
        return self._initial_invite(context, ORIGINATING, context.connection, forward,
                                    f"INVITE from the WIC ({identity})")

    def terminating_invite(self, context: ProxiedRequest, flow: Connection, forward: Forward) -> Decision | defer.Deferred:
        """TS 24.371 §7.4.3: the core's INVITE toward the WIC."""
        return self._initial_invite(context, TERMINATING, flow, forward, "INVITE from the core")

    def _initial_invite(self, context: ProxiedRequest, direction: CallDirection, flow: Connection, forward: Forward,
                        what: str) -> Decision | defer.Deferred:
        problem = refusals.unusable_body(context.request)
        if problem is not None:
            return Reject(problem)
        call = self._new_call(context, direction, flow)
        if isinstance(call, Reject):
            return call
        if direction is TERMINATING:
            call.core_connection = context.connection
        call.note("sip-in", what)
        leg = call_leg(context)
        assert leg is not None
        return self._request_sdp(call, leg, context, forward)

    def _new_call(self, context: ProxiedRequest, direction: CallDirection, flow: Connection) -> Call | Reject:
        request = context.request
        if len(self._live) >= self.settings.max_calls:
            return Reject(refusals.overloaded(request, "too many calls", self.settings))
        call_id = request.headers.get("Call-ID") or ""
        call = Call(call_id, direction, flow, self.clock.seconds(), self.clock,
                    timeline_limit=self.settings.timeline_length)
        received = context.request_as_received
        caller = SIDE_WIC if direction is ORIGINATING else SIDE_CORE
        call.dialog = Dialog.from_invite(received, caller)
        call.invite_context = context
        context.attached = CallLeg(call, caller, initial=True)
        try:
            call.media = self.media_factory(call)
        except Exception as error:  # ports exhausted, socket errors: a 503, never a traceback
            log.info("no media for call {call_id}: {error}", call_id=call_id, error=error)
            call.fire(EVENT_REJECTED)
            self._finish(call, f"no media resources: {error}", "media")
            return Reject(refusals.overloaded(request, str(error), self.settings))
        call.media.on_failure = lambda layer, reason: self._media_failed(call, layer, reason)
        call.media.on_event = call.note
        call.media.wic_flow = lambda: None if call.suspended_since is not None else call.wic_flow.id
        previous = self._live.get(call.key)
        if previous is not None:
            self._finish(previous, "replaced by a new INVITE with the same Call-ID", "sip")
        self._live[call.key] = call
        return call

    def _request_sdp(self, call: Call, leg: CallLeg, context: ProxiedRequest, forward: Forward) -> Decision | defer.Deferred:
        """Offer/answer in a request of ``leg`` (initial INVITE or in-dialog): the one path of
        both directions (see ``offer_answer``)."""
        request = context.request
        body = sdp_body(request)
        step = call_sdp.offer_step(call, leg.sender, oa.request_event(request.method, body is not None), self._protocol_error)
        call.pending_offer = oa.pending_after(step, leg.sender)
        action = step.action
        if not leg.initial and request.method in ("INVITE", "UPDATE") and action is not oa.ACTION_ANSWER:
            context.attached = leg  # its responses are rewritten by the same rules
            if action is oa.ACTION_OFFER:
                self._fire(call, EVENT_REOFFER)  # hold, ICE restart, codec change
        if action is oa.ACTION_STRIP:
            strip_body(forward.request)
        if body is None or action not in (oa.ACTION_OFFER, oa.ACTION_ANSWER):
            return self._forward_initial(call, forward, None) if leg.initial else forward
        if action is oa.ACTION_OFFER:
            leg.offer_from = leg.sender
            if leg.initial:
                # The initial INVITE's offer, decided at once when the media offers at once (no
                # Deferred for the proxy either), as the Deferred chain below would decide it.
                return call_sdp.then_at_once(
                    lambda: call_sdp.transform_offer(call, leg.sender, body),
                    lambda offer: self._forward_initial(call, forward, offer),
                    lambda failure: self._reject_initial(call, context, failure),
                )
            transformed = defer.maybeDeferred(call_sdp.transform_offer, call, leg.sender, body)
        else:
            transformed = call_sdp.transform_answer(call, leg.sender, body, request)
        if leg.initial:
            return transformed.addCallbacks(
                lambda offer: self._forward_initial(call, forward, offer),
                lambda failure: self._reject_initial(call, context, failure),
            )
        transformed.addCallback(lambda new_body: set_sdp(forward.request, new_body))
        return transformed.addCallbacks(lambda _: forward, lambda failure: self._in_dialog_rejected(call, context, failure))

    def _forward_initial(self, call: Call, forward: Forward, offer: bytes | None) -> Decision:
        if call.state is not STATE_OFFER_RECEIVED:
            # Cancelled or released while the media was being prepared (the proxy answers 487
            # for a CANCEL; a release answers here).
            return Reject(make_local_response(forward.request, 480, "Temporarily Unavailable (call released)"))
        if offer is not None:
            set_sdp(forward.request, offer)
        call.fire(EVENT_OFFER_FORWARDED)
        call.note("sip-out", f"INVITE toward the {call.dialog.callee._value_ if call.dialog else '?'}")
        return forward

    def _reject_initial(self, call: Call, context: ProxiedRequest, failure: Failure) -> Decision:
        if call.ended:
            # Released (WS closed, shutdown) while its media was being prepared: the media was
            # closed under the offer, which is why it failed.
            return Reject(make_local_response(context.request, 480, "Temporarily Unavailable (call released)"))
        response = refusals.rejection(context.request, failure, self.settings)
        self._fire(call, EVENT_REJECTED)
        call.note("sip-out", f"{response.status} {response.reason}")
        self._finish(call, f"rejected: {response.status} {response.reason}", "media" if response.status == 503 else "sip")
        return Reject(response)

    # --- CallHooks: responses -----------------------------------------------------------------

    def response(self, context: ProxiedRequest, response: Response) -> Response | None | defer.Deferred:
        leg = call_leg(context)
        if leg is None:
            return response
        call = leg.call
        responder = leg.sender.other
        initial = leg.initial and call_sdp.method_of(response) == "INVITE"
        call.note("sip-in", f"{response.status} {response.reason} from the {responder._value_}")
        if initial and call.state in (STATE_TERMINATING, STATE_TERMINATED):
            return self._response_after_release(call, response, responder)
        if call.media is None:
            # The call ended (a BYE crossing a re-INVITE, a new INVITE with its Call-ID) while
            # this transaction was open: the response still ends the transaction, but its SDP
            # can no longer be transformed and is never relayed as it is (TS 24.371 §7.4).
            log.info("{status} for call {call_id}, which has ended: relayed without its body",
                     status=response.status, call_id=call.call_id)
            strip_body(response)
            return response
        if call.dialog is not None:
            call.dialog.response_seen(response, responder)
        try:
            rewritten = call_sdp.rewrite_response(call, leg, response, initial, self._protocol_error, self._release_for_sdp)
            if not isinstance(rewritten, defer.Deferred):  # at once (1xx, 2xx without SDP): no Deferred chain
                if initial:
                    self._initial_response(call, context, response, rewritten)
                return response
        except Exception:  # as the errback below would have it
            outcome = self._response_during_release(Failure(), call, response, responder, initial)
            return defer.fail(outcome) if isinstance(outcome, Failure) else outcome
        if initial:
            rewritten.addCallback(lambda answered: self._initial_response(call, context, response, answered))
        rewritten.addCallback(lambda _: response)
        return rewritten.addErrback(self._response_during_release, call, response, responder, initial)

    def _release_for_sdp(self, call: Call, reason: str, cause: str) -> None:
        """The dialog is up but has no usable media (RFC 3264 §6: 488): end it once the 2xx has gone."""
        self.clock.callLater(0, self._release, call, f'SIP;cause=488;text="{quoted(reason)}"',
                             488, (SIDE_WIC, SIDE_CORE), cause, "sip")

    def _response_during_release(self, failure: Failure, call: Call, response: Response, responder: Side,
                                 initial: bool) -> Failure | Response | None:
        """The call was released while this response's SDP was being rewritten: its media was
        closed under the transformation (an ICE agent closed while gathering raises
        ``IceClosed``).  Not an error: the response is handled as one arriving after the
        release (a 2xx to the initial INVITE is ACKed and BYEd, RFC 3261 §15)."""
        if not call.ended:
            return failure
        log.info("{call_id}: SDP of a {status} not rewritten, the call was released meanwhile ({why})",
                 call_id=call.call_id, status=response.status, why=failure.getErrorMessage())
        strip_body(response)  # never relay one side's SDP to the other untransformed
        if initial:
            return self._response_after_release(call, response, responder)
        return response

    def _initial_response(self, call: Call, context: ProxiedRequest, response: Response, answered: bool) -> None:
        status = response.status
        if status < 200:
            self._fire(call, EVENT_EARLY_ANSWER if answered or call.state is STATE_EARLY else EVENT_PROVISIONAL)
        elif status < 300:
            first = call.dialog is not None and not call.dialog.confirmed
            self._fire(call, EVENT_FINAL_2XX)
            if first and call.dialog is not None:
                call.dialog.confirm(response, self.is_own_uri)
                if call.direction is ORIGINATING:
                    call.core_connection = _branch_connection(context, response)
        else:
            self._fire(call, EVENT_FINAL_FAILURE)
            self._finish(call, f"{status} {response.reason}", None if status in (486, 487, 600, 603) else "sip")
        leg = call_leg(context)
        call.note("sip-out", f"{status} {response.reason} toward the {(leg.sender if leg else SIDE_WIC)._value_}")

    def _response_after_release(self, call: Call, response: Response, responder: Side) -> Response | None:
        """A response to the initial INVITE after we released the call early (CANCEL/2xx race,
        RFC 3261 §9.1, §15: the 2xx is ACKed and the dialog BYEd)."""
        if 200 <= response.status < 300 and call.released_early and call.dialog is not None:
            self._ack_and_bye_late_2xx(call, response, responder)
            return None
        if response.status >= 300:
            self._fire(call, EVENT_FINAL_FAILURE)
        return None if 200 <= response.status < 300 else response

    def _ack_and_bye_late_2xx(self, call: Call, response: Response, responder: Side) -> None:
        assert call.dialog is not None
        call.dialog.confirm(response, self.is_own_uri)
        if call.direction is ORIGINATING and call.invite_context is not None:
            call.core_connection = _branch_connection(call.invite_context, response)
        self._requests.ack_and_bye(call, responder, call.release_cause or "released")

    def stray_response(self, response: Response) -> Response | None:
        """A 2xx to an INVITE the proxy forwards without its transaction (a retransmission,
        another fork, or one that raced our release): its SDP must still be rewritten."""
        if call_sdp.method_of(response) != "INVITE" or not 200 <= response.status < 300:
            return response
        call_id = response.headers.get("Call-ID") or ""
        for call in [*self.find(call_id), *self.history.with_call_id(call_id)]:
            if call.released_early and call.dialog is not None and not call.dialog.confirmed:
                self._ack_and_bye_late_2xx(call, response, call.dialog.callee)
                return None
            # Only the initial INVITE's answer is remembered: the callee's 2xx retransmission.
            if call.dialog is not None and call.dialog.matches(response) and call_sdp.repeat_answer_in_retransmission(call, response):
                return response
        strip_body(response)  # never relay one side's SDP to the other untransformed
        return response

    # --- CallHooks: in-dialog requests ----------------------------------------------------------

    def in_dialog_request(self, context: ProxiedRequest, forward: Forward, from_wic: bool) -> Decision | defer.Deferred:
        request = context.request
        sender = SIDE_WIC if from_wic else SIDE_CORE
        flow = context.connection if from_wic else forward.destination
        call = self._live.get((request.headers.get("Call-ID") or "", getattr(flow, "id", "")))
        if call is None or call.dialog is None or not call.dialog.matches(request):
            return forward  # not an INVITE dialog of ours (SUBSCRIBE, another fork's dialog…)
        method = request.method
        call.dialog.request_seen(request, sender)
        call.note("sip-in", f"{method} from the {sender._value_}")
        if method == "INFO" and from_wic and content_type(request) == TRICKLE_SDPFRAG:
            return self._trickle(call, request)
        if method == "BYE":
            if call.can(EVENT_BYE):
                call.fire(EVENT_BYE)
            if call.state is not STATE_TERMINATED:
                # RFC 3261 §15: a BYE may also end an early dialog: the call is released.
                call.fire(EVENT_RELEASE)
                call.fire(EVENT_RELEASED)
            self._finish(call, f"BYE from the {sender._value_}", None)  # RFC 3261 §15: the session ends: media freed
            return forward
        if method == "ACK":
            self._fire(call, EVENT_ACK)
        return self._request_sdp(call, CallLeg(call, sender), context, forward)

    def _in_dialog_rejected(self, call: Call, context: ProxiedRequest, failure: Failure) -> Decision:
        if call.ended:
            # Released (BYE, WS closed) while the SDP was being rewritten: its media is gone.
            log.info("{call_id}: {method} not forwarded, the call was released meanwhile ({why})",
                     call_id=call.call_id, method=context.request.method, why=failure.getErrorMessage())
            return Reject(make_local_response(context.request, 481, "Call/Transaction Does Not Exist (call released)"))
        call.pending_offer = None
        if call.media is not None:
            call.media.offer_failed()  # RFC 3264 §8: a refused re-offer keeps the previous media
        response = refusals.rejection(context.request, failure, self.settings)
        call.note("sip-out", f"{response.status} {response.reason} to the {context.request.method}")
        return Reject(response)

    def _trickle(self, call: Call, request: Request) -> Decision:
        """RFC 8840 INFO from the WIC: candidates go to the ICE agents; never forwarded to the core."""
        assert call.media is not None
        try:
            call.media.add_trickle(request.body)
        except MediaRejected as error:
            return Reject(make_local_response(request, 400, f"Bad Request ({error.reason[:80]})"))
        call.note("ice", "trickled candidates from the WIC")
        return Reject(make_local_response(request, 200))

    # --- CallHooks: CANCEL, end of transactions, flows ------------------------------------------

    def cancel_received(self, context: ProxiedRequest) -> None:
        leg = call_leg(context)
        if leg is None or not leg.initial:
            return
        call = leg.call
        call.note("sip-in", f"CANCEL from the {leg.sender._value_}")
        self._fire(call, EVENT_CANCEL)
        if call.state is STATE_TERMINATED:
            self._finish(call, "cancelled", None)

    def transaction_ended(self, context: ProxiedRequest) -> None:
        leg = call_leg(context)
        if leg is None or not leg.initial or leg.call.state is STATE_TERMINATING:
            return
        call = leg.call
        if call.state is STATE_CONFIRMED or _got_2xx(context):
            return  # a 2xx whose SDP is still being rewritten (late offer) confirms the call shortly
        # The initial INVITE ended without a 2xx (answered locally, abandoned): free everything.
        if call.state is not STATE_TERMINATED:
            if call.can(EVENT_FINAL_FAILURE):
                call.fire(EVENT_FINAL_FAILURE)
            if call.state is not STATE_TERMINATED:
                # Answered before it was forwarded (a proxy error, a release): nothing downstream.
                call.fire(EVENT_RELEASE)
                call.fire(EVENT_RELEASED)
        self._finish(call, call.release_cause or "INVITE transaction ended without a dialog", None)

    def wic_route_matches(self, request: Request, flow: Connection) -> bool | None:
        """TS 24.229 §5.2.6.3: does a WIC's in-dialog request (our Routes removed) keep the
        route set saved for its INVITE dialog?  None when no call of this flow is that dialog."""
        call = self._live.get((request.headers.get("Call-ID") or "", flow.id))
        if call is None or call.dialog is None or not call.dialog.matches(request):
            return None
        return call.dialog.wic_route_matches(request)

    def flow_for_call(self, call_id: str) -> Connection | None:
        for call in self.find(call_id):
            return call.wic_flow
        return None

    def flow_closed(self, connection: Connection, instances: frozenset[InstanceKey] = frozenset(), suspend: bool = True) -> None:
        """TS 23.228 §5.10: the WIC's WebSocket flow is gone: BYE (confirmed) or CANCEL/480 (early),
        unless its confirmed calls wait for the same ``instances`` to register again."""
        calls = [c for c in self._live.values() if c.wic_flow.id == connection.id]
        if self.suspensions is not None and suspend:
            calls = self.suspensions.suspend(connection.id, instances, calls)
        for call in calls:
            self._release(call, WS_CLOSED_REASON, 480, (SIDE_CORE,), "WebSocket closed", "ws")

    def _move(self, call: Call, connection: Connection) -> None:
        """The call's WIC is now on ``connection`` (``call_suspension``: adopted by a new flow)."""
        if self._live.get(call.key) is call:
            del self._live[call.key]
        call.wic_flow = connection
        self._live[call.key] = call

    def release_flow(self, flow_id: str, reason_header: str, cause: str) -> int:
        """TS 24.229 §5.2.5.1: the WIC's registration is over: BYE both sides (CANCEL/503 if early)."""
        calls = [c for c in self._live.values() if c.wic_flow.id == flow_id]
        for call in calls:
            self._release(call, reason_header, 503, (SIDE_WIC, SIDE_CORE), cause, None)
        return len(calls)

    def release(self, call_id: str, reason: str = "released by the operator") -> int:
        """Operator release: BYE both sides (or CANCEL/480 if early); returns how many calls."""
        calls = self.find(call_id)
        for call in calls:
            self._release(call, f'SIP;cause=480;text="{quoted(reason)}"', 480, (SIDE_WIC, SIDE_CORE), reason, None)
        return len(calls)

    def close(self) -> defer.Deferred:
        """Service stop: release every call, then wait for the media to close."""
        for call in list(self._live.values()):
            self._release(call, 'SIP;cause=503;text="Service shutting down"', 503, (SIDE_WIC, SIDE_CORE),
                          "service shutting down", None)
        self.history.close()
        if self.suspensions is not None:
            self.suspensions.close()
        return self.idle()

    # --- events the tables do not allow ------------------------------------------------------------

    def _fire(self, call: Call, event: CallEvent) -> None:
        """Feed ``event`` to the call's state table; one it does not allow is a protocol error
        (or a race the table does not know), reported, never silently dropped."""
        if call.can(event):
            call.fire(event)
        else:
            self._protocol_error(call, f"{event.value} not allowed in call state {call.state.value}, ignored")

    def _protocol_error(self, call: Call, what: str) -> None:
        self.protocol_errors += 1
        call.note("state", f"protocol error: {what}")
        log.info("protocol error in call {call_id}: {what}", call_id=call.call_id, what=what)

    # --- releasing ---------------------------------------------------------------------------------

    def _media_failed(self, call: Call, layer: str, reason: str) -> None:
        """RFC 7675 §5.1: ICE failure, consent loss or DTLS failure ends the call."""
        call.note(layer if layer in ("ice", "dtls") else "media", reason)
        self._release(call, f'SIP;cause=480;text="{quoted(reason)}"', 480, (SIDE_WIC, SIDE_CORE), reason, layer)

    def _release(self, call: Call, reason_header: str, early_status: int, toward: Iterable[Side],
                 cause: str, layer: str | None) -> None:
        if call.ended or call.state in (STATE_TERMINATING, STATE_TERMINATED):
            return
        call.note("release", f"{cause} (Reason: {reason_header})")
        call.release_cause = cause
        state = call.state
        call.fire(EVENT_RELEASE)
        try:
            if state is STATE_CONFIRMED:
                for side in toward:
                    self._requests.send_bye(call, side, reason_header)
            elif state is not STATE_OFFER_RECEIVED and call.invite_context is not None and self.proxy is not None:
                # Early: CANCEL what is pending downstream and answer upstream ourselves.
                call.released_early = True
                context = call.invite_context
                if call.core_connection is None and call.direction is ORIGINATING:
                    call.core_connection = _branch_connection(context, None)  # for a racing 2xx
                self.proxy.cancel_branches(context)
                response = make_local_response(context.request_as_received, early_status)
                response.headers.add("Reason", reason_header)
                self.proxy.respond_upstream(context, response)
        finally:
            # Whatever the signalling did, the call is over here: never keep its media.
            call.fire(EVENT_RELEASED)
            self._finish(call, cause, layer)

    def _finish(self, call: Call, cause: str, layer: str | None) -> None:
        """The call is over: close its media (ports, sockets, agents, timers) and archive it."""
        if call.ended:
            return
        call.ended_at = self.clock.seconds()
        if call.release_cause is None:
            call.release_cause = cause
        if call.failing_layer is None:
            call.failing_layer = layer
        call.note("release", f"ended: {call.release_cause}" + (f" [{layer}]" if layer else ""))
        if self._live.get(call.key) is call:
            del self._live[call.key]
        if self.suspensions is not None:
            self.suspensions.forget(call)
        call.invite_context = None  # the proxy's context is not ours to keep alive
        media, call.media = call.media, None
        closing: defer.Deferred | None = None
        if media is not None:
            try:
                call.media_stats = media.stats()  # the console still shows them after the end
            except Exception:
                log.failure("media stats of {call_id}", call_id=call.call_id)
            media.on_failure = None
            media.wic_flow = None
            closing = defer.maybeDeferred(media.close)
            closing.addErrback(lambda failure: log.failure("closing media of {call_id}", failure, call_id=call.call_id))
            self._closing.add(closing)
            closing.addBoth(lambda result: (self._closing.discard(closing), result)[1])
        self.history.add(call, closing)


def _branch_connection(context: ProxiedRequest, response: Response | None) -> Connection | None:
    """The connection toward the core of the branch that got this 2xx (else any branch's)."""
    for branch in context.branches:
        if branch.final is response and branch.connection is not None:
            return branch.connection
    return next((b.connection for b in context.branches if b.connection is not None), None)


def _got_2xx(context: ProxiedRequest) -> bool:
    return any(b.final is not None and 200 <= b.final.status < 300 for b in context.branches)
