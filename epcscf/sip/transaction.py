"""RFC 3261 §17 transaction layer (with RFC 6026): sans-IO, driven by messages and a clock.

Theory of operation
-------------------
Transports hand every whole message to ``TransactionLayer.receive(message, connection)``.
The layer only decides *which transaction a message belongs to*:

* a response goes to the client transaction with the same top-Via branch and CSeq
  method (§17.1.3); one that matches none (a retransmitted 2xx after Timer M, a 2xx
  from another fork) goes to ``TransactionUser.stray_response_received``;
* a request goes to the server transaction with the same branch, sent-by and method
  (§17.2.3; an ACK matches the INVITE); requests whose branch lacks the ``z9hG4bK``
  magic cookie are matched the RFC 2543 way on Request-URI, To tag, From tag, Call-ID,
  CSeq and top Via.  A matching request is a retransmission (or the ACK of a non-2xx)
  and is handled inside the transaction without bothering the TU.  A new request
  creates a server transaction and goes to ``TransactionUser.request_received``; an ACK
  matching nothing (the ACK for a 2xx, a separate transaction, §17.1.1.3 / §13.2.2.4)
  goes to ``TransactionUser.ack_received``.

Requests we send go through ``send_request``, which creates a client transaction; the
request must already carry our top Via with an RFC 3261 branch.

Each transaction is one of four machines, written as tables in
``transaction_machine.py`` (INVITE client: Calling → Proceeding → Completed | Accepted
→ Terminated; non-INVITE client: Trying → Proceeding → Completed → Terminated; INVITE
server: Proceeding → Completed → Confirmed | Accepted → Terminated; non-INVITE server:
Trying → Proceeding → Completed → Terminated).  The timer values come from a
``TimerSettings`` chosen per connection by ``timers_for`` (TS 24.229 Table 7.7.1 uses
other values toward a UE than between IMS nodes); a reliable connection (TCP, TLS,
WS) arms no retransmission timer (A, E, G) and ends D, I, J, K at once (RFC 3261
Table 4).  A transaction that reaches Terminated is removed from the layer's tables,
so ``transactions()`` is empty once every exchange is over.

What the layer deliberately leaves to others: RFC 3261 §18.2.2 response fallbacks (the
transport's job), Timer C (the proxy's, §16.6), retransmitting 2xx responses and
their ACKs (the UA core's, §13.3.1.4), and answering 482 to merged requests (a UAS
asks ``is_merged_request``; a proxy does not merge, §16.6).
"""

from __future__ import annotations

import functools
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from epcscf.sip.connection import Connection, ConnectionLost
from epcscf.sip.early_admission import EarlyAdmission, StatelessResponder
from epcscf.sip.headers import HeaderError, Via, cseq, from_tag, to_tag, top_via_view
from epcscf.sip.message import Message, Request, Response, make_response, new_tag
from epcscf.sip.transaction_client import ClientTransaction, ClientTransactionUser, ack_for_non_2xx
from epcscf.sip.transaction_machine import (
    Event,
    State,
    TimerSettings,
    TransactionMachine,
    TransactionStateError,
)
from epcscf.sip.transaction_server import (
    MAGIC_COOKIE,
    RequestIdentity,
    ServerTransaction,
    TransactionUser,
)
from epcscf.sip.timers import TimerQueue
from epcscf.sip.uri import UriError, parse_uri, uris_equal

__all__ = [
    "MAGIC_COOKIE",
    "ClientTransaction",
    "ClientTransactionUser",
    "Event",
    "RequestIdentity",
    "ServerTransaction",
    "State",
    "TimerSettings",
    "TransactionLayer",
    "TransactionStateError",
    "TransactionUser",
    "ack_for_non_2xx",
    "request_identity",
]

log = Logger()


def request_identity(request: Request) -> RequestIdentity:
    """Read the §17.2.3 matching fields; raises ``HeaderError`` when one is unusable.

    Every field comes from the message's parsed views (``headers.cached_view``): the proxy's
    validation and the parser share the same parses."""
    via = top_via_view(request)
    if via is None:
        raise HeaderError("Via", "missing")
    sequence = cseq(request)
    if sequence is None:
        raise HeaderError("CSeq", "missing")
    # ``tuple.__new__`` with the fields in ``RequestIdentity``'s order: what its generated
    # ``__new__`` does, without that Python frame and the keywords' dict (one per request).
    return _new_identity(RequestIdentity, (
        via.branch,  # branch
        f"{via.host.lower()}:{via.port}" if via.port is not None else via.host.lower(),  # sent_by
        "INVITE" if request.method == "ACK" else request.method,  # method
        request.uri,  # request_uri
        to_tag(request),  # to_tag
        from_tag(request),  # from_tag
        request.headers.get("call-id"),  # call_id
        sequence.number,  # cseq_number
        sequence.method,  # cseq_method
        via,  # via
    ))


_new_identity = tuple.__new__


def _same_request_uri(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return uris_equal(parse_uri(a), parse_uri(b))  # RFC 3261 §19.1.4
    except UriError:
        return False


def _normalised_via(via: Via) -> tuple[object, ...]:
    """The whole top Via as RFC 2543 matching compares it (only needed for requests
    without an RFC 3261 branch, so not computed for every request)."""
    return (
        via.protocol,
        via.transport,
        via.host.lower(),
        via.port,
        tuple(sorted((name.lower(), value) for name, value in via.params.items())),
    )


def _rfc2543_same_dialog_request(a: RequestIdentity, b: RequestIdentity) -> bool:
    """§17.2.3 RFC 2543 rule, minus To tag and CSeq method (compared per case)."""
    return (
        a.from_tag == b.from_tag
        and a.call_id == b.call_id
        and a.cseq_number == b.cseq_number
        and _normalised_via(a.via) == _normalised_via(b.via)
        and _same_request_uri(a.request_uri, b.request_uri)
    )


def _forget_client_transaction(clients: dict[tuple[str, str], ClientTransaction], machine: TransactionMachine) -> None:
    """A client transaction ended: drop it from the layer's index (``TransactionLayer``)."""
    assert isinstance(machine, ClientTransaction)
    if clients.get(machine.key) is machine:
        del clients[machine.key]


def _forget_server_transaction(
    servers: dict[tuple[str, str, str], ServerTransaction],
    rfc2543_servers: list[ServerTransaction],
    by_merge_key: dict[tuple[str | None, str | None, int, str], ServerTransaction | list[ServerTransaction]],
    machine: TransactionMachine,
) -> None:
    """A server transaction ended: drop it from the layer's indexes (``TransactionLayer``)."""
    assert isinstance(machine, ServerTransaction)
    identity = machine.identity
    key = identity.key
    if servers.get(key) is machine:
        del servers[key]
    if rfc2543_servers and machine in rfc2543_servers:
        rfc2543_servers.remove(machine)
    merge_key = identity.merge_key
    known = by_merge_key.get(merge_key)
    if known is machine:
        del by_merge_key[merge_key]
    elif isinstance(known, list) and machine in known:
        known.remove(machine)
        if len(known) == 1:
            by_merge_key[merge_key] = known[0]


class TransactionLayer:
    """All client and server transactions of one SIP element."""

    def __init__(
        self,
        clock: IReactorTime,
        tu: TransactionUser,
        timers_for: Callable[[Connection], TimerSettings],
    ) -> None:
        # RFC 3261 §17 timers are nearly all cancelled before they fire: one reactor call
        # serves them all (``TimerQueue``).
        self._clock = TimerQueue(clock)
        self._tu = tu
        self._timers_for = timers_for
        self._servers: dict[tuple[str, str, str], ServerTransaction] = {}
        self._rfc2543_servers: list[ServerTransaction] = []
        #: §8.2.2.2 merge key → its server transaction, or a list when several share it (rare:
        #: a list of one is 100 B more per lingering transaction)
        self._by_merge_key: dict[tuple[str | None, str | None, int, str], ServerTransaction | list[ServerTransaction]] = {}
        #: made once (a bound method per transaction was 64 B more for as long as it lingered),
        #: on the indexes rather than on the layer, which would then refer to itself
        self._on_server_terminated = functools.partial(
            _forget_server_transaction, self._servers, self._rfc2543_servers, self._by_merge_key
        )
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        #: made once, as ``_on_server_terminated`` (a bound method per transaction was one more
        #: object for the collector to traverse while it lingered)
        self._on_client_terminated = functools.partial(_forget_client_transaction, self._clients)
        #: asked about every request that matched no transaction, before one is made
        #: (``epcscf.sip.early_admission``); None: every such request gets a transaction
        self.early_admission: EarlyAdmission | None = None
        self.stateless = StatelessResponder()

    # ----- from the transports -------------------------------------------------------------

    def receive(self, message: Request | Response, connection: Connection) -> None:
        """One whole message that arrived on ``connection``."""
        if isinstance(message, Request):
            self._receive_request(message, connection)
        elif isinstance(message, Response):
            self._receive_response(message, connection)
        else:
            log.error("transaction layer got a {kind}, not a SIP message", kind=type(message).__name__)

    def _receive_request(self, request: Request, connection: Connection) -> None:
        try:
            identity = request_identity(request)
        except ValueError as error:  # HeaderError, or anything else a bad value raises
            self._reject_unmatchable(request, connection, error)
            return
        transaction = self._match_request(request, identity)
        if request.method == "ACK":
            if transaction is not None:
                transaction.receive_request(request, connection)
            elif not (self.stateless.responses and self.stateless.absorbs_ack(identity)):
                # §17.1.1.3: the ACK of a stateless non-2xx of ours ends here; any other goes on
                self._call_tu(self._tu.ack_received, request, connection)  # §17.2.3, §16.7
            return
        if transaction is not None:
            transaction.receive_request(request, connection)  # a retransmission: absorbed
            return
        if self.early_admission is not None and self._refused_early(request, identity, connection):
            return
        transaction = ServerTransaction(
            self._clock,
            request,
            connection,
            self._tu,
            self._timers_for(connection),
            identity,
            self._on_server_terminated,
        )
        self._add_server(transaction)
        transaction.start()
        try:
            self._tu.request_received(request, transaction)
        except Exception:
            log.failure("transaction user failed on {request}", request=request.start_line())
            self._answer_500(transaction)

    def _refused_early(self, request: Request, identity: RequestIdentity, connection: Connection) -> bool:
        """Ask the early-admission hook; a refusal is answered statelessly (RFC 3261 §16.3, §8.2)."""
        stateless = self.stateless
        if not stateless.can_answer(identity):
            return False
        assert self.early_admission is not None
        refusal = self.early_admission(request, identity, connection)
        if refusal is None:
            return False
        stateless.responses += 1
        try:
            connection.send_message(stateless.response(request, identity, refusal))
        except ConnectionLost:
            pass  # the flow is gone: nobody to tell
        return True

    def _receive_response(self, response: Response, connection: Connection) -> None:
        try:
            via = top_via_view(response)
            sequence = cseq(response)
        except ValueError as error:
            log.info("response dropped: {error}", error=error)
            return
        if via is None or sequence is None:
            log.info("response without Via or CSeq dropped: {line}", line=response.start_line())
            return
        transaction = self._clients.get((via.branch or "", sequence.method))
        if transaction is None:
            self._call_tu(self._tu.stray_response_received, response, connection)  # §17.1.3
            return
        transaction.receive_response(response)

    def _reject_unmatchable(self, request: Request, connection: Connection, error: ValueError) -> None:
        """A request whose Via or CSeq cannot be read belongs to no transaction: answer 400
        when the response can be routed at all (RFC 3261 §8.2.6, §18.2.2), else drop it."""
        log.info("unmatchable {method} from {peer}: {error}", method=request.method, peer=connection.remote, error=error)
        if request.method == "ACK" or "via" not in request.headers:
            return
        detail = str(error).replace("\r", " ").replace("\n", " ")[:80]
        response = make_response(request, 400, f"Bad Request ({detail})", to_tag=new_tag())
        try:
            connection.send_message(response)
        except ConnectionLost:
            pass

    def _answer_500(self, transaction: ServerTransaction) -> None:
        if transaction.last_response is not None and transaction.last_response.status >= 200:
            return
        if transaction.state not in (State.TRYING, State.PROCEEDING) or transaction.request is None:
            return
        transaction.respond(make_response(transaction.request, 500, to_tag=new_tag()))

    def _call_tu(self, method: Callable[..., None], message: Message, connection: Connection) -> None:
        try:
            method(message, connection)
        except Exception:
            log.failure("transaction user failed on {line}", line=message.start_line())

    # ----- matching (RFC 3261 §17.2.3, §9.2) -----------------------------------------------

    def _match_request(self, request: Request, identity: RequestIdentity) -> ServerTransaction | None:
        if identity.has_rfc3261_branch:
            return self._servers.get(identity.key)
        for transaction in self._rfc2543_servers:
            other = transaction.identity
            if not _rfc2543_same_dialog_request(identity, other):
                continue
            if request.method == "ACK":
                # §17.2.3: the ACK's To tag is the one of the response we sent.
                if transaction.is_invite and transaction.final_to_tag is not None:
                    if identity.to_tag == transaction.final_to_tag:
                        return transaction
            elif identity.to_tag == other.to_tag and identity.cseq_method == other.cseq_method:
                return transaction
        return None

    def find_invite_server_transaction(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL cancels (RFC 3261 §9.2): the §17.2.3
        matching rules applied as if the CANCEL were that INVITE."""
        try:
            identity = request_identity(cancel)
        except ValueError:
            return None
        if identity.has_rfc3261_branch:
            return self._servers.get((identity.key[0], identity.key[1], "INVITE"))
        for transaction in self._rfc2543_servers:
            other = transaction.identity
            if (
                transaction.is_invite
                and identity.to_tag == other.to_tag
                and _rfc2543_same_dialog_request(identity, other)
            ):
                return transaction
        return None

    def is_merged_request(self, request: Request, transaction: ServerTransaction | None = None) -> bool:
        """RFC 3261 §8.2.2.2: no To tag, and From tag, Call-ID and CSeq equal to those of an
        ongoing server transaction that the request does not match (it arrived by another
        path, with another branch).  A UAS answers such a request with 482.

        ``transaction`` is the request's own server transaction when the caller has it (a
        TU asking about the request it was just handed): its identity is already read."""
        if transaction is not None and transaction.request is request:
            identity = transaction.identity
            own: ServerTransaction | None = transaction
        else:
            try:
                identity = request_identity(request)
            except ValueError:
                return False
            own = None
        if identity.to_tag is not None:
            return False
        if own is None:
            own = self._match_request(request, identity)
        known = self._by_merge_key.get(identity.merge_key)
        if isinstance(known, list):
            return any(t is not own for t in known)
        return known is not None and known is not own

    # ----- client side ---------------------------------------------------------------------

    def send_request(
        self,
        request: Request,
        connection: Connection,
        user: ClientTransactionUser,
        timers: TimerSettings | None = None,
        *,
        wire: bytes | None = None,
    ) -> ClientTransaction:
        """Send ``request`` in a new client transaction (RFC 3261 §17.1).

        The request must carry our top Via with an RFC 3261 branch, unique among our
        client transactions of the same method.  ``timers`` defaults to
        ``timers_for(connection)``.  If the first send fails, ``user.transport_failed``
        is called on the next reactor turn, never before this method returns.  ``wire`` is
        ``request.serialize()`` when the caller already has it (the proxy sizes a request
        toward UDP on its wire form, RFC 3261 §18.1.1): sent as it is, and for each
        retransmission, instead of serialising the request again.
        """
        if request.method == "ACK":
            raise ValueError(
                "an ACK is not a client transaction: the INVITE client transaction sends the ACK "
                "for a non-2xx, the TU sends the ACK for a 2xx with connection.send_message"
            )
        via = top_via_view(request)
        branch = via.branch if via is not None else None  # read once: this runs per request sent
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise ValueError(f"{request.method} must carry our top Via with a branch starting {MAGIC_COOKIE!r}")
        sequence = cseq(request)
        if sequence is None or sequence.method != request.method:
            raise ValueError(f"{request.method} needs a CSeq header with method {request.method}")
        key = (branch, request.method)
        if key in self._clients:
            raise ValueError(f"branch {branch} is already used by a {request.method} client transaction")
        transaction = ClientTransaction(
            self._clock,
            request,
            connection,
            user,
            timers if timers is not None else self._timers_for(connection),
            branch,
            self._on_client_terminated,
            wire,
        )
        self._clients[key] = transaction
        transaction.start()
        return transaction

    # ----- bookkeeping ---------------------------------------------------------------------

    # ``key`` and ``merge_key`` build a tuple per reading: each is read once below (these run
    # for every request received).

    def _add_server(self, transaction: ServerTransaction) -> None:
        identity = transaction.identity
        if identity.has_rfc3261_branch:
            self._servers[identity.key] = transaction
        else:
            self._rfc2543_servers.append(transaction)
        merge_key = identity.merge_key
        known = self._by_merge_key.get(merge_key)
        if known is None:
            self._by_merge_key[merge_key] = transaction
        elif isinstance(known, list):
            known.append(transaction)
        else:
            self._by_merge_key[merge_key] = [known, transaction]

    def transactions(self) -> list[ServerTransaction | ClientTransaction]:
        """Every live transaction (for tests and the console)."""
        return [*self._servers.values(), *self._rfc2543_servers, *self._clients.values()]

    def pending_timers(self) -> int:
        """RFC 3261 §17 timers armed now (they share one reactor call, see ``TimerQueue``)."""
        return self._clock.pending()

    def close(self) -> None:
        """Cancel every timer and forget every transaction (service shutdown)."""
        for transaction in self.transactions():
            transaction.shut_down()
        self._servers.clear()
        self._rfc2543_servers.clear()
        self._by_merge_key.clear()
        self._clients.clear()
