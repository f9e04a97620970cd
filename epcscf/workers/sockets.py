"""Sharing the WebSocket ports between worker processes; holding each worker's SIP ports.

Two ways, chosen by ``[service] ws_socket_sharing``:

``reuseport``
    every worker binds the same address and port with ``SO_REUSEPORT`` (Linux ≥ 3.9) and
    listens itself: the kernel hashes each new connection (addresses and ports) to one of
    the listening sockets, so connections spread evenly and a worker never accepts for
    another.  The supervisor holds the port with a bound, non-listening socket of its own
    (``reserve_reuseport``) so that it stays ours while a worker restarts, and so that
    port 0 in the ini becomes one port shared by all.
``inherit``
    the supervisor opens the listening socket and every worker adopts its descriptor
    (``adopt``): one accept queue, whichever worker wakes first takes the connection.

A worker's core-facing ``[sip]`` sockets (``sip_socket``) are bound by the supervisor too,
once, and handed to that worker and to every worker that replaces it.  The supervisor
keeps its copy and never reads it, so the port is never closed: while a killed worker is
being restarted the core's datagrams wait in the socket's receive queue, its new TCP
connections in the accept queue, and the new worker serves them — with 430 Flow Failed
for the flows that died with its predecessor (RFC 5626 §5.3) — instead of the kernel
answering port unreachable or a reset, which the core could only take as a dead node.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional

from twisted.internet import tcp
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from epcscf.config import Listener

#: (listener, factory, TLS options or None for ws) → the listening port
WsPortOpener = Callable[[Listener, IProtocolFactory, Optional[Any]], IListeningPort]


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class ReusePort(tcp.Port):
    """A TCP port that sets ``SO_REUSEPORT`` before binding."""

    def createInternetSocket(self) -> socket.socket:  # noqa: N802 (Twisted's name)
        sock = super().createInternetSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


def _tls_wrapped(factory: IProtocolFactory, tls_options: Any) -> IProtocolFactory:
    # What reactor.listenSSL does: TLS in memory over a plain TCP port.
    return factory if tls_options is None else TLSMemoryBIOFactory(tls_options, False, factory)


def reuseport_opener(reactor: Any) -> WsPortOpener:
    def open_port(listener: Listener, factory: IProtocolFactory, tls_options: Any) -> IListeningPort:
        port = ReusePort(listener.port, _tls_wrapped(factory, tls_options), interface=listener.address, reactor=reactor)
        port.startListening()
        return port

    return open_port


def inherited_opener(reactor: Any, fds: dict[int, int]) -> WsPortOpener:
    """Adopt the inherited listening socket of each ``[ws]`` port (``fds``: port → descriptor)."""

    def open_port(listener: Listener, factory: IProtocolFactory, tls_options: Any) -> IListeningPort:
        return reactor.adoptStreamPort(fds[listener.port], _family(listener.address), _tls_wrapped(factory, tls_options))

    return open_port


def reserve_reuseport(listener: Listener) -> socket.socket:
    """A bound, non-listening ``SO_REUSEPORT`` socket holding ``listener``'s port (see the module docstring)."""
    sock = socket.socket(_family(listener.address), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listener.address, listener.port))
    return sock


def listening_socket(listener: Listener, backlog: int = 1024) -> socket.socket:
    """The one listening socket every worker adopts (``inherit``); inheritable by children."""
    sock = socket.socket(_family(listener.address), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((listener.address, listener.port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def sip_socket(listener: Listener, backlog: int = 128) -> socket.socket:
    """A worker's core-facing ``[sip]`` socket (see the module docstring): bound, listening for
    tcp/tls, non-blocking (Twisted adopts only such), inheritable by the worker processes."""
    kind = socket.SOCK_DGRAM if listener.transport == "udp" else socket.SOCK_STREAM
    sock = socket.socket(_family(listener.address), kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as listenTCP does
        sock.bind((listener.address, listener.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise CannotListenError(listener.address, listener.port, error) from None
    sock.setblocking(False)
    os.set_inheritable(sock.fileno(), True)
    return sock
