"""The SIP user agent the eP-CSCF runs for one non-SIP WIC (TS 24.371 §7.2.1, §7.4.1).

A non-SIP WIC sends only RFC 3264 offers and answers; this UA turns its wishes into SIP and
sends them over its own in-process flow (``epcscf.pcscf.nonsip_flow``) into the unchanged
P-CSCF: REGISTER (``epcscf.pcscf.nonsip_register``: RFC 5626 outbound, so the core reaches the
flow through our Path, digest challenges answered with the WIC's credentials, RFC 3261
§22.2), INVITE/ACK/CANCEL/BYE as UAC and UAS (RFC 3261 §13-15) on ``epcscf.sip``
transactions.  The SDP it sends is the WIC's own WebRTC description, so the call manager
transforms it, runs ICE and DTLS-SRTP exactly as for a SIP WIC (§7.4.2, §7.4.3).

What the WIC sees is a stream of ``UaEvent`` (the Janus SIP plugin's event names).
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.logger import Logger

from epcscf.nonsip.jsep import answer_direction, as_answer, next_version
from epcscf.pcscf.nonsip_flow import FlowPair, FlowSink, PipeEnd
from epcscf.pcscf.nonsip_messages import Messaging, body_text, sender_fields
from epcscf.pcscf.nonsip_register import Credentials, Registration, RegState, TransactionOutcome, UaEvent, identity_name_addr
from epcscf.pcscf.nonsip_subscribe import Subscriptions
from epcscf.pcscf.nonsip_transfer import Transfers
from epcscf.sip.connection import Address
from epcscf.sip.headers import cseq, from_tag, to_tag
from epcscf.sip.message import Request, Response, make_response, new_tag
from epcscf.sip.proxy_rules import list_values, name_addr_uri
from epcscf.sip.transaction import ClientTransaction, ServerTransaction, TimerSettings, TransactionLayer

__all__ = ["CallPhase", "NonSipUserAgent"]

log = Logger(namespace="epcscf.pcscf.nonsip")

class CallPhase(enum.Enum):
    IDLE = "idle"
    CALLING = "calling"  # our INVITE awaits its final response (UAC)
    INCOMING = "incoming"  # an INVITE awaits the WIC's accept or decline (UAS)
    CONFIRMED = "confirmed"
    ENDING = "ending"  # our BYE or CANCEL is out


@dataclass
class _Dialog:
    """RFC 3261 §12: what in-dialog requests need."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str]
    local_cseq: int
    invite: Request
    transaction: ClientTransaction | ServerTransaction | None = None
    answered_sdp: bool = False
    acks: dict[str, Request] = field(default_factory=dict)
    #: the WIC's description as last sent (offer as UAC, answer as UAS), for hold and resume
    local_sdp: str = ""
    #: the far end's description as last received (our offer's answer, or the offer we answered)
    remote_sdp: str = ""
    reinvite: Request | None = None  # our re-INVITE awaiting its final response


class NonSipUserAgent:
    """One Janus SIP handle's UA: at most one registration and one call (as Janus's)."""

    def __init__(
        self,
        reactor: Any,
        sink: FlowSink,
        emit: Callable[[UaEvent], None],
        local: Address,
        remote: Address,
        origin: str | None,
        timers: TimerSettings,
        secure: bool = False,
        credentials: object | None = None,
    ) -> None:
        self._reactor = reactor
        #: RFC 7118 §5.2: the Via transport of a flow over TLS is WSS
        self.transport = "WSS" if secure else "WS"
        #: the Janus WebSocket's handshake grant: each of our flows carries it, as a WIC's own
        #: WebSocket does, so that a REGISTER without a Bearer token is admitted on it
        self._handshake_credentials = credentials
        self.emit: Callable[[UaEvent], None] = emit
        self._flow_args = (sink, local, remote, origin, timers)
        self.transactions, self.flow = self._new_flow()
        self.host = f"{secrets.token_hex(5)}.invalid"  # RFC 7118 §5.2: a WIC has no reachable host
        self.registration = Registration(reactor, self)
        self.phase = CallPhase.IDLE
        self.dialog: _Dialog | None = None
        #: MESSAGE and INFO, in and out of the call's dialog
        self.messaging = Messaging(self)
        #: REFER and its NOTIFYs (RFC 3515)
        self.transfers = Transfers(self)
        #: SUBSCRIBE and their NOTIFYs (RFC 6665)
        self.subscriptions = Subscriptions(reactor, self)
        self._closing = False
        self._flow_ending: Any = None
        #: called once the flow has ended (the UA is then inert)
        self.on_ended: Callable[["NonSipUserAgent"], None] = lambda ua: None

    def _new_flow(self) -> tuple[TransactionLayer, FlowPair]:
        sink, local, remote, origin, timers = self._flow_args
        transactions = TransactionLayer(self._reactor, self, lambda connection: timers)
        pair = FlowPair(
            self._reactor, sink, transactions.receive, local, remote, origin, self._flow_lost, self.transport, self._handshake_credentials
        )
        return transactions, pair

    def _flow_lost(self, reason: str) -> None:
        """The eP-CSCF ended our flow (operator, rate limit): its registration and call are gone
        (RFC 5626 §5.3.1); the handle may register again, on a new flow."""
        self.transactions.close()
        dialog, self.dialog = self.dialog, None
        self.phase = CallPhase.IDLE
        if dialog is not None:
            self.emit(UaEvent({"event": "hangup", "code": 430, "reason": "Flow Failed"}, call_id=dialog.call_id))
        self.registration.flow_lost()
        if not self._closing:
            self.transactions, self.flow = self._new_flow()
        else:
            self.end_now(reason)
            self.on_ended(self)

    @property
    def connection(self) -> PipeEnd:
        return self.flow.ua_end

    # --- RegisterHost: requests we build (RFC 3261 §8.1.1) ------------------------------------

    @property
    def credentials(self) -> Credentials | None:
        return self.registration.credentials

    @property
    def reg_state(self) -> RegState:
        return self.registration.state

    def via(self) -> str:
        return f"SIP/2.0/{self.transport} {self.host};branch=z9hG4bK{secrets.token_hex(8)}"

    def contact(self) -> str:
        assert self.credentials is not None
        return f"<sip:{self.credentials.user}@{self.host};transport=ws;ob>"

    def send(self, request: Request, user: Any) -> ClientTransaction:
        request.headers.set("Content-Length", str(len(request.body)))
        return self.transactions.send_request(request, self.connection, user)

    def register(self, credentials: Credentials) -> None:
        self.registration.register(credentials)

    def unregister(self) -> None:
        self.registration.unregister()

    # --- outgoing call (UAC, RFC 3261 §13.2) ---------------------------------------------------

    def call(self, uri: str, sdp: str, headers: tuple[tuple[str, str], ...] = ()) -> str:
        """Send the INVITE (with the allowed custom ``headers``); the call's Call-ID."""
        assert self.credentials is not None and self.phase is CallPhase.IDLE
        c = self.credentials
        call_id = secrets.token_hex(12)
        tag = new_tag()
        invite = Request("INVITE", uri)
        invite.headers.add("Via", self.via())
        invite.headers.add("Max-Forwards", "70")
        invite.headers.add("From", f"{identity_name_addr(c)};tag={tag}")
        invite.headers.add("To", f"<{uri}>")
        invite.headers.add("Call-ID", call_id)
        invite.headers.add("CSeq", "1 INVITE")
        invite.headers.add("Contact", self.contact())
        for name, value in headers:
            invite.headers.add(name, value)
        invite.headers.add("Content-Type", "application/sdp")
        invite.body = sdp.encode("utf-8")
        self.dialog = _Dialog(call_id, tag, None, f"<{c.aor}>", f"<{uri}>", uri, [], 1, invite, local_sdp=sdp)
        self.phase = CallPhase.CALLING
        self.dialog.transaction = self.send(invite, TransactionOutcome(lambda response, dialog=self.dialog: self._invite_response(dialog, response)))
        self.emit(UaEvent({"event": "calling", "call_id": call_id}, call_id=call_id))
        return call_id

    def _invite_response(self, dialog: _Dialog, response: Response) -> None:
        if dialog is not self.dialog:
            if 200 <= response.status < 300:
                self._ack_and_bye_stray(dialog, response)
            return
        status = response.status
        if status == 100:
            return
        if status < 200:
            if status == 180:
                self.emit(UaEvent({"event": "ringing"}, call_id=dialog.call_id))
            elif response.body and not dialog.answered_sdp and to_tag(response):
                dialog.answered_sdp = True
                dialog.remote_sdp = body_text(response.body)
                self.emit(UaEvent({"event": "progress", "username": dialog.remote_target}, ("answer", body_text(response.body)), dialog.call_id))
            return
        if status >= 300:
            self.dialog = None
            self.phase = CallPhase.IDLE
            self.emit(UaEvent({"event": "hangup", "code": status, "reason": response.reason}, call_id=dialog.call_id))
            return
        # 2xx: RFC 3261 §12.1.2 the dialog from the 2xx; §13.2.2.4 ACK every 2xx retransmission
        remote = to_tag(response) or ""
        if dialog.remote_tag is None or self.phase is CallPhase.CALLING:
            dialog.remote_tag = remote
            dialog.route_set = list(reversed(list_values(response.headers, "Record-Route")))
            contacts = list_values(response.headers, "Contact")
            if contacts:
                dialog.remote_target = name_addr_uri(contacts[0])
            dialog.remote_uri = response.headers.get("To") or dialog.remote_uri
        if self.phase is CallPhase.CALLING:
            self.phase = CallPhase.CONFIRMED
            if response.body and not dialog.answered_sdp:
                dialog.remote_sdp = body_text(response.body)
            self._send_ack(dialog)
            jsep = None if dialog.answered_sdp or not response.body else ("answer", body_text(response.body))
            self.emit(UaEvent({"event": "accepted", "username": dialog.invite.uri}, jsep, dialog.call_id))
        elif remote in dialog.acks:
            self._resend(dialog.acks[remote])
        elif self.phase is CallPhase.ENDING and not dialog.acks:
            # the 2xx crossed our CANCEL (RFC 3261 §9.1): confirm, then end with BYE
            self._send_ack(dialog)
            self._send_bye(dialog)

    def _send_ack(self, dialog: _Dialog) -> None:
        ack = self._in_dialog(dialog, "ACK", cseq_number=1)  # RFC 3261 §13.2.2.4: the INVITE's CSeq number
        dialog.acks[dialog.remote_tag or ""] = ack
        self._resend(ack)

    def _resend(self, request: Request) -> None:
        request.headers.set("Content-Length", str(len(request.body)))
        try:
            self.connection.send_message(request)
        except Exception as error:  # the flow is closing
            log.info("non-SIP UA: {method} not sent: {error}", method=request.method, error=error)

    def _ack_and_bye_stray(self, dialog: _Dialog, response: Response) -> None:
        """RFC 3261 §13.2.2.4: a 2xx for a call we already gave up: ACK it, then BYE."""
        dialog.remote_tag = to_tag(response) or ""
        dialog.route_set = list(reversed(list_values(response.headers, "Record-Route")))
        contacts = list_values(response.headers, "Contact")
        if contacts:
            dialog.remote_target = name_addr_uri(contacts[0])
        if dialog.remote_tag not in dialog.acks:
            self._send_ack(dialog)
            self._send_bye(dialog)

    def _in_dialog(self, dialog: _Dialog, method: str, cseq_number: int | None = None) -> Request:
        """RFC 3261 §12.2.1.1: Request-URI, Route, To/From tags, Call-ID and CSeq of the dialog."""
        request = Request(method, dialog.remote_target)
        request.headers.add("Via", self.via())
        request.headers.add("Max-Forwards", "70")
        for route in dialog.route_set:
            request.headers.add("Route", route)
        local_tag = f";tag={dialog.local_tag}"
        remote_tag = f";tag={dialog.remote_tag}" if dialog.remote_tag else ""
        local_uri = dialog.local_uri.split(";tag=")[0]
        remote_uri = dialog.remote_uri.split(";tag=")[0]
        request.headers.add("From", f"{local_uri}{local_tag}")
        request.headers.add("To", f"{remote_uri}{remote_tag}")
        request.headers.add("Call-ID", dialog.call_id)
        if cseq_number is None:
            dialog.local_cseq += 1
            cseq_number = dialog.local_cseq
        request.headers.add("CSeq", f"{cseq_number} {method}")
        return request

    # --- in-dialog requests of a confirmed call -------------------------------------------------

    def in_dialog_request(self, method: str) -> Request | None:
        """A ``method`` request in the confirmed call's dialog, None when there is none."""
        if self.phase is not CallPhase.CONFIRMED or self.dialog is None:
            return None
        return self._in_dialog(self.dialog, method)

    def dialog_call_id(self) -> str | None:
        return self.dialog.call_id if self.phase is CallPhase.CONFIRMED and self.dialog is not None else None

    def hold(self, direction: str | None) -> bool:
        """re-INVITE with our last description, its directions set to ``direction`` (RFC 3264
        §8.4); ``None`` resumes with the directions the WIC gave.  False if not possible now."""
        dialog = self.dialog
        if self.phase is not CallPhase.CONFIRMED or dialog is None or dialog.reinvite is not None:
            return False
        sdp = next_version(dialog.local_sdp, direction)
        dialog.local_sdp = next_version(dialog.local_sdp) if direction is not None else sdp
        self._send_reinvite(dialog, sdp, renegotiation=False)
        self.emit(UaEvent({"event": "holding" if direction is not None else "resuming"}, call_id=dialog.call_id))
        return True

    def update(self, sdp: str) -> bool:
        """The plugin's ``update``: a re-INVITE with the WIC's new offer (RFC 3261 §14.1: a
        renegotiation, e.g. an ICE restart, RFC 8839 §4.4.1.1); the answer goes back to the
        WIC in ``accepted``, as janus_sip.c does.  False if not possible now."""
        dialog = self.dialog
        if self.phase is not CallPhase.CONFIRMED or dialog is None or dialog.reinvite is not None:
            return False
        self._send_reinvite(dialog, sdp, renegotiation=True)
        self.emit(UaEvent({"event": "updating"}, call_id=dialog.call_id))
        return True

    def _send_reinvite(self, dialog: _Dialog, sdp: str, renegotiation: bool) -> None:
        reinvite = self._in_dialog(dialog, "INVITE")
        reinvite.headers.add("Contact", self.contact())
        reinvite.headers.add("Content-Type", "application/sdp")
        reinvite.body = sdp.encode("utf-8")
        dialog.reinvite = reinvite
        outcome = TransactionOutcome(lambda response: self._reinvite_answered(dialog, reinvite, response, renegotiation))
        self.send(reinvite, outcome)

    def _reinvite_answered(self, dialog: _Dialog, reinvite: Request, response: Response, renegotiation: bool) -> None:
        if response.status < 200:
            return
        first = dialog.reinvite is reinvite  # not a 2xx retransmission, nor one overtaken
        if first:
            dialog.reinvite = None
        if response.status < 300 and self.dialog is dialog:
            sequence = cseq(reinvite)
            ack = self._in_dialog(dialog, "ACK", cseq_number=sequence.number if sequence else dialog.local_cseq)
            self._resend(ack)  # RFC 3261 §13.2.2.4 (a retransmitted 2xx gets the same ACK again)
            if renegotiation and first:
                dialog.local_sdp = body_text(reinvite.body)
                answer = body_text(response.body) if response.body else None
                if answer is not None:
                    dialog.remote_sdp = answer
                jsep = ("answer", answer) if answer is not None else None
                self.emit(UaEvent({"event": "accepted", "username": dialog.remote_target}, jsep, dialog.call_id))
        elif response.status >= 300:
            # RFC 3261 §14.1: the session stays as it was before the re-INVITE
            log.info("non-SIP UA: re-INVITE of {call_id} refused: {status}", call_id=dialog.call_id, status=response.status)
            if renegotiation and first and self.dialog is dialog:
                # janus_sip.c tells nothing; the WIC's offer is pending in its PeerConnection,
                # so it hears that it was refused (to roll back, RFC 8829 §4.1.10.2)
                failed = {"event": "updatefailed", "code": response.status, "reason": response.reason}
                self.emit(UaEvent(failed, call_id=dialog.call_id))

    def dtmf_info(self, digit: str, duration: int) -> bool:
        """INFO application/dtmf-relay (as Janus's SIP plugin sends it) in the confirmed call."""
        info = self.in_dialog_request("INFO")
        if info is None:
            return False
        info.headers.add("Content-Type", "application/dtmf-relay")
        info.body = f"Signal={digit}\r\nDuration={duration}".encode("ascii")
        self.send(info, TransactionOutcome(lambda response: None))
        self.emit(UaEvent({"event": "dtmfsent"}, call_id=info.call_id))
        return True

    def _send_bye(self, dialog: _Dialog) -> None:
        self.send(self._in_dialog(dialog, "BYE"), TransactionOutcome(lambda response: self._bye_answered(dialog, response)))

    # --- hangup, decline ------------------------------------------------------------------------

    def hangup(self) -> bool:
        """End the call whatever its phase; False when there is none."""
        dialog = self.dialog
        if dialog is None or self.phase in (CallPhase.IDLE, CallPhase.ENDING):
            return False
        self.emit(UaEvent({"event": "hangingup"}, call_id=dialog.call_id))
        if self.phase is CallPhase.INCOMING:
            self._answer_invite(480, "Temporarily Unavailable")
            return True
        if self.phase is CallPhase.CALLING:
            self.phase = CallPhase.ENDING
            self._send_cancel(dialog)
            return True
        self.phase = CallPhase.ENDING
        self._send_bye(dialog)
        return True

    def _send_cancel(self, dialog: _Dialog) -> None:
        """RFC 3261 §9.1: same Request-URI, Call-ID, To, From, CSeq number and top Via."""
        invite = dialog.invite
        cancel = Request("CANCEL", invite.uri)
        for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
            value = invite.headers.get(name)
            if value is not None:
                cancel.headers.add(name, value)
        cancel.headers.add("CSeq", "1 CANCEL")
        # its own answer tells nothing: the INVITE's 487 (or 2xx) does (RFC 3261 §9.1)
        self.send(cancel, TransactionOutcome(lambda response: None))

    def decline(self, code: int) -> bool:
        if self.phase is not CallPhase.INCOMING or self.dialog is None:
            return False
        self.emit(UaEvent({"event": "declining", "code": code}, call_id=self.dialog.call_id))
        self._answer_invite(code, None)
        return True

    def _answer_invite(self, status: int, reason: str | None) -> None:
        dialog = self.dialog
        assert dialog is not None and isinstance(dialog.transaction, ServerTransaction)
        response = make_response(dialog.invite, status, reason, to_tag=dialog.local_tag)
        self.respond(dialog.transaction, response)
        self.dialog = None
        self.phase = CallPhase.IDLE
        self.emit(UaEvent({"event": "hangup", "code": status, "reason": response.reason}, call_id=dialog.call_id))

    def respond(self, transaction: ServerTransaction, response: Response) -> None:
        response.headers.set("Content-Length", str(len(response.body)))
        try:
            transaction.respond(response)
        except Exception as error:
            log.info("non-SIP UA: response {status} not sent: {error}", status=response.status, error=error)

    # --- incoming requests (TransactionUser) ----------------------------------------------------

    def request_received(self, request: Request, transaction: ServerTransaction) -> None:
        method = request.method
        if method == "INVITE" and to_tag(request) is None:
            self._incoming_invite(request, transaction)
        elif method == "CANCEL":
            self._incoming_cancel(request, transaction)
        elif method == "BYE":
            self._incoming_bye(request, transaction)
        elif method == "INVITE":
            self._incoming_reinvite(request, transaction)
        elif method == "MESSAGE":
            self.messaging.message_received(request, transaction)
        elif method == "INFO":
            self.messaging.info_received(request, transaction)
        elif method == "NOTIFY" and not self.subscriptions.notify_received(request, transaction):
            self.transfers.notify_received(request, transaction)  # else the call's refer subscription
        elif method == "REFER":
            self.transfers.refer_received(request, transaction)
        elif method == "OPTIONS":
            self.respond(transaction, make_response(request, 200, to_tag=new_tag()))
        else:
            answer = make_response(request, 405, to_tag=new_tag())
            answer.headers.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, INFO, NOTIFY, REFER")
            self.respond(transaction, answer)

    def _incoming_invite(self, invite: Request, transaction: ServerTransaction) -> None:
        caller = invite.headers.get("From") or ""
        if self.phase is not CallPhase.IDLE or self.reg_state is not RegState.REGISTERED or self._closing:
            busy = make_response(invite, 486, to_tag=new_tag())
            self.respond(transaction, busy)
            self.emit(UaEvent({"event": "missed_call", "caller": name_addr_uri(caller) if caller else ""}, call_id=invite.call_id))
            return
        if not invite.body:
            # an offerless INVITE would need our offer in the 200 (RFC 3264 §4): not in this subset
            self.respond(transaction, make_response(invite, 488, "Not Acceptable Here (an offer is required)", to_tag=new_tag()))
            return
        contacts = list_values(invite.headers, "Contact")
        tag = new_tag()
        self.dialog = _Dialog(
            call_id=invite.call_id or "",
            local_tag=tag,
            remote_tag=from_tag(invite),
            local_uri=(invite.headers.get("To") or "").split(";tag=")[0],
            remote_uri=caller,
            remote_target=name_addr_uri(contacts[0]) if contacts else "",
            route_set=list_values(invite.headers, "Record-Route"),  # RFC 3261 §12.1.1: in order
            local_cseq=0,
            invite=invite,
            transaction=transaction,
            remote_sdp=body_text(invite.body),
        )
        self.phase = CallPhase.INCOMING
        ringing = make_response(invite, 180, to_tag=tag)
        for value in invite.headers.get_all("Record-Route"):
            ringing.headers.add("Record-Route", value)
        ringing.headers.add("Contact", self.contact())
        self.respond(transaction, ringing)
        result = {
            "event": "incomingcall",
            **sender_fields(caller, "username"),
            "callee": name_addr_uri(invite.headers.get("To") or "") if invite.headers.get("To") else "",
        }
        self.emit(UaEvent(result, ("offer", body_text(invite.body)), self.dialog.call_id))

    def _incoming_reinvite(self, reinvite: Request, transaction: ServerTransaction) -> None:
        """Accepted at once with the WIC's description, its direction answering the offer's
        (RFC 3264 §6.1, §8.4: a hold from the far end), as Janus's SIP plugin does by default
        (``autoaccept_reinvites``): the browser's own session is unchanged."""
        dialog = self.dialog
        if dialog is None or reinvite.call_id != dialog.call_id or self.phase is not CallPhase.CONFIRMED:
            self.respond(transaction, make_response(reinvite, 481, to_tag=new_tag()))
            return
        if dialog.reinvite is not None or not reinvite.body:
            # RFC 3261 §14.2: our own re-INVITE is out (491); an offerless one needs an offer we do not make
            status = 491 if dialog.reinvite is not None else 488
            self.respond(transaction, make_response(reinvite, status))
            return
        offer = body_text(reinvite.body)
        answer = next_version(as_answer(dialog.local_sdp, dialog.remote_sdp), answer_direction(offer))
        dialog.local_sdp = next_version(dialog.local_sdp)
        contacts = list_values(reinvite.headers, "Contact")
        if contacts:
            dialog.remote_target = name_addr_uri(contacts[0])  # RFC 3261 §12.2.2 target refresh
        ok = make_response(reinvite, 200)
        ok.headers.add("Contact", self.contact())
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = answer.encode("utf-8")
        self.respond(transaction, ok)

    def accept(self, sdp: str, headers: tuple[tuple[str, str], ...] = ()) -> bool:
        dialog = self.dialog
        if self.phase is not CallPhase.INCOMING or dialog is None or not isinstance(dialog.transaction, ServerTransaction):
            return False
        ok = make_response(dialog.invite, 200, to_tag=dialog.local_tag)
        for value in dialog.invite.headers.get_all("Record-Route"):
            ok.headers.add("Record-Route", value)
        ok.headers.add("Contact", self.contact())
        for name, value in headers:
            ok.headers.add(name, value)
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = sdp.encode("utf-8")
        dialog.local_sdp = sdp
        self.emit(UaEvent({"event": "accepting"}, call_id=dialog.call_id))
        self.respond(dialog.transaction, ok)
        self.phase = CallPhase.CONFIRMED
        self.emit(UaEvent({"event": "accepted"}, call_id=dialog.call_id))
        return True

    def _incoming_cancel(self, cancel: Request, transaction: ServerTransaction) -> None:
        invite_transaction = self.transactions.find_invite_server_transaction(cancel)
        if invite_transaction is None:
            self.respond(transaction, make_response(cancel, 481, to_tag=new_tag()))
            return
        self.respond(transaction, make_response(cancel, 200, to_tag=new_tag()))
        dialog = self.dialog
        if dialog is not None and dialog.transaction is invite_transaction and self.phase is CallPhase.INCOMING:
            self.respond(invite_transaction, make_response(dialog.invite, 487, to_tag=dialog.local_tag))
            self.dialog = None
            self.phase = CallPhase.IDLE
            self.emit(UaEvent({"event": "hangup", "code": 487, "reason": "Request Terminated"}, call_id=dialog.call_id))

    def _incoming_bye(self, bye: Request, transaction: ServerTransaction) -> None:
        dialog = self.dialog
        if dialog is None or bye.call_id != dialog.call_id:
            self.respond(transaction, make_response(bye, 481, to_tag=new_tag()))
            return
        self.respond(transaction, make_response(bye, 200))
        self.dialog = None
        self.phase = CallPhase.IDLE
        self.emit(UaEvent({"event": "hangup", "code": 200, "reason": "BYE"}, call_id=dialog.call_id))

    def ack_received(self, request: Request, connection: Any) -> None:
        pass  # the ACK of our 2xx: nothing more to do on a reliable flow (RFC 3261 §13.3.1.4)

    def stray_response_received(self, response: Response, connection: Any) -> None:
        sequence = cseq(response)
        dialog = self.dialog
        if sequence is not None and sequence.method == "INVITE" and dialog is not None and response.call_id == dialog.call_id:
            self._invite_response(dialog, response)  # a 2xx retransmission after Timer M

    # --- our client transactions' outcomes -------------------------------------------------------

    def _bye_answered(self, dialog: _Dialog, response: Response) -> None:
        if response.status >= 200 and self.dialog is dialog:
            self.dialog = None
            self.phase = CallPhase.IDLE
            self.emit(UaEvent({"event": "hangup", "code": 200, "reason": "Session Terminated"}, call_id=dialog.call_id))

    # --- shutdown -------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """The Janus handle is gone: end the call, unregister, then end the flow."""
        if self._closing:
            return
        self._closing = True
        self.hangup()
        self.registration.stop_refreshing()
        waiting = 0.0
        if self.registration.unregister(quietly=True):
            waiting = 2.0
        if self.phase is CallPhase.ENDING:
            waiting = 2.0
        # The flow outlives our last requests briefly so that their answers can come back.
        self._flow_ending = self._reactor.callLater(waiting, self.end_now, reason)

    def end_now(self, reason: str) -> None:
        """End the flow at once (service stopping, or the linger after ``close`` is over)."""
        if self._flow_ending is not None and self._flow_ending.active():
            self._flow_ending.cancel()
        self._flow_ending = None
        self.registration.stop_refreshing()
        self.subscriptions.close()
        if not self.flow.open:
            return
        self.flow.close(reason)
        self.transactions.close()
        self.on_ended(self)
