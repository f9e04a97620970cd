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
  (``benchmarks/w2_register.py``).  Should Autobahn read one after all, ``__getattr__`` gives
  the factory's option or an empty value rather than an ``AttributeError``.
* **The write queue** (``send_queue``).  Autobahn gives every connection a deque (760 bytes)
  for the writes it queues when asked for ``sync`` or ``chopsize`` sends; epcscf never asks
  for either, so the queue stays empty for the connection's life.  An empty queue is kept as
  nothing and read as an empty tuple: Autobahn only takes its ``len()`` then, and an append
  (a sync/chopped send, which nothing here makes) fails loudly instead of sharing a queue
  between connections.
* **Reads** (``dataReceived``).  Autobahn's own ``dataReceived`` only adds a debug log call
  whose arguments are built on every read even when debug is off (~1.5 % of the CPU of a
  registration, ``benchmarks/w2_register.py``); this one goes straight to ``_dataReceived``.
"""

from __future__ import annotations

from typing import Any, Callable

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


class LeanAutobahnProtocol:
    """Mix in before Autobahn's ``WebSocketServerProtocol``; call ``release_handshake`` in ``onOpen``."""

    _dataReceived: Callable[[bytes], None]  # Autobahn's framing entry point (WebSocketProtocol)

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

    def __getattr__(self, name: str) -> Any:
        # Reached only for a name the instance lacks.
        if name in HANDSHAKE_ONLY_ATTRIBUTES:
            factory = self.__dict__.get("factory")
            if factory is not None and hasattr(factory, name):
                return getattr(factory, name)
            return _EMPTY_HANDSHAKE_VALUES.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self._dataReceived(data)
