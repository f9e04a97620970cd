"""Write a whole message to a TCP connection now, when nothing is queued before it.

Twisted queues every ``transport.write`` and sends it on a later reactor turn: it asks the
poller to watch the socket for writability, sends when told, then stops watching — two
``epoll_ctl`` calls, one more loop turn and its callbacks for every message.  A SIP message
(or the WebSocket frame holding one) is a few hundred bytes and almost always fits in the
socket's send buffer, so when Twisted has nothing queued for the connection we hand the
bytes to the kernel at once and queue only what it did not take.  Ordering is kept: with
anything already queued, the bytes go behind it through ``transport.write``.

Only plain TCP connections of the POSIX reactors are written this way; TLS (its records
are produced by the TLS layer) and any other transport take the ordinary path.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but sent before returning when nothing is queued."""
    if (
        type(transport) not in (tcp.Server, tcp.Client)
        or transport.TLS
        or not transport.connected
        or transport.disconnecting
        or getattr(transport, "_tempDataBuffer", True)
        or len(getattr(transport, "dataBuffer", b"?")) > getattr(transport, "offset", 0)
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # A reset or closed peer: let Twisted meet the error on its own write path and
        # close the connection the usual way (connectionLost with the reason).
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])
