"""An in-process flow between the eP-CSCF and the SIP user agent it runs for a non-SIP WIC.

TS 24.371 §7.2.1 lets a WIC speak "non-SIP" to the eP-CSCF; the eP-CSCF is then the SIP UA
toward the IMS core on the WIC's behalf.  That UA reaches the rest of the P-CSCF exactly as a
SIP WIC does: over one RFC 5626 flow, here a pair of in-process ends instead of a WebSocket.
``FlowPair.pcscf_end`` is the ``Connection`` the P-CSCF sees (transport ``WS``, RFC 7118 §5:
it is a WIC-facing flow, Path and flow tokens and all); ``FlowPair.ua_end`` is the one the
UA's transaction layer sends on.  Every message crosses as octets and is parsed again on the
other side, on a later reactor turn, so neither side can share or re-enter the other's
objects, and the P-CSCF applies the same parser limits as to any WIC.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.logger import Logger

from epcscf.sip.connection import Address, ConnectionLost
from epcscf.sip.message import Message
from epcscf.sip.parser import SipParseError, parse_message
from epcscf.ws.connection import CloseReason, new_connection_id

__all__ = ["FlowPair", "FlowSink", "PipeEnd"]

log = Logger(namespace="epcscf.pcscf.nonsip")


class FlowSink(Protocol):
    """Where the P-CSCF takes WIC flows in (``epcscf.pcscf.node``'s WebSocket sink)."""

    def connection_opened(self, connection: Any) -> None: ...

    def message_received(self, message: Message, connection: Any) -> None: ...

    def connection_closed(self, connection: Any, reason: CloseReason) -> None: ...


class PipeEnd:
    """One end of the pair: a SIP ``Connection`` whose messages arrive at the other end."""

    # RFC 7118 §5: a WebSocket flow is reliable (RFC 3261 Table 4 timers).
    reliable = True

    def __init__(self, local: Address, remote: Address, origin: str | None, opened: float, transport: str = "WS") -> None:
        #: "WSS" when the WIC's Janus WebSocket is TLS: what the P-CSCF and operations see
        self.transport = transport
        self.local = local
        self.remote = remote
        self.origin = origin
        self.opened = opened
        self.id = new_connection_id("ws")
        #: what the WIC's handshake token granted (``epcscf.pcscf.web_auth``), as a WebSocket's
        self.credentials: object | None = None
        self.closed_reason: CloseReason | None = None
        self.messages_sent = 0
        self.messages_received = 0
        self.deliver: Callable[[bytes], None] = lambda octets: None
        #: what ``close`` asks for (the pair ends both ends)
        self.on_close: Callable[[int, str], None] = lambda code, reason: None

    def __repr__(self) -> str:
        return f"<PipeEnd {self.id} {'open' if self.connected else 'closed'}>"

    @property
    def connected(self) -> bool:
        return self.closed_reason is None

    def send_message(self, message: Message) -> None:
        if not self.connected:
            raise ConnectionLost(f"{self.id} is closed ({self.closed_reason})")
        self.messages_sent += 1
        self.deliver(message.serialize())

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Operations (disconnect a flow) or a rate limit ending this flow, like a WebSocket close."""
        if self.connected:
            self.on_close(code, reason)


class FlowPair:
    """The P-CSCF end and the UA end of one non-SIP WIC's flow."""

    def __init__(
        self,
        reactor: Any,
        sink: FlowSink,
        ua_receive: Callable[[Message, PipeEnd], None],
        local: Address,
        remote: Address,
        origin: str | None,
        on_lost: Callable[[str], None] = lambda reason: None,
        transport: str = "WS",
        credentials: object | None = None,
    ) -> None:
        self._reactor = reactor
        self._sink = sink
        self._ua_receive = ua_receive
        now = reactor.seconds()
        self.pcscf_end = PipeEnd(local, remote, origin, now, transport)
        self.ua_end = PipeEnd(remote, local, origin, now, transport)
        self.pcscf_end.credentials = credentials
        self.pcscf_end.deliver = lambda octets: reactor.callLater(0, self._to_ua, octets)
        self.ua_end.deliver = lambda octets: reactor.callLater(0, self._to_pcscf, octets)
        #: told when the P-CSCF side ends the flow (not when the UA does)
        self._on_lost = on_lost
        self.pcscf_end.on_close = self._closed_by_pcscf
        sink.connection_opened(self.pcscf_end)

    @property
    def open(self) -> bool:
        return self.pcscf_end.connected

    def _to_pcscf(self, octets: bytes) -> None:
        if not self.pcscf_end.connected:
            return
        message = self._parse(octets)
        if message is not None:
            self.pcscf_end.messages_received += 1
            self._sink.message_received(message, self.pcscf_end)

    def _to_ua(self, octets: bytes) -> None:
        if not self.ua_end.connected:
            return
        message = self._parse(octets)
        if message is not None:
            self.ua_end.messages_received += 1
            self._ua_receive(message, self.ua_end)

    def _parse(self, octets: bytes) -> Message | None:
        try:
            return parse_message(octets)
        except SipParseError as error:  # our own UA wrote it: a defect, logged, never raised
            log.error("non-SIP flow {flow}: unparsable message dropped: {error}", flow=self.pcscf_end.id, error=error)
            return None

    def _closed_by_pcscf(self, code: int, reason: str) -> None:
        self.close(f"closed by the eP-CSCF ({code} {reason})".strip())
        self._on_lost(reason)

    def close(self, reason: str) -> None:
        """End the flow: the P-CSCF fails its registrations and calls (RFC 5626 §5.3.1)."""
        if not self.pcscf_end.connected:
            return
        close = CloseReason(1000, reason, clean=True, by_us=True)
        self.pcscf_end.closed_reason = close
        self.ua_end.closed_reason = close
        self._sink.connection_closed(self.pcscf_end, close)
