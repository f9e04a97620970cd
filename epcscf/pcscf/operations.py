"""What operations may ask of a running eP-CSCF, and what it tells them: one small interface.

Theory of operation
-------------------
The console, the Prometheus metrics and the drain/reload logic (``epcscf.ops``) never reach
into the flow table, the transaction layer, the WebSocket factory or the call manager.
They call ``NodeOperations`` — plain data in, plain data out (dicts of str/int/float,
lists of them) — so that a supervisor can later ask the same questions of each worker
process over AMP.  ``PcscfOperations`` implements it on one ``PcscfNode``.

Events that leave no state behind (a refused handshake, an unparseable message, a
REGISTER's final status…) go the other way: the node is given one ``NodeObservers`` at
construction and hands each callback to the layer that sees the event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet import defer

from epcscf.config import Config
from epcscf.pcscf import call_view
from epcscf.pcscf.admission import Refusal
from epcscf.pcscf.media_engine import engine_snapshot
from epcscf.sip.headers import to_tag
from epcscf.sip.parser import ParserLimits
from epcscf.sip.proxy_policy import Reject
from epcscf.sip.proxy_rules import make_local_response
from epcscf.sip.transaction_client import ClientTransaction
from epcscf.sip.transaction_machine import State
from epcscf.sip.transaction_server import ServerTransaction

if TYPE_CHECKING:
    from epcscf.pcscf.node import PcscfNode

#: the two directions of relayed media in ``calls()`` records (``packets``, ``bytes``)
MEDIA_DIRECTIONS = call_view.DIRECTIONS


@dataclass(frozen=True)
class NodeObservers:
    """Callbacks for events that leave no state behind (metrics); given once, at construction."""

    #: a WebSocket opening handshake refused: ``origin``, ``subprotocol``, ``draining``…
    ws_refused: Callable[[str], None] | None = None
    #: a SIP message that did not parse, by transport (``ws``)
    parse_error: Callable[[str], None] | None = None
    #: the final status of a WIC's REGISTER, passed toward the WIC
    register_response: Callable[[int], None] | None = None
    #: a request refused at the border (``epcscf.pcscf.guard``): side (wic, core), reason
    request_refused: Callable[[str, str], None] | None = None
    #: a request refused by admission control (``epcscf.pcscf.admission``), by reason
    admission_refused: Callable[[str], None] | None = None
    #: a WebSocket flow closed
    flow_closed: Callable[[], None] | None = None
    #: a registration binding ended, by reason
    registration_ended: Callable[[str], None] | None = None
    #: a non-SIP WIC's Janus API request refused, by Janus error code (``epcscf.pcscf.nonsip_gateway``)
    janus_refused: Callable[[int], None] | None = None
    #: a step of our reg-event subscriptions (``epcscf.pcscf.reg_event``): subscribed, notify…
    reg_event: Callable[[str], None] | None = None
    #: a WIC's token refused (``epcscf.pcscf.web_auth``), by reason
    token_refused: Callable[[str], None] | None = None


class NodeOperations(Protocol):
    """What ``epcscf.ops`` may ask of one eP-CSCF (see the module docstring)."""

    def stats(self) -> dict[str, Any]: ...

    def handles_calls(self) -> bool: ...

    def pending_transactions(self) -> int: ...

    def resource_counts(self) -> dict[str, int]: ...

    def media_engine(self) -> dict[str, Any]: ...

    def pending_client_transactions(self) -> int: ...

    def registrations(self) -> list[dict[str, Any]]: ...

    def flows(self) -> list[dict[str, Any]]: ...

    def calls(self) -> list[dict[str, Any]]: ...

    def call_timeline(self, call_id: str) -> list[dict[str, Any]]: ...

    def release_call(self, call_id: str, reason: str) -> int | None: ...

    def disconnect_flow(self, flow_id: str, code: int, reason: str) -> bool: ...

    def update_limits(self, max_message_size: int, max_headers: int, max_line_length: int) -> None: ...

    def update_ws_settings(
        self,
        allowed_origins: tuple[str, ...],
        allow_any_origin: bool,
        allow_missing_origin: bool,
        max_message_size: int,
        ping_interval: float,
        ping_timeout: float,
    ) -> None: ...

    def update_overload(self, **settings: Any) -> None: ...

    def use_config(self, config: Config) -> None: ...

    def reload_token_keys(self) -> tuple[str, str] | None:
        """Re-read the web login's key file; (before, after) when its keys changed, else None."""

    def set_draining(self, retry_after: int) -> None: ...

    def stop_accepting(self) -> defer.Deferred: ...


def refuse_while_draining(request: Any, retry_after: int) -> Reject | None:
    """The 503 for a dialog-creating INVITE (no To tag); None for everything else."""
    if request.method != "INVITE" or to_tag(request) is not None:
        return None
    # RFC 3261 §21.5.4: 503 with Retry-After; the WIC's next attempt finds another eP-CSCF.
    response = make_local_response(request, 503, "Service Unavailable (shutting down)")
    response.headers.add("Retry-After", str(retry_after))
    return Reject(response)


def draining_check(retry_after: int) -> Callable[[Any], Refusal | None]:
    """``refuse_while_draining`` as a check of the node's admission chain."""

    def check(context: Any) -> Refusal | None:
        refused = refuse_while_draining(context.request, retry_after)
        return None if refused is None else Refusal("draining", refused.response)

    return check


class PcscfOperations:
    """``NodeOperations`` of one ``PcscfNode``: reads its live objects, returns plain data."""

    def __init__(self, node: "PcscfNode") -> None:
        self.node = node
        #: set once by ``set_draining``: new dialogs are refused from then on
        self.draining = False

    # --- figures --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """One snapshot of the node's figures (the console's ``stats()``, the metrics' gauges)."""
        node = self.node
        factory = node.ws_factory
        live = call_view.live_calls(node.calls)
        directions = [call.summary()["direction"] for call in live]
        servers, clients = self._transaction_counts()
        return {
            "ws_connections": len(factory.connections) if factory is not None else 0,
            "flows": len(node.flows),
            "registrations": len(node.registrations.all()),
            "calls_originating": directions.count("originating"),
            "calls_terminating": directions.count("terminating"),
            "calls_ended": len(call_view.ended_calls(node.calls)),
            "server_transactions": servers,
            "client_transactions": clients,
            "pending_transactions": self.pending_transactions(),
            "draining": self.draining,
            "overloaded": node.overload.overloaded,
            # new INVITEs refused before a transaction (epcscf.pcscf.early_refusal), their ACKs absorbed
            "stateless_responses": node.transactions.stateless.responses,
            "stateless_acks_absorbed": node.transactions.stateless.acks_absorbed,
            **self._reconnection_counts(),
        }

    def _reconnection_counts(self) -> dict[str, int]:
        """Calls waiting for their WIC to come back, and how such waits ended ([calls] reconnect_grace)."""
        suspensions = node_calls.suspensions if (node_calls := self.node.calls) is not None else None
        if suspensions is None:
            return {"calls_suspended": 0, "calls_reconnected": 0, "calls_not_reconnected": 0}
        return {"calls_suspended": len(suspensions), "calls_reconnected": suspensions.adopted_total,
                "calls_not_reconnected": suspensions.expired_total}

    def handles_calls(self) -> bool:
        """Whether calls go through a call manager here (the node has started)."""
        return self.node.calls is not None

    def media_engine(self) -> dict[str, Any]:
        """The media engine ([media] engine) and, for rtpengine, each node's state and ng counts."""
        return engine_snapshot(self.node.media_engine)

    def resource_counts(self) -> dict[str, int]:
        """Live counts of everything a call or a flow holds, for ``/metrics`` and the console.

        After traffic stops and the timers have run, every count returns to its idle value
        (transactions, calls, agents, sessions and ports to zero); one that does not is a leak.
        """
        node = self.node
        servers, clients = self._transaction_counts()
        media = node.media_engine.resource_counts() if node.media_engine is not None else {}
        return {
            "server_transactions": servers,
            "client_transactions": clients,
            "sip_timers": node.transactions.pending_timers(),
            "calls": len(node.calls.calls()) if node.calls is not None else 0,
            "ice_agents": media.get("ice_agents", 0),
            "dtls_sessions": media.get("dtls_sessions", 0),
            "media_ports_in_use": media.get("media_ports_in_use", 0),
            "media_ports_parked": media.get("media_ports_parked", 0),
            "delayed_calls": len(node.reactor.getDelayedCalls()),
            "asyncio_tasks": _asyncio_tasks(),
        }

    def _transaction_counts(self) -> tuple[int, int]:
        """(server, client) transactions alive now."""
        transactions = self.node.transactions.transactions()
        servers = sum(1 for transaction in transactions if isinstance(transaction, ServerTransaction))
        return servers, len(transactions) - servers

    def pending_transactions(self) -> int:
        """Server transactions that have not sent their final response yet (RFC 3261 §17.2)."""
        return sum(
            1
            for transaction in self.node.transactions.transactions()
            if isinstance(transaction, ServerTransaction) and transaction.state in (State.TRYING, State.PROCEEDING)
        )

    def pending_client_transactions(self) -> int:
        """Client transactions still waiting for a final response (RFC 3261 §17.1; our BYEs among them)."""
        return sum(
            1
            for transaction in self.node.transactions.transactions()
            if isinstance(transaction, ClientTransaction) and transaction.state in (State.CALLING, State.TRYING, State.PROCEEDING)
        )

    # --- listings -------------------------------------------------------------------------------

    def registrations(self) -> list[dict[str, Any]]:
        """Registered contacts, by AOR then age; times are the node clock's seconds."""
        bindings = sorted(self.node.registrations.all(), key=lambda b: (b.aor, b.registered_at))
        return [
            {
                "aor": binding.aor,
                "identities": tuple(binding.associated_uris),
                "flow": binding.flow_id,
                "origin": binding.origin,
                "registered_at": binding.registered_at,
                "expires_at": binding.expires_at,
                "instance": binding.instance_id,
            }
            for binding in bindings
        ]

    def flows(self) -> list[dict[str, Any]]:
        """Open WebSocket flows, oldest first."""
        node = self.node
        return [
            {
                "flow": flow.id,
                "transport": flow.connection.transport,
                "peer": str(flow.connection.remote),
                "origin": flow.origin,
                "opened": flow.opened,
                "open": flow.open,
                "registrations": len(node.registrations.for_flow(flow.id)),
            }
            for flow in sorted(node.flows, key=lambda f: f.opened)
        ]

    def calls(self) -> list[dict[str, Any]]:
        """Live calls, then those ended in the last ``[calls] history`` seconds (``live`` says which)."""
        manager = self.node.calls
        return [call_view.call_record(call, True) for call in call_view.live_calls(manager)] + [
            call_view.call_record(call, False) for call in call_view.ended_calls(manager)
        ]

    def call_timeline(self, call_id: str) -> list[dict[str, Any]]:
        """The timelines of the calls with this Call-ID, in ``calls()`` order."""
        manager = self.node.calls
        every = call_view.live_calls(manager) + call_view.ended_calls(manager)
        return [entry for call in every if call.call_id == call_id for entry in call_view.timeline_records(call)]

    # --- actions --------------------------------------------------------------------------------

    def release_call(self, call_id: str, reason: str) -> int | None:
        """End a live call from the middle (BYE both sides, or CANCEL/480 if not answered yet);
        the number of calls released, None when no live call has this Call-ID."""
        manager = self.node.calls
        if not any(call.call_id == call_id for call in call_view.live_calls(manager)):
            return None
        assert manager is not None
        return manager.release(call_id, reason) or 0

    def disconnect_flow(self, flow_id: str, code: int, reason: str) -> bool:
        """Close a WIC's WebSocket with ``code`` (RFC 6455 §7.4.1); False when no such flow."""
        flow = next((f for f in self.node.flows if f.id == flow_id), None)
        if flow is None:
            return False
        if self.node.calls is not None:
            # The operator ends the calls with the flow: no [calls] reconnect_grace for them.
            self.node.calls.flow_closed(flow.connection, suspend=False)
        flow.connection.close(code, reason)
        return True

    def update_limits(self, max_message_size: int, max_headers: int, max_line_length: int) -> None:
        """[sip] parser limits: new TCP/TLS connections and the running UDP listeners use them."""
        transports = self.node.transports
        limits = ParserLimits(max_message_size=max_message_size, max_headers=max_headers, max_line_length=max_line_length)
        transports.update_settings(replace(transports.settings, limits=limits))

    def update_ws_settings(
        self,
        allowed_origins: tuple[str, ...],
        allow_any_origin: bool,
        allow_missing_origin: bool,
        max_message_size: int,
        ping_interval: float,
        ping_timeout: float,
    ) -> None:
        """[ws]: new handshakes see the new Origin policy; new connections the new limits and pings."""
        factory = self.node.ws_factory
        if factory is None:
            return
        settings = replace(
            factory.settings,  # frozen: replaced whole, never mutated
            allowed_origins=tuple(allowed_origins),
            allow_any_origin=allow_any_origin,
            allow_missing_origin=allow_missing_origin,
            max_message_size=max_message_size,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        factory.update_settings(settings)
        if self.node.janus_factory is not None:
            self.node.janus_factory.update_settings(settings)  # the non-SIP listener keeps the [ws] rules

    def update_overload(self, **settings: Any) -> None:
        """[overload] keys a reload may change (``epcscf.ops.lifecycle.LIVE_KEYS``): the next
        admission decision uses them."""
        self.node.update_overload(settings)

    def use_config(self, config: Config) -> None:
        """The running configuration after a reload (``[core] next_hop`` is read from it at each
        resolution); the settings held by live objects change through the ``update_…`` calls."""
        self.node.config = config

    def reload_token_keys(self) -> tuple[str, str] | None:
        verifier = self.node.token_access.verifier
        return verifier.reload() if verifier is not None else None

    def set_draining(self, retry_after: int) -> None:
        """Refuse new dialogs from now on: 503 with ``Retry-After: retry_after`` to a new INVITE."""
        self.draining = True
        if self.node.policy is not None:
            # One admission chain (epcscf.pcscf.admission): the drain's check goes first, the
            # overload and per-source checks stay behind it.
            self.node.admission.add_first("draining", draining_check(retry_after))

    def stop_accepting(self) -> defer.Deferred:
        """Close the WebSocket listeners: no new WIC connections; flows stay up."""
        return self.node.stop_accepting()


def _asyncio_tasks() -> int:
    """Tasks not done on the running asyncio loop (aioice's, under Twisted's asyncio reactor)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return 0  # not under a running loop (a test on task.Clock): nothing of aioice can run either
    return len(asyncio.all_tasks(loop))
