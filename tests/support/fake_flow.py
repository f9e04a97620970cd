"""A WebSocket flow as the eP-CSCF policy sees it (``epcscf.sip.connection.Connection``),
for tests and benchmarks that drive ``PcscfPolicy`` without sockets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from epcscf.sip.connection import Address


@dataclass(eq=False)
class FakeWsFlow:
    id: str
    transport: str = "WS"
    local: Address = Address("127.0.0.1", 40801)
    remote: Address = Address("127.0.0.1", 50000)
    origin: str | None = "http://127.0.0.1:8081"
    reliable: bool = True
    connected: bool = True

    def send_message(self, message: Any) -> None:  # never called: the policy only decides
        raise AssertionError("the policy does not send")

    def close(self) -> None:
        self.connected = False
