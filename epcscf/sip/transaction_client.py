"""Client transactions (RFC 3261 §17.1, RFC 6026 §7.2): how each table action is done.

The state tables are in ``transaction_machine.py``; this module sends requests and
ACKs, arms timers A, B, D, E, F, K and M with the values of the path's
``TimerSettings``, and tells the ``ClientTransactionUser`` about responses, timeouts
and transport failures.
"""

from __future__ import annotations

from typing import Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from epcscf.sip.connection import Connection
from epcscf.sip.headers import parse_cseq, split_header_list
from epcscf.sip.message import Request, Response
from epcscf.sip.transaction_machine import (
    INVITE_CLIENT,
    NON_INVITE_CLIENT,
    NOTHING_DUE,
    Event,
    State,
    TimerSettings,
    TransactionMachine,
)

log = Logger()

# Members read for every request sent, as module constants (``transaction_machine.TERMINATED``
# says why).
_CALLING, _TRYING = State.CALLING, State.TRYING
_TIMER_A, _TIMER_B, _TIMER_E, _TIMER_F, _TIMER_K = Event.TIMER_A, Event.TIMER_B, Event.TIMER_E, Event.TIMER_F, Event.TIMER_K
_RESPONSE_1XX, _RESPONSE_2XX, _RESPONSE_3XX_6XX = Event.RESPONSE_1XX, Event.RESPONSE_2XX, Event.RESPONSE_3XX_6XX


class ClientTransactionUser(Protocol):
    """Whoever sent the request: the proxy's branch, or a UA core."""

    def response_received(self, response: Response, transaction: "ClientTransaction") -> None:
        """Every provisional and final response the transaction lets through (§17.1.1.2,
        §17.1.2.2); with RFC 6026, every 2xx to an INVITE, retransmissions included."""

    def timed_out(self, transaction: "ClientTransaction") -> None:
        """Timer B (INVITE) or Timer F (non-INVITE) fired: treat as 408 (§16.8, §8.1.3.1)."""

    def transport_failed(self, transaction: "ClientTransaction", reason: str) -> None:
        """The connection was lost while sending (§17.1.4): treat as 503 (§16.9, §8.1.3.1)."""


def ack_for_non_2xx(request: Request, response: Response) -> Request:
    """The ACK an INVITE client transaction sends for a 300-699 (RFC 3261 §17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, To from the response
    (with its tag), one Via equal to the INVITE's top Via (same branch), and the
    INVITE's Route header fields.
    """
    ack = Request("ACK", request.uri, version=request.version)
    via_lines = request.headers.get_all("via")
    if via_lines:
        ack.headers.add("Via", split_header_list(via_lines[0])[0].strip())
    for route in request.headers.get_all("route"):
        ack.headers.add("Route", route)
    max_forwards = request.headers.get("max-forwards")
    ack.headers.add("Max-Forwards", max_forwards if max_forwards is not None else "70")
    for name, source in (("From", request), ("To", response), ("Call-ID", request)):
        value = source.headers.get(name)
        if value is not None:
            ack.headers.add(name, value)
    cseq_value = request.headers.get("cseq")
    if cseq_value is not None:
        ack.headers.add("CSeq", f"{parse_cseq(cseq_value).number} ACK")
    return ack


class SerializedRequest:
    """A request's wire form, sent in its place (``TransactionLayer.send_request(wire=...)``):
    a connection only asks a message for ``serialize()``."""

    __slots__ = ("wire",)

    def __init__(self, wire: bytes) -> None:
        self.wire = wire

    def serialize(self) -> bytes:
        return self.wire


class ClientTransaction(TransactionMachine):
    """One request we send and the responses that belong to it (RFC 3261 §17.1).

    ``request`` is sent as given: it already carries our top Via with an RFC 3261
    branch, which (with the CSeq method) is the key responses are matched on (§17.1.3).
    """

    __slots__ = ("request", "method", "connection", "user", "timers", "branch", "is_invite", "last_response",
                 "_ack", "_interval", "_sent")

    def __init__(
        self,
        clock: IReactorTime,
        request: Request,
        connection: Connection,
        user: ClientTransactionUser,
        timers: TimerSettings,
        branch: str,
        on_terminated: Callable[[TransactionMachine], None],
        wire: bytes | None = None,
    ) -> None:
        #: the request sent, until a final response arrived (then None, see ``_let_go``)
        self.request: Request | None = request
        #: what goes on the wire for it: the request, or its bytes when the sender has them
        self._sent: Request | SerializedRequest | None = request if wire is None else SerializedRequest(wire)
        self.method = request.method
        self.connection = connection
        self.user = user
        self.timers = timers
        self.branch = branch
        self.is_invite = request.method == "INVITE"
        self.machine = "INVITE client" if self.is_invite else "non-INVITE client"
        self.table = INVITE_CLIENT if self.is_invite else NON_INVITE_CLIENT
        #: the most recent response passed to the user (None once the transaction lingers)
        self.last_response: Response | None = None
        #: RFC 3261 §17.1.1.3: the ACK for our non-2xx final, re-sent for its retransmissions
        self._ack: Request | None = None
        self._interval = timers.t1  # current value of Timer A or E
        super().__init__(clock, _CALLING if self.is_invite else _TRYING, on_terminated)

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.method} {self.branch} {self.state.value}>"

    @property
    def key(self) -> tuple[str, str]:
        """RFC 3261 §17.1.3: branch of the top Via and the CSeq method."""
        return (self.branch, self.method)

    def start(self) -> None:
        """Send the request and arm the first timers (§17.1.1.2, §17.1.2.2)."""
        assert self._sent is not None
        self._send(self.connection, self._sent)  # type: ignore[arg-type] # SerializedRequest: serialize() is all a send uses
        if self._send_failed:
            self._send_failed = False
            self._timers[Event.TRANSPORT_ERROR] = self._clock.callLater(0, self._timer_fired, Event.TRANSPORT_ERROR)
            return
        reliable = self.connection.reliable
        if self.is_invite:
            if not reliable:
                self._start_timer(_TIMER_A, self._interval)  # §17.1.1.2: Timer A = T1
            self._start_timer(_TIMER_B, self.timers.b)  # §17.1.1.2: Timer B = 64*T1
        else:
            if not reliable:
                self._start_timer(_TIMER_E, self._interval)  # §17.1.2.2: Timer E = T1
            self._start_timer(_TIMER_F, self.timers.f)  # §17.1.2.2: Timer F = 64*T1

    def receive_response(self, response: Response) -> None:
        """A response matched to this transaction by the layer (§17.1.3)."""
        if response.status < 200:
            event = _RESPONSE_1XX
        elif response.status < 300:
            event = _RESPONSE_2XX
        else:
            event = _RESPONSE_3XX_6XX
        self._handle(event, response)

    # ----- actions -------------------------------------------------------------------------

    def _pass_response_to_tu(self, response: object) -> None:
        assert isinstance(response, Response)
        self.last_response = response
        try:
            self.user.response_received(response, self)
        except Exception:
            log.failure("client transaction user failed on {response}", response=response.start_line())

    def _send_ack(self, response: object) -> None:
        assert isinstance(response, Response)
        if self._ack is None:
            # §17.1.1.3: a retransmitted final has the same To tag, so the same ACK answers it.
            assert self.request is not None
            self._ack = ack_for_non_2xx(self.request, response)
        self._send(self.connection, self._ack)

    def _retransmit_request(self, _: object) -> None:
        assert self._sent is not None  # Calling, Trying, Proceeding: not yet let go
        self._send(self.connection, self._sent)  # type: ignore[arg-type]

    def _let_go(self) -> None:
        # Once a final arrived the request is never sent again (Completed re-sends only the
        # ACK, Accepted passes further 2xx up, RFC 6026 §7.2), and the response is the TU's.
        self.request = None
        self._sent = None
        self.last_response = None
        if not self._due_now:
            self._due_now = NOTHING_DUE  # lingers with nothing due: the shared empty list

    def _restart_timer_a(self, _: object) -> None:
        # §17.1.1.2: each time Timer A fires its value doubles (no T2 cap for INVITE).
        self._interval *= 2
        self._start_timer(Event.TIMER_A, self._interval)

    def _restart_timer_e(self, _: object) -> None:
        # §17.1.2.2: doubles up to T2 in Trying; always T2 once Proceeding.
        if self.state is State.PROCEEDING:
            self._interval = self.timers.t2
        else:
            self._interval = min(2 * self._interval, self.timers.t2)
        self._start_timer(Event.TIMER_E, self._interval)

    def _start_timer_d(self, _: object) -> None:
        # §17.1.1.2: Timer D >= 32 s on unreliable transports, zero on reliable ones.
        self._start_timer(Event.TIMER_D, 0 if self.connection.reliable else self.timers.d)

    def _start_timer_k(self, _: object) -> None:
        # §17.1.2.2: Timer K = T4 on unreliable transports, zero on reliable ones.
        self._start_timer(_TIMER_K, 0 if self.connection.reliable else self.timers.t4)

    def _start_timer_m(self, _: object) -> None:
        self._start_timer(Event.TIMER_M, self.timers.m)  # RFC 6026 §7.2: Timer M = 64*T1

    def _report_timeout(self, _: object) -> None:
        try:
            self.user.timed_out(self)
        except Exception:
            log.failure("client transaction user failed on a timeout")

    def _report_transport_error(self, _: object) -> None:
        try:
            self.user.transport_failed(self, self.failure_reason or "connection lost")
        except Exception:
            log.failure("client transaction user failed on a transport error")
