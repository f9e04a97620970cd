"""Stateless forwarding of a retransmission without working it out again (RFC 3261 §16.11).

Theory of operation
-------------------
Two kinds of message cross the proxy without a transaction: a 2xx to an INVITE that its client
transaction no longer takes (a retransmission by the UAS, RFC 3261 §13.3.1.4, §16.7 step 1) and the
ACK for a 2xx (§13.2.2.4, a transaction of its own).  When the UAS does not get the ACK within T1 it
retransmits its 2xx, and the UAC answers each copy with the same ACK again; every copy, byte for
byte the one before it, used to be parsed, matched, rewritten and forwarded in full.  A proxy that
is late makes the UAS retransmit, and the copies make it later still: at 400 calls/s a late edge
handled about 3 copies of each 200 and of each ACK instead of one (``docs/performance.md``, "400
calls/s: the two modes").

``StatelessReplays`` remembers, for a message forwarded at once (an ACK for a 2xx, a 2xx copy, and
the first 2xx to an INVITE, which the stateful proxy forwards through its server transaction), the
bytes it came in as (with where it came from) and the bytes it went out as (with where they went).  A transport
asks ``replay`` before parsing anything: an identical copy from the same peer is sent on as the same
bytes to the same connection, which is what forwarding it in full would do (§16.11: a stateless
proxy forwards a retransmission the same way, down to the branch).  What bounds it:

- an entry lives ``REPLAY_WINDOW`` (the span of the UAS's 2xx retransmissions, 64·T1 = 32 s,
  §13.3.1.4), and one timer forgets entries when their time is over, so nothing lingers after the
  traffic;
- at most ``ENTRIES`` entries (the oldest go first), and each is replayed at most
  ``REPLAYS_PER_ENTRY`` times: a peer that repeats a message more often than a UAS retransmits
  goes through the full path (and its guards) again;
- a connection that is gone (a WIC that reconnected on another flow) ends the entry: the copy then
  takes the full path, which finds the new flow.

Only a forward that happens while the transport is still handing over the message is remembered (a
decision that waits for a Deferred is not), only the first send for it, only the message itself (an
ACK for an ACK, a 2xx to an INVITE for a 2xx, same Call-ID), and not a 2xx whose body was taken out
(a copy that came before the answer toward the WIC was known: the next one must carry it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from epcscf.sip.connection import Connection, ConnectionLost
from epcscf.sip.headers import cseq
from epcscf.sip.message import Message, Request

#: RFC 3261 §13.3.1.4: a UAS retransmits its 2xx for 64·T1 (T1 = 500 ms).
REPLAY_WINDOW = 32.0
#: More copies than a UAS sends in REPLAY_WINDOW (T1 doubling to T2 = 4 s: 10 in 32 s).
REPLAYS_PER_ENTRY = 10
#: Entries kept at most (an entry holds the message twice, about 2 KiB).
ENTRIES = 2048


@dataclass
class _Entry:
    # No bound ``send`` kept (``raw_sender`` again on a replay, which is rare): one object fewer
    # per entry for the collector to traverse for 32 s (docs/performance.md, "The collector's
    # share of a call").
    connection: Connection
    payload: bytes
    expires: float
    replays_left: int


def raw_sender(connection: Connection) -> Callable[[bytes], None] | None:
    """How to send bytes already serialised on ``connection`` (UDP: ``send_bytes``; WebSocket:
    ``send_raw``); None for a connection that has neither (it is not remembered)."""
    sender = getattr(connection, "send_bytes", None) or getattr(connection, "send_raw", None)
    return sender if callable(sender) else None


def _is_2xx_to_invite(response: Message) -> bool:
    try:
        sequence = cseq(response)
    except ValueError:
        return False
    return sequence is not None and sequence.method == "INVITE"


class StatelessReplays:
    """Copies of statelessly forwarded messages, sent on as they were the first time."""

    def __init__(self, clock: IReactorTime, window: float = REPLAY_WINDOW, entries: int = ENTRIES) -> None:
        self._clock = clock
        self._window = window
        self._limit = entries
        # Oldest first (the same window for all), and dropped from the front: an OrderedDict, as a
        # dict whose first items keep being deleted walks past their empty slots at every ``next(iter())``.
        self._entries: OrderedDict[tuple[bytes, Hashable], _Entry] = OrderedDict()
        self._receiving: tuple[bytes, Hashable] | None = None
        self._expiry: IDelayedCall | None = None
        self.replayed = 0  # copies sent on from here (for tests and the benchmark's counts)

    def __len__(self) -> int:
        return len(self._entries)

    # --- from the transports ---------------------------------------------------------------

    def replay(self, raw: bytes, source: Hashable) -> bool:
        """Send on a copy of a message already forwarded statelessly; False when ``raw`` from
        ``source`` is not one (the transport then parses it and hands it over as usual)."""
        entries = self._entries
        if not entries:
            return False  # nothing kept (no 2xx to an INVITE or ACK lately): no hash of ``raw`` needed
        key = (raw, source)
        entry = entries.get(key)
        if entry is None:
            return False
        if entry.replays_left <= 0 or entry.expires <= self._clock.seconds() or not entry.connection.connected:
            del self._entries[key]
            return False
        send = raw_sender(entry.connection)
        if send is None:
            del self._entries[key]
            return False
        entry.replays_left -= 1
        try:
            send(entry.payload)
        except ConnectionLost:
            del self._entries[key]
            return False  # the full path decides where it goes now
        self.replayed += 1
        return True

    def receiving(self, raw: bytes, source: Hashable) -> None:
        """The transport is handing over ``raw`` from ``source`` (until ``received``)."""
        self._receiving = (raw, source)

    def received(self) -> None:
        self._receiving = None

    # --- from the stateless forwarder ------------------------------------------------------

    def send(self, message: Message, connection: Connection) -> None:
        """Send ``message`` (the one being received, forwarded statelessly) on ``connection``,
        serialised once for the wire and for its copies."""
        sender = raw_sender(connection)
        if sender is None or self._receiving is None:
            connection.send_message(message)
            self.forwarded(message, connection)
            return
        payload = message.serialize()
        sender(payload)
        self.forwarded(message, connection, payload)

    def forwarded(self, message: Message, connection: Connection, payload: bytes | None = None) -> None:
        """``message`` (the one being received, forwarded statelessly) was sent on ``connection``
        (as ``payload``, when the caller has it)."""
        key = self._receiving
        if key is None:
            return  # forwarded later (a Deferred), or not while a transport hands one over
        self._receiving = None  # only the first send for one message received
        raw = key[0]
        # The very message received, not another one its handling sent (an ACK of ours to a late 2xx).
        if not raw.startswith(b"ACK " if isinstance(message, Request) else b"SIP/2.0 2"):
            return
        if not isinstance(message, Request) and not _is_2xx_to_invite(message):
            return  # a UAS retransmits only its 2xx to an INVITE without being asked (§13.3.1.4)
        call_id = message.headers.get("call-id")
        if not call_id or call_id.encode("utf-8", "replace") not in raw:
            return
        if not message.body and raw.find(b"\r\n\r\n") + 4 < len(raw):
            # Its body was taken out (a 2xx copy that came before the answer toward the WIC was
            # known goes on without SDP, call_sdp): the next copy is worked out again.
            return
        if raw_sender(connection) is None:
            return
        entries = self._entries
        now = self._clock.seconds()
        self._forget_expired(now)
        while len(entries) >= self._limit:
            entries.popitem(last=False)
        if payload is None:
            payload = message.serialize()
        entries[key] = _Entry(connection, payload, now + self._window, REPLAYS_PER_ENTRY)
        if self._expiry is None:
            self._expiry = self._clock.callLater(self._window, self._expire)

    # --- time ------------------------------------------------------------------------------

    def _forget_expired(self, now: float) -> None:
        entries = self._entries
        while entries:
            key = next(iter(entries))
            if entries[key].expires > now:
                return
            entries.popitem(last=False)

    def _expire(self) -> None:
        self._expiry = None
        self._forget_expired(self._clock.seconds())
        if self._entries:
            oldest = next(iter(self._entries.values()))
            self._expiry = self._clock.callLater(max(0.0, oldest.expires - self._clock.seconds()), self._expire)

    def close(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self._entries.clear()

    def __repr__(self) -> str:
        return f"<StatelessReplays {len(self._entries)} entries, {self.replayed} replayed>"

