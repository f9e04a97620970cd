"""sipp (Debian sip-tester) as a test peer: ports, the child process, its message trace."""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Iterable, Sequence

from twisted.internet import defer, error, protocol, reactor

from tests.support.processes import require_program

SCENARIOS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sipp")


def require_sipp(test: Any) -> str:
    """The sipp binary; the test fails (never skips) without it: bin/test installs it."""
    return require_program(test, "sipp", "sip-tester")


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    while True:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            tcp.close()
            udp.close()
        return port


def port_bound(port: int, transport: str) -> bool:
    """True once something listens on 127.0.0.1:port (read from /proc/net)."""
    table = "/proc/net/udp" if transport == "UDP" else "/proc/net/tcp"
    needle = f"0100007F:{port:04X}"
    with open(table) as f:
        return any(line.split()[1] == needle for line in f.readlines()[1:])


class SippProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.ended.callback(self.exit_code)


# sipp's -trace_msg file is a run of blocks, each opened by a line of dashes.  The socket layer logs
# every message, with a timestamp on the dashes: "UDP message received [433] bytes :" or "UDP message
# sent (332 bytes):".  A message for a call that has ended (a UDP retransmission that arrives after
# sipp answered the first copy) is logged a second time, with bare dashes: "Dead call ID received a
# UDP message:" (deadcall::process_incoming).  That block is not a message of its own.
_BLOCK_START = re.compile(r"^-{10,}[^\n]*\n", re.MULTILINE)
_LOGGED = re.compile(r"\bmessage (sent|received)\b")


def _logged_messages(path: str) -> list[tuple[str, str]]:
    """(direction, message) for each message the socket layer logged, in order."""
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as handle:
        text = handle.read()
    messages = []
    for block in _BLOCK_START.split(text)[1:]:
        head, _, message = block.partition("\n")
        logged = _LOGGED.search(head)
        if logged is not None and not head.startswith("Dead call") and message.strip():
            messages.append((logged.group(1), message.strip()))
    return messages


def messages_in_trace(path: str) -> list[str]:
    """Every SIP message sipp logged with -trace_msg (sent and received), in order."""
    return [message for _, message in _logged_messages(path)]


def sipp_messages(path: str, direction: str) -> list[str]:
    """Messages sipp logged with -trace_msg: ``direction`` is "sent" or "received"."""
    return [message for logged, message in _logged_messages(path) if logged == direction]


def headers_named(message: str, name: str) -> list[str]:
    return [line for line in message.splitlines() if line.lower().startswith(name.lower() + ":")]


def transaction_key(message: str) -> tuple[str, ...]:
    """What every copy of one message shares and no other message has.  Over UDP a request is
    sent again until its final response arrives (RFC 3261 §17.1.1.2 Timer A, §17.1.2.2 Timer E;
    T1 is 50 ms in many tests), a UAS sends its final response again for each copy of the request
    (§17.2.1, §17.2.2) and a 2xx to an INVITE until the ACK (§13.3.1.4); a proxy passes each copy
    on, and sipp's trace holds them all.  A request's copy has the same Call-ID, CSeq and top Via
    branch (§17.2.3); a response's copy the same status and To tag too (a 180 and a 200, or the 200s of
    two forks (§13.2.2.4), are different answers)."""
    key = headers_named(message, "Call-ID") + headers_named(message, "CSeq") + headers_named(message, "Via")[:1]
    if message.startswith("SIP/2.0 "):
        key = [message.split(None, 2)[1], *key, *headers_named(message, "To")]
    return tuple(key)


def one_per_transaction(messages: Iterable[str]) -> list[str]:
    """``messages`` without their retransmitted copies (``transaction_key``), in the order of
    each one's first copy."""
    seen: set[tuple[str, ...]] = set()
    unique = []
    for message in messages:
        key = transaction_key(message)
        if key not in seen:
            seen.add(key)
            unique.append(message)
    return unique


def received_requests(path: str, method: str) -> list[str]:
    """The ``method`` requests sipp received, one per transaction (``transaction_key``)."""
    return [m for m in one_per_transaction(sipp_messages(path, "received")) if m.startswith(method + " ")]


def received_responses(path: str, status: int, method: str) -> list[str]:
    """The ``status`` responses to ``method`` requests that sipp received, one per answer: a
    retransmitted copy (``transaction_key``) is not a second answer."""
    return [
        m for m in one_per_transaction(sipp_messages(path, "received"))
        if m.startswith(f"SIP/2.0 {status} ") and headers_named(m, "CSeq")[0].split()[-1] == method
    ]


def spawn_sipp(
    test: Any, sipp: str, args: list[str], directory: str, name: str, prefix: Sequence[str] = ()
) -> tuple[SippProcess, str]:
    """Start sipp with a message trace in ``directory``; killed when the test ends.  ``prefix``:
    a command sipp runs under (e.g. ``nsenter`` into another host's namespace, which execs it)."""
    trace = os.path.join(directory, f"{name}_messages.log")
    process = SippProcess()
    argv = [*prefix, sipp, *args, "-nostdin", "-trace_msg", "-message_file", trace]
    transport = reactor.spawnProcess(process, argv[0], argv, env=dict(os.environ), path=directory)

    def kill() -> defer.Deferred | None:
        if process.ended.called:
            return None
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            return None
        return process.ended

    test.addCleanup(kill)
    return process, trace
