"""The Janus API adapter: Janus sessions and SIP-plugin handles onto per-handle SIP UAs.

A non-SIP WIC (TS 24.371 §7.2.1) speaks the Janus WebRTC server's JSON API with the requests of
its SIP plugin; each attached handle gets a ``NonSipUserAgent`` whose SIP goes through the
unchanged P-CSCF (flows, registration, call manager, ICE, DTLS-SRTP relay).  This module only
translates: requests are checked here (Janus's own error codes, nothing reaches the core when
one is wrong) and UA events become plugin events.  A session ends, as Janus's do, after
``session_timeout`` seconds without a request, on ``destroy``, or when its WebSocket closes;
every handle's call and registration end with it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.logger import Logger

from epcscf.nonsip import janus_api as api
from epcscf.nonsip.janus_api import JanusError, JanusRequest
from epcscf.nonsip.jsep import JsepError, TrickleBuffer, parse_jsep, parse_trickle
from epcscf.nonsip.websocket import JanusConnection
from epcscf.pcscf.nonsip_flow import FlowSink
from epcscf.pcscf.nonsip_headers import CustomHeaderError, custom_headers
from epcscf.pcscf.nonsip_messages import CALL_ID_RE, DEFAULT_MESSAGE_TYPE, MAX_CONTENT, TextBody, is_sip_uri, media_type_ok
from epcscf.pcscf.nonsip_register import Credentials, RegState, UaEvent
from epcscf.pcscf.nonsip_subscribe import DEFAULT_TTL, check_subscription
from epcscf.pcscf.nonsip_transfer import Referral, Transfers, referral_headers, replaces_value
from epcscf.pcscf.nonsip_ua import CallPhase, NonSipUserAgent
from epcscf.sip.transaction import TimerSettings
from epcscf.sip.uri import SipUri, parse_uri

__all__ = ["JanusGateway"]

log = Logger(namespace="epcscf.nonsip")

#: how long a trickling browser may take to finish gathering before we send what we have
TRICKLE_WAIT = 2.0
#: a janus.js page uses one session and a handle or two; these bound what one WebSocket can make
MAX_SESSIONS_PER_CONNECTION = 4
MAX_HANDLES_PER_SESSION = 4


#: a JWT (RFC 7519 §7.2: three base64url parts); it goes into an Authorization header as it is
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", re.ASCII)
_TOKEN_RE_LIMIT = 8192


def _header_safe(text: str, quotes_allowed: bool) -> bool:
    if len(text) > 128 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return False
    return quotes_allowed or ('"' not in text and "\\" not in text)


def _new_id() -> int:
    return secrets.randbelow(2**53 - 2) + 1  # Janus ids are positive and fit a JavaScript number


@dataclass(eq=False)
class _Handle:
    id: int
    ua: NonSipUserAgent
    trickle: TrickleBuffer = field(default_factory=TrickleBuffer)
    #: a call or accept waiting for the browser's last candidate
    pending: tuple[str, str, str, tuple[tuple[str, str], ...]] | None = None  # (action, uri or "", sdp, custom headers)
    pending_timer: Any = None
    #: the description the trickled candidates belong to has gone out: later ones are "late"
    described: bool = False
    #: late candidates, sent in an RFC 8840 INFO once the call is confirmed
    late: TrickleBuffer = field(default_factory=TrickleBuffer)
    #: the transfer this handle's call was made for: its outcome is NOTIFYed (RFC 3515 §2.4.5)
    referral: tuple[Transfers, int] | None = None


@dataclass(eq=False)
class _Session:
    id: int
    connection: JanusConnection
    handles: dict[int, _Handle] = field(default_factory=dict)
    timer: Any = None


class JanusGateway:
    """The ``JanusSink`` of the Janus WebSocket listener."""

    def __init__(self, reactor: Any, flow_sink: FlowSink, timers: TimerSettings, session_timeout: float = 60.0) -> None:
        self._reactor = reactor
        self._flow_sink = flow_sink
        self._timers = timers
        self.session_timeout = session_timeout
        self.sessions: dict[int, _Session] = {}
        #: refused Janus requests by error code (for tests and the log)
        self.errors: dict[int, int] = {}
        #: metrics: one call per refused request, with its Janus error code
        self.on_refused: Callable[[int], None] | None = None
        #: every UA whose flow is still open (attached, or ending after its handle went)
        self.user_agents: set[NonSipUserAgent] = set()

    # --- JanusSink ---------------------------------------------------------------------------

    def frame_received(self, connection: JanusConnection, payload: bytes) -> None:
        try:
            request = api.parse_frame(payload)
        except JanusError as error:
            self._refuse(connection, api.transaction_of(payload), None, error)
            return
        try:
            self._dispatch(connection, request)
        except JanusError as error:
            self._refuse(connection, request.transaction, request.session_id, error)

    def frame_too_large(self, connection: JanusConnection, size: int) -> None:
        error = JanusError(api.INVALID_JSON, f"Message too large ({size} bytes)")
        self._refuse(connection, None, None, error)

    def connection_closed(self, connection: JanusConnection) -> None:
        for session in [s for s in self.sessions.values() if s.connection is connection]:
            self._destroy(session, "the Janus WebSocket closed")

    def close(self) -> None:
        for session in list(self.sessions.values()):
            self._destroy(session, "service stopping")
        for ua in list(self.user_agents):
            ua.end_now("service stopping")

    # --- replies -------------------------------------------------------------------------------

    def _send(self, connection: JanusConnection, message: dict[str, Any]) -> None:
        connection.send_json(api.encode(message))

    def _count(self, code: int) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        if self.on_refused is not None:
            self.on_refused(code)

    def _refuse(self, connection: JanusConnection, transaction: str | None, session_id: int | None, error: JanusError) -> None:
        self._count(error.code)
        log.info("Janus request from {peer} refused: {code} {reason}", peer=connection.remote, code=error.code, reason=error.reason)
        self._send(connection, api.error(transaction, session_id, error.code, error.reason))

    def _plugin_error(self, session: _Session, handle: _Handle, transaction: str | None, code: int, reason: str) -> None:
        self._count(code)
        log.info("Janus SIP request on handle {handle} refused: {code} {reason}", handle=handle.id, code=code, reason=reason)
        self._send(session.connection, api.plugin_event(session.id, handle.id, transaction, api.sip_error(code, reason)))

    # --- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, connection: JanusConnection, request: JanusRequest) -> None:
        verb, transaction = request.verb, request.transaction
        if verb == "ping":
            self._send(connection, api.reply("pong", transaction))
            return
        if verb == "info":
            self._send(connection, api.reply("server_info", transaction, name="epcscf eP-CSCF (Janus API subset)",
                                              plugins={api.SIP_PLUGIN: {"name": "SIP (epcscf)"}}))
            return
        if verb == "create":
            if sum(1 for s in self.sessions.values() if s.connection is connection) >= MAX_SESSIONS_PER_CONNECTION:
                raise JanusError(api.NOT_ACCEPTING_SESSIONS, f"Not accepting new sessions (at most {MAX_SESSIONS_PER_CONNECTION} per connection)")
            session = _Session(_new_id(), connection)
            self.sessions[session.id] = session
            self._touch(session)
            self._send(connection, api.reply("success", transaction, data={"id": session.id}))
            return
        if request.session_id is None:
            if verb in ("attach", "destroy", "keepalive", "detach", "message", "trickle", "hangup"):
                raise JanusError(api.SESSION_NOT_FOUND, "Invalid session")
            raise JanusError(api.UNKNOWN_REQUEST, f"Unknown request '{verb[:40]}'")
        session = self.sessions.get(request.session_id)
        if session is None or session.connection is not connection:
            raise JanusError(api.SESSION_NOT_FOUND, f"No such session {request.session_id}")
        self._touch(session)
        if verb == "keepalive":
            self._send(connection, api.reply("ack", transaction, session.id))
        elif verb == "destroy":
            self._destroy(session, "destroyed by the WIC")
            self._send(connection, api.reply("success", transaction, session.id))
        elif verb == "attach":
            self._attach(session, request)
        elif verb in ("detach", "message", "trickle", "hangup"):
            handle = session.handles.get(request.handle_id) if request.handle_id is not None else None
            if handle is None:
                raise JanusError(api.HANDLE_NOT_FOUND, f"No such handle {request.handle_id} in session {session.id}")
            if verb == "detach":
                self._detach(session, handle, "detached by the WIC")
                self._send(connection, api.reply("success", transaction, session.id))
            elif verb == "trickle":
                self._trickle(session, handle, request)
            elif verb == "hangup":
                # janus.js's handle.hangup(): the PeerConnection ends, and with it the SIP call
                self._cancel_pending(handle)
                handle.ua.hangup()
                self._send(connection, api.reply("success", transaction, session.id))
            else:
                self._message(session, handle, request)
        else:
            raise JanusError(api.UNKNOWN_REQUEST, f"Unknown request '{verb[:40]}'")

    def _touch(self, session: _Session) -> None:
        if session.timer is not None and session.timer.active():
            session.timer.reset(self.session_timeout)
        else:
            session.timer = self._reactor.callLater(self.session_timeout, self._timed_out, session)

    def _timed_out(self, session: _Session) -> None:
        log.info("Janus session {session} timed out ({seconds:g} s without a request)", session=session.id, seconds=self.session_timeout)
        self._send(session.connection, api.reply("timeout", None, session.id))
        self._destroy(session, "session timeout")

    def _destroy(self, session: _Session, reason: str) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        for handle in list(session.handles.values()):
            self._detach(session, handle, reason)

    def _attach(self, session: _Session, request: JanusRequest) -> None:
        plugin = request.body.get("plugin")
        if not isinstance(plugin, str):
            raise JanusError(api.MISSING_MANDATORY_ELEMENT, "Missing mandatory element (plugin)")
        if plugin != api.SIP_PLUGIN:
            raise JanusError(api.PLUGIN_NOT_FOUND, f"No such plugin '{plugin[:60]}'")
        if len(session.handles) >= MAX_HANDLES_PER_SESSION:
            # each handle is a SIP UA with its own flow: a client may not make them without end
            raise JanusError(api.PLUGIN_ATTACH, f"Couldn't attach to plugin (at most {MAX_HANDLES_PER_SESSION} handles per session)")
        handle_id = _new_id()
        connection = session.connection
        ua = NonSipUserAgent(
            self._reactor, self._flow_sink, lambda event: self._ua_event(session, handle_id, event),
            connection.local, connection.remote, connection.origin, self._timers, connection.secure, connection.credentials,
        )
        ua.on_ended = self.user_agents.discard
        self.user_agents.add(ua)
        session.handles[handle_id] = _Handle(handle_id, ua)
        self._send(connection, api.reply("success", request.transaction, session.id, data={"id": handle_id}))

    def _detach(self, session: _Session, handle: _Handle, reason: str) -> None:
        session.handles.pop(handle.id, None)
        self._cancel_pending(handle)
        handle.ua.close(reason)

    def _ua_event(self, session: _Session, handle_id: int, event: UaEvent) -> None:
        if session.id not in self.sessions or handle_id not in session.handles:
            return  # the handle is gone: what its UA still reports (unregistered) has no reader
        jsep = {"type": event.sdp[0], "sdp": event.sdp[1]} if event.sdp is not None else None
        data = api.sip_result(event.result, event.call_id)
        self._send(session.connection, api.plugin_event(session.id, handle_id, None, data, jsep))
        handle = session.handles[handle_id]
        name = event.result.get("event")
        if handle.referral is not None and name in ("accepted", "hangup"):
            (transfers, refer_id), handle.referral = handle.referral, None
            code, reason = (200, "OK") if name == "accepted" else (event.result.get("code", 487), event.result.get("reason", ""))
            transfers.report(refer_id, code, reason)
        if name == "accepted" and handle.described:
            self._send_late(handle)  # candidates that came while the call was being set up
        elif name == "hangup":
            handle.described = False
            handle.late.clear()

    # --- trickle (RFC 8838) ----------------------------------------------------------------------

    def _trickle(self, session: _Session, handle: _Handle, request: JanusRequest) -> None:
        body = request.body
        items = body.get("candidates") if "candidates" in body else [body.get("candidate")]
        if not isinstance(items, list) or (items == [None]):
            raise JanusError(api.MISSING_MANDATORY_ELEMENT, "Missing mandatory element (candidate|candidates)")
        try:
            parsed = [parse_trickle(item) for item in items]
        except JsepError as error:
            raise JanusError(api.INVALID_ELEMENT_TYPE, f"Invalid element type ({error})") from None
        self._send(session.connection, api.reply("ack", request.transaction, session.id))
        for candidate in parsed:
            (handle.late if handle.described else handle.trickle).add(candidate)
        if handle.described:
            self._send_late(handle)
        elif handle.trickle.completed and handle.pending is not None:
            self._run_pending(handle)

    def _send_late(self, handle: _Handle) -> None:
        """Candidates trickled after the description went out (the 2 s wait was over): an RFC
        8840 INFO in the confirmed call's dialog, so that the ICE agent (or rtpengine) checks
        them too; kept until the call is confirmed, dropped with it."""
        ua = handle.ua
        if ua.phase is not CallPhase.CONFIRMED or ua.dialog is None:
            return
        fragment = handle.late.fragment(ua.dialog.local_sdp)
        handle.late.clear()
        if fragment is not None:
            ua.messaging.send_trickle(fragment)

    def _cancel_pending(self, handle: _Handle) -> None:
        handle.pending = None
        if handle.pending_timer is not None and handle.pending_timer.active():
            handle.pending_timer.cancel()
        handle.pending_timer = None

    def _defer_until_gathered(self, handle: _Handle, action: str, uri: str, sdp: str, trickle: bool,
                              headers: tuple[tuple[str, str], ...] = ()) -> None:
        handle.pending = (action, uri, sdp, headers)
        handle.described = False  # the candidates now trickled belong to this new description
        handle.late.clear()
        if not trickle or handle.trickle.completed:
            self._run_pending(handle)
        else:
            handle.pending_timer = self._reactor.callLater(TRICKLE_WAIT, self._run_pending, handle)

    def _run_pending(self, handle: _Handle) -> None:
        pending = handle.pending
        self._cancel_pending(handle)
        if pending is None:
            return
        action, uri, sdp, headers = pending
        sdp = handle.trickle.complete_sdp(sdp)
        handle.trickle.clear()
        handle.described = True
        if action == "call":
            if handle.ua.phase is CallPhase.IDLE and handle.ua.reg_state is RegState.REGISTERED:
                handle.ua.call(uri, sdp, headers)
            else:  # an incoming call, or the loss of the registration, came first
                handle.ua.emit(UaEvent({"event": "hangup", "code": 486, "reason": "Busy Here"}))
        elif action == "accept":
            handle.ua.accept(sdp, headers)
        elif action == "update":
            handle.ua.update(sdp)  # a call ended meanwhile has already said so (hangup)

    # --- SIP plugin requests (janus_sip.c) ---------------------------------------------------------

    def _message(self, session: _Session, handle: _Handle, request: JanusRequest) -> None:
        body = request.body.get("body")
        if not isinstance(body, dict):
            raise JanusError(api.MISSING_MANDATORY_ELEMENT, "Missing mandatory element (body)")
        what = body.get("request")
        transaction = request.transaction
        # Janus answers every plugin message with an ack, and the outcome as an event.
        self._send(session.connection, api.reply("ack", transaction, session.id))
        ua = handle.ua
        error = self._check(session, handle, what, body, request.body.get("jsep"), request.body.get("token"))
        if error is not None:
            self._plugin_error(session, handle, transaction, *error)
            return
        if what == "register":
            ua.register(self._credentials(body, request.body.get("token")))
        elif what == "unregister":
            ua.unregister()
        elif what == "call":
            jsep = parse_jsep(request.body.get("jsep"))
            headers = custom_headers(body.get("headers", {}))
            found = _referral(session, body.get("refer_id"))
            if found is not None:  # the call a transfer asked for (RFC 3515): its outcome is reported
                handle.referral = (found[0], found[1].refer_id)
                headers += referral_headers(found[1])
            self._defer_until_gathered(handle, "call", body["uri"], jsep.sdp, jsep.trickle, headers)
        elif what == "accept":
            jsep = parse_jsep(request.body.get("jsep"))
            headers = custom_headers(body.get("headers", {}))
            self._defer_until_gathered(handle, "accept", "", jsep.sdp, jsep.trickle, headers)
        elif what == "update":
            jsep = parse_jsep(request.body.get("jsep"))
            self._defer_until_gathered(handle, "update", "", jsep.sdp, jsep.trickle)
        elif what == "decline" and "refer_id" in body:
            transfers, referral = _referral(session, body["refer_id"]) or (None, None)
            assert transfers is not None and referral is not None
            code = int(body.get("code", 603))
            transfers.report(referral.refer_id, code, "Declined" if code == 603 else "")
            self._ua_event(session, handle.id, UaEvent({"event": "declining", "code": code}))
        elif what == "decline":
            ua.decline(int(body.get("code", 486)))
        elif what in ("hold", "unhold"):
            if not ua.hold(body.get("direction", "sendonly") if what == "hold" else None):
                self._plugin_error(session, handle, transaction, api.SIP_WRONG_STATE, "Wrong state (not in a call, or an update is in progress)")
        elif what == "dtmf_info":
            duration = body.get("duration")
            if not isinstance(duration, int) or isinstance(duration, bool) or not 0 < duration <= 5000:
                duration = 160  # janus_sip.c's default
            ua.dtmf_info(body["digit"], duration)
        elif what == "message":
            text = TextBody(body.get("content_type") or DEFAULT_MESSAGE_TYPE, body["content"])
            ua.messaging.send_message(text, body.get("uri"), body.get("call_id"))
        elif what == "info":
            ua.messaging.send_info(TextBody(body["type"], body["content"]))
        elif what == "transfer":
            replaced = self._call_to_replace(session, handle, body.get("replace"))
            ua.transfers.refer(body["uri"], replaced)
        elif what == "subscribe":
            ttl = body.get("subscribe_ttl", DEFAULT_TTL)
            ua.subscriptions.subscribe(body["event"], body.get("to"), body.get("accept"), ttl, body.get("call_id"))
        elif what == "unsubscribe":
            ua.subscriptions.unsubscribe(body["event"])
        elif what == "hangup":
            if handle.pending is not None and handle.pending[0] == "call":
                # a call still waiting for the browser's candidates: it never left us
                self._cancel_pending(handle)
                self._ua_event(session, handle.id, UaEvent({"event": "hangup", "code": 487, "reason": "Request Terminated"}))
            else:
                self._cancel_pending(handle)  # an update still waiting for candidates ends with its call
                if not ua.hangup():
                    self._plugin_error(session, handle, transaction, api.SIP_WRONG_STATE, "Wrong state (no call)")

    def _check(self, session: _Session, handle: _Handle, what: Any, body: dict[str, Any], jsep: Any,
               token: Any = None) -> tuple[int, str] | None:
        """Janus SIP plugin's answer to a request that cannot be done, else None."""
        ua = handle.ua
        if not isinstance(what, str):
            return api.SIP_MISSING_ELEMENT, "Missing element (request)"
        if "headers" in body:
            # a short allow-list, on the INVITE and its 200 only (epcscf.pcscf.nonsip_headers)
            if what not in ("call", "accept"):
                return api.SIP_INVALID_ELEMENT, "Invalid element (custom headers: only on call and accept)"
            try:
                custom_headers(body["headers"])
            except CustomHeaderError as error:
                return api.SIP_INVALID_ELEMENT, f"Invalid element ({error})"
        if what == "register":
            username = body.get("username")
            if not isinstance(username, str):
                return api.SIP_MISSING_ELEMENT, "Missing element (username)"
            if not is_sip_uri(username, needs_user=True):
                return api.SIP_INVALID_ADDRESS, f"Invalid user address {username[:80]}"
            if token is not None and not (isinstance(token, str) and len(token) <= _TOKEN_RE_LIMIT and _TOKEN_RE.fullmatch(token)):
                return api.SIP_INVALID_ELEMENT, "Invalid element (token should be a JWT)"
            if not isinstance(body.get("secret"), str) and token is None:
                return api.SIP_MISSING_ELEMENT, "Missing element (secret)"
            for name in ("authuser", "display_name"):
                if name in body and not isinstance(body[name], str):
                    return api.SIP_INVALID_ELEMENT, f"Invalid element ({name} should be a string)"
                if name in body and not _header_safe(body[name], quotes_allowed=name == "display_name"):
                    # it goes into a SIP header (From, Authorization): no line breaks, no control
                    # characters (RFC 3261 §25.1 quoted-string), at most 128 characters
                    return api.SIP_INVALID_ELEMENT, f"Invalid element ({name} has characters a SIP header cannot carry)"
            if ua.reg_state is not RegState.UNREGISTERED:
                return api.SIP_ALREADY_REGISTERED, "Already registered"
            return None
        if what == "unregister":
            return None if ua.reg_state is RegState.REGISTERED else (api.SIP_WRONG_STATE, "Wrong state (not registered)")
        if what in ("call", "accept", "update"):
            if what == "call":
                uri_text = body.get("uri")
                if not isinstance(uri_text, str):
                    return api.SIP_MISSING_ELEMENT, "Missing element (uri)"
                if not is_sip_uri(uri_text, needs_user=False):
                    return api.SIP_INVALID_ADDRESS, f"Invalid user address {uri_text[:80]}"
                if ua.reg_state is not RegState.REGISTERED:
                    return api.SIP_WRONG_STATE, "Wrong state (register first)"
                if ua.phase is not CallPhase.IDLE or handle.pending is not None:
                    return api.SIP_WRONG_STATE, "Wrong state (already in a call?)"
                if "refer_id" in body and _referral(session, body["refer_id"]) is None:
                    return api.SIP_INVALID_ELEMENT, "Invalid element (no such refer_id)"
            elif what == "update":
                if ua.phase is not CallPhase.CONFIRMED or handle.pending is not None or (ua.dialog and ua.dialog.reinvite):
                    return api.SIP_WRONG_STATE, "Wrong state (not in a call, or an update is in progress)"
            elif ua.phase is not CallPhase.INCOMING or handle.pending is not None:
                return api.SIP_WRONG_STATE, "Wrong state (no incoming call?)"
            if jsep is None:
                return api.SIP_MISSING_SDP, "Missing SDP"
            try:
                parsed = parse_jsep(jsep)
            except JsepError as error:
                return api.SIP_MISSING_SDP, f"Missing SDP ({error})"
            wanted = "answer" if what == "accept" else "offer"
            if parsed.type != wanted:
                return api.SIP_MISSING_SDP, f"Missing SDP ({wanted} expected)"
            return None
        if what == "decline":
            code = body.get("code", 486)
            if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 699:
                return api.SIP_INVALID_ELEMENT, "Invalid SIP response code"
            if "refer_id" in body:  # declining a transfer (the plugin's NOTIFY with 603)
                return None if _referral(session, body["refer_id"]) else (api.SIP_INVALID_ELEMENT, "Invalid element (no such refer_id)")
            return None if ua.phase is CallPhase.INCOMING else (api.SIP_WRONG_STATE, "Wrong state (no incoming call)")
        if what == "hangup":
            return None
        if what == "hold":
            if body.get("direction", "sendonly") not in ("sendonly", "recvonly", "inactive"):
                return api.SIP_INVALID_ELEMENT, "Invalid element (direction should be sendonly, recvonly or inactive)"
            return None if ua.phase is CallPhase.CONFIRMED else (api.SIP_WRONG_STATE, "Wrong state (not in a call?)")
        if what == "unhold":
            return None if ua.phase is CallPhase.CONFIRMED else (api.SIP_WRONG_STATE, "Wrong state (not in a call?)")
        if what == "dtmf_info":
            digit = body.get("digit")
            if not isinstance(digit, str):
                return api.SIP_MISSING_ELEMENT, "Missing element (digit)"
            if len(digit) != 1 or digit not in "0123456789*#ABCD":
                return api.SIP_INVALID_ELEMENT, "Invalid element (digit should be one character)"
            return None if ua.phase is CallPhase.CONFIRMED else (api.SIP_WRONG_STATE, "Wrong state (not in a call?)")
        if what in ("message", "info"):
            return _check_text_request(what, body, ua)
        if what == "transfer":
            return self._check_transfer(session, handle, body)
        if what in ("subscribe", "unsubscribe"):
            return check_subscription(what, body, ua)
        return api.SIP_INVALID_REQUEST, f"Unknown request '{what[:40]}' (not in epcscf's subset of the SIP plugin)"

    def _check_transfer(self, session: _Session, handle: _Handle, body: dict[str, Any]) -> tuple[int, str] | None:
        """janus_sip.c's checks of ``transfer``: a SIP ``uri``, a confirmed call, and a ``replace``
        naming a confirmed call of this session (its other handles)."""
        uri = body.get("uri")
        if not isinstance(uri, str):
            return api.SIP_MISSING_ELEMENT, "Missing element (uri)"
        if not is_sip_uri(uri, needs_user=False) or "?" in uri:
            return api.SIP_INVALID_ADDRESS, f"Invalid user address {uri[:80]}"
        if handle.ua.phase is not CallPhase.CONFIRMED:
            return api.SIP_WRONG_STATE, "Wrong state (not in a call?)"
        replace = body.get("replace")
        if replace is not None:
            if self._call_to_replace(session, handle, replace) is None:
                return api.SIP_NO_SUCH_CALLID, f"No such call-ID {str(replace)[:80]}"
        return None

    @staticmethod
    def _call_to_replace(session: _Session, handle: _Handle, call_id: Any) -> str | None:
        """RFC 3891 Replaces for the confirmed call ``call_id`` of another handle of ``session``."""
        if not isinstance(call_id, str):
            return None
        for other in session.handles.values():
            dialog = other.ua.dialog
            if other is not handle and dialog is not None and other.ua.dialog_call_id() == call_id and dialog.remote_tag:
                return replaces_value(call_id, dialog.local_tag, dialog.remote_tag)
        return None

    def _credentials(self, body: dict[str, Any], token: str | None) -> Credentials:
        uri = parse_uri(body["username"])
        assert isinstance(uri, SipUri) and uri.user
        return Credentials(
            aor=f"sip:{uri.user}@{uri.host}",
            user=uri.user,
            domain=uri.host,
            authuser=body.get("authuser") or uri.user,
            secret=body.get("secret") or "",
            display_name=body.get("display_name") or "",
            token=token,
        )



def _check_text_request(what: str, body: dict[str, Any], ua: NonSipUserAgent) -> tuple[int, str] | None:
    """janus_sip.c's checks of ``message`` (content, content_type, uri, call_id) and ``info``
    (type, content); what goes into a header is checked so that a WIC writes no header of its own."""
    type_key = "content_type" if what == "message" else "type"
    for key, required in ((type_key, what == "info"), ("content", True)):
        if key not in body:
            if required:
                return api.SIP_MISSING_ELEMENT, f"Missing element ({key})"
        elif not isinstance(body[key], str):
            return api.SIP_INVALID_ELEMENT, f"Invalid element ({key} should be a string)"
    if type_key in body and not media_type_ok(body[type_key]):
        return api.SIP_INVALID_ELEMENT, f"Invalid element ({type_key} should be a media type such as text/plain)"
    if len(body["content"]) > MAX_CONTENT:
        return api.SIP_INVALID_ELEMENT, f"Invalid element (content longer than {MAX_CONTENT} characters)"
    uri = body.get("uri") if what == "message" else None
    if uri is None:  # in the call's dialog (RFC 6086 §4.2.1: INFO always is)
        return None if ua.phase is CallPhase.CONFIRMED else (api.SIP_WRONG_STATE, "Wrong state (not in a call?)")
    if not isinstance(uri, str) or not is_sip_uri(uri, needs_user=False):
        return api.SIP_INVALID_ADDRESS, f"Invalid user address {str(uri)[:80]}"
    call_id = body.get("call_id")
    if call_id is not None and not (isinstance(call_id, str) and CALL_ID_RE.fullmatch(call_id)):
        return api.SIP_INVALID_ELEMENT, "Invalid element (call_id should be a SIP Call-ID)"
    return None if ua.reg_state is RegState.REGISTERED else (api.SIP_WRONG_STATE, "Wrong state (not registered)")


def _referral(session: _Session, refer_id: Any) -> tuple[Transfers, Referral] | None:
    """The transfer ``refer_id`` one of the session's handles was asked for (janus_sip.c keeps
    them across handles, for its helpers)."""
    for other in session.handles.values():
        referral = other.ua.transfers.referral(refer_id)
        if referral is not None:
            return other.ua.transfers, referral
    return None
