"""The call state machine of TS 24.371 §7, as a table.

Theory of operation
-------------------
Every INVITE dialog between a WIC and the core that passes the eP-CSCF is one
``Call``.  A call has a direction: *originating* (the WIC sent the INVITE,
§7.4.2: on the WIC's SDP offer we perform ICE and forward an offer built from
it) or *terminating* (the core sent the INVITE, §7.4.3: we offer WebRTC to the
WIC and, on its SDP answer, perform ICE and forward an answer built from it).

The call moves through the states below on events that the call manager feeds
it (SIP messages seen in the proxy path, and media events).  Rule: everything
that changes a call's state lives in this table; ``Call.fire`` raises
``CallStateError`` naming the state and event for anything the table does not
allow, so a missed case is a loud bug and never a silent flag combination.

::

    OFFER_RECEIVED --offer_forwarded--> OFFER_FORWARDED --early_answer--> EARLY
          |                                   |  \\--final_2xx--> CONFIRMED <--final_2xx-- EARLY
          +--rejected--> TERMINATED           +--final_failure--> TERMINATED
    any live state --cancel--> CANCELLING --final_failure/final_2xx--> ...
    any live state --release--> TERMINATING --released--> TERMINATED
    CONFIRMED --bye--> TERMINATED
"""

from __future__ import annotations

import enum


class CallDirection(enum.Enum):
    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    ORIGINATING = "originating"  # WIC → core (TS 24.371 §7.4.2)
    TERMINATING = "terminating"  # core → WIC (TS 24.371 §7.4.3)


class CallState(enum.Enum):
    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    OFFER_RECEIVED = "offer-received"  # INVITE seen; media being allocated, SDP transformed
    OFFER_FORWARDED = "offer-forwarded"  # transformed INVITE sent on
    EARLY = "early"  # an answer came in a provisional response (early media, RFC 3960)
    CONFIRMED = "confirmed"  # 2xx relayed; the dialog is up
    CANCELLING = "cancelling"  # CANCEL forwarded; waiting for the INVITE's final response
    TERMINATING = "terminating"  # we are releasing the call (BYE/CANCEL/4xx sent by us)
    TERMINATED = "terminated"


class CallEvent(enum.Enum):
    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    OFFER_FORWARDED = "offer-forwarded"
    REJECTED = "rejected"  # we answered the INVITE ourselves (488, 503, 403…)
    PROVISIONAL = "provisional"  # 1xx without an answer
    EARLY_ANSWER = "early-answer"  # 18x carrying the answer
    FINAL_2XX = "final-2xx"
    FINAL_FAILURE = "final-failure"  # 3xx–6xx to the initial INVITE
    ACK = "ack"
    REOFFER = "reoffer"  # re-INVITE/UPDATE with an offer in the dialog (hold, ICE restart)
    CANCEL = "cancel"
    BYE = "bye"
    RELEASE = "release"  # we end the call: consent lost, ICE/DTLS failed, WS closed, operator
    RELEASED = "released"  # our BYE/CANCEL/final response went out; resources freed


class CallStateError(Exception):
    """An event the call's current state does not allow."""


S, E = CallState, CallEvent

TRANSITIONS: dict[CallState, dict[CallEvent, CallState]] = {
    S.OFFER_RECEIVED: {
        E.OFFER_FORWARDED: S.OFFER_FORWARDED,
        E.REJECTED: S.TERMINATED,
        E.CANCEL: S.TERMINATED,  # cancelled before we forwarded: we answer 487 ourselves
        E.RELEASE: S.TERMINATING,
    },
    S.OFFER_FORWARDED: {
        E.PROVISIONAL: S.OFFER_FORWARDED,
        E.EARLY_ANSWER: S.EARLY,
        E.FINAL_2XX: S.CONFIRMED,
        E.FINAL_FAILURE: S.TERMINATED,
        E.CANCEL: S.CANCELLING,
        E.RELEASE: S.TERMINATING,
    },
    S.EARLY: {
        E.PROVISIONAL: S.EARLY,
        E.EARLY_ANSWER: S.EARLY,  # another fork, or the same answer again (RFC 3261 §16.7 forking)
        E.FINAL_2XX: S.CONFIRMED,
        E.FINAL_FAILURE: S.TERMINATED,
        E.CANCEL: S.CANCELLING,
        E.REOFFER: S.EARLY,  # UPDATE in the early dialog
        E.RELEASE: S.TERMINATING,
    },
    S.CONFIRMED: {
        E.FINAL_2XX: S.CONFIRMED,  # 2xx retransmission or another fork's 2xx (RFC 3261 §13.2.2.4)
        E.ACK: S.CONFIRMED,
        E.REOFFER: S.CONFIRMED,
        E.BYE: S.TERMINATED,
        E.RELEASE: S.TERMINATING,
    },
    S.CANCELLING: {
        E.PROVISIONAL: S.CANCELLING,
        E.EARLY_ANSWER: S.CANCELLING,
        E.FINAL_FAILURE: S.TERMINATED,  # the 487
        E.FINAL_2XX: S.CONFIRMED,  # CANCEL/200 race: the 2xx wins, the UAC sends BYE (RFC 3261 §9.1)
        E.CANCEL: S.CANCELLING,
        E.RELEASE: S.TERMINATING,
    },
    S.TERMINATING: {
        E.RELEASED: S.TERMINATED,
        E.PROVISIONAL: S.TERMINATING,
        E.EARLY_ANSWER: S.TERMINATING,
        E.FINAL_2XX: S.TERMINATING,
        E.FINAL_FAILURE: S.TERMINATING,
        E.ACK: S.TERMINATING,
        E.BYE: S.TERMINATING,
        E.CANCEL: S.TERMINATING,
        E.RELEASE: S.TERMINATING,
    },
    S.TERMINATED: {
        # Late messages of a finished call are absorbed (retransmissions, crossing BYEs).
        E.FINAL_2XX: S.TERMINATED,
        E.FINAL_FAILURE: S.TERMINATED,
        E.ACK: S.TERMINATED,
        E.BYE: S.TERMINATED,
        E.RELEASE: S.TERMINATED,
        E.RELEASED: S.TERMINATED,
        E.CANCEL: S.TERMINATED,
        E.PROVISIONAL: S.TERMINATED,
    },
}

LIVE_STATES = frozenset(state for state in CallState if state not in (S.TERMINATING, S.TERMINATED))


def next_state(state: CallState, event: CallEvent) -> CallState:
    """The state after ``event``; ``CallStateError`` if the table does not allow it."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise CallStateError(f"event {event.value!r} is not allowed in call state {state.value!r}") from None


# Members read on every call, as module constants (``dialogs.SIDE_WIC`` says why).
ORIGINATING, TERMINATING = CallDirection.ORIGINATING, CallDirection.TERMINATING
STATE_OFFER_RECEIVED = CallState.OFFER_RECEIVED
STATE_OFFER_FORWARDED = CallState.OFFER_FORWARDED
STATE_EARLY = CallState.EARLY
STATE_CONFIRMED = CallState.CONFIRMED
STATE_CANCELLING = CallState.CANCELLING
STATE_TERMINATING = CallState.TERMINATING
STATE_TERMINATED = CallState.TERMINATED
EVENT_OFFER_FORWARDED = CallEvent.OFFER_FORWARDED
EVENT_REJECTED = CallEvent.REJECTED
EVENT_PROVISIONAL = CallEvent.PROVISIONAL
EVENT_EARLY_ANSWER = CallEvent.EARLY_ANSWER
EVENT_FINAL_2XX = CallEvent.FINAL_2XX
EVENT_FINAL_FAILURE = CallEvent.FINAL_FAILURE
EVENT_ACK = CallEvent.ACK
EVENT_REOFFER = CallEvent.REOFFER
EVENT_CANCEL = CallEvent.CANCEL
EVENT_BYE = CallEvent.BYE
EVENT_RELEASE = CallEvent.RELEASE
EVENT_RELEASED = CallEvent.RELEASED
