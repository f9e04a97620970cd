"""A client of rtpengine's ng control protocol, for a set of rtpengine nodes.

The ng protocol (rtpengine's docs/ng_control_protocol.md) is a request/reply exchange over UDP:
each datagram is ``<cookie> <bencoded dictionary>``; the reply repeats the cookie and carries
``result`` (``ok``, ``pong``, ``error`` + ``error-reason``, ``load limit``).  rtpengine caches a
reply by cookie, so a retransmission with the same cookie is answered once and not re-executed:
that is what makes retrying an ``offer`` safe.

``NgClient`` owns one UDP socket for every node.  Per node it keeps an explicit state (``UP``,
``DOWN``): a command that gets no reply after its retransmissions marks the node down; a ``ping``
(sent every ``ping_interval`` to every node) or any reply marks it up again.  ``node_for`` picks
the node of a call by weighted rendezvous hashing of the Call-ID over the nodes that are up, so
every command of a call reaches the same node without shared state between epcscf instances,
and when a node goes down only its own calls would hash elsewhere.

``list_over_tcp`` sends one command over rtpengine's TCP ng port (``--listen-tcp-ng``: the same
``<cookie> <bencode>`` framing on a stream), for a reply too big for a datagram (``list``).
"""

from __future__ import annotations

import enum
import hashlib
import math
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

import bencodepy
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.python.failure import Failure
from twisted.logger import Logger

log = Logger(namespace="epcscf.media.rtpengine")

Reply = dict[str, Any]

#: commands the client counts by name (anything else counts as "other")
COMMANDS = ("ping", "offer", "answer", "delete", "query", "list")


class NgError(Exception):
    """rtpengine answered ``result: error`` (or something that is not an ng reply)."""

    def __init__(self, node: "NgNode", command: str, reason: str) -> None:
        super().__init__(f"rtpengine {node} {command}: {reason}")
        self.node = node
        self.command = command
        self.reason = reason


class NgTimeout(NgError):
    """No reply after every retransmission: the node is marked down."""


class NodeState(enum.Enum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class NgNode:
    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def __str__(self) -> str:
        return f"udp:{self.host}:{self.port}"


@dataclass(frozen=True)
class NgSettings:
    #: seconds a command waits for its reply over all its transmissions
    timeout: float = 1.0
    #: transmissions of one command (the first included), spaced 1, 2, 4… parts of ``timeout``
    transmissions: int = 3
    #: seconds between pings of every node (health)
    ping_interval: float = 5.0


@dataclass
class NodeStats:
    state: NodeState = NodeState.UP
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*COMMANDS, "other"), 0))
    errors: int = 0
    timeouts: int = 0
    retransmissions: int = 0


@dataclass(eq=False)
class _Pending:
    node: NgNode
    command: str
    datagram: bytes
    result: defer.Deferred
    timer: Any = None
    sent: int = 0


def encode(cookie: bytes, message: dict[str, Any]) -> bytes:
    return cookie + b" " + bencodepy.encode(message)


def decode(datagram: bytes) -> tuple[bytes, Reply]:
    """``(cookie, reply)`` with text keys and text values (bytes that are not UTF-8 stay bytes);
    ValueError for anything that is not an ng datagram."""
    cookie, space, body = datagram.partition(b" ")
    if not space or not cookie:
        raise ValueError("no cookie")
    try:
        value = bencodepy.decode(body)
    except Exception as error:  # bencodepy raises its own error types and IndexError/ValueError
        raise ValueError(f"not bencode: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("not a dictionary")
    return cookie, _text(value)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


class _Socket(DatagramProtocol):
    def __init__(self, client: "NgClient") -> None:
        self.client = client

    def datagramReceived(self, datagram: bytes, address: Any) -> None:  # noqa: N802
        self.client._received(datagram, (address[0], address[1]))


class NgClient:
    """Commands to rtpengine nodes, with retransmission and per-node health (see module doc)."""

    def __init__(self, reactor: Any, nodes: tuple[NgNode, ...], settings: NgSettings | None = None,
                 clock: Any = None) -> None:
        if not nodes:
            raise ValueError("at least one rtpengine node is needed")
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.nodes = nodes
        self.settings = settings or NgSettings()
        self.stats: dict[NgNode, NodeStats] = {node: NodeStats() for node in nodes}
        #: called with a node the moment it is marked down
        self.on_node_down: Callable[[NgNode], None] | None = None
        self._pending: dict[bytes, _Pending] = {}
        # rtpengine answers a cookie it has seen from its reply cache, whoever sends it (that is
        # what makes a retransmitted offer safe): a prefix another client may also draw -- a
        # client made again in this process (``id`` is reused), an epcscf with the same pid on
        # another host or container -- would get that client's replies.  64 random bits do not.
        self._prefix = f"{os.getpid()}_{secrets.token_hex(8)}_".encode()
        self._counter = 0
        self._port: Any = None
        self._pinger: task.LoopingCall | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        interface = "::" if any(":" in node.host for node in self.nodes) else "0.0.0.0"
        self._port = self.reactor.listenUDP(0, _Socket(self), interface=interface)
        self._pinger = task.LoopingCall(self.ping_all)
        self._pinger.clock = self.clock
        self._pinger.start(self.settings.ping_interval, now=True).addErrback(
            lambda failure: log.failure("rtpengine pings stopped", failure))

    def stop(self) -> defer.Deferred:
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        for cookie in list(self._pending):
            pending = self._pending.pop(cookie)
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.result.errback(NgTimeout(pending.node, pending.command, "client stopped"))
        port, self._port = self._port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)

    # --- choice of node --------------------------------------------------------------------

    def state(self, node: NgNode) -> NodeState:
        return self.stats[node].state

    def node_for(self, call_id: str) -> NgNode | None:
        """The up node with the highest weighted rendezvous score for ``call_id`` (None: all down)."""
        best: tuple[float, NgNode] | None = None
        for node in self.nodes:
            if self.stats[node].state is not NodeState.UP:
                continue
            digest = hashlib.blake2b(f"{call_id}\x00{node}".encode(), digest_size=8).digest()
            unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
            score = -node.weight / math.log(unit)
            if best is None or score > best[0]:
                best = (score, node)
        return best[1] if best is not None else None

    # --- commands --------------------------------------------------------------------------

    def command(self, node: NgNode, message: dict[str, Any]) -> defer.Deferred:
        """Send ``message`` (its ``command`` key included) to ``node``: a Deferred of the reply
        dictionary; NgError for ``result: error``, NgTimeout when the node does not answer."""
        if self._port is None:
            return defer.fail(NgError(node, str(message.get("command")), "client not started"))
        name = str(message.get("command", ""))
        self._counter += 1
        cookie = self._prefix + str(self._counter).encode()
        pending = _Pending(node, name, encode(cookie, message), defer.Deferred())
        self._pending[cookie] = pending
        stats = self.stats[node]
        stats.sent[name if name in COMMANDS else "other"] += 1
        self._transmit(cookie, pending)
        return pending.result

    def ping_all(self) -> None:
        for node in self.nodes:
            self.command(node, {"command": "ping"}).addErrback(lambda failure: None)

    def _transmit(self, cookie: bytes, pending: _Pending) -> None:
        if self._port is None:
            return
        if pending.sent:
            self.stats[pending.node].retransmissions += 1
        pending.sent += 1
        try:
            self._port.write(pending.datagram, pending.node.address)
        except OSError as error:  # e.g. the datagram is over the socket's limit
            log.info("rtpengine {node}: {command} not sent: {error}", node=pending.node, command=pending.command, error=error)
        transmissions = max(1, self.settings.transmissions)
        share = self.settings.timeout / (2**transmissions - 1)
        wait = share * 2 ** (pending.sent - 1)
        if pending.sent < transmissions:
            pending.timer = self.clock.callLater(wait, self._transmit, cookie, pending)
        else:
            pending.timer = self.clock.callLater(wait, self._timed_out, cookie)

    def _timed_out(self, cookie: bytes) -> None:
        pending = self._pending.pop(cookie, None)
        if pending is None:
            return
        node = pending.node
        self.stats[node].timeouts += 1
        self._mark(node, NodeState.DOWN)
        pending.result.errback(NgTimeout(node, pending.command, f"no reply in {self.settings.timeout:g} s"))

    def _received(self, datagram: bytes, address: tuple[str, int]) -> None:
        try:
            cookie, reply = decode(datagram)
        except ValueError as error:
            log.info("rtpengine reply from {address} dropped: {error}", address=address, error=error)
            return
        pending = self._pending.get(cookie)
        if pending is None or pending.node.address[1] != address[1]:
            return  # a late answer to a retransmission, or not from the node asked
        del self._pending[cookie]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self._mark(pending.node, NodeState.UP)
        result = reply.get("result")
        if result in ("ok", "pong"):
            pending.result.callback(reply)
            return
        self.stats[pending.node].errors += 1
        reason = reply.get("error-reason") or reply.get("warning") or f"result {result!r}"
        pending.result.errback(NgError(pending.node, pending.command, str(reason)))

    def _mark(self, node: NgNode, state: NodeState) -> None:
        stats = self.stats[node]
        if stats.state is state:
            return
        stats.state = state
        if state is NodeState.DOWN:
            log.warn("rtpengine {node} stopped answering: marked down", node=node)
            if self.on_node_down is not None:
                self.on_node_down(node)
        else:
            log.info("rtpengine {node} answers again: marked up", node=node)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per node (by ``str(node)``): state, commands sent by name, errors, timeouts, retransmissions."""
        return {
            str(node): {"state": stats.state.value, "sent": dict(stats.sent), "errors": stats.errors,
                        "timeouts": stats.timeouts, "retransmissions": stats.retransmissions}
            for node, stats in self.stats.items()
        }


#: the largest ``list`` reply read over TCP (16 MiB: ~150 000 call-ids of ~100 bytes)
TCP_REPLY_LIMIT = 16 * 1024 * 1024


class _TcpCommand(Protocol):
    """One command and its reply on a TCP ng connection, then the connection is closed."""

    def __init__(self, node: NgNode, name: str, request: bytes, done: defer.Deferred) -> None:
        self.node = node
        self.name = name
        self.request = request
        self.done = done
        self.buffer = bytearray()

    def connectionMade(self) -> None:  # noqa: N802
        if self.done.called:  # timed out while connecting
            self.transport.loseConnection()
            return
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.done.called:
            self.transport.loseConnection()
            return
        self.buffer += data
        if len(self.buffer) > TCP_REPLY_LIMIT:
            self._finish(NgError(self.node, self.name, f"TCP reply over {TCP_REPLY_LIMIT} bytes"))
            return
        if not self.buffer.endswith(b"e"):
            return  # a bencoded dictionary ends with "e": not all of it yet
        try:
            _cookie, reply = decode(bytes(self.buffer))
        except ValueError:
            return  # an "e" inside the reply; more to come
        result = reply.get("result")
        if result == "ok":
            self._finish(reply)
        else:
            self._finish(NgError(self.node, self.name, str(reply.get("error-reason") or f"result {result!r}")))

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self._finish(NgError(self.node, self.name, f"TCP connection closed before the reply: {reason.getErrorMessage()}"))

    def _finish(self, outcome: Reply | NgError) -> None:
        if self.done.called:
            return
        if isinstance(outcome, NgError):
            self.done.errback(outcome)
        else:
            self.done.callback(outcome)
        if self.transport is not None:
            self.transport.loseConnection()


def list_over_tcp(reactor: Any, node: NgNode, port: int, timeout: float, limit: int = 10_000_000) -> defer.Deferred:
    """Every call-id ``node`` holds (``list`` with a ``limit`` no datagram could carry), over its
    TCP ng ``port`` on the node's address: a Deferred of the list of call-ids (text), NgError
    when the node refuses, cannot be reached or does not answer within ``timeout``."""
    done: defer.Deferred = defer.Deferred()
    message = encode(os.urandom(6).hex().encode(), {"command": "list", "limit": limit})
    endpoint_type = TCP6ClientEndpoint if ":" in node.host else TCP4ClientEndpoint
    endpoint = endpoint_type(reactor, node.host, port, timeout=max(1, int(timeout)))
    protocol = _TcpCommand(node, "list", message, done)
    timer = reactor.callLater(timeout, lambda: protocol._finish(NgError(node, "list", f"no TCP reply in {timeout:g} s")))

    def not_connected(failure: Failure) -> None:
        protocol._finish(NgError(node, "list", f"TCP port {port}: {failure.getErrorMessage()}"))

    connectProtocol(endpoint, protocol).addErrback(not_connected)

    def calls(reply: Reply) -> list[str]:
        listed = reply.get("calls")
        return [c if isinstance(c, str) else c.decode("utf-8", "replace") for c in listed] if isinstance(listed, list) else []

    def stop_timer(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    return done.addBoth(stop_timer).addCallback(calls)
