"""Fakes shared by the transaction-layer tests (no tests here).

``FakeConnection`` (``tests.support.fakes``) records every message with the clock time it
was sent; ``Recorder`` is both the ``TransactionUser`` and a ``ClientTransactionUser`` and
records every call with its time.  ``run_until`` advances a ``task.Clock`` one due call at a time, so the
recorded times are the exact firing times of the timers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.task import Clock

from epcscf.sip.message import Headers, Request, Response, make_response
from epcscf.sip.transaction import ClientTransaction, ServerTransaction, TimerSettings, TransactionLayer
from tests.support.fakes import FakeConnection


class Recorder:
    """Transaction user and client-transaction user in one: records (time, what, detail)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, str, Any]] = []
        self.server_transactions: list[ServerTransaction] = []
        self.respond_with: int | None = None  # answer every request at once with this status
        self.fail_on_request = False

    # TransactionUser
    def request_received(self, request: Request, transaction: ServerTransaction) -> None:
        self.calls.append((self.clock.seconds(), "request", request.method))
        self.server_transactions.append(transaction)
        if self.fail_on_request:
            raise RuntimeError("TU bug")
        if self.respond_with is not None:
            transaction.respond(make_response(request, self.respond_with, to_tag="uas"))

    def ack_received(self, request: Request, connection: Any) -> None:
        self.calls.append((self.clock.seconds(), "ack", request.method))

    def stray_response_received(self, response: Response, connection: Any) -> None:
        self.calls.append((self.clock.seconds(), "stray", response.status))

    # ClientTransactionUser
    def response_received(self, response: Response, transaction: ClientTransaction) -> None:
        self.calls.append((self.clock.seconds(), "response", response.status))

    def timed_out(self, transaction: ClientTransaction) -> None:
        self.calls.append((self.clock.seconds(), "timeout", transaction.request.method))

    def transport_failed(self, transaction: ClientTransaction, reason: str) -> None:
        self.calls.append((self.clock.seconds(), "transport failed", reason))

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.calls]


def run_until(clock: Clock, when: float) -> None:
    """Advance to ``when``, stopping at every due call so each fires at its own time."""
    while clock.getDelayedCalls():
        next_call = min(call.getTime() for call in clock.getDelayedCalls())
        if next_call > when:
            break
        clock.advance(max(0.0, next_call - clock.seconds()))
    if clock.seconds() < when:
        clock.advance(when - clock.seconds())


def request(
    method: str = "INVITE",
    branch: str | None = "z9hG4bK.1",
    sent_by: str = "127.0.0.1:5070",
    uri: str = "sip:bob@example.com",
    from_tag: str = "alice1",
    to_tag: str | None = None,
    call_id: str = "call-1@example.com",
    cseq: int = 1,
    cseq_method: str | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> Request:
    via = f"SIP/2.0/UDP {sent_by}" + (f";branch={branch}" if branch is not None else "")
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    headers = Headers.from_pairs(
        [
            ("Via", via),
            ("Via", "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK.upstream"),
            ("Route", "<sip:edge.example.com;lr>"),
            ("Max-Forwards", "69"),
            ("From", f"<sip:alice@example.com>;tag={from_tag}"),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {cseq_method or method}"),
            *(extra or []),
        ]
    )
    return Request(method, uri, headers)


def response(to: Request, status: int, to_tag: str | None = "bob1") -> Response:
    return make_response(to, status, to_tag=to_tag)


@dataclass
class Harness:
    clock: Clock
    user: Recorder
    layer: TransactionLayer
    udp: FakeConnection
    tcp: FakeConnection


def harness(timers: TimerSettings | None = None) -> Harness:
    clock = Clock()
    user = Recorder(clock)
    settings = timers or TimerSettings()
    layer = TransactionLayer(clock, user, lambda connection: settings)
    udp = FakeConnection(clock=clock)
    tcp = FakeConnection("TCP", id="tcp:127.0.0.1:5070", clock=clock)
    return Harness(clock, user, layer, udp, tcp)
