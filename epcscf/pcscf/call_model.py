"""What a call is: the ``Call`` record, its timeline, settings, and the media interface it uses.

Split from ``calls.py`` (the call manager) so that the manager's module holds only SIP
behaviour.  ``Call`` moves through the table of ``call_state``; ``CallMediaLike`` is the one
small seam between a call and its media engine (``call_media.CallMedia`` here; another engine
could sit behind it).  The SDP body helpers read and write ``application/sdp`` bodies and keep
Content-Length exact (RFC 3261 §20.14).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, overload

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from epcscf.pcscf.call_state import CallDirection, CallEvent, CallState, TRANSITIONS, next_state
from epcscf.pcscf.dialogs import Dialog, Side
from epcscf.sip.connection import Connection
from epcscf.sip.message import Message
from epcscf.sip.proxy import ProxiedRequest

SDP = "application/sdp"
TRICKLE_SDPFRAG = "application/trickle-ice-sdpfrag"  # RFC 8840 §9
# The failing layer recorded with a release cause (for the console).
LAYERS = ("ws", "sip", "ice", "dtls", "media", "core")
# RFC 3326 Reason on the BYE we send when the WIC's flow is lost: no spec fixes the cause, and
# 480 (Temporarily Unavailable) says what happened: the WIC is gone.
WS_CLOSED_REASON = 'SIP;cause=480;text="WebSocket closed"'


class MediaRejected(Exception):
    """The SDP cannot be served: answer ``status`` (400, 488 + Warning, 503 + Retry-After)."""

    def __init__(self, status: int, reason: str, warn_code: int = 399) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.warn_code = warn_code


class CallMediaLike(Protocol):
    """What a call needs of its media (``epcscf.pcscf.call_media.CallMedia``).

    Each transformation takes the SDP body one side sent and returns the body for the other
    side (bytes or a Deferred of bytes); it raises ``MediaRejected``.  The media reports
    failures (``on_failure(layer, reason)``, layer one of ``LAYERS``) and notable events
    (``on_event(kind, text)``) through the two callbacks the call manager sets."""

    on_failure: Callable[[str, str], None] | None
    on_event: Callable[[str, str], None] | None
    #: set by the call manager: the id of the WIC's flow, None while it has none (suspended)
    wic_flow: Callable[[], str | None] | None

    def offer_from_wic(self, sdp: bytes) -> bytes | defer.Deferred: ...

    def answer_from_core(self, sdp: bytes, fork: str | None) -> bytes | defer.Deferred: ...

    def offer_from_core(self, sdp: bytes) -> bytes | defer.Deferred: ...

    def answer_from_wic(self, sdp: bytes) -> bytes | defer.Deferred: ...

    def offer_failed(self) -> None: ...

    def add_trickle(self, sdpfrag: bytes) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> defer.Deferred: ...


@dataclass(frozen=True)
class CallSettings:
    timeline_length: int = 200  # entries kept per call
    keep_ended: float = 600.0  # seconds an ended call stays visible to the console
    keep_unanswered: float = 60.0  # same for a call that never got a 2xx (at most keep_ended)
    max_calls: int = 10000  # live calls; beyond → 503 + Retry-After (RFC 3261 §21.5.4)
    retry_after: int = 30  # seconds, in 503 responses
    warning_agent: str = "epcscf"  # warn-agent in Warning headers (RFC 3261 §20.43)
    #: seconds a confirmed call outlives its WIC's lost flow, waiting for the same instance to
    #: register again (RFC 5626 §4.2; ``call_suspension``); 0: released at once
    reconnect_grace: float = 0.0


class TimelineEntry(NamedTuple):
    """One line of a call's timeline: immutable and small (an ended call keeps its timeline for
    [calls] history); a NamedTuple because ~20 are built per call and a frozen dataclass's
    ``__init__`` pays ``object.__setattr__`` for every field."""

    at: float
    kind: str  # "sip-in", "sip-out", "state", "ice", "dtls", "media", "release"
    text: str


_COUNT = struct.Struct("<I")


def _packed(entries: Sequence[TimelineEntry]) -> bytes:
    """The entries as one bytes object: their count, their times (binary doubles), the length
    of each kind and of each text (in characters), then the kinds and the texts in UTF-8, one
    after the other.  JSON of the same (the previous form) spent most of its time writing the
    times out in decimal and escaping the texts, at every call's end (issue 16)."""
    count = len(entries)
    times, kinds, texts = zip(*entries) if entries else ((), (), ())
    # surrogatepass: a text decoded from the wire with surrogateescape comes back as it was
    return (struct.pack(f"<I{count}d{2 * count}I", count, *times, *map(len, kinds), *map(len, texts))
            + ("".join(kinds) + "".join(texts)).encode("utf-8", "surrogatepass"))


def _unpacked(data: bytes) -> list[TimelineEntry]:
    (count,) = _COUNT.unpack_from(data)
    layout = struct.Struct(f"<{count}d{2 * count}I")
    numbers = layout.unpack_from(data, _COUNT.size)
    characters = data[_COUNT.size + layout.size:].decode("utf-8", "surrogatepass")
    parts = []
    position = 0
    for length in numbers[count:]:
        parts.append(characters[position:position + length])
        position += length
    return [TimelineEntry(*entry) for entry in zip(numbers[:count], parts[:count], parts[count:])]


class PackedTimeline(Sequence[TimelineEntry]):
    """An ended call's timeline as one bytes object (``_packed``), read back entry by entry on
    demand.

    An ended call is kept ``[calls] history`` seconds, and its ~20 entries were three objects
    each (tuple, float, text) allocated over the whole call: after a burst they, with the
    other survivors, kept the burst's memory pages from going back (docs/performance.md, "What
    pins a fuzz burst's memory").  One object per call, allocated when the call ends, does not.
    """

    __slots__ = ("_data",)

    def __init__(self, entries: Sequence[TimelineEntry]) -> None:
        self._data = _packed(entries)

    def add(self, at: float, kind: str, text: str, limit: int) -> None:
        """A late note (an ACK, a retransmission after the end): packed again with it, in place,
        so that the history's record of the call (``call_history.EndedCall``) shows it too."""
        self._data = _packed([*self._entries(), TimelineEntry(at, kind, text)][-limit:])

    def _entries(self) -> list[TimelineEntry]:
        return _unpacked(self._data)

    @overload
    def __getitem__(self, index: int) -> TimelineEntry: ...

    @overload
    def __getitem__(self, index: slice) -> list[TimelineEntry]: ...

    def __getitem__(self, index: int | slice) -> TimelineEntry | list[TimelineEntry]:
        return self._entries()[index]

    def __len__(self) -> int:
        return len(self._entries())

    def __iter__(self) -> Any:
        return iter(self._entries())

    def __repr__(self) -> str:
        return f"PackedTimeline({self._entries()!r})"


@dataclass(eq=False)
class Call:
    """One INVITE dialog through the eP-CSCF (see ``call_state`` for its states)."""

    call_id: str
    direction: CallDirection
    wic_flow: Connection
    created: float
    clock: IReactorTime
    #: what happened, oldest first, at most ``timeline_limit`` entries (a list, not a bounded
    #: deque: a deque's first block alone is ~600 bytes, most calls note about 10 entries)
    timeline: list[TimelineEntry] | PackedTimeline = field(default_factory=list)
    timeline_limit: int = 200
    state: CallState = CallState.OFFER_RECEIVED
    dialog: Dialog | None = None
    media: CallMediaLike | None = None
    invite_context: ProxiedRequest | None = None
    core_connection: Connection | None = None
    ended_at: float | None = None
    release_cause: str | None = None
    failing_layer: str | None = None
    pending_offer: Side | None = None  # whose offer awaits an answer (RFC 3264 §4; see offer_answer)
    last_wic_answer: bytes | None = None  # repeated in a bodiless 2xx: JsSIP fails a 2xx without SDP
    last_core_answer: bytes | None = None  # what a retransmitted 2xx from the WIC must carry
    released_early: bool = False
    media_stats: dict[str, Any] | None = None  # last snapshot, kept when the call ends
    #: when its WIC's flow was lost, while the call waits for the WIC to come back
    #: (``call_suspension``); None otherwise
    suspended_since: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.call_id, self.wic_flow.id

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def note(self, kind: str, text: str) -> None:
        timeline = self.timeline
        # A type test, not isinstance: PackedTimeline is a Sequence, and isinstance against an
        # ABC goes through ABCMeta.__instancecheck__ for every note (~20 a call).
        if type(timeline) is not list:
            assert isinstance(timeline, PackedTimeline)
            timeline.add(self.clock.seconds(), kind, text, self.timeline_limit)  # a late note, after the end
            return
        timeline.append(TimelineEntry(self.clock.seconds(), kind, text))
        if len(timeline) > self.timeline_limit:
            del timeline[0]

    def pack(self) -> None:
        """The call has ended: keep its timeline as one string (``PackedTimeline``)."""
        if not isinstance(self.timeline, PackedTimeline):
            self.timeline = PackedTimeline(self.timeline)

    def can(self, event: CallEvent) -> bool:
        return event in TRANSITIONS[self.state]

    def fire(self, event: CallEvent) -> CallState:
        """Move per the table; ``CallStateError`` for an event the state does not allow."""
        new = next_state(self.state, event)
        if new is not self.state:
            # ``_value_``: the value as a plain attribute (``.value`` is a property: two Python calls)
            self.note("state", f"{self.state._value_} → {new._value_} ({event._value_})")
        self.state = new
        return new

    def summary(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "direction": self.direction._value_,
            "state": self.state._value_ if self.suspended_since is None else "suspended (flow lost)",
            "flow": self.wic_flow.id,
            "created": self.created,
            "ended": self.ended_at,
            "cause": self.release_cause,
            "cause_code": cause_code(self.release_cause, self.failing_layer),
            "layer": self.failing_layer,
        }


MediaFactory = Callable[[Call], CallMediaLike]


@dataclass(eq=False)
class CallLeg:
    """What the call manager attaches to a proxied request of a call (``ProxiedRequest.attached``):
    the call, who sent the request, whether it is the dialog's initial INVITE, and whose offer
    it carried (None: none, the offer comes in the response, RFC 3261 §13.2.1)."""

    call: Call
    sender: Side
    initial: bool = False
    offer_from: Side | None = None


def succeeded_already(deferred: defer.Deferred) -> bool:
    """Has ``deferred`` fired with a plain result that a callback added now would get at once?
    Then its ``result`` may be read instead of running a callback chain (a media's offer is
    ready at once on a busy node: the call's sockets come from the shelf)."""
    return (
        deferred.called
        and not deferred.paused
        and not deferred.callbacks
        and not isinstance(deferred.result, (Failure, defer.Deferred))
    )


def call_leg(context: ProxiedRequest) -> CallLeg | None:
    """The call leg of a proxied request, if it belongs to a call."""
    leg = context.attached
    return leg if isinstance(leg, CallLeg) else None


def cause_code(cause: str | None, layer: str | None) -> str | None:
    """A short, stable name for why a call ended (for metrics labels; ``cause`` is free text)."""
    if cause is None:
        return None
    if layer == "ws":
        return "ws-closed"
    if layer == "ice":
        return "consent-lost" if "consent" in cause.lower() else "ice-failed"
    if layer in ("dtls", "media", "core"):
        return f"{layer}-failed"
    if cause.startswith("BYE from the "):
        return "bye-" + cause[len("BYE from the "):]
    if cause.startswith("rejected: "):
        return "rejected-" + cause[len("rejected: "):len("rejected: ") + 3]
    if cause[:3].isdigit():
        return f"final-{cause[:3]}"
    if cause == "cancelled":
        return "cancelled"
    return "released"


def content_type(message: Message) -> str:
    return (message.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


def sdp_body(message: Message) -> bytes | None:
    """The SDP of a message, or None when it has none (other bodies are not offers/answers)."""
    if not message.body.strip() or content_type(message) != SDP:
        return None
    return message.body


def set_sdp(message: Message, body: bytes) -> None:
    message.body = body
    headers = message.headers
    # An SDP answer or offer replacing one already has the one Content-Type line: ``set`` would
    # rewrite it with the same text, after a walk of every header line (issue 16).
    if headers.lines("Content-Type") != [SDP]:
        headers.set("Content-Type", SDP)
    headers.set("Content-Length", str(len(body)))  # RFC 3261 §20.14


def strip_body(message: Message) -> None:
    message.body = b""
    message.headers.remove("Content-Type")
    message.headers.set("Content-Length", "0")


