"""The four RFC 3261 §17 transaction state machines as tables (RFC 6026 applied).

Rule 1 (after h11's ``_state.py``): everything that decides *which state comes next*
lives in this file, as data.  ``transaction_client.py`` and ``transaction_server.py``
only say *how* each named ``Action`` is carried out (send a message, arm a timer, call
the TU); ``transaction.py`` only decides which transaction a message belongs to.

Each table maps ``state -> event -> Transition(next_state, actions)``.  The actions run
in order after the state has changed, so a transaction user called from an action sees
the new state.  An event with no entry for the current state is a programming error of
the caller (for example a TU sending a 1xx after a final response) and raises
``TransactionStateError`` naming the machine, the state and the event.  Every event
the *network* can cause has an entry in every live state (absorbed when RFC 3261 says
nothing), so no peer can make the layer raise.

Timers are named events.  ``TIMER_LIFETIME`` says in which states each timer stays
armed: leaving those states cancels it, which is how "Timer B is cancelled when a
provisional response arrives" is written down once instead of in every transition.
A timer whose value is zero (RFC 3261 Table 4: D, I, J, K on a reliable transport)
fires at once, inside the transition that armed it.

The figures these tables transcribe:
  * INVITE client: RFC 3261 §17.1.1 Figure 5, with RFC 6026 §7.2 (Accepted, Timer M)
  * non-INVITE client: RFC 3261 §17.1.2 Figure 6
  * INVITE server: RFC 3261 §17.2.1 Figure 7, with RFC 6026 §7.1 (Accepted, Timer L)
  * non-INVITE server: RFC 3261 §17.2.2 Figure 8
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from epcscf.sip.connection import Connection, ConnectionLost
from epcscf.sip.message import Message
from epcscf.sip.timers import FixedEntry, TimerQueue

log = Logger()

#: RFC 3261 §17.1.1.2: Timer D is at least 32 s on an unreliable transport (the time a
#: retransmitted final response to an INVITE may still arrive).
TIMER_D_MINIMUM = 32.0


@dataclass(frozen=True)
class TimerSettings:
    """RFC 3261 §17 timer values (Table 4) for one path; TS 24.229 Table 7.7.1 for IMS.

    B, F, H, J, L and M are 64*T1 (RFC 3261 Table 4, RFC 6026 §8.11).  ``d`` is Timer D
    on an unreliable transport: RFC 3261 §17.1.1.2 wants at least 32 s, TS 24.229
    Table 7.7.1 more than 128 s toward a UE.  On a reliable transport D, I, J and K are
    zero and A, E, G are never armed, whatever these values are.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = TIMER_D_MINIMUM
    #: RFC 3261 §17.2.1: the INVITE server transaction sends 100 Trying itself when the
    #: TU has not answered within 200 ms.
    trying_delay: float = 0.2

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4"):
            if not getattr(self, name) > 0:
                raise ValueError(f"timer {name.upper()} must be positive, got {getattr(self, name)!r}")
        if self.t2 < self.t1:
            raise ValueError(f"timer T2 ({self.t2}) must not be shorter than T1 ({self.t1})")
        if self.d < 0 or self.trying_delay < 0:
            raise ValueError("timer D and the 100 Trying delay must not be negative")

    @classmethod
    def toward_ue(cls, t1: float, t2: float, t4: float) -> "TimerSettings":
        """Timers on the path to a UE, Timer D derived from T1.

        TS 24.229 Table 7.7.1 wants Timer D toward a UE above 128 s, which is 64*T1 with
        the UE-facing T1 of 2 s: D is 64*T1 plus 2 s, and never under RFC 3261's 32 s.
        """
        return cls(t1=t1, t2=t2, t4=t4, d=max(TIMER_D_MINIMUM, 64 * t1 + 2))

    @property
    def b(self) -> float:
        return 64 * self.t1

    @property
    def f(self) -> float:
        return 64 * self.t1

    @property
    def h(self) -> float:
        return 64 * self.t1

    @property
    def j(self) -> float:
        return 64 * self.t1

    @property
    def l(self) -> float:  # noqa: E741 - the RFC 6026 name
        return 64 * self.t1

    @property
    def m(self) -> float:
        return 64 * self.t1


class State(enum.Enum):
    # Members are singletons compared by identity: hash them the same way (Enum's own
    # __hash__ is Python code, and the machines look states and events up in dicts on
    # every message).
    __hash__ = object.__hash__

    CALLING = "Calling"  # INVITE client only
    TRYING = "Trying"  # non-INVITE client and server
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"  # INVITE server only
    ACCEPTED = "Accepted"  # RFC 6026, INVITE client and server
    TERMINATED = "Terminated"


class Event(enum.Enum):
    __hash__ = object.__hash__  # identity, as for State

    # from the network, toward a client transaction
    RESPONSE_1XX = "1xx received"
    RESPONSE_2XX = "2xx received"
    RESPONSE_3XX_6XX = "300-699 received"
    # from the network, toward a server transaction
    REQUEST_RETRANSMISSION = "request retransmission"
    ACK = "ACK received"
    # from the transaction user (server transactions)
    TU_1XX = "1xx from TU"
    TU_2XX = "2xx from TU"
    TU_3XX_6XX = "300-699 from TU"
    # from the transport
    TRANSPORT_ERROR = "transport error"
    # timers (RFC 3261 Table 4, RFC 6026 §8.11)
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    TIMER_TRYING = "100 Trying timer"  # RFC 3261 §17.2.1, 200 ms


class Action(enum.Enum):
    """What a transition does; the value is the method that does it."""

    __hash__ = object.__hash__  # identity, as for State (looked up on every transition)

    # client side
    PASS_RESPONSE_TO_TU = "pass_response_to_tu"
    SEND_ACK = "send_ack"  # RFC 3261 §17.1.1.3
    RETRANSMIT_REQUEST = "retransmit_request"
    RESTART_TIMER_A = "restart_timer_a"
    RESTART_TIMER_E = "restart_timer_e"
    START_TIMER_D = "start_timer_d"
    START_TIMER_K = "start_timer_k"
    START_TIMER_M = "start_timer_m"
    REPORT_TIMEOUT = "report_timeout"
    REPORT_TRANSPORT_ERROR = "report_transport_error"
    # server side
    SEND_RESPONSE = "send_response"
    SEND_TRYING = "send_trying"
    RESEND_LAST_RESPONSE = "resend_last_response"
    DISCARD_RESPONSE = "discard_response"
    PASS_ACK_TO_TU = "pass_ack_to_tu"
    START_TIMERS_G_H = "start_timers_g_h"
    RESTART_TIMER_G = "restart_timer_g"
    START_TIMER_I = "start_timer_i"
    START_TIMER_J = "start_timer_j"
    START_TIMER_L = "start_timer_l"
    LOG_NO_ACK = "log_no_ack"
    LOG_TRANSPORT_ERROR = "log_transport_error"


#: The method carrying out each action (``Enum.value`` is a descriptor lookup: read once here).
ACTION_METHODS: Mapping[Action, str] = {action: "_" + action.value for action in Action}

# Members read on every message, as module constants: in Python 3.11 ``EnumType`` has a
# ``__getattr__``, so each ``State.TERMINATED`` read goes through the slow attribute hook
# (~800 instructions, against ~20 for a global).
TERMINATED = State.TERMINATED


class Transition(NamedTuple):
    next_state: State
    actions: tuple[Action, ...] = ()


Table = Mapping[State, Mapping[Event, Transition]]

S, E, A, T = State, Event, Action, Transition

# RFC 3261 §17.1.1.2 Figure 5 + RFC 6026 §7.2 Figure 3 (INVITE client transaction).
_INVITE_CLIENT_FINALS: dict[Event, Transition] = {
    # RFC 6026 §7.2: a 2xx moves to Accepted (not Terminated) and arms Timer M.
    E.RESPONSE_2XX: T(S.ACCEPTED, (A.START_TIMER_M, A.PASS_RESPONSE_TO_TU)),
    # §17.1.1.2: 300-699 → ACK it, arm Timer D, pass it up.
    E.RESPONSE_3XX_6XX: T(S.COMPLETED, (A.SEND_ACK, A.START_TIMER_D, A.PASS_RESPONSE_TO_TU)),
}
INVITE_CLIENT: Table = {
    S.CALLING: {
        E.RESPONSE_1XX: T(S.PROCEEDING, (A.PASS_RESPONSE_TO_TU,)),
        **_INVITE_CLIENT_FINALS,
        E.TIMER_A: T(S.CALLING, (A.RETRANSMIT_REQUEST, A.RESTART_TIMER_A)),
        E.TIMER_B: T(S.TERMINATED, (A.REPORT_TIMEOUT,)),
        E.TRANSPORT_ERROR: T(S.TERMINATED, (A.REPORT_TRANSPORT_ERROR,)),
    },
    S.PROCEEDING: {
        E.RESPONSE_1XX: T(S.PROCEEDING, (A.PASS_RESPONSE_TO_TU,)),
        **_INVITE_CLIENT_FINALS,
    },
    S.COMPLETED: {
        E.RESPONSE_1XX: T(S.COMPLETED),  # nothing in §17.1.1.2: absorbed
        E.RESPONSE_2XX: T(S.COMPLETED),
        # §17.1.1.2: a retransmitted final is ACKed again and not passed up.
        E.RESPONSE_3XX_6XX: T(S.COMPLETED, (A.SEND_ACK,)),
        E.TIMER_D: T(S.TERMINATED),
        E.TRANSPORT_ERROR: T(S.TERMINATED, (A.REPORT_TRANSPORT_ERROR,)),
    },
    S.ACCEPTED: {
        E.RESPONSE_1XX: T(S.ACCEPTED),  # RFC 6026 §7.2: only 2xx are passed up
        # RFC 6026 §7.2: every further 2xx (retransmission or another fork) goes to the TU.
        E.RESPONSE_2XX: T(S.ACCEPTED, (A.PASS_RESPONSE_TO_TU,)),
        E.RESPONSE_3XX_6XX: T(S.ACCEPTED),
        E.TIMER_M: T(S.TERMINATED),
    },
    S.TERMINATED: {},
}

# RFC 3261 §17.1.2.2 Figure 6 (non-INVITE client transaction).
_NON_INVITE_CLIENT_LIVE: dict[Event, Transition] = {
    E.RESPONSE_2XX: T(S.COMPLETED, (A.START_TIMER_K, A.PASS_RESPONSE_TO_TU)),
    E.RESPONSE_3XX_6XX: T(S.COMPLETED, (A.START_TIMER_K, A.PASS_RESPONSE_TO_TU)),
    E.TIMER_F: T(S.TERMINATED, (A.REPORT_TIMEOUT,)),
    E.TRANSPORT_ERROR: T(S.TERMINATED, (A.REPORT_TRANSPORT_ERROR,)),
}
NON_INVITE_CLIENT: Table = {
    S.TRYING: {
        E.RESPONSE_1XX: T(S.PROCEEDING, (A.PASS_RESPONSE_TO_TU,)),
        E.TIMER_E: T(S.TRYING, (A.RETRANSMIT_REQUEST, A.RESTART_TIMER_E)),
        **_NON_INVITE_CLIENT_LIVE,
    },
    S.PROCEEDING: {
        E.RESPONSE_1XX: T(S.PROCEEDING, (A.PASS_RESPONSE_TO_TU,)),
        E.TIMER_E: T(S.PROCEEDING, (A.RETRANSMIT_REQUEST, A.RESTART_TIMER_E)),
        **_NON_INVITE_CLIENT_LIVE,
    },
    S.COMPLETED: {
        # §17.1.2.2: retransmitted responses are absorbed in Completed.
        E.RESPONSE_1XX: T(S.COMPLETED),
        E.RESPONSE_2XX: T(S.COMPLETED),
        E.RESPONSE_3XX_6XX: T(S.COMPLETED),
        E.TIMER_K: T(S.TERMINATED),
    },
    S.TERMINATED: {},
}

# Responses the TU hands to a terminated server transaction are dropped: the TU is not
# told when a transport error ended the transaction (RFC 3261 §17.2.4 leaves the TU's
# reaction open), so it cannot be blamed for answering a little late.
_SERVER_TERMINATED: dict[Event, Transition] = {
    E.TU_1XX: T(S.TERMINATED, (A.DISCARD_RESPONSE,)),
    E.TU_2XX: T(S.TERMINATED, (A.DISCARD_RESPONSE,)),
    E.TU_3XX_6XX: T(S.TERMINATED, (A.DISCARD_RESPONSE,)),
}

# RFC 3261 §17.2.1 Figure 7 + RFC 6026 §7.1 Figure 5 (INVITE server transaction).
INVITE_SERVER: Table = {
    S.PROCEEDING: {
        # §17.2.1: a retransmitted INVITE gets the most recent provisional response again.
        E.REQUEST_RETRANSMISSION: T(S.PROCEEDING, (A.RESEND_LAST_RESPONSE,)),
        E.ACK: T(S.PROCEEDING),  # an ACK before any final answers nothing: absorbed
        E.TU_1XX: T(S.PROCEEDING, (A.SEND_RESPONSE,)),
        # RFC 6026 §7.1: a 2xx moves to Accepted and arms Timer L.
        E.TU_2XX: T(S.ACCEPTED, (A.SEND_RESPONSE, A.START_TIMER_L)),
        E.TU_3XX_6XX: T(S.COMPLETED, (A.SEND_RESPONSE, A.START_TIMERS_G_H)),
        E.TIMER_TRYING: T(S.PROCEEDING, (A.SEND_TRYING,)),
        E.TRANSPORT_ERROR: T(S.TERMINATED, (A.LOG_TRANSPORT_ERROR,)),
    },
    S.COMPLETED: {
        E.REQUEST_RETRANSMISSION: T(S.COMPLETED, (A.RESEND_LAST_RESPONSE,)),
        # §17.2.1: the ACK for a non-2xx final is absorbed here; Timer I soaks up more.
        E.ACK: T(S.CONFIRMED, (A.START_TIMER_I,)),
        E.TIMER_G: T(S.COMPLETED, (A.RESEND_LAST_RESPONSE, A.RESTART_TIMER_G)),
        E.TIMER_H: T(S.TERMINATED, (A.LOG_NO_ACK,)),
        E.TRANSPORT_ERROR: T(S.TERMINATED, (A.LOG_TRANSPORT_ERROR,)),
    },
    S.CONFIRMED: {
        E.REQUEST_RETRANSMISSION: T(S.CONFIRMED),
        E.ACK: T(S.CONFIRMED),
        E.TIMER_I: T(S.TERMINATED),
    },
    S.ACCEPTED: {
        # RFC 6026 §7.1: INVITE retransmissions are absorbed, ACKs go to the TU, and
        # 2xx retransmissions from the TU are sent (the transaction never makes its own).
        E.REQUEST_RETRANSMISSION: T(S.ACCEPTED),
        E.ACK: T(S.ACCEPTED, (A.PASS_ACK_TO_TU,)),
        E.TU_2XX: T(S.ACCEPTED, (A.SEND_RESPONSE,)),
        E.TIMER_L: T(S.TERMINATED),
        E.TRANSPORT_ERROR: T(S.TERMINATED, (A.LOG_TRANSPORT_ERROR,)),
    },
    S.TERMINATED: _SERVER_TERMINATED,
}

# RFC 3261 §17.2.2 Figure 8 (non-INVITE server transaction).
NON_INVITE_SERVER: Table = {
    S.TRYING: {
        E.REQUEST_RETRANSMISSION: T(S.TRYING),  # §17.2.2: discarded in Trying
        E.TU_1XX: T(S.PROCEEDING, (A.SEND_RESPONSE,)),
        E.TU_2XX: T(S.COMPLETED, (A.SEND_RESPONSE, A.START_TIMER_J)),
        E.TU_3XX_6XX: T(S.COMPLETED, (A.SEND_RESPONSE, A.START_TIMER_J)),
        E.TRANSPORT_ERROR: T(S.TERMINATED, (A.LOG_TRANSPORT_ERROR,)),
    },
    S.PROCEEDING: {
        E.REQUEST_RETRANSMISSION: T(S.PROCEEDING, (A.RESEND_LAST_RESPONSE,)),
        E.TU_1XX: T(S.PROCEEDING, (A.SEND_RESPONSE,)),
        E.TU_2XX: T(S.COMPLETED, (A.SEND_RESPONSE, A.START_TIMER_J)),
        E.TU_3XX_6XX: T(S.COMPLETED, (A.SEND_RESPONSE, A.START_TIMER_J)),
        E.TRANSPORT_ERROR: T(S.TERMINATED, (A.LOG_TRANSPORT_ERROR,)),
    },
    S.COMPLETED: {
        E.REQUEST_RETRANSMISSION: T(S.COMPLETED, (A.RESEND_LAST_RESPONSE,)),
        # §17.2.2: other finals from the TU MUST be discarded in Completed.
        E.TU_2XX: T(S.COMPLETED, (A.DISCARD_RESPONSE,)),
        E.TU_3XX_6XX: T(S.COMPLETED, (A.DISCARD_RESPONSE,)),
        E.TIMER_J: T(S.TERMINATED),
        E.TRANSPORT_ERROR: T(S.TERMINATED, (A.LOG_TRANSPORT_ERROR,)),
    },
    S.TERMINATED: _SERVER_TERMINATED,
}

# In which states each timer stays armed; leaving them cancels it.
TIMER_LIFETIME: Mapping[Event, frozenset[State]] = {
    E.TIMER_A: frozenset({S.CALLING}),  # §17.1.1.2: no retransmission once Proceeding
    E.TIMER_B: frozenset({S.CALLING}),
    E.TIMER_D: frozenset({S.COMPLETED}),
    E.TIMER_M: frozenset({S.ACCEPTED}),
    E.TIMER_E: frozenset({S.TRYING, S.PROCEEDING}),  # §17.1.2.2: E and F run on in Proceeding
    E.TIMER_F: frozenset({S.TRYING, S.PROCEEDING}),
    E.TIMER_K: frozenset({S.COMPLETED}),
    E.TIMER_G: frozenset({S.COMPLETED}),
    E.TIMER_H: frozenset({S.COMPLETED}),
    E.TIMER_I: frozenset({S.CONFIRMED}),
    E.TIMER_J: frozenset({S.COMPLETED}),
    E.TIMER_L: frozenset({S.ACCEPTED}),
    E.TIMER_TRYING: frozenset({S.PROCEEDING}),
    # A failure of the very first send is reported on the next reactor turn, so that the
    # caller of send_request holds the transaction before hearing about it.
    E.TRANSPORT_ERROR: frozenset({S.CALLING, S.TRYING}),
}

#: States in which a transaction only lingers after its final response: it absorbs
#: retransmissions (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2; RFC 6026 §7.1, §7.2)
#: until Timer D, H, I, J, K, L or M ends it.  At 64*T1 with the WIC-side T1 of 2 s that is
#: 128 s, thousands of transactions on a busy edge: in these states each machine lets go of
#: the messages it no longer needs (``TransactionMachine._let_go``).
LINGERING_STATES: frozenset[State] = frozenset({S.COMPLETED, S.CONFIRMED, S.ACCEPTED})

del S, E, A, T


class TransactionStateError(Exception):
    """An event the machine does not accept in its current state (a caller's mistake)."""

    def __init__(self, machine: str, state: State, event: Event) -> None:
        super().__init__(f"{machine} transaction in state {state.value} cannot handle {event.value}")
        self.machine = machine
        self.state = state
        self.event = event


#: The due-now list of a machine that lingers with none due: shared, so never added to
#: (``_start_timer`` gives the machine its own first).  A list per lingering transaction was one
#: more object each young and middle collection traversed for 64*T1.
NOTHING_DUE: list["Event"] = []


class TransactionMachine:
    """Runs one table: the current state, its armed timers, and the action dispatch.

    Subclasses provide ``machine`` (a name for errors and logs), ``table``, the initial
    state, and one method per ``Action`` value they use.
    """

    # Slots: two machines are made and freed per request proxied, with no __dict__ each.
    __slots__ = ("state", "_clock", "_on_terminated", "_timers", "_due_now", "_send_failed", "_finished",
                 "failure_reason", "machine", "table", "__weakref__")

    machine: str
    table: Table
    #: each ``Action`` → the function of this class carrying it out (``ACTION_METHODS`` read
    #: once per class, not a ``getattr`` by name per action)
    action_functions: Mapping[Action, Callable[..., None]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.action_functions = {
            action: getattr(cls, name) for action, name in ACTION_METHODS.items() if hasattr(cls, name)
        }

    def __init__(
        self,
        clock: IReactorTime,
        initial: State,
        on_terminated: Callable[["TransactionMachine"], None],
    ) -> None:
        self.state = initial
        self._clock = clock
        self._on_terminated = on_terminated
        #: armed timers: a ``TimerQueue.call_fixed`` entry on the layer's queue, else an IDelayedCall
        self._timers: dict[Event, FixedEntry | IDelayedCall] = {}
        self._due_now: list[Event] = []
        self._send_failed = False
        self._finished = False
        #: why the last send failed (RFC 3261 §17.1.4 / §17.2.4), for the TU and the console
        self.failure_reason: str | None = None

    @property
    def terminated(self) -> bool:
        return self.state is TERMINATED

    # ----- the dispatcher ------------------------------------------------------------------

    def _handle(self, event: Event, message: object = None) -> None:
        transition = self.table[self.state].get(event)
        if transition is None:
            raise TransactionStateError(self.machine, self.state, event)
        self.state = transition.next_state
        if self._timers:
            self._cancel_timers_outside(self.state)
        if transition.actions:
            functions = self.action_functions
            for action in transition.actions:
                functions[action](self, message)
        if self._send_failed:
            self._send_failed = False
            if self.state is not TERMINATED:
                self._handle(Event.TRANSPORT_ERROR)
                return
        while self._due_now:
            timer = self._due_now.pop(0)
            if self.state in TIMER_LIFETIME[timer]:
                self._handle(timer)
        if self.state in LINGERING_STATES:
            self._let_go()
        if self.state is TERMINATED and not self._finished:
            self._finished = True
            self._due_now.clear()
            self._on_terminated(self)

    def _let_go(self) -> None:
        """Drop what a transaction that only lingers no longer needs (see ``LINGERING_STATES``);
        called after every event handled in one of those states."""

    def _send(self, connection: Connection, message: Message) -> None:
        """Hand ``message`` to the transport; a lost connection becomes a TRANSPORT_ERROR
        event once the running transition is complete (RFC 3261 §17.1.4, §17.2.4)."""
        try:
            connection.send_message(message)
        except ConnectionLost as error:
            self.failure_reason = str(error) or "connection lost"
            self._send_failed = True
        except Exception as error:
            # A Connection must raise only ConnectionLost; anything else is a bug in it, logged
            # as one, but the transaction still ends as on a transport error instead of living
            # on with no timer armed.
            log.failure("{connection} raised an unexpected error on send", connection=connection)
            self.failure_reason = f"send failed: {error!r}"
            self._send_failed = True

    # ----- timers --------------------------------------------------------------------------

    def _start_timer(self, timer: Event, delay: float) -> None:
        """Arm ``timer``; a zero delay fires it as soon as the current transition is done."""
        call = self._timers.pop(timer, None)  # ``_cancel_timer``, inlined: several per transaction
        if call is not None:
            self._disarm(call)
        if delay <= 0:
            if self._due_now is NOTHING_DUE:
                self._due_now = []
            self._due_now.append(timer)
        elif isinstance(self._clock, TimerQueue):
            # A number the collector does not track, not a QueuedCall, a bound method and two
            # tuples it traversed for as long as the timer lived (``timers.py``).
            self._timers[timer] = self._clock.call_fixed(delay, self, timer)
        else:
            self._timers[timer] = self._clock.callLater(delay, self._timer_fired, timer)

    def _timer_fired(self, timer: Event) -> None:
        self._timers.pop(timer, None)
        self._handle(timer)

    def fixed_timer_fired(self, timer: Event) -> None:
        """``TimerQueue.call_fixed``'s callback."""
        self._timer_fired(timer)

    def _disarm(self, call: FixedEntry | IDelayedCall) -> None:
        if type(call) is int:
            self._clock.cancel_fixed(call)  # type: ignore[attr-defined] # a TimerQueue's entry
        elif call.active():  # type: ignore[union-attr]
            call.cancel()  # type: ignore[union-attr]

    def _cancel_timer(self, timer: Event) -> None:
        call = self._timers.pop(timer, None)
        if call is not None:
            self._disarm(call)

    def _cancel_timers_outside(self, state: State) -> None:
        timers = self._timers
        if not timers:
            return
        for timer, call in list(timers.items()):  # ``_cancel_timer`` of each, written out
            if state not in TIMER_LIFETIME[timer]:
                del timers[timer]
                self._disarm(call)

    def timer_deadlines(self) -> dict[str, float]:
        """When each armed timer fires (clock seconds): for the console and tests."""
        return {timer.value: self._clock.deadline_of(call) if type(call) is int else call.getTime()  # type: ignore[attr-defined,union-attr]
                for timer, call in self._timers.items() if type(call) is int or call.active()}  # type: ignore[union-attr]

    def shut_down(self) -> None:
        """Cancel every timer and stop, telling no one (``TransactionLayer.close``)."""
        for timer in list(self._timers):
            self._cancel_timer(timer)
        self._due_now.clear()
        self.state = State.TERMINATED
        self._finished = True
