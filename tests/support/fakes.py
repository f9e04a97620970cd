"""Doubles of the SIP layer's objects, for tests that drive the transaction layer, the proxy,
the P-CSCF policy or the call manager without sockets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from epcscf.sip.connection import RELIABLE_TRANSPORTS, Address, ConnectionLost
from epcscf.sip.message import Message, Request, Response


class FakeConnection:
    """A ``Connection`` (``epcscf.sip.connection``) that records what is sent through it.

    ``sent`` holds the messages in order; with a ``clock``, ``sent_at`` holds the clock time
    of each (the transaction tests read timer firing times from it).  Like a real one, a
    closed connection (``connected = False``) raises ``ConnectionLost`` on send.
    """

    def __init__(
        self,
        transport: str = "UDP",
        remote: Address = Address("127.0.0.1", 5070),
        local: Address = Address("127.0.0.1", 5060),
        id: str | None = None,
        *,
        origin: str | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.transport = transport
        self.remote = remote
        self.local = local
        self.id = id if id is not None else f"{transport.lower()}:{remote}"
        #: the browser's Origin, as a ``WsConnection`` has it
        self.origin = origin
        self.clock = clock
        self.connected = True
        self.sent: list[Message] = []
        self.sent_at: list[float] = []

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE_TRANSPORTS

    def send_message(self, message: Message) -> None:
        if not self.connected:
            raise ConnectionLost("peer closed the connection")
        self.sent.append(message)
        self.sent_at.append(self.clock.seconds() if self.clock is not None else 0.0)

    def close(self) -> None:
        self.connected = False

    def clear(self) -> None:
        """Forget what was sent (a real connection keeps nothing)."""
        self.sent.clear()
        self.sent_at.clear()

    # what tests read
    def times(self) -> list[float]:
        return list(self.sent_at)

    def messages(self) -> list[Message]:
        return list(self.sent)

    def timed(self) -> list[tuple[float, Message]]:
        """(clock time, message) of every send."""
        return list(zip(self.sent_at, self.sent))

    def start_lines(self) -> list[str]:
        return [message.start_line() for message in self.sent]


class FakeServerTransaction:
    """A server transaction that records the responses the proxy or a policy sends on it."""

    def __init__(self, request: Request | None = None, connection: Any = None) -> None:
        self.request = request
        self.connection = connection
        self.responses: list[Response] = []
        self.is_invite = request is not None and request.method == "INVITE"

    def respond(self, response: Response) -> None:
        self.responses.append(response)

    @property
    def statuses(self) -> list[int]:
        return [response.status for response in self.responses]


@dataclass(eq=False)
class FakeWsFlow:
    """A WebSocket flow as the eP-CSCF policy sees it, for tests and benchmarks that drive
    ``PcscfPolicy`` without sockets: the policy only decides, so a send is a test failure."""

    id: str
    transport: str = "WS"
    local: Address = Address("127.0.0.1", 40801)
    remote: Address = Address("127.0.0.1", 50000)
    origin: str | None = "http://127.0.0.1:8081"
    reliable: bool = True
    connected: bool = True

    def send_message(self, message: Any) -> None:
        raise AssertionError("the policy does not send")

    def close(self) -> None:
        self.connected = False
