"""One SIP WebSocket connection as the SIP layer sees it (RFC 7118 §5, RFC 5626 flows).

``WsConnection`` implements ``epcscf.sip.connection.Connection`` on top of an Autobahn
server protocol: the transaction layer and the P-CSCF only ever see this object, never
Autobahn.  It also carries what the P-CSCF needs to know about the WebSocket itself: the
browser Origin and when the connection was opened.  Each ``WsConnection`` is one RFC 5626
flow (RFC 5626 §3.2); its ``id`` is what flow tokens are made of, so it is unique for the life of
the process and never reused across restarts (it carries a random boot id).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Protocol

from epcscf.sip.connection import WEBSOCKET_TRANSPORTS, Address, ConnectionLost
from epcscf.sip.message import Message

# Random per process: a connection id (and so a flow token) from before a restart can never
# name a connection of this process, even if the flow-token key is configured and survives.
BOOT_ID = secrets.token_hex(4)
_serial = itertools.count(1)


def new_connection_id(transport: str) -> str:
    """A process-unique connection id such as ``wss-1f3a9c0b-17`` (short: it ends up in a URI)."""
    return f"{transport.lower()}-{BOOT_ID}-{next(_serial)}"


class FrameSender(Protocol):
    """What ``WsConnection`` needs from the WebSocket protocol underneath."""

    def send_frame(self, payload: bytes, binary: bool) -> None: ...

    def close_websocket(self, code: int, reason: str) -> None: ...


class _Gone:
    """The sender of a closed connection.  Every send checks ``connected`` first, so this is
    not reached; it exists so that a closed ``WsConnection`` (still named by ended calls,
    transactions in their last timers, the console) no longer keeps the whole Autobahn
    protocol, its transport and buffers alive."""

    def send_frame(self, payload: bytes, binary: bool) -> None:
        raise ConnectionLost("the WebSocket is closed")

    def close_websocket(self, code: int, reason: str) -> None:
        pass


_GONE = _Gone()


@dataclass(frozen=True)
class CloseReason:
    """Why a WebSocket connection (a flow) ended.

    ``code`` is the WebSocket close code (RFC 6455 §7.4.1) that was sent or received, or
    1006 when the TCP connection went away without a closing handshake (peer vanished,
    ping timeout).  ``by_us`` tells whether this side decided to end it.
    """

    code: int | None
    reason: str
    clean: bool
    by_us: bool

    def __str__(self) -> str:
        who = "closed by us" if self.by_us else "closed by peer"
        code = f" code {self.code}" if self.code is not None else ""
        text = f": {self.reason}" if self.reason else ""
        return f"{who}{code}{text}"


# RFC 6455 §7.4.1 close codes used here
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutdown (RFC 6455 §7.4.1)


class WsConnection:
    """A SIP ``Connection`` over one WebSocket (transport ``WS`` or ``WSS``)."""

    # RFC 7118 §5: WebSocket is a reliable transport (RFC 3261 Table 4 reliable timers).
    reliable = True
    #: what the opening handshake's credentials granted (``epcscf.pcscf.web_auth``); set on the
    #: instance only when there were some (no cost per connection otherwise)
    credentials: object | None = None

    def __init__(
        self,
        sender: FrameSender,
        transport: str,
        local: Address,
        remote: Address,
        origin: str | None,
        opened: float,
    ) -> None:
        if transport not in WEBSOCKET_TRANSPORTS:
            raise ValueError(f"WebSocket transport must be WS or WSS, not {transport!r}")
        self._sender = sender
        self.transport = transport
        self.local = local
        self.remote = remote
        #: the browser's Origin header (normalised ``scheme://host:port``), None for non-browser clients
        self.origin = origin
        #: reactor time at which the WebSocket opening handshake completed
        self.opened = opened
        self.id = new_connection_id(transport)
        self.closed_reason: CloseReason | None = None
        self.messages_sent = 0
        self.messages_received = 0

    def __repr__(self) -> str:
        state = "open" if self.connected else f"closed ({self.closed_reason})"
        return f"<WsConnection {self.id} {self.transport} {self.remote} {state}>"

    @property
    def connected(self) -> bool:
        return self.closed_reason is None

    def send_message(self, message: Message) -> None:
        """Send one SIP message as one WebSocket message (RFC 7118 §5).

        RFC 7118 §4.2: a text frame when the message is valid UTF-8, otherwise
        a binary frame (a text frame must carry UTF-8, RFC 6455 §5.6).
        """
        if self.closed_reason is not None:  # ``connected``, inlined: every message sent
            raise ConnectionLost(f"{self.id} to {self.remote} is closed ({self.closed_reason})")
        self.send_raw(message.serialize())

    def send_raw(self, payload: bytes) -> None:
        """Send bytes as one WebSocket message (keep-alive answers, pre-serialised messages)."""
        if self.closed_reason is not None:
            raise ConnectionLost(f"{self.id} to {self.remote} is closed ({self.closed_reason})")
        binary = False
        if not payload.isascii():  # SIP is nearly always ASCII: skip the UTF-8 decode then
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                binary = True
        self._sender.send_frame(payload, binary)
        self.messages_sent += 1

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the WebSocket closing handshake (1000 normal, 1001 going away)."""
        if self.connected:
            self._sender.close_websocket(code, reason)

    def mark_closed(self, reason: CloseReason) -> None:
        """Called by the protocol once the WebSocket is gone; later sends raise ``ConnectionLost``."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self._sender = _GONE
