"""What ``SipWebSocketServerProtocol`` assumes about Autobahn's internals, in one place.

Checked against Autobahn 26.11.1 (``autobahn/websocket/protocol.py`` and
``autobahn/twisted/websocket.py``); ``tests/test_ws_autobahn_shim.py`` reads Autobahn's
source at test time and fails, naming the method, as soon as one of these assumptions stops
holding.  Three savings per connection, all of them invisible to Autobahn:

* **Handshake state** (``release_handshake``, called from ``onOpen``).  Autobahn keeps the
  opening handshake's raw HTTP request and response, the parsed request, and a copy of every
  handshake-only factory option in each protocol instance for the whole life of the
  connection, but reads them only in ``_connectionMade``, ``processHandshake`` and
  ``succeedHandshake``, which are over when ``onOpen`` runs.  Dropping them and rebuilding the
  instance dict (CPython never shrinks a dict in place) takes it from 96 keys in a 256-slot
  table to a 128-slot one: about 2.5 KiB per idle connection with the handshake data
  (``benchmarks/w2_register.py``).  Should Autobahn read one after all, a class attribute of
  that name (``_HandshakeOnly``) gives the factory's option or an empty value rather than an
  ``AttributeError``.
* **The write queue** (``send_queue``).  Autobahn gives every connection a deque (760 bytes)
  for the writes it queues when asked for ``sync`` or ``chopsize`` sends; epcscf never asks
  for either, so the queue stays empty for the connection's life.  An empty queue is kept as
  nothing and read as an empty tuple: Autobahn only takes its ``len()`` then, and an append
  (a sync/chopped send, which nothing here makes) fails loudly instead of sharing a queue
  between connections.
* **Reads** (``dataReceived``).  Autobahn's own ``dataReceived`` only adds a debug log call
  whose arguments are built on every read even when debug is off (~1.5 % of the CPU of a
  registration, ``benchmarks/w2_register.py``); this one goes straight to ``_dataReceived``.
* **Frames** (``dataReceived``, ``send_data_frame``).  An open connection's whole, final,
  masked text or binary frames (every SIP message a WIC sends, RFC 7118 §5) are read by
  ``epcscf.ws.frames`` and handed to ``onMessage`` directly; whatever else arrives (control
  frames, fragments, partial or faulty frames) goes through Autobahn's state machine, which
  answers it as RFC 6455 says.  A message is sent as one frame written to the transport when
  no Autobahn option would change that frame (masking, fragmentation, compression, size
  limit).  This skips Autobahn's per-frame objects, hooks and debug-log arguments (about 5 %
  of the CPU of a registration, ``docs/performance.md``); Autobahn's ``trafficStats`` then
  count only the frames it handled itself (nothing here reads them).
"""

from __future__ import annotations

from typing import Any, Callable

from epcscf.sip.tcp_write import write_now
from epcscf.ws.frames import data_frame, read_data_frame

__all__ = ["AUTOBAHN_CHECKED", "HANDSHAKE_ONLY_ATTRIBUTES", "LeanAutobahnProtocol"]

#: the Autobahn release whose source these assumptions were read from
AUTOBAHN_CHECKED = "26.11.1"

#: attributes of an Autobahn server protocol read only during the opening handshake
HANDSHAKE_ONLY_ATTRIBUTES = (
    "http_headers", "http_request_data", "http_response_data", "http_status_line", "http_request_uri",
    "http_request_host", "http_request_path", "http_request_params", "_wskey", "websocket_protocols",
    "websocket_extensions", "websocket_origin", "versions", "webStatus", "allowedOrigins",
    "allowedOriginsPatterns", "allowNullOrigin", "maxConnections", "trustXForwardedFor",
    "serveFlashSocketPolicy", "flashSocketPolicy", "perMessageCompressionAccept", "openHandshakeTimeout",
)

_EMPTY_HANDSHAKE_VALUES: dict[str, Any] = {
    "http_headers": {}, "http_request_data": b"", "http_response_data": b"", "http_status_line": "",
    "http_request_uri": "", "http_request_host": "", "http_request_path": "", "http_request_params": {},
    "websocket_protocols": [], "websocket_extensions": [],
}


class _HandshakeOnly:
    """A handshake-only attribute once ``release_handshake`` dropped it from the instance: the
    factory's option of that name, or an empty value.  Not a data descriptor, so the
    instance's own value is read while it has one (during the handshake).  One per name
    rather than a ``__getattr__`` on the class: that would make every attribute read of a
    connection go through the slower hook (and keep the interpreter from specialising it)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        name = self.name
        factory = instance.__dict__.get("factory")
        if factory is not None and hasattr(factory, name):
            return getattr(factory, name)
        return _EMPTY_HANDSHAKE_VALUES.get(name)


class LeanAutobahnProtocol:
    """Mix in before Autobahn's ``WebSocketServerProtocol``; call ``release_handshake`` in ``onOpen``."""

    _dataReceived: Callable[[bytes], None]  # Autobahn's framing entry point (WebSocketProtocol)
    # Autobahn's (WebSocketProtocol) state read by the frame fast path
    STATE_OPEN: int
    state: int
    data: bytes
    current_frame: Any
    inside_message: bool
    _perMessageCompress: Any
    maxFramePayloadSize: int
    maxMessagePayloadSize: int
    autoFragmentSize: int
    maskServerFrames: bool
    autoPingTimeoutCall: Any
    autoPingRestartOnAnyTraffic: bool
    _cancelAutoPingTimeoutCall: Callable[[], None]
    transport: Any
    onMessage: Callable[[bytes, bool], None]
    sendMessage: Callable[..., None]

    def release_handshake(self) -> None:
        attributes = self.__dict__
        for name in HANDSHAKE_ONLY_ATTRIBUTES:
            attributes.pop(name, None)
        self.__dict__ = dict(attributes)

    @property
    def send_queue(self) -> Any:
        queue = self.__dict__.get("_queued_writes")
        return queue if queue is not None else ()

    @send_queue.setter
    def send_queue(self, queue: Any) -> None:
        self.__dict__["_queued_writes"] = queue if len(queue) else None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if (
            self.state == self.STATE_OPEN
            and self.current_frame is None
            and not self.inside_message
            and not self.data
            and self._perMessageCompress is None
        ):
            data = self._read_whole_frames(data)
            if not data:
                return
        self._dataReceived(data)

    def _read_whole_frames(self, data: bytes) -> bytes:
        """Deliver the whole data frames at the start of ``data``; return what is left."""
        frame_limit, message_limit = self.maxFramePayloadSize, self.maxMessagePayloadSize
        limit = min(frame_limit, message_limit) if frame_limit > 0 and message_limit > 0 else frame_limit or message_limit
        start = 0
        while True:
            frame = read_data_frame(data, start, limit)
            if frame is None:
                break
            start = frame.end
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()  # traffic proves the peer alive, as in Autobahn's onFrameEnd
            self.onMessage(frame.payload, frame.binary)
            if start == len(data) or self.state != self.STATE_OPEN:
                break  # a close started from inside: Autobahn handles the rest in its new state
        return data[start:] if start else data

    def send_data_frame(self, payload: bytes, binary: bool) -> None:
        """Send one message as one frame (the caller has checked the connection is open)."""
        size = len(payload)
        if (
            self.maskServerFrames
            or self._perMessageCompress is not None
            or 0 < self.autoFragmentSize < size
            or 0 < self.maxMessagePayloadSize < size
        ):
            self.sendMessage(payload, isBinary=binary)  # Autobahn's options apply (or it refuses)
            return
        write_now(self.transport, data_frame(payload, binary))


for _name in HANDSHAKE_ONLY_ATTRIBUTES:
    setattr(LeanAutobahnProtocol, _name, _HandshakeOnly(_name))
del _name
