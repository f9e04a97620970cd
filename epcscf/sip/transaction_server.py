"""Server transactions (RFC 3261 §17.2, RFC 6026 §7.1): how each table action is done.

The state tables are in ``transaction_machine.py``; this module sends the TU's
responses (and the automatic 100 Trying), re-sends the last response on request
retransmissions, and arms timers G, H, I, J and L plus the 200 ms 100-Trying timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from epcscf.sip.connection import Connection
from epcscf.sip.headers import Via, to_tag
from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.parser import parse_message
from epcscf.sip.timers import FixedEntry, TimerQueue
from epcscf.sip.transaction_machine import (
    INVITE_SERVER,
    NON_INVITE_SERVER,
    NOTHING_DUE,
    TIMER_LIFETIME,
    Event,
    State,
    TimerSettings,
    TransactionMachine,
)

log = Logger()

# Members read for every request received, as module constants (``transaction_machine.TERMINATED``
# says why).
_PROCEEDING, _TRYING = State.PROCEEDING, State.TRYING
_TU_2XX, _TIMER_TRYING, _TIMER_J = Event.TU_2XX, Event.TIMER_TRYING, Event.TIMER_J

#: RFC 3261 §8.1.1.7: branches of RFC 3261 implementations start with this.
MAGIC_COOKIE = "z9hG4bK"

#: The timers a settled server transaction runs for a delay every transaction of its path
#: shares: H, J (64*T1, RFC 3261 §17.2.1/§17.2.2), L (64*T1, RFC 6026 §7.1) and I (T4).  They go to
#: the layer's ``TimerQueue.call_fixed`` in a slot of their own (``_fixed_timer``), not in the
#: machine's timer table: a lingering transaction then needs no table of its own.
_FIXED_DELAY_TIMERS = frozenset({Event.TIMER_H, Event.TIMER_I, Event.TIMER_J, Event.TIMER_L})

#: What a lingering transaction holds in place of its own empty timer table and due-now list
#: (64 + 56 B each, thousands of them during a burst).  Shared, so never added to: ``_start_timer``
#: gives the transaction its own again before it arms a timer (docs/performance.md, "Fuzz burst
#: survivors at +60 s").
_NO_TIMERS: dict[Event, object] = {}
_NOTHING_DUE = NOTHING_DUE


class TransactionUser(Protocol):
    """The proxy, registrar or embedded core: what the server side hands up."""

    def request_received(self, request: Request, transaction: "ServerTransaction") -> None:
        """Every new request except ACK; answer with ``transaction.respond``."""

    def ack_received(self, request: Request, connection: Connection) -> None:
        """An ACK matching no server transaction (the ACK for a 2xx, §17.2.3 / §16.7), or
        one reaching an INVITE server transaction in Accepted (RFC 6026 §7.1)."""

    def stray_response_received(self, response: Response, connection: Connection) -> None:
        """A response matching no client transaction (§17.1.3; 2xx retransmissions, §16.7)."""


class RequestIdentity(NamedTuple):
    """The fields RFC 3261 §17.2.3 matches requests on (both the branch rule and the
    RFC 2543 fallback), read once when the request arrives.  (A NamedTuple: one is built
    for every request received, and a tuple is the cheapest immutable record.)"""

    branch: str | None
    sent_by: str  # top Via sent-by, host lower-cased
    method: str  # the transaction's method: an ACK belongs to an INVITE transaction
    request_uri: str
    to_tag: str | None
    from_tag: str | None
    call_id: str | None
    cseq_number: int
    cseq_method: str
    via: Via  # the top Via as parsed (shared, read-only): RFC 2543 matching compares it whole

    @property
    def has_rfc3261_branch(self) -> bool:
        return self.branch is not None and self.branch.startswith(MAGIC_COOKIE)

    @property
    def key(self) -> tuple[str, str, str]:
        """§17.2.3: branch, sent-by and method (ACK counts as INVITE)."""
        return (self.branch or "", self.sent_by, self.method)

    @property
    def merge_key(self) -> tuple[str | None, str | None, int, str]:
        """§8.2.2.2: From tag, Call-ID and CSeq."""
        return (self.from_tag, self.call_id, self.cseq_number, self.cseq_method)


class SettledIdentity(NamedTuple):
    """What a lingering server transaction with an RFC 3261 branch is still matched and filed
    by: the fields of the §17.2.3 key and of the §8.2.2.2 merge key, nothing else.  The
    ``RequestIdentity`` it replaces also holds the parsed top Via, the Request-URI and the tags,
    which only RFC 2543 matching reads (~600 B); thousands linger 64*T1 during a burst
    (docs/performance.md, "Compact lingering state").  One flat tuple: the keys are built when
    asked for, as ``RequestIdentity`` builds them (the layer asks once, when the transaction ends)."""

    branch: str
    sent_by: str
    method: str
    from_tag: str | None
    call_id: str | None
    cseq_number: int
    cseq_method: str

    @property
    def has_rfc3261_branch(self) -> bool:
        return True

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.branch, self.sent_by, self.method)

    @property
    def merge_key(self) -> tuple[str | None, str | None, int, str]:
        return (self.from_tag, self.call_id, self.cseq_number, self.cseq_method)


@dataclass(frozen=True, slots=True)
class SentResponse:
    """A final response as it went out: what a Completed server transaction repeats for each
    retransmitted request until Timer H/J (RFC 3261 §17.2.1, §17.2.2).  Its bytes are a few
    hundred; the parsed ``Response`` with its header views is ~2.5 KB, held 64*T1 by every
    such transaction (thousands during a burst).  The transaction keeps the bytes alone and
    wraps them in this when it sends them again (rare)."""

    status: int
    wire: bytes

    def serialize(self) -> bytes:
        return self.wire

    def start_line(self) -> str:
        return self.wire.split(b"\r\n", 1)[0].decode("utf-8", "replace")  # for logs, as Message's

    @classmethod
    def from_wire(cls, wire: bytes) -> "SentResponse":
        """Wrap bytes a lingering transaction kept: the status is the start line's (§7.2)."""
        return cls(int(wire[8:11]), wire)

    def parsed(self) -> Response:
        """The response again as a message: on a reliable transport whose connection is gone,
        §18.2.2 sends it to the top Via's sent-by, which the transport reads from a ``Response``.
        (Only a retransmitted request over TCP/TLS/WS gets here: nothing else resends there.)"""
        response = parse_message(self.wire)
        assert isinstance(response, Response)
        return response


class ServerTransaction(TransactionMachine):
    """One request we received and the responses we give it (RFC 3261 §17.2)."""

    __slots__ = ("request", "method", "connection", "timers", "_identity", "is_invite", "last_response",
                 "final_to_tag", "_tu", "_ack_connection", "_interval", "_fixed_timer")

    def __init__(
        self,
        clock: IReactorTime,
        request: Request,
        connection: Connection,
        tu: TransactionUser,
        timers: TimerSettings,
        identity: RequestIdentity,
        on_terminated: Callable[[TransactionMachine], None],
    ) -> None:
        #: the request as received, until the transaction has sent a final response (then it
        #: only absorbs retransmissions and lets the request go: None, see ``_let_go``)
        self.request: Request | None = request
        self.method = request.method
        self.connection = connection
        self.timers = timers
        #: the §17.2.3 matching fields (``identity``); once the transaction lingers, the fields of
        #: a ``SettledIdentity`` as a plain tuple
        self._identity: RequestIdentity | tuple[str, str, str, str | None, str | None, int, str] = identity
        self.is_invite = request.method == "INVITE"
        self.machine = "INVITE server" if self.is_invite else "non-INVITE server"
        self.table = INVITE_SERVER if self.is_invite else NON_INVITE_SERVER
        #: the most recent response sent (the TU's, or the automatic 100 Trying); once the
        #: transaction lingers, the final's bytes alone (a ``SentResponse`` around them was 48 B
        #: more each, made again only to resend); None in Accepted, where the TU alone sends
        #: 2xx retransmissions (RFC 6026 §7.1)
        self.last_response: Response | bytes | None = None
        #: the To tag of our final response (RFC 2543 matching of the ACK, §17.2.3)
        self.final_to_tag: str | None = None
        self._tu = tu
        self._ack_connection: Connection = connection
        self._interval = timers.t1  # current value of Timer G
        #: the armed timer of ``_FIXED_DELAY_TIMERS`` (at most one: their states differ), if any
        self._fixed_timer: FixedEntry | None = None
        super().__init__(clock, _PROCEEDING if self.is_invite else _TRYING, on_terminated)

    @property
    def identity(self) -> RequestIdentity | SettledIdentity:
        """The §17.2.3 matching fields: a ``SettledIdentity`` once the transaction lingers, made
        when asked (the layer asks once, when the transaction ends).  Kept as a plain tuple of
        strings and numbers, which the collector stops tracking at its first pass: a NamedTuple
        (a subclass) it tracks, and traverses at every collection for 64*T1."""
        identity = self._identity
        return identity if isinstance(identity, RequestIdentity) else SettledIdentity._make(identity)

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.method} {self.identity.branch} {self.state.value}>"

    def start(self) -> None:
        """Arm the 100 Trying timer of an INVITE (RFC 3261 §17.2.1: 200 ms)."""
        if self.is_invite:
            self._start_timer(_TIMER_TRYING, self.timers.trying_delay)

    def respond(self, response: Response) -> None:
        """Send a response from the TU.

        Raises ``TransactionStateError`` when the machine does not allow it (a 1xx after a
        final, a non-2xx after a 2xx ...).  A final the RFC says to discard (another final
        to a completed non-INVITE, §17.2.2) or any response to a terminated transaction
        is dropped and logged.
        """
        if not 100 <= response.status <= 699:
            raise ValueError(f"status code {response.status} is not between 100 and 699")
        if response.status < 200:
            event = Event.TU_1XX
        elif response.status < 300:
            event = _TU_2XX
        else:
            event = Event.TU_3XX_6XX
        self._handle(event, response)

    def receive_request(self, request: Request, connection: Connection) -> None:
        """A retransmission of our request, or the ACK, matched by the layer (§17.2.3)."""
        if request.method == "ACK":
            self._ack_connection = connection
            self._handle(Event.ACK, request)
        else:
            self._handle(Event.REQUEST_RETRANSMISSION, request)

    # ----- actions -------------------------------------------------------------------------

    def _send_response(self, response: object) -> None:
        assert isinstance(response, Response)
        self._cancel_timer(_TIMER_TRYING)  # the TU answered: no automatic 100
        self.last_response = response
        if response.status >= 200:
            self.final_to_tag = to_tag(response)
        self._send(self.connection, response)

    def _let_go(self) -> None:
        # After the final response the request is never read again (retransmissions are
        # matched on ``identity``, §17.2.3), and in Accepted neither is the response: the TU
        # retransmits its 2xx itself (RFC 6026 §7.1).  A 2xx with an SDP answer and the
        # INVITE with its offer are most of the ~9 KB such a transaction held for 64*T1.
        self.request = None
        if self.state is State.ACCEPTED:
            self.last_response = None
        elif isinstance(self.last_response, Response):
            # Sent again as it is (a connection serialises a message and writes the bytes);
            # on a reliable transport ``_resend_last_response`` parses it back when needed.
            self.last_response = self.last_response.serialize()
        identity = self._identity
        if isinstance(identity, RequestIdentity) and identity.has_rfc3261_branch:
            # Only RFC 2543 matching reads the rest of the identity, and the To tag of our final.
            self._identity = (identity.branch or "", identity.sent_by, identity.method, identity.from_tag,
                              identity.call_id, identity.cseq_number, identity.cseq_method)
            self.final_to_tag = None
        if not self._timers:
            # A dict keeps the table its 100 Trying timer needed (224 B); the shared empty one is 0 B.
            self._timers = _NO_TIMERS  # type: ignore[assignment]
        if not self._due_now:
            self._due_now = _NOTHING_DUE

    # ----- timers of a fixed delay (see ``_FIXED_DELAY_TIMERS``) -----------------------------

    def _start_timer(self, timer: Event, delay: float) -> None:
        if delay > 0 and timer in _FIXED_DELAY_TIMERS and isinstance(self._clock, TimerQueue):
            self._cancel_timer(timer)
            self._cancel_fixed_timer()  # I replaces H (Confirmed): the layer may not have cancelled it
            self._fixed_timer = self._clock.call_fixed(delay, self, timer)
            return
        # The machine adds to the table: a lingering transaction's is the shared empty one.
        if self._timers is _NO_TIMERS:
            self._timers = {}
        super()._start_timer(timer, delay)

    def fixed_timer_fired(self, timer: Event) -> None:
        """``TimerQueue.call_fixed``'s callback: H, I, J and L from ``_fixed_timer``, the others
        from the machine's table."""
        if timer not in _FIXED_DELAY_TIMERS:
            super().fixed_timer_fired(timer)
            return
        self._fixed_timer = None
        if self.state in TIMER_LIFETIME[timer]:
            self._handle(timer)

    def _fixed_event(self) -> Event | None:
        """Which of ``_FIXED_DELAY_TIMERS`` ``_fixed_timer`` is (the queue files it)."""
        entry = self._fixed_timer
        if entry is None:
            return None
        assert isinstance(self._clock, TimerQueue)
        return self._clock.token_of(entry)  # type: ignore[no-any-return]

    def _cancel_fixed_timer(self) -> None:
        entry = self._fixed_timer
        if entry is not None:
            self._fixed_timer = None
            assert isinstance(self._clock, TimerQueue)
            self._clock.cancel_fixed(entry)

    def _cancel_timer(self, timer: Event) -> None:
        if self._fixed_timer is not None and timer in _FIXED_DELAY_TIMERS and self._fixed_event() is timer:
            self._cancel_fixed_timer()
        else:
            super()._cancel_timer(timer)

    def _cancel_timers_outside(self, state: State) -> None:
        super()._cancel_timers_outside(state)
        if self._fixed_timer is not None:
            event = self._fixed_event()
            if event is None or state not in TIMER_LIFETIME[event]:
                self._cancel_fixed_timer()

    def timer_deadlines(self) -> dict[str, float]:
        deadlines = super().timer_deadlines()
        event = self._fixed_event()
        if self._fixed_timer is not None and event is not None:
            deadlines[event.value] = self._clock.deadline_of(self._fixed_timer)  # type: ignore[attr-defined]
        return deadlines

    def shut_down(self) -> None:
        self._cancel_fixed_timer()
        super().shut_down()

    def _send_trying(self, _: object) -> None:
        # RFC 3261 §17.2.1: the TU did not answer within 200 ms.
        assert self.request is not None  # Proceeding: no final response yet
        trying = make_response(self.request, 100)
        timestamp = self.request.headers.get("timestamp")
        if timestamp is not None:
            trying.headers.add("Timestamp", timestamp)  # RFC 3261 §8.2.6.1
        self.last_response = trying
        self._send(self.connection, trying)

    def _resend_last_response(self, _: object) -> None:
        kept = self.last_response
        response: Response | SentResponse | None
        if isinstance(kept, bytes):
            response = SentResponse.from_wire(kept)
            if self.connection.reliable:
                # §18.2.2: a stream transport whose connection closed sends a Response elsewhere.
                response = response.parsed()
        else:
            response = kept
        if response is not None:
            self._send(self.connection, response)  # type: ignore[arg-type] # SentResponse: serialize() is all a UDP path uses

    def _discard_response(self, response: object) -> None:
        status = response.status if isinstance(response, Response) else "?"
        log.info(
            "{machine} transaction {branch} in state {state} discards a {status} from the TU",
            machine=self.machine,
            branch=self.identity.branch,
            state=self.state.value,
            status=status,
        )

    def _pass_ack_to_tu(self, ack: object) -> None:
        assert isinstance(ack, Request)
        try:
            self._tu.ack_received(ack, self._ack_connection)
        except Exception:
            log.failure("transaction user failed on an ACK")

    def _start_timers_g_h(self, _: object) -> None:
        if not self.connection.reliable:
            self._start_timer(Event.TIMER_G, self._interval)  # §17.2.1: Timer G = T1
        self._start_timer(Event.TIMER_H, self.timers.h)  # §17.2.1: Timer H = 64*T1

    def _restart_timer_g(self, _: object) -> None:
        # §17.2.1: G doubles up to T2.
        self._interval = min(2 * self._interval, self.timers.t2)
        self._start_timer(Event.TIMER_G, self._interval)

    def _start_timer_i(self, _: object) -> None:
        # §17.2.1: Timer I = T4 on unreliable transports, zero on reliable ones.  The ACK ended
        # Timer H (Confirmed).
        self._cancel_fixed_timer()
        self._start_timer(Event.TIMER_I, 0 if self.connection.reliable else self.timers.t4)

    def _start_timer_j(self, _: object) -> None:
        # §17.2.2: Timer J = 64*T1 on unreliable transports, zero on reliable ones.
        self._start_timer(_TIMER_J, 0 if self.connection.reliable else self.timers.j)

    def _start_timer_l(self, _: object) -> None:
        self._start_timer(Event.TIMER_L, self.timers.l)  # RFC 6026 §7.1: Timer L = 64*T1

    def _log_no_ack(self, _: object) -> None:
        log.info(
            "no ACK for the {status} to INVITE {branch} within Timer H",
            status=self.last_status or "?",
            branch=self.identity.branch,
        )

    @property
    def last_status(self) -> int | None:
        """The status of the most recent response sent (None before any, and in Accepted)."""
        kept = self.last_response
        if isinstance(kept, bytes):
            return SentResponse.from_wire(kept).status
        return kept.status if kept is not None else None

    def _log_transport_error(self, _: object) -> None:
        # RFC 3261 §17.2.4: the transport already tried §18.2.2's fallbacks.
        self._cancel_fixed_timer()
        log.info(
            "{machine} transaction {branch} ends: {reason}",
            machine=self.machine,
            branch=self.identity.branch,
            reason=self.failure_reason,
        )
