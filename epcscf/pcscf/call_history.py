"""The ended-call history: what the console and ``/metrics`` show of calls that are over.

Theory of operation
-------------------
The call manager hands each call here when it ends (``add``).  A call that got a 2xx is kept
``CallSettings.keep_ended`` seconds, one that never did ``keep_unanswered`` (at most as long):
refused, cancelled and garbage INVITEs are most of a fuzz burst.  One reactor timer, armed for
the first call due, forgets them, so after the last call the history empties by itself (pruning
only when the next call ends would keep the last busy minutes for ever).

At the next look at the history once its media has closed (the final response of a call is noted
just after it ends, an engine's last totals come with its close) each call is replaced by an
``EndedCall``: its summary, media statistics (as plain data) and dialog tags in one bytes
object (``marshal``), its timeline in another (``PackedTimeline``), and the one SDP answer a retransmitted 2xx must
carry again (RFC 3261 §13.3.1.4).  A live ``Call`` with its ``Dialog``, two ``Party``, the media
statistics and the timeline entries is ~30 objects allocated all over the heap while the call
ran; kept for ten minutes after a burst they sat on the pages the burst added and kept them
from going back to the system (docs/performance.md, "What pins a fuzz burst's memory").  The
record is four objects, allocated when the call ends.

A call released early whose dialog never got its 2xx stays whole: a 2xx racing the release
must still be ACKed and BYEd through its dialog (RFC 3261 §9.1, §15).  Such calls are rare.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import json
import marshal
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from epcscf.pcscf.call_model import Call, CallSettings, PackedTimeline
from epcscf.pcscf.call_state import ORIGINATING, TERMINATING, CallDirection, CallState
from epcscf.sip.message import Message
from epcscf.sip.uri import UriError, parse_name_addr

__all__ = ["CallHistory", "EndedCall", "EndedDialog"]


def _tag_of(value: str) -> str | None:
    try:
        return parse_name_addr(value).tag
    except UriError:
        return None


class EndedDialog:
    """What a stray 2xx asks of an ended call's dialog (``Dialog.matches``): whether it was
    confirmed and its two tags.  Built on demand from the record."""

    __slots__ = ("confirmed", "_tags")

    def __init__(self, confirmed: bool, tags: set[str | None]) -> None:
        self.confirmed = confirmed
        self._tags = tags

    def matches(self, message: Message) -> bool:
        """True when the message's tags are this dialog's (another fork's 2xx is not)."""
        if not self.confirmed:
            return True
        tags = {_tag_of(message.headers.get("From") or ""), _tag_of(message.headers.get("To") or "")}
        return tags == self._tags


# Positions in an ``EndedCall``'s packed record (a list).
_SUMMARY, _STATE, _MEDIA, _DIALOG = range(4)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_LEAVES = frozenset((str, int, float, bool, type(None)))


def _json_key(key: Any) -> str:
    """A dict key as ``json`` writes it (and reads it back): a str as it is, a number or
    None as its JSON text."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _plain(value: Any) -> Any:
    """The media statistics (dicts of dataclasses, enums, tuples) as the plain data ``json``
    would write and read back: a dataclass as a dict of its fields, an enum as its value, a
    tuple as a list, a dict key as JSON text, anything else unknown as its str.  The record is
    then ``marshal``led (floats as 8 bytes instead of their shortest decimal: ``json.dumps`` of
    an ended call's record was ~220,000 instructions, 2.4 % of a call's whole edge, issue 16).
    ``tests.test_call_history`` checks it against ``json`` and the old Python walk."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is dict:
        items = value.items()
    else:
        names = _FIELD_NAMES.get(kind)
        if names is None:
            return _plain_other(value)
        # A plain dataclass's instance dict holds its fields in their order: read it in C
        # rather than a getattr each (one with slots, or with more in its dict, is read by name).
        state = getattr(value, "__dict__", None)
        items = state.items() if state is not None and tuple(state) == names else \
            ((name, getattr(value, name)) for name in names)
    # Leaves (most of it: counters, times, states) without a call each.
    return {key if type(key) is str else _json_key(key): item if type(item) in _LEAVES else _plain(item)
            for key, item in items}


def _plain_other(value: Any) -> Any:
    """``_plain`` of what is neither a leaf, a dict nor a dataclass seen before."""
    kind = type(value)
    if kind is tuple or kind is list:
        return [_plain(item) for item in value]
    # What json writes without its ``default``, in its order: a subclass of str, int or float
    # (a str- or int-valued enum) as the plain value, of list, tuple or dict as one.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return _plain(dict(value))
    if dataclasses.is_dataclass(kind):
        _FIELD_NAMES[kind] = tuple(field.name for field in dataclasses.fields(kind))
        return _plain(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    return str(value)


class EndedCall:
    """An ended call as the history keeps it: read like a ``Call`` by the console, ``/metrics``
    (``call_view``) and a stray 2xx (``CallManager.stray_response``), and nothing more."""

    __slots__ = ("call_id", "ended_at", "timeline", "timeline_limit", "clock", "_packed", "_answer", "__weakref__")

    released_early = False  # such a call is kept whole (see the module docstring)
    media = None

    def __init__(self, call: Call) -> None:
        self.call_id = call.call_id
        self.ended_at = call.ended_at
        call.pack()
        assert isinstance(call.timeline, PackedTimeline)
        #: shared with the ``Call``: a note made on it after this record was made still shows
        self.timeline: PackedTimeline = call.timeline
        self.timeline_limit = call.timeline_limit
        self.clock = call.clock
        stats = call.media_stats
        dialog = call.dialog
        self._packed = marshal.dumps([
            _plain(call.summary()),
            call.state._value_,
            # streams as [index, stream] pairs, as the JSON record of before had them
            [[index, _plain(stream)] for index, stream in stats.items()] if isinstance(stats, dict) else _plain(stats),
            None if dialog is None else [dialog.confirmed, dialog.wic.tag, dialog.core.tag],
        ])
        # RFC 3261 §13.3.1.4: the only answer ``call_sdp.repeat_answer_in_retransmission`` reads
        originating = call.direction is ORIGINATING
        self._answer = call.last_wic_answer if originating else call.last_core_answer

    def _unpacked(self, position: int) -> Any:
        return marshal.loads(self._packed)[position]

    def summary(self) -> dict[str, Any]:
        return dict(self._unpacked(_SUMMARY))

    @property
    def direction(self) -> CallDirection:
        return CallDirection(self._unpacked(_SUMMARY)["direction"])

    @property
    def created(self) -> float:
        return float(self._unpacked(_SUMMARY)["created"])

    @property
    def state(self) -> CallState:
        return CallState(self._unpacked(_STATE))

    @property
    def release_cause(self) -> str | None:
        return self._unpacked(_SUMMARY)["cause"]  # type: ignore[no-any-return]

    @property
    def failing_layer(self) -> str | None:
        return self._unpacked(_SUMMARY)["layer"]  # type: ignore[no-any-return]

    @property
    def media_stats(self) -> Any:
        """The call's last media statistics (``Call.media_stats``), dataclasses read back as dicts."""
        stats = self._unpacked(_MEDIA)
        return {index: stream for index, stream in stats} if isinstance(stats, list) else stats

    @property
    def dialog(self) -> EndedDialog | None:
        packed = self._unpacked(_DIALOG)
        if packed is None:
            return None
        confirmed, wic_tag, core_tag = packed
        return EndedDialog(confirmed, {wic_tag, core_tag})

    @property
    def last_wic_answer(self) -> bytes | None:
        return self._answer if self.direction is ORIGINATING else None

    @property
    def last_core_answer(self) -> bytes | None:
        return self._answer if self.direction is TERMINATING else None

    def note(self, kind: str, text: str) -> None:
        self.timeline.add(self.clock.seconds(), kind, text, self.timeline_limit)

    def __repr__(self) -> str:
        return f"<EndedCall {self.call_id} {self.summary()['cause_code']}>"


HistoryEntry = Call | EndedCall


def _kept_whole(call: Call) -> bool:
    """A call a racing 2xx must still ACK and BYE through its dialog (RFC 3261 §9.1, §15)."""
    return call.released_early and call.dialog is not None and not call.dialog.confirmed


class CallHistory:
    """Ended calls, oldest first, kept for the console (see the module docstring)."""

    def __init__(self, clock: IReactorTime, settings: Callable[[], CallSettings]) -> None:
        self._clock = clock
        #: read at each use: the call manager's settings may be replaced
        self._settings = settings
        #: answered calls (kept ``keep_ended``) and the others (``keep_unanswered``), oldest first
        self._answered: collections.OrderedDict[int, HistoryEntry] = collections.OrderedDict()
        self._unanswered: collections.OrderedDict[int, HistoryEntry] = collections.OrderedDict()
        #: the calls of both by Call-ID, oldest end first: a stray 2xx looks its call up here
        #: instead of walking ``keep_ended`` seconds of history (600 s × the call rate)
        self._by_call_id: dict[str, list[HistoryEntry]] = {}
        #: calls ended since the history was last looked at, not yet compacted: the final
        #: response of a call is noted just after it ends
        self._to_compact: list[tuple[collections.OrderedDict[int, HistoryEntry], int, defer.Deferred | None]] = []
        self._pruning: IDelayedCall | None = None
        #: history keys: not ``id(call)``, which a new call reuses once a compacted one is freed
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._answered) + len(self._unanswered)

    def add(self, call: Call, media_closed: defer.Deferred | None = None) -> None:
        """``call`` has just ended (``ended_at`` set); ``media_closed`` fires once its media has
        closed (an engine may note its last totals then): it is not compacted before."""
        self.prune()
        answered = call.dialog is not None and call.dialog.confirmed
        history = self._answered if answered else self._unanswered
        number = next(self._numbers)
        history[number] = call
        self._by_call_id.setdefault(call.call_id, []).append(call)
        self._to_compact.append((history, number, media_closed))
        if media_closed is not None and not media_closed.called:
            media_closed.addBoth(self._media_closed)
        self._arm_pruning()

    def _media_closed(self, result: object) -> object:
        # Compact as soon as the media is closed, not at the next look at the history: that may
        # be ``keep_ended`` seconds away, and a whole call kept that long sits on the pages of
        # the burst it ended in (39 of them after a 1,000,000-message fuzz run).
        if self._to_compact:
            self._compact()
        return result  # the closing's own result goes on down its chain

    def calls(self) -> list[HistoryEntry]:
        """Every kept call, by the time it ended."""
        self.prune()
        return sorted([*self._answered.values(), *self._unanswered.values()], key=lambda call: call.ended_at or 0.0)

    def with_call_id(self, call_id: str) -> list[HistoryEntry]:
        return list(self._by_call_id.get(call_id, ()))

    def clear(self) -> None:
        """Forget every ended call (benchmarks' probes, after a run)."""
        self._answered.clear()
        self._unanswered.clear()
        self._by_call_id.clear()
        self._to_compact.clear()

    def close(self) -> None:
        if self._pruning is not None and self._pruning.active():
            self._pruning.cancel()
        self._pruning = None

    # --- compaction and pruning ----------------------------------------------------------

    def _compact(self) -> None:
        waiting = []
        for history, key, media_closed in self._to_compact:
            call = history.get(key)
            if not isinstance(call, Call):
                continue  # already pruned
            if media_closed is not None and not media_closed.called:
                waiting.append((history, key, media_closed))
                continue
            if _kept_whole(call):
                call.pack()
                continue
            record = EndedCall(call)
            history[key] = record
            siblings = self._by_call_id.get(call.call_id, [])
            for position, known in enumerate(siblings):
                if known is call:
                    siblings[position] = record
        self._to_compact = waiting

    def _histories(self) -> tuple[tuple[collections.OrderedDict[int, HistoryEntry], float], ...]:
        """Each history, oldest first, with how long it keeps a call."""
        settings = self._settings()
        keep = settings.keep_ended
        return (self._answered, keep), (self._unanswered, min(keep, settings.keep_unanswered))

    def prune(self) -> None:
        """Compact the calls ended since the last look and forget those kept long enough."""
        if self._to_compact:
            self._compact()
        now = self._clock.seconds() + 1e-6  # the timer's own arithmetic may round a hair early
        for history, keep in self._histories():
            while history:
                key, oldest = next(iter(history.items()))
                if oldest.ended_at is not None and oldest.ended_at + keep > now:
                    break
                del history[key]
                self._forget(oldest)

    def _forget(self, call: HistoryEntry) -> None:
        calls = self._by_call_id.get(call.call_id, [])
        for position, known in enumerate(calls):
            if known is call:
                del calls[position]
                break
        if not calls:
            self._by_call_id.pop(call.call_id, None)

    def _arm_pruning(self) -> None:
        """One timer for the whole history: due when the first ended call expires."""
        dues = [(next(iter(history.values())).ended_at or 0.0) + keep for history, keep in self._histories() if history]
        if not dues:
            return
        due = min(dues)
        if self._pruning is not None:
            if self._pruning.getTime() <= due:
                return
            self._pruning.cancel()  # an unanswered call ended: due before the oldest answered one
        self._pruning = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._pruning_due)

    def _pruning_due(self) -> None:
        self._pruning = None
        self.prune()
        self._arm_pruning()
