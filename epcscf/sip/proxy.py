"""The RFC 3261 §16 stateful proxy core, with a policy hook for the eP-CSCF.

Theory of operation
-------------------
``StatefulProxy`` is the transaction user (TU) of the transaction layer for every request
it does not answer itself, and the client-transaction user of every branch it forwards.

* A request (§16.3–§16.6): validated (``validate_request``, §16.3 steps 1–5; loop detection,
  step 4, here because only we know our Vias), 100 Trying for INVITE (§16.2), our own
  Route entries removed (§16.4), then the ``ProxyPolicy`` decides: ``Forward`` (request,
  destination, Record-Route entries) or ``Reject`` (a response).  The decision may be a
  Deferred.  Forwarding makes one ``Branch`` per destination; a branch walks its list of
  ``Target``s in order (RFC 3263 §4.3 failover on 503, timeout or transport error), each try
  a new client transaction with a new branch id.  A request too large for UDP goes over TCP
  to the same address (RFC 3261 §18.1.1, ``TransportManager.connect_for_request``) and its
  Via says so.
* Responses (§16.7): our Via is popped; provisionals other than 100 and every 2xx go
  upstream at once; finals are kept until every branch is done, then the best one
  (``choose_best_response``, 401/407 challenges merged, a received 503 → 500; the 503
  we make up for an unreachable next hop, §16.9, stays 503) goes upstream and still
  pending branches are CANCELled (§16.7 step 10).  The policy may rewrite (or withhold)
  each response before it is forwarded; responses of one request stay in order.
* CANCEL (§16.10): 200 at once, then a CANCEL on every pending INVITE branch (after its first
  provisional, RFC 3261 §9.1); no matching INVITE → 481.
* ACK for 2xx and stray responses are forwarded statelessly (§16.11, §16.7 step 1).
* Timer C (§16.6 step 11) guards every INVITE branch: reset by provisionals; on expiry the
  branch is CANCELled (after a provisional) or treated as a 408 (§16.8).

A ``ProxiedRequest`` is the per-request context (state, server transaction, branches,
responses); its ``ProxyState`` only moves forward (see ``_TRANSITIONS``).  The other way
round, the proxy offers the policy's helpers (the eP-CSCF's call manager) ``ProxyOperations``:
CANCEL an INVITE's pending branches, answer it upstream, send a request of their own.

Where the parts live: requests, branches and responses here; stateless forwarding in
``proxy_stateless``, CANCEL in ``proxy_cancel``, Timer C in ``proxy_timer_c`` and our Via
in ``proxy_via`` (mixins of ``StatefulProxy``, so the per-message path makes the same calls
as before); settings and collaborators in ``proxy_ports``; the policy side and the
per-request state in ``proxy_policy``; the pure §16 rules in ``proxy_rules``.
"""

from __future__ import annotations

import secrets
from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from epcscf.sip import proxy_rules as rules
from epcscf.sip.connection import Connection, ConnectionLost
from epcscf.sip.message import Request, Response, new_tag
from epcscf.sip.resolver import Target
from epcscf.sip.timers import TimerQueue
from epcscf.sip.transaction_client import ClientTransactionUser
from epcscf.sip.transport import UDP_REQUEST_LIMIT
from epcscf.sip.uri import SipUri, UriError, shared_uri
from epcscf.sip.validate import AnswerOptionsLocally, validate_request
from epcscf.sip.proxy_cancel import AbsorbResponses, Cancelling
from epcscf.sip.proxy_policy import (
    Branch,
    BranchState,
    Decision,
    Destination,
    Forward,
    ProxiedRequest,
    ProxyPolicy,
    ProxyState,
    Reject,
    is_deferred,
)
from epcscf.sip.proxy_ports import Connector, NextHops, ProxySettings, TransactionSender
from epcscf.sip.proxy_stateless import StatelessForwarding
from epcscf.sip.proxy_timer_c import TIMER_C, TimerC
from epcscf.sip.proxy_via import OWN_VIA_LINE, OwnVia

# Re-exported: other modules import these from here.
__all__ = [
    "OWN_VIA_LINE",
    "TIMER_C",
    "Branch",
    "BranchState",
    "Connector",
    "Decision",
    "Destination",
    "Forward",
    "NextHops",
    "ProxiedRequest",
    "ProxyPolicy",
    "ProxySettings",
    "ProxyState",
    "Reject",
    "StatefulProxy",
    "TransactionSender",
]

log = Logger()

# Members read on every message, as module constants (``transaction_machine.TERMINATED`` says
# why).
_BRANCH_CALLING = BranchState.CALLING
_BRANCH_CONNECTING = BranchState.CONNECTING
_BRANCH_DONE = BranchState.DONE
_BRANCH_PROCEEDING = BranchState.PROCEEDING
_PROXY_COMPLETED = ProxyState.COMPLETED
_PROXY_FORWARDING = ProxyState.FORWARDING
_PROXY_ROUTING = ProxyState.ROUTING
_PROXY_TERMINATED = ProxyState.TERMINATED


class StatefulProxy(StatelessForwarding, Cancelling, TimerC, OwnVia):
    """RFC 3261 §16 transaction-stateful proxy (TransactionUser + ClientTransactionUser)."""

    def __init__(
        self,
        clock: IReactorTime,
        connector: Connector,
        resolver: NextHops,
        policy: ProxyPolicy,
        settings: ProxySettings | None = None,
        *,
        secret: bytes | None = None,
        transactions: TransactionSender | None = None,
    ) -> None:
        self.clock = clock
        # Timer C (RFC 3261 §16.6 step 11): armed per INVITE branch and re-armed on every
        # provisional, almost never fired; one reactor call for all of them (``TimerQueue``).
        self._timers_c = TimerQueue(clock)
        self.connector = connector
        self.resolver = resolver
        self.policy = policy
        self.settings = settings or ProxySettings()
        #: the transaction layer (given here, or set once when the layer is built with this
        #: proxy as its user: then each needs the other)
        self.transactions: TransactionSender | None = transactions
        self._secret = secret if secret is not None else secrets.token_bytes(16)
        self._by_server: dict[int, ProxiedRequest] = {}
        self._by_client: dict[int, tuple[ProxiedRequest, Branch]] = {}
        self._absorb = AbsorbResponses()
        self._sending: tuple[ProxiedRequest, Branch] | None = None

    def active(self) -> list[ProxiedRequest]:
        return list(self._by_server.values())

    def close(self) -> None:
        """Stop every Timer C (service shutdown); transactions are the layer's to close."""
        for context, branch in list(self._by_client.values()):
            self._stop_timer_c(branch)
        for context in list(self._by_server.values()):
            for branch in context.branches:
                self._stop_timer_c(branch)
        self._by_client.clear()
        self._by_server.clear()

    # ===== TransactionUser =====================================================================

    def request_received(self, request: Request, transaction: Any) -> None:
        if request.method == "CANCEL":
            self._cancel_received(request, transaction)
            return
        context = ProxiedRequest(request, transaction.connection, transaction)
        self._by_server[id(transaction)] = context
        # RFC 3261 §16.2: a stateful proxy answers an INVITE with 100 Trying at once.
        if request.method == "INVITE":
            transaction.respond(rules.make_local_response(request, 100))
        # RFC 3261 §16.3 steps 1–5.
        problem = validate_request(request, self.settings.supported_option_tags)
        if isinstance(problem, AnswerOptionsLocally):
            # §16.3 step 3: Max-Forwards 0 on an OPTIONS: we answer it as a UAS.
            problem = rules.make_local_response(request, 200, to_tag=new_tag())
        if problem is not None:
            self._respond_locally(context, rules.with_to_tag(problem))
            return
        # RFC 3261 §16.3 step 4 (optional): loop detection with our own branch hash.
        if self.settings.loop_detection and rules.is_loop(request, self._is_own_sent_by):
            self._respond_locally(context, rules.make_local_response(request, 482, to_tag=new_tag()))
            return
        working = request.copy()
        rules.mark_source(working, transaction.connection)  # RFC 3261 §18.2.1, RFC 3581 §4
        context.own_routes_removed = rules.process_own_routes(working, self.policy.is_own_uri)  # §16.4
        context.request = working
        try:
            decided = self.policy.route_request(context)
        except Exception:
            self._policy_failed(context, Failure())
            return
        if is_deferred(decided):
            decided.addCallback(lambda decision: self._apply_decision(context, decision))
            decided.addErrback(lambda f: self._policy_failed(context, f))
        else:
            # No Deferred machinery on the common synchronous path (it costs per message).
            try:
                self._apply_decision(context, decided)
            except Exception:
                self._policy_failed(context, Failure())

    # ===== routing decisions =====================================================================

    def _apply_decision(self, context: ProxiedRequest, decision: "Decision | Sequence[Forward]") -> None:
        context.decision = decision  # type: ignore[assignment]
        if context.state is not _PROXY_ROUTING:
            return  # answered meanwhile
        if isinstance(decision, Reject):
            self._respond_locally(context, rules.with_to_tag(decision.response))
            return
        if context.cancelled:
            # RFC 3261 §16.10: cancelled before anything was forwarded → 487 ourselves.
            self._respond_locally(context, self._synthetic(context, 487))
            return
        # A list of Forwards is parallel forking (RFC 3261 §16.6: one branch per target).
        forwards = [decision] if isinstance(decision, Forward) else list(decision)
        if not forwards:
            self._respond_locally(context, self._synthetic(context, 480))
            return
        context.move_to(_PROXY_FORWARDING)
        seen: set[int] = set()
        for forward in forwards:
            outgoing = forward.request if id(forward.request) not in seen else forward.request.copy()
            seen.add(id(outgoing))
            rules.decrement_max_forwards(outgoing)  # RFC 3261 §16.6 step 3
            if forward.record_route and outgoing.method not in ("REGISTER", "CANCEL", "ACK"):
                rules.add_record_route(outgoing, forward.record_route)  # §16.6 step 4, RFC 5658 §4
            rules.apply_strict_route(outgoing)  # §16.6 step 6
            branch = Branch(outgoing, [], via_sent_by=forward.via_sent_by)
            context.branches.append(branch)
        for branch, forward in zip(list(context.branches), forwards):
            self._start_branch(context, branch, forward.destination)

    def _start_branch(self, context: ProxiedRequest, branch: Branch, destination: Destination) -> None:
        self._start_timer_c(context, branch)  # RFC 3261 §16.6 step 11
        if destination is not None and not isinstance(destination, (Target, list, tuple)):
            branch.connection = destination  # a Connection chosen by the policy (e.g. a flow)
            branch.on_flow = True
            self._send_branch(context, branch, destination)
            return
        def have_targets(found: list[Target]) -> None:
            branch.targets = list(found)
            if not branch.targets:
                log.info("{call_id}: no next hop for {uri}", call_id=_call_id(context),
                         uri=rules.next_hop_uri(branch.request)[:300])
                self._branch_final(context, branch, self._synthetic(context, 503, "No Route to Destination"))
                return
            self._try_next_target(context, branch)

        def failed(failure: Failure) -> None:
            # The resolver turns DNS and socket errors into "no targets"; anything still
            # reaching here is the same to the peer: §16.9, the next hop is unreachable.
            log.info("{call_id}: resolving the next hop failed: {why!r}", call_id=_call_id(context), why=failure.value)
            self._branch_final(context, branch, self._synthetic(context, 503))

        if isinstance(destination, Target):
            have_targets([destination])
        elif destination is not None:
            have_targets(list(destination))
        else:
            next_hop = rules.next_hop_uri(branch.request)  # §16.6 step 7
            found = self._targets_now(next_hop)
            if found is not None:
                have_targets(found)  # as the fired Deferred of ``_resolve`` would, without one
            else:
                self._resolve(next_hop).addCallbacks(have_targets, failed)

    def _targets_now(self, uri_text: str) -> list[Target] | None:
        """The next hop's targets when they are known at once, else None (``_resolve`` then):
        none for a URI that is not SIP, and a numeric host's (RFC 3263 §4.2: no DNS) — the
        next hop of every request of a call, which thus needs no Deferred."""
        try:
            uri = shared_uri(uri_text)  # read only (the resolver reads it): the memo's object, no copy
        except UriError:
            return []
        if not isinstance(uri, SipUri):
            return []
        resolve_numeric = getattr(self.resolver, "resolve_numeric", None)  # not every resolver has it
        return resolve_numeric(uri) if resolve_numeric is not None else None

    def _resolve(self, uri_text: str) -> defer.Deferred:
        try:
            uri = shared_uri(uri_text)  # read only, as in ``_targets_now``
        except UriError:
            return defer.succeed([])
        if not isinstance(uri, SipUri):
            return defer.succeed([])
        return self.resolver.resolve_uri(uri)

    def _policy_failed(self, context: ProxiedRequest, failure: Failure) -> None:
        log.failure("routing {method} failed", failure, method=context.request.method)
        if context.state is _PROXY_ROUTING:
            self._respond_locally(context, rules.make_local_response(context.request, 500, to_tag=new_tag()))

    # ===== branches ==============================================================================

    def _try_next_target(self, context: ProxiedRequest, branch: Branch) -> None:
        """RFC 3263 §4.3: next target of this branch, or its failure when none is left."""
        if branch.cancelled or context.state is not _PROXY_FORWARDING:
            self._branch_final(context, branch, self._synthetic(context, 487))
            return
        if not branch.targets:
            return
        target = branch.targets.pop(0)
        if branch.client_transaction is not None:
            self._by_client.pop(id(branch.client_transaction), None)  # the failed try is over
            branch.client_transaction = None

        def connected(connection: Connection, branch_id: str | None = None, prepared: Any = None) -> None:
            branch.connection = connection
            if branch.cancel_wanted or context.state is not _PROXY_FORWARDING:
                # Cancelled (or answered elsewhere) while connecting: never sent, so no CANCEL.
                self._branch_final(context, branch, self._synthetic(context, 487))
                return
            self._send_branch(context, branch, connection, branch_id, prepared)

        def failed(failure: Failure) -> None:
            log.info("cannot reach {target}: {why}", target=target, why=failure.value)
            self._branch_failed(context, branch, 503)  # RFC 3261 §16.9

        existing = self.connector.connection_for(target) if hasattr(self.connector, "connection_for") else None
        if existing is not None and existing.transport == "UDP" and target.transport.upper() == "UDP":
            # RFC 3261 §18.1.1 counts the request as it goes out, our Via included: make it for
            # this UDP connection and serialise it once, for the size check and for the send.
            branch_id = context.next_branch_id(self._secret)
            outgoing = self._with_own_via(branch, existing, branch_id)
            wire = outgoing.serialize()
            if len(wire) <= UDP_REQUEST_LIMIT or not hasattr(self.connector, "connect_for_request"):
                connected(existing, branch_id, (outgoing, wire))
                return
            # Too large for UDP → TCP to the same address (UDP if that fails), with the same
            # branch id; _send_branch writes the Via for whichever connection this gives.
            if outgoing is branch.request:
                outgoing.headers.replace_first("Via", None)  # the UDP Via just added: gone again
            self.connector.connect_for_request(target, len(wire)).addCallbacks(
                lambda connection: connected(connection, branch_id), failed
            )
            return
        size = self._udp_request_size(branch, target)
        if size > UDP_REQUEST_LIMIT and hasattr(self.connector, "connect_for_request"):
            # RFC 3261 §18.1.1: too large for UDP → TCP to the same address (UDP if that fails);
            # _send_branch writes the Via for whichever connection this gives.
            self.connector.connect_for_request(target, size).addCallbacks(connected, failed)
            return
        if existing is not None:
            connected(existing)  # an open connection: no Deferred needed
        else:
            self.connector.connect(target).addCallbacks(connected, failed)

    def _send_branch(
        self,
        context: ProxiedRequest,
        branch: Branch,
        connection: Connection,
        branch_id: str | None = None,
        prepared: tuple[Request, bytes] | None = None,
    ) -> None:
        """Send the branch's request on ``connection`` in a new client transaction; ``prepared``
        is that request already made (``_with_own_via``) and serialised for a UDP connection."""
        if context.state is not _PROXY_FORWARDING:
            return
        if prepared is not None:
            outgoing, wire = prepared
        else:
            if branch_id is None:
                branch_id = context.next_branch_id(self._secret)
            outgoing, wire = self._with_own_via(branch, connection, branch_id), None
        branch.sent_request = outgoing
        branch.attempt += 1
        branch.state = _BRANCH_CALLING
        if branch.attempt > 1:
            self._start_timer_c(context, branch)  # a new client transaction, a new Timer C
        # The layer may report a transport error from inside send_request: ``_sending``
        # lets the callbacks find this branch before send_request has returned.
        self._sending = (context, branch)
        try:
            layer = self._layer()
            if wire is None:
                transaction = layer.send_request(outgoing, connection, self)  # §16.6 step 10
            else:
                transaction = layer.send_request(outgoing, connection, self, wire=wire)
        except ConnectionLost as error:
            log.info("{call_id}: cannot send to {peer}: {why}", call_id=_call_id(context), peer=connection.remote, why=error)
            self._branch_failed(context, branch, self._transport_error_status(branch))
            return
        finally:
            self._sending = None
        if branch.state is _BRANCH_DONE or branch.client_transaction is not None:
            return  # already failed over or finished from inside send_request
        branch.client_transaction = transaction
        self._by_client[id(transaction)] = (context, branch)

    def _branch_failed(self, context: ProxiedRequest, branch: Branch, status: int) -> None:
        """Timeout (408, §16.8) or transport error (503, §16.9): failover or give up."""
        if branch.targets and not branch.cancelled and context.state is _PROXY_FORWARDING:
            context.responses.append(self._synthetic(context, status))  # still a candidate (§16.7 step 6)
            self._try_next_target(context, branch)
            return
        self._branch_final(context, branch, self._synthetic(context, status))

    def _synthetic(self, context: ProxiedRequest, status: int, reason: str | None = None) -> Response:
        """A response standing for a branch outcome we observed ourselves (timeout, transport
        failure, no route, cancelled before sending)."""
        response = rules.make_local_response(context.request_as_received, status, reason, to_tag=new_tag())
        context.local_responses.add(id(response))
        return response

    # ===== ClientTransactionUser ==================================================================

    def _lookup(self, transaction: Any) -> tuple[ProxiedRequest, Branch] | None:
        found = self._by_client.get(id(transaction))
        if found is None and self._sending is not None and self._sending[1].client_transaction is None:
            found = self._sending
            found[1].client_transaction = transaction
            self._by_client[id(transaction)] = found
        return found

    def response_received(self, response: Response, transaction: Any) -> None:
        found = self._lookup(transaction)
        rules.strip_own_via(response)  # RFC 3261 §16.7 step 3
        if found is None:
            if 200 <= response.status < 300:
                self._forward_statelessly(response)  # a late 2xx retransmission (§16.7 step 1)
            return
        context, branch = found
        status = response.status
        if status < 200:
            if branch.state in (_BRANCH_CALLING, _BRANCH_CONNECTING):
                branch.state = _BRANCH_PROCEEDING
            if context.is_invite and branch.state is not _BRANCH_DONE:
                self._start_timer_c(context, branch)  # §16.7 step 2: a provisional resets Timer C
            if branch.cancel_wanted and not branch.cancelled:
                self._send_cancel(branch)  # RFC 3261 §9.1: CANCEL after the first provisional
            if status != 100 and context.state is _PROXY_FORWARDING:
                self._forward_upstream(context, response)  # §16.7 step 5
            return
        if 200 <= status < 300:
            # §16.7 step 5: every 2xx goes upstream at once, even after another final.
            # Retransmissions of it (RFC 6026 Accepted state) then find no mapping and are
            # forwarded statelessly, so the mapping goes now: nothing outlives the transaction.
            self._by_client.pop(id(transaction), None)
            if branch.timer_c is not None:  # only an INVITE branch has one
                self._stop_timer_c(branch)
            branch.state = _BRANCH_DONE
            branch.final = response
            if context.state is _PROXY_FORWARDING:
                self._forward_upstream(context, response)
                context.move_to(_PROXY_COMPLETED)
                self._cancel_pending(context)  # §16.7 step 10
                self._ended(context)
            else:
                # The server transaction already has its final: a later 2xx (another fork,
                # or a retransmission) goes statelessly (RFC 3261 §16.7 step 5, RFC 6026).
                self._forward_statelessly(response)
            return
        if status == 503 and branch.targets and not branch.cancelled and context.state is _PROXY_FORWARDING:
            # RFC 3263 §4.3: a 503 sends the request to the next target.
            context.responses.append(response)  # still a candidate if every target fails
            self._try_next_target(context, branch)
            return
        self._branch_final(context, branch, response)

    def timed_out(self, transaction: Any) -> None:
        found = self._lookup(transaction)
        if found is None:
            return
        context, branch = found
        if branch.state is _BRANCH_DONE:
            return
        # RFC 3261 §16.8: no response → as if a 408 was received (after failover).
        self._branch_failed(context, branch, 408)

    def transport_failed(self, transaction: Any, reason: Any) -> None:
        found = self._lookup(transaction)
        if found is None:
            return
        context, branch = found
        if branch.state is _BRANCH_DONE:
            return
        log.info("{call_id}: {method} not delivered to {peer}: {why}", call_id=_call_id(context),
                 method=branch.request.method, peer=branch.connection.remote if branch.connection else "?", why=reason)
        self._branch_failed(context, branch, self._transport_error_status(branch))

    @staticmethod
    def _transport_error_status(branch: Branch) -> int:
        """RFC 3261 §16.9: a transport error counts as a 503 (after failover); on a flow the
        policy chose, the flow itself has failed: RFC 5626 §5.3.1, 430 (Flow Failed)."""
        return 430 if branch.on_flow else 503

    # ===== final responses (§16.7 steps 4, 6–10) ==================================================

    def _branch_final(self, context: ProxiedRequest, branch: Branch, response: Response) -> None:
        if branch.state is _BRANCH_DONE:
            return
        if branch.client_transaction is not None:
            self._by_client.pop(id(branch.client_transaction), None)  # this try is over
        self._stop_timer_c(branch)
        branch.state = _BRANCH_DONE
        branch.final = response
        context.responses.append(response)  # §16.7 step 4
        if context.state is not _PROXY_FORWARDING:
            return
        if response.status >= 600:
            self._cancel_pending(context)  # §16.7 step 5: a 6xx cancels the other branches
        if all(b.state is _BRANCH_DONE for b in context.branches):
            best = rules.choose_best_response(context.responses)  # §16.7 step 6
            if best is None:
                best = self._synthetic(context, 408)
            best = rules.merge_challenges(best, context.responses)  # §16.7 step 7
            if id(best) not in context.local_responses:
                # §16.7 step 6: a 503 received from downstream goes up as 500.  Our own 503
                # (§16.9: the next hop is unreachable or unresolvable) is forwarded as is: that
                # we cannot reach it holds for any request, which is when a 503 may go up.
                best = rules.outgoing_final(best)
            context.move_to(_PROXY_COMPLETED)
            self._forward_upstream(context, best)
            self._ended(context)

    def _forward_upstream(self, context: ProxiedRequest, response: Response) -> None:
        """§16.7 step 9: through the policy to the server transaction, in arrival order even
        when the policy answers with a Deferred (later responses queue behind it)."""
        context.upstream.append(response)
        if len(context.upstream) == 1:
            self._drain_upstream(context)

    def _drain_upstream(self, context: ProxiedRequest) -> None:
        while context.upstream:
            response = context.upstream[0]
            try:
                rewritten = self.policy.response_to_forward(context, response)
            except Exception:
                log.failure("policy.response_to_forward failed; response dropped")
                rewritten = None
            if is_deferred(rewritten):

                def done(result: Response | None) -> None:
                    self._send_upstream(context, result)
                    context.upstream.pop(0)
                    self._drain_upstream(context)

                def failed(failure: Failure) -> None:
                    log.failure("policy.response_to_forward failed; response dropped", failure)
                    done(None)

                rewritten.addCallbacks(done, failed)
                return
            self._send_upstream(context, rewritten)
            context.upstream.pop(0)

    def _send_upstream(self, context: ProxiedRequest, response: Response | None) -> None:
        if response is None:
            return
        try:
            context.server_transaction.respond(response)
        except Exception:
            log.failure("response {status} not forwarded", status=response.status)
            return
        if self.replays is not None and 200 <= response.status < 300 and context.is_invite:
            # Its retransmissions (RFC 3261 §13.3.1.4) will be copies of it: sent on the same way.
            self.replays.forwarded(response, context.connection)

    def _respond_locally(self, context: ProxiedRequest, response: Response) -> None:
        if context.state in (_PROXY_COMPLETED, _PROXY_TERMINATED):
            return
        context.move_to(_PROXY_COMPLETED)
        try:
            context.server_transaction.respond(response)
        except Exception:
            log.failure("could not answer {method} locally", method=context.request.method)
        self._ended(context)

    def _ended(self, context: ProxiedRequest) -> None:
        self._by_server.pop(id(context.server_transaction), None)
        for branch in context.branches:  # ``all(...)`` without a generator: once per request
            if not (branch.state is _BRANCH_DONE or branch.cancelled):
                break
        else:
            self._forget_branches(context)
        try:
            self.policy.transaction_ended(context)
        except Exception:
            log.failure("policy.transaction_ended failed")

    def _forget_branches(self, context: ProxiedRequest) -> None:
        for branch in context.branches:
            if branch.timer_c is not None:  # only an INVITE branch has one
                self._stop_timer_c(branch)
        context.move_to(_PROXY_TERMINATED) if context.state is _PROXY_COMPLETED else None

    # ===== ProxyOperations: what the policy's call manager may ask ===============================

    def cancel_branches(self, context: ProxiedRequest) -> None:
        """CANCEL every pending branch of ``context`` (RFC 3261 §9.1; after the first
        provisional).  Used by the eP-CSCF's call manager to release an early call."""
        self._cancel_pending(context)

    def respond_upstream(self, context: ProxiedRequest, response: Response) -> None:
        """Answer ``context`` ourselves now (ignored once it has a final response).
        Used by the call manager to end an early call it releases (WS closed, ICE failure)."""
        self._respond_locally(context, rules.with_to_tag(response))

    def send_request(self, request: Request, connection: Connection, user: ClientTransactionUser) -> None:
        """A request of the policy's own (a BYE ending a call) in its own client transaction."""
        self._layer().send_request(request, connection, user)

    def _layer(self) -> TransactionSender:
        if self.transactions is None:
            raise RuntimeError("StatefulProxy has no transaction layer")
        return self.transactions


def _call_id(context: ProxiedRequest) -> str:
    """The Call-ID for a log line (bounded: it is the peer's text)."""
    return (context.request_as_received.headers.get("call-id") or "-")[:200]
