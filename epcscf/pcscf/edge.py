"""The eP-CSCF's routing policy: where each request goes and what it must carry.

The proxy core (``epcscf.sip.proxy``) applies RFC 3261 §16; this policy adds
what makes it a P-CSCF at a WebSocket edge:

* from the WIC (a WS/WSS flow): REGISTER gets our Path with the flow token
  (RFC 3327, RFC 5626 §5.1) and goes to the core; other requests need a
  registration on that flow (else 403, TS 24.229 §5.2.6.3.1), lose any
  trust-domain header and get our P-Asserted-Identity (RFC 3325); initial ones
  follow the stored Service-Route (RFC 3608 §6) and are Record-Routed twice
  (core-facing and WIC-facing, RFC 5658 §4); in-dialog ones only along a dialog we
  Record-Routed on that very flow (``epcscf.pcscf.guard``), else 403;
* from the core: requests are delivered on the flow named by the flow token in
  our Path/Record-Route URI (RFC 5626 §5.3.1): a tampered token is 403, a closed
  flow 430 (Flow Failed); they are never routed by resolving the WIC's Contact
  (`.invalid` hosts, RFC 7118 §5.3); without a token only trusted core addresses
  (``[core] trusted_sources``) are served, others get 403;
* INVITE dialogs are handed to the call manager, which rewrites SDP.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Protocol, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from epcscf.pcscf import guard
from epcscf.pcscf.aka import strip_aka_keys, strip_sec_agree
from epcscf.pcscf.call_model import call_leg
from epcscf.pcscf.edge_collaborators import EdgeCollaborators
from epcscf.pcscf.flows import FlowTable, TamperedToken
from epcscf.pcscf.identity import assert_identity, strip_core_only_headers, strip_untrusted_headers
from epcscf.pcscf.registration import Registrations
from epcscf.sip.connection import WEBSOCKET_TRANSPORTS, Connection
from epcscf.sip.headers import HeaderError, has_option_tag, parse_via, to_tag
from epcscf.sip.message import Request, Response, new_tag
from epcscf.sip.proxy import Decision, Forward, ProxiedRequest, Reject
from epcscf.sip.proxy_policy import DIALOG_CREATING_METHODS, is_deferred
from epcscf.sip.proxy_rules import list_values, make_local_response, name_addr_uri
from epcscf.sip.resolver import Target
from epcscf.sip.uri import SipUri, UriError, parse_uri, shared_uri

log = Logger(namespace="epcscf.pcscf.edge")



def _asks_outbound(contacts: list[str]) -> bool:
    """RFC 5626 §4.2: a UA that wants outbound puts reg-id in its Contact."""
    for value in contacts:
        if "reg-id" in value or "reg-id" in value.lower():  # lower-case as written: no copy
            return True
    return False


# RFC 7315 §4.6: the ICID must be globally unique.  A random 64-bit prefix per process and a
# counter give that (same 32 hex digits as before) without asking the OS for 16 random bytes
# on every REGISTER and every initial request.
_ICID_PREFIX = secrets.token_hex(8)
_icid_counter = itertools.count(1)


def new_icid() -> str:
    """A fresh, globally unique ICID value (32 lower-case hex digits)."""
    return f"{_ICID_PREFIX}{next(_icid_counter):016x}"


@dataclass(frozen=True)
class RegisterLeg:
    """Attached to a proxied REGISTER (``ProxiedRequest.attached``): what its 2xx needs."""

    outbound: bool  # the UA asked for RFC 5626 outbound: the binding is kept per flow


#: the two RegisterLegs (frozen: shared; a frozen dataclass costs a ``__setattr__`` per field to make)
_REGISTER_LEGS = {False: RegisterLeg(False), True: RegisterLeg(True)}


@dataclass(frozen=True)
class EdgeAddresses:
    """The URIs the eP-CSCF puts in Path, Record-Route and Via, per side."""

    core_host: str  # core-facing address (the [sip] listener or its public address)
    core_port: int
    core_transport: str  # "udp" | "tcp" | "tls"
    wic_host: str  # WIC-facing address (the [ws] listener)
    wic_port: int
    wic_transport: str  # "ws" | "wss"

    def core_uri(self, user: str | None = None, ob: bool = False) -> str:
        user_part = f"{user}@" if user else ""
        return f"sip:{user_part}{self.core_host}:{self.core_port};transport={self.core_transport};lr" + (";ob" if ob else "")

    @cached_property
    def _path_tails(self) -> tuple[str, str]:
        """What follows the flow token in our Path value, without and with ``;ob``."""
        tail = f"@{self.core_host}:{self.core_port};transport={self.core_transport};lr"
        return f"{tail}>", f"{tail};ob>"

    def path_value(self, token: str, ob: bool = False) -> str:
        """``<core_uri(token, ob)>``: the Path value naming one flow (RFC 3327, RFC 5626 §5.1)."""
        return "<sip:" + token + self._path_tails[ob]

    @cached_property
    def charging_vector_tail(self) -> str:
        """What follows the ICID in the P-Charging-Vector we add (RFC 7315 §4.6)."""
        return f";icid-generated-at={self.core_host}"

    def wic_uri(self, token: str) -> str:
        return f"sip:{token}@{self.wic_host}:{self.wic_port};transport={self.wic_transport};lr"

    @cached_property  # read for every request forwarded (the fields are frozen)
    def core_sent_by(self) -> str:
        return f"{self.core_host}:{self.core_port}"

    @cached_property
    def wic_sent_by(self) -> str:
        return f"{self.wic_host}:{self.wic_port}"

    def is_wic_side(self, uri: SipUri) -> bool:
        """Our WIC-facing address: where the WIC-side Record-Route entry points (RFC 5658 §4)."""
        return uri.host_without_brackets == self.wic_host and uri.port in (self.wic_port, None)

    def is_own(self, uri: SipUri) -> bool:
        port = uri.port
        host = uri.host_without_brackets
        return (host == self.core_host and port in (self.core_port, None)) or (
            host == self.wic_host and port in (self.wic_port, None)
        )


class CallHooks(Protocol):
    """What the edge asks of the call manager (``epcscf.pcscf.calls``)."""

    def originating_invite(self, context: ProxiedRequest, identity: str, forward: Forward) -> Decision | defer.Deferred: ...

    def terminating_invite(self, context: ProxiedRequest, flow: Connection, forward: Forward) -> Decision | defer.Deferred: ...

    def in_dialog_request(self, context: ProxiedRequest, forward: Forward, from_wic: bool) -> Decision | defer.Deferred: ...

    def response(self, context: ProxiedRequest, response: Response) -> Response | None | defer.Deferred: ...

    def cancel_received(self, context: ProxiedRequest) -> None: ...

    def transaction_ended(self, context: ProxiedRequest) -> None: ...

    def flow_for_call(self, call_id: str) -> Connection | None: ...

    def wic_route_matches(self, request: Request, flow: Connection) -> bool | None:
        """Whether a WIC's in-dialog request keeps the saved route set; None: no such dialog."""

    def stray_response(self, response: Response) -> Response | None: ...


class PcscfPolicy:
    """``ProxyPolicy`` of the eP-CSCF (see module docstring)."""

    def __init__(
        self,
        addresses: EdgeAddresses,
        flows: FlowTable,
        registrations: Registrations,
        core_next_hop: Sequence[Target] | None,
        network_id: str,
        calls: CallHooks | None = None,
        next_hop_resolver: Callable[[], list[Target] | defer.Deferred] | None = None,
        collaborators: EdgeCollaborators = EdgeCollaborators(),
    ) -> None:
        self.addresses = addresses
        self.flows = flows
        self.registrations = registrations
        #: where REGISTER and requests without a Service-Route go (None: resolve the Route/R-URI)
        self.core_next_hop = list(core_next_hop) if core_next_hop else None
        self.network_id = network_id
        self.calls = calls
        #: when no fixed next hop: the configured I-CSCF/S-CSCF URIs' targets, at once when
        #: they are numeric, else as a Deferred[list[Target]]
        self.next_hop_resolver = next_hop_resolver
        #: admission, observers, reconnections, reg-event hooks: each with a no-op default
        self.collaborators = collaborators

    @property
    def network_id(self) -> str:
        return self._network_id

    @network_id.setter
    def network_id(self, value: str) -> None:
        self._network_id = value
        self._visited_network_id = f'"{value}"'  # TS 24.229 §5.2.2.1: a quoted-string, same on every REGISTER

    # --- ProxyPolicy ------------------------------------------------------------------------

    def is_own_uri(self, uri: str) -> bool:
        try:
            parsed = shared_uri(uri)  # read only: the memo's object, not a copy of it
        except UriError:
            return False
        return isinstance(parsed, SipUri) and self.addresses.is_own(parsed)

    def route_request(self, context: ProxiedRequest) -> Decision | defer.Deferred:
        if (refusal := self.collaborators.admission(context)) is not None:
            return refusal
        if context.connection.transport in WEBSOCKET_TRANSPORTS:
            return self._from_wic(context)
        return self._from_core(context)

    def response_to_forward(self, context: ProxiedRequest | None, response: Response) -> Response | None | defer.Deferred:
        toward_wic = context is not None and context.connection.transport in WEBSOCKET_TRANSPORTS
        if context is None:
            toward_wic = self._next_via_is_websocket(response)
        if toward_wic:
            strip_core_only_headers(response)
            if context is not None and context.request.method == "REGISTER" and response.status >= 200:
                if response.status in (401, 407):
                    strip_aka_keys(response)  # TS 24.229 §5.2.2.1: ck/ik are the P-CSCF's, never the UE's
                if response.status < 300:
                    self._record_registration(context, response)
                collaborators = self.collaborators
                collaborators.on_register_response(response.status)
                collaborators.on_register_final(context, response)
            elif context is not None and 200 <= response.status < 300 and context.request.method == "SUBSCRIBE":
                self.collaborators.wic_subscriptions.subscribe_answered(context.request_as_received, response, context.connection.id)
        if context is not None and self.calls is not None and call_leg(context) is not None:
            return self.calls.response(context, response)
        if context is None and self.calls is not None:
            # A 2xx forwarded without its transaction (retransmission, fork, race with a release):
            # its SDP must be rewritten like the first one, never relayed raw.
            return self.calls.stray_response(response)
        return response

    def response_destination(self, response: Response) -> Target | Connection | None:
        if self._next_via_is_websocket(response) and self.calls is not None:
            # RFC 7118 §5.3: never resolve a WIC's Via; a 2xx retransmission goes on the call's flow.
            call_id = response.headers.get("Call-ID") or ""
            flow = self.calls.flow_for_call(call_id)
            if flow is not None:
                return flow
        return None

    def transaction_ended(self, context: ProxiedRequest) -> None:
        if self.calls is not None and call_leg(context) is not None:
            self.calls.transaction_ended(context)

    def cancel_received(self, context: ProxiedRequest, cancel: Request) -> None:
        if self.calls is not None and call_leg(context) is not None:
            self.calls.cancel_received(context)

    # --- from the WIC -------------------------------------------------------------------------

    def _from_wic(self, context: ProxiedRequest) -> Decision | defer.Deferred:
        request = context.request
        flow = context.connection
        token = self.flows.token_for(flow)
        if request.method == "REGISTER":
            return self._register(context, token)
        if request.method == "ACK" and context.server_transaction is None:
            # ACK for a 2xx (RFC 3261 §13.2.2.4): its own transaction, along the dialog's Route set.
            return self._in_dialog_from_wic(context)
        in_dialog = to_tag(request) is not None
        if in_dialog:
            return self._in_dialog_from_wic(context)
        binding = self.registrations.registration_for_request(flow.id)
        if binding is None:
            # TS 24.229 §5.2.6.3.1: only registered WICs may originate.
            return self._refuse(context, "wic", guard.NOT_REGISTERED)
        strip_untrusted_headers(request)
        identity = assert_identity(request, list(binding.associated_uris))
        self._add_charging_vector(request)
        record_route: list[str] = []
        if request.method in DIALOG_CREATING_METHODS:
            # RFC 5658 §4: one entry per side; the WIC-facing one carries the flow token.
            record_route = [self.addresses.core_uri(), self.addresses.wic_uri(token)]
        forward = self._initial_toward_core(request, binding.service_route, record_route)
        if request.method == "INVITE" and self.calls is not None:
            calls = self.calls
            if is_deferred(forward):
                return forward.addCallback(lambda resolved: calls.originating_invite(context, identity, resolved))
            return calls.originating_invite(context, identity, forward)
        return forward

    def _initial_toward_core(
        self, request: Request, service_route: Sequence[str], record_route: Sequence[str]
    ) -> Forward | defer.Deferred:
        """The one way every initial request of a registered WIC reaches the core, whatever its
        method: TS 24.229 §5.2.6.3.3 / RFC 3608 §6 — the P-CSCF builds the route set from the
        binding's Service-Route; without one (a plain RFC 3261 registrar returns none) the
        request goes to the configured core entry point (``[core] next_hop``, RFC 3263
        failover).  Whatever Route the WIC preloaded is replaced, never followed: the WIC
        may not choose the eP-CSCF's next hop (RFC 3261 §16.4 leaves that to local policy)."""
        if service_route:
            request.headers.replace_all("Route", list(service_route))
            return Forward(request, None, record_route, self.addresses.core_sent_by)
        request.headers.remove("Route")
        return self._toward_core(request, record_route)

    def _in_dialog_from_wic(self, context: ProxiedRequest) -> Decision | defer.Deferred:
        """An in-dialog request or ACK for a 2xx from the WIC: forwarded only along a dialog we
        Record-Routed on this very flow (see ``epcscf.pcscf.guard`` for the rule and its clauses)."""
        request = context.request
        flow = context.connection
        received = context.request_as_received  # an ACK for a 2xx has no server transaction: its own copy
        reconnections = self.collaborators.reconnections
        refusal = guard.check_wic_route(
            received, flow.id, self.addresses.is_wic_side, self.flows.codec,
            lambda named: reconnections.adopted(named, received, flow),
        )
        if refusal is None:
            refusal = self._dialog_route_refusal(request, flow)
        if refusal is not None:
            return self._refuse(context, "wic", refusal)
        strip_untrusted_headers(request)
        forward = Forward(request, None, (), self.addresses.core_sent_by)
        if self.calls is not None:
            return self.calls.in_dialog_request(context, forward, from_wic=True)
        return forward

    def _dialog_route_refusal(self, request: Request, flow: Connection) -> guard.Refusal | None:
        """TS 24.229 §5.2.6.3: in an INVITE dialog the call manager holds, the Route set behind
        our entries (and, without one, the Request-URI) must be the saved one; in any other
        dialog the flow must hold a registration and the next hop must be the core."""
        known = self.calls.wic_route_matches(request, flow) if self.calls is not None else None
        if known is not None:
            return None if known else guard.ROUTE_SET
        binding = self.registrations.registration_for_request(flow.id)
        if binding is None:
            return guard.NOT_REGISTERED
        if not guard.next_hop_is_core(request, binding.service_route, self.collaborators.trusted_sources, self.core_next_hop or ()):
            return guard.NOT_TOWARD_CORE
        return None

    def _refuse(self, context: ProxiedRequest, side: str, refusal: guard.Refusal) -> Reject:
        """403 with the refusal's reason phrase (an ACK gets none: the proxy drops a Reject of an
        ACK), one log line and one count; nothing is forwarded and no name is resolved."""
        request = context.request
        connection = context.connection
        where = connection.id if side == "wic" else str(connection.remote)
        log.info(
            "refused {method} from the {side} ({where}): {reason}, Call-ID {call_id}",
            method=request.method,
            side=side,
            where=where,
            reason=refusal.reason,
            call_id=request.headers.get("Call-ID") or "",
        )
        self.collaborators.on_refused(side, refusal.reason)
        return Reject(make_local_response(request, 403, refusal.phrase, to_tag=new_tag()))

    def _register(self, context: ProxiedRequest, token: str) -> Decision:
        if (refusal := self.collaborators.register_access(context)) is not None:
            return refusal
        request = context.request
        strip_untrusted_headers(request)
        strip_sec_agree(request)  # TS 24.371 §6: TLS protects W2, no RFC 3329 agreement with the core
        headers = request.headers
        # RFC 5626 §5.1: an edge proxy adds ;ob to its Path URI when the UA asked for outbound.
        outbound = _asks_outbound(headers.get_all("contact"))
        headers.insert_first("Path", self.addresses.path_value(token, outbound))
        # RFC 3327 §5.2: tell the registrar that Path is used.
        if not has_option_tag(request, "supported", "path"):
            headers.add("Supported", "path")
        # TS 24.229 §5.2.2.1: P-Visited-Network-ID and a fresh ICID on every REGISTER.
        headers.add("P-Visited-Network-ID", self._visited_network_id)
        self._add_charging_vector(request)
        context.attached = _REGISTER_LEGS[outbound]
        return self._toward_core(request)

    def _toward_core(self, request: Request, record_route: Sequence[str] = ()) -> Decision | defer.Deferred:
        """Send to the configured core entry point (the I-CSCF), whatever the Request-URI says."""
        sent_by = self.addresses.core_sent_by
        if self.core_next_hop is not None or self.next_hop_resolver is None:
            return Forward(request, self.core_next_hop, record_route, sent_by)
        targets = self.next_hop_resolver()
        if is_deferred(targets):
            return targets.addCallback(lambda found: Forward(request, found, record_route, sent_by))
        return Forward(request, targets, record_route, sent_by)  # the proxy goes on synchronously

    def _record_registration(self, context: ProxiedRequest, response: Response) -> None:
        register = context.request_as_received
        leg = context.attached
        flow = self.flows.find(context.connection.id)
        origin = flow.origin if flow is not None else None
        flow_id = context.connection.id
        core_entry = self.collaborators.core_entry
        known = self.registrations.for_flow(flow_id) if core_entry else []
        bindings = self.registrations.record(register, response, flow_id, origin, isinstance(leg, RegisterLeg) and leg.outbound)
        if bindings:
            self.collaborators.on_registered(bindings)
        if core_entry:
            for binding in bindings:
                if not binding.service_route and all(binding is not old for old in known):
                    # Once per binding (a refresh keeps it): a plain RFC 3261 registrar gives no
                    # Service-Route (RFC 3608), so say where originating requests will go.
                    log.info(
                        "registration of {aor} on flow {flow} has no Service-Route: its originating requests go to {next_hop}",
                        aor=binding.aor, flow=flow_id, next_hop=core_entry,
                    )

    def _add_charging_vector(self, request: Request) -> None:
        # RFC 7315 §4.6 / TS 24.229 §5.2.6.3.3: a globally unique ICID generated here.  The
        # WIC's own P-Charging-Vector is gone (strip_untrusted_headers runs first): add, not set.
        request.headers.add("P-Charging-Vector", "icid-value=" + new_icid() + self.addresses.charging_vector_tail)

    # --- from the core ------------------------------------------------------------------------

    def _from_core(self, context: ProxiedRequest) -> Decision | defer.Deferred:
        request = context.request
        received = context.request_as_received  # an ACK for a 2xx has no server transaction: its own copy
        token = self._flow_token(received)
        collaborators = self.collaborators
        trusted = collaborators.trusted_sources
        if token is None and trusted is not None and not trusted.allows(context.connection.remote):
            # A border element: only the core, or a request that followed our Path/Record-Route.
            return self._refuse(context, "core", guard.UNTRUSTED_SOURCE)
        if token is None and request.method == "NOTIFY" and self.is_own_uri(received.uri):
            # TS 24.229 §5.2.3: a NOTIFY of our own reg-event subscription is answered here.
            return Reject(collaborators.own_notify(received))
        if token is None:
            if context.server_transaction is None:
                return Reject(make_local_response(request, 404))
            if request.method == "OPTIONS" and self.is_own_uri(received.uri):
                return Reject(make_local_response(request, 200, to_tag=new_tag()))  # keep-alive probes
            return Reject(make_local_response(request, 404, "Not Found (no flow token)", to_tag=new_tag()))
        try:
            flow_id = self.flows.codec.decode(token)
        except TamperedToken:
            return self._refuse(context, "core", guard.BAD_TOKEN)
        # A dialog of a lost flow may wait for its WIC, or live on on the flow that adopted it.
        moved = collaborators.reconnections.route_for(flow_id, received)
        if isinstance(moved, Response):
            return Reject(moved)
        flow = self.flows.find(flow_id) if moved is None else None
        if moved is not None:
            connection = moved
        elif flow is not None:
            connection = flow.connection
        else:
            # RFC 5626 §5.3.1: the flow the token names is gone.
            return Reject(make_local_response(request, 430, to_tag=new_tag()))
        strip_core_only_headers(request)
        if request.method == "NOTIFY":
            collaborators.wic_subscriptions.notify_passing(request, connection.id)
        record_route: list[str] = []
        if request.method in DIALOG_CREATING_METHODS and to_tag(request) is None:
            record_route = [self.addresses.wic_uri(token), self.addresses.core_uri()]
        forward = Forward(request, connection, record_route, self.addresses.wic_sent_by)
        if self.calls is not None:
            if request.method == "INVITE" and to_tag(request) is None:
                return self.calls.terminating_invite(context, connection, forward)
            if to_tag(request) is not None:
                return self.calls.in_dialog_request(context, forward, from_wic=False)
        return forward

    def _flow_token(self, received: Request) -> str | None:
        """The user part of our own URI in the Route set (Path or Record-Route) or Request-URI."""
        candidates = [name_addr_uri(value) for value in list_values(received.headers, "Route")] + [received.uri]
        for text in candidates:
            try:
                uri = parse_uri(text)
            except UriError:
                continue
            if isinstance(uri, SipUri) and self.addresses.is_own(uri) and uri.user:
                return uri.user
        return None

    def _next_via_is_websocket(self, response: Response) -> bool:
        vias = list_values(response.headers, "Via")
        if not vias:
            return False
        try:
            return parse_via(vias[0]).transport.upper() in WEBSOCKET_TRANSPORTS
        except HeaderError:
            return False

