"""What the stateful proxy (``epcscf.sip.proxy``) needs from outside it: its settings and the
three collaborators below it, as ``Protocol``s (connections, next-hop resolution, the
transaction layer), so that tests and the service each give their own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer

from epcscf.sip.connection import Address, Connection
from epcscf.sip.message import Request
from epcscf.sip.proxy_timer_c import TIMER_C
from epcscf.sip.resolver import Target
from epcscf.sip.transaction_client import ClientTransactionUser


@dataclass(frozen=True)
class ProxySettings:
    timer_c: float = TIMER_C
    #: option tags we support (RFC 3261 §16.3 step 5 checks Proxy-Require against them)
    supported_option_tags: frozenset[str] = frozenset()
    loop_detection: bool = True
    #: public address written in Via instead of the listener's (NAT/public IP)
    public_host: str = ""


class Connector(Protocol):
    def connect(self, target: Target) -> defer.Deferred: ...

    def connection_for(self, target: Target) -> Connection | None: ...

    def local_address(self, transport: str) -> Address | None: ...


class NextHops(Protocol):
    def resolve_uri(self, uri: Any) -> defer.Deferred: ...


class TransactionSender(Protocol):
    """What the proxy asks of the transaction layer (``epcscf.sip.transaction.TransactionLayer``)."""

    def send_request(
        self, request: Request, connection: Connection, user: ClientTransactionUser, *, wire: bytes | None = None
    ) -> Any: ...

    def find_invite_server_transaction(self, cancel: Request) -> Any: ...
