"""What the SIP layer knows of a transport: a connection that carries messages.

Every transport (UDP, TCP, TLS here; WebSocket in ``epcscf.ws``) hands whole
messages to the transaction layer together with the ``Connection`` they came in
on, and the transaction layer sends through a ``Connection``.  For UDP a
connection is the pair (our socket, the peer's address).  The proxy core never
learns more about a transport than this protocol exposes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from epcscf.sip.message import Message

# RFC 7118 §5: the Via transport tokens of SIP over WebSocket (WSS: over TLS).  A
# connection with one of these is a WIC's flow; every layer asks this set.
WEBSOCKET_TRANSPORTS = frozenset({"WS", "WSS"})
# RFC 3261 §18 / RFC 7118 §5: transports whose connections are reliable need no
# retransmission timers (RFC 3261 Table 4, §17.1.1.2, §17.1.2.2).
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP"}) | WEBSOCKET_TRANSPORTS


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@runtime_checkable
class Connection(Protocol):
    """One path to one peer over one transport."""

    #: "UDP", "TCP", "TLS", "WS" or "WSS" (the Via transport token, RFC 3261 §20.42, RFC 7118 §5.2)
    transport: str
    #: our side and the peer's side of the path
    local: Address
    remote: Address
    #: a stable identifier for the path; RFC 5626 flow tokens are derived from it
    id: str

    @property
    def reliable(self) -> bool: ...

    @property
    def connected(self) -> bool:
        """False once the underlying connection is gone (RFC 5626 flow failed)."""

    def send_message(self, message: Message) -> None:
        """Send one whole message; raises ``ConnectionLost`` if the path is gone."""

    def close(self) -> None: ...


class ConnectionLost(Exception):
    """Raised by ``send_message`` on a connection that no longer exists."""
