"""Stateless forwarding in the stateful proxy (RFC 3261 §16.11), a mixin of ``StatefulProxy``.

What goes through with no transaction of ours: an ACK for a 2xx (its own transaction,
§13.2.2.4), forwarded along its Route set, and a response no client transaction claims
(a retransmitted 2xx, §16.7 step 1; a later 2xx of a fork, RFC 6026), sent to its next Via.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from epcscf.sip import proxy_rules as rules
from epcscf.sip.connection import Connection
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_policy import Decision, Destination, Forward, ProxiedRequest, ProxyPolicy, is_deferred
from epcscf.sip.replay import StatelessReplays
from epcscf.sip.resolver import Target

if TYPE_CHECKING:
    from epcscf.sip.proxy_ports import Connector

# The proxy's log namespace: these lines read as they did before the split.
log = Logger(namespace="epcscf.sip.proxy")


class StatelessForwarding:
    """ACKs for 2xx and stray responses, for ``StatefulProxy``."""

    #: copies of what is forwarded here, sent on by the transports unparsed (None: none kept)
    replays: StatelessReplays | None = None

    if TYPE_CHECKING:
        connector: Connector
        policy: ProxyPolicy
        _secret: bytes

        def _is_own_via(self, via_text: str) -> bool: ...

        def _sent_by(self, connection: Connection) -> str: ...

        def _resolve(self, uri_text: str) -> defer.Deferred: ...

        def _targets_now(self, uri_text: str) -> list[Target] | None: ...

    def ack_received(self, request: Request, connection: Connection) -> None:
        """RFC 3261 §16.11 / §13.2.2.4: an ACK for a 2xx is its own transaction: forward it
        statelessly along its Route set."""
        if (request.headers.get("max-forwards") or "").strip() == "0":
            return  # RFC 3261 §16.3 step 3: cannot go further, and an ACK is never answered
        branch_id = rules.branch_for(request, 0, self._secret)  # §16.11: stateless branch
        working = request.copy()
        rules.mark_source(working, connection)
        removed = rules.process_own_routes(working, self.policy.is_own_uri)  # §16.4
        context = ProxiedRequest(working, connection, None, original=request, own_routes_removed=removed)
        # One ACK a call: decided and sent at once when the policy and the next hop allow it
        # (a plain decision, a numeric next hop), through Deferreds only where one is given;
        # whatever fails is logged as the Deferred chain logged it.
        try:
            decided = self.policy.route_request(context)
            if is_deferred(decided):
                sent = decided.addCallback(self._forward_ack, branch_id)
            else:
                sent = self._forward_ack(decided, branch_id)
        except Exception as error:
            _ack_not_forwarded(Failure(error))
            return
        if is_deferred(sent):
            sent.addErrback(_ack_not_forwarded)

    def _forward_ack(self, decision: Decision, branch_id: str) -> Any:
        if not isinstance(decision, Forward):
            return None  # an ACK is never answered
        outgoing = decision.request
        rules.decrement_max_forwards(outgoing)  # §16.6 step 3
        rules.apply_strict_route(outgoing)  # §16.6 step 6
        candidates = self._destinations_now(decision.destination, outgoing)
        if candidates is not None:
            return self._send_stateless(outgoing, candidates, decision.via_sent_by, branch_id)
        return self._resolve(rules.next_hop_uri(outgoing)).addCallback(
            lambda found: self._send_stateless(outgoing, found, decision.via_sent_by, branch_id)
        )

    def stray_response_received(self, response: Response, connection: Connection) -> None:
        """RFC 3261 §16.7 step 1 / §16.11: a response with no transaction (retransmitted 2xx
        of an INVITE, typically) is forwarded statelessly if the top Via is ours."""
        vias = rules.list_values(response.headers, "via")
        if len(vias) < 2 or not self._is_own_via(vias[0]):
            return  # RFC 3261 §18.1.2: not ours → discard
        rules.strip_own_via(response)
        self._forward_statelessly(response)

    def _forward_statelessly(self, response: Response) -> None:
        """Send a response (our Via already removed) to its next Via (RFC 3261 §18.2.2)."""
        destination = self.policy.response_destination(response)
        if destination is None:
            vias = rules.list_values(response.headers, "via")
            destination = rules.via_target(vias[0]) if vias else None
        if destination is None:
            return
        target = destination
        outgoing = defer.maybeDeferred(self.policy.response_to_forward, None, response)

        def send(rewritten: Response | None) -> Any:
            if rewritten is None:
                return None
            if isinstance(target, Target):
                return self.connector.connect(target).addCallback(lambda c: c.send_message(rewritten))
            target.send_message(rewritten)
            if self.replays is not None:
                self.replays.forwarded(rewritten, target)  # its copies go the same way (§16.11)
            return None

        outgoing.addCallback(send).addErrback(lambda f: log.info("response not forwarded: {why}", why=f.value))

    def _destinations_now(self, destination: Destination, request: Request) -> list[Any] | None:
        """Where a stateless request goes when that is known at once (given by the policy, or
        a next hop needing no DNS); None: ``_resolve`` the next hop."""
        if isinstance(destination, Target):
            return [destination]
        if destination is not None and not isinstance(destination, (list, tuple)):
            return [destination]
        if destination is not None:
            return list(destination)
        return self._targets_now(rules.next_hop_uri(request))

    def _send_stateless(self, request: Request, candidates: list[Any], via_sent_by: str | None, branch_id: str) -> Any:
        """Send a request without a transaction (ACK for 2xx): the first reachable candidate."""
        if not candidates:
            return None
        first = candidates[0]

        def send(connection: Connection) -> None:
            rules.add_via(request, connection.transport, via_sent_by or self._sent_by(connection), branch_id)
            if self.replays is None:
                connection.send_message(request)
            else:
                self.replays.send(request, connection)  # and its copies the same way (§16.11)

        if isinstance(first, Target):
            # An open connection (the core's UDP socket, every ACK of a call): sent at once,
            # as the fired Deferred of ``connect`` would send it.
            existing = self.connector.connection_for(first) if hasattr(self.connector, "connection_for") else None
            if existing is None:
                return self.connector.connect(first).addCallback(send)
            first = existing
        send(first)
        return None


def _ack_not_forwarded(failure: Failure) -> None:
    log.info("ACK not forwarded: {why}", why=failure.value)
