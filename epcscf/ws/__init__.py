"""SIP over WebSocket (RFC 7118): the WIC-facing transport.  Knows only ``epcscf.sip``."""

from epcscf.ws.connection import CloseReason, WsConnection
from epcscf.ws.protocol import (
    MessageSink,
    SipWebSocketServerFactory,
    SipWebSocketServerProtocol,
    WsListenerSettings,
    listen_ws,
    normalise_origin,
)

__all__ = [
    "CloseReason",
    "MessageSink",
    "SipWebSocketServerFactory",
    "SipWebSocketServerProtocol",
    "WsConnection",
    "WsListenerSettings",
    "listen_ws",
    "normalise_origin",
]
