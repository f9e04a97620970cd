"""Write to a plain TCP connection at once when nothing is queued ahead of the data.

Twisted's ``FileDescriptor.write`` always queues: the socket is added to the reactor as a
writer, the data goes out on the next loop turn (``doWrite``) and the writer is removed
again: two ``epoll_ctl`` calls, a loop dispatch and its context wrappers per message.  A
proxy answers or forwards one message per connection per turn, so the queue is empty almost
always, and a ``send`` now puts the same octets on the wire in the same order.  Anything
unusual (TLS, data already queued, a producer, a half-closed or closing transport, a short
or failed send) goes through Twisted's ``write`` as before, which keeps its error handling.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

__all__ = ["write_now"]


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending at once when that cannot reorder or lose anything."""
    # A plain TCP connection with nothing queued, not closing, no producer: send now.
    if not (
        data
        and isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and transport.producer is None
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # Twisted's doWrite meets the error again and closes the connection
        return
    if sent < len(data):
        transport.write(data[sent:])
