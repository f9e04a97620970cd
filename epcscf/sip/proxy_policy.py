"""What the eP-CSCF decides for the proxy core: the ``ProxyPolicy`` hook and a default.

``StatefulProxy`` (``epcscf.sip.proxy``) applies RFC 3261 §16; everything a deployment
chooses — where a request goes, how it is rewritten, which of our addresses go into
Via/Record-Route, how responses are rewritten — is asked of a ``ProxyPolicy``.  Every
method may return a plain value or a Deferred (``route_request``, ``response_to_forward``).

The per-request context the policy is handed (``ProxiedRequest`` with its ``Branch``es and
``ProxyState``) lives here too, so that policy modules need not import the proxy engine; the
policy keeps its own typed record of a request in ``ProxiedRequest.attached``.  What the
policy side may ask of the proxy is ``ProxyOperations``; ``LateBoundProxy`` stands for the
proxy until it exists (the proxy needs the policy first).

``DefaultRoutingPolicy`` is a plain proxy: route by the top Route, else a static next-hop
list from config, else the Request-URI (RFC 3263), and record-route dialog-creating
requests (two entries when the transport changes, RFC 5658 §4).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, Union

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from epcscf.sip import proxy_rules as rules
from epcscf.sip.connection import Connection
from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.resolver import DEFAULT_PORTS, Target
from epcscf.sip.transaction_client import ClientTransactionUser
from epcscf.sip.uri import SipUri, UriError, parse_uri

Destination = Union[Target, Connection, Sequence[Target], None]


@dataclass
class Forward:
    """Send ``request`` on.  ``destination``: a Target, a list of Targets (tried in order), a
    Connection (e.g. a WebSocket flow), or None to resolve the next hop (top Route or R-URI,
    RFC 3263).  ``record_route``: URIs to add as Record-Route, top-down (RFC 5658: two when
    the request changes transport).  ``via_sent_by``: host[:port] for our Via (default: the
    local address of the outgoing connection's listener)."""

    request: Request
    destination: Destination = None
    record_route: Sequence[str] = ()
    via_sent_by: str | None = None


@dataclass
class Reject:
    """Answer the request with ``response`` (built with ``make_response``)."""

    response: Response


Decision = Union[Forward, Reject]


class ProxyPolicy(Protocol):
    """What the eP-CSCF layer decides; every method may be called for any request/response."""

    def is_own_uri(self, uri: str) -> bool:
        """True for a URI this proxy put in Record-Route (RFC 3261 §16.4)."""

    def route_request(self, context: "ProxiedRequest") -> "Decision | defer.Deferred":
        """Where ``context.request`` (our Routes removed, not yet otherwise changed) goes.
        ``context.server_transaction`` is None for requests forwarded statelessly (ACK)."""

    def response_to_forward(self, context: "ProxiedRequest | None", response: Response) -> "Response | None | defer.Deferred":
        """The response to send upstream (rewritten as needed) or None to drop it."""

    def response_destination(self, response: Response) -> "Target | Connection | None":
        """Where a statelessly forwarded response goes (None: the Via received/rport)."""

    def transaction_ended(self, context: "ProxiedRequest") -> None:
        """The proxied request got its final response upstream (or was abandoned)."""

    def cancel_received(self, context: "ProxiedRequest", cancel: Request) -> None:
        """A CANCEL matched this proxied INVITE (it is being cancelled downstream)."""




# --- per-request context (what the policy sees) ------------------------------------------------------------------------


class ProxyState(enum.Enum):
    __hash__ = object.__hash__  # members are singletons: identity hash (Enum's is Python code)

    ROUTING = "routing"  # waiting for the policy
    FORWARDING = "forwarding"  # branches pending
    COMPLETED = "completed"  # a final response went upstream
    TERMINATED = "terminated"  # everything done


_TRANSITIONS: dict[ProxyState, frozenset[ProxyState]] = {
    ProxyState.ROUTING: frozenset({ProxyState.FORWARDING, ProxyState.COMPLETED}),
    ProxyState.FORWARDING: frozenset({ProxyState.COMPLETED}),
    ProxyState.COMPLETED: frozenset({ProxyState.TERMINATED}),
    ProxyState.TERMINATED: frozenset(),
}


class BranchState(enum.Enum):
    __hash__ = object.__hash__  # identity, as ProxyState

    CONNECTING = "connecting"  # resolving / connecting / no response yet
    CALLING = "calling"  # request sent, no response yet
    PROCEEDING = "proceeding"  # a provisional arrived
    DONE = "done"  # a final response (or a synthetic one) arrived


@dataclass(eq=False, slots=True)  # one per request forwarded: no __dict__
class Branch:
    """One forwarded copy of the request (RFC 3261 §16.6) and its failover targets."""

    request: Request  # the copy prepared for this branch, without our Via
    targets: list[Target]
    connection: Connection | None = None
    client_transaction: Any = None
    sent_request: Request | None = None  # with our Via: what CANCEL must match
    state: BranchState = BranchState.CONNECTING
    final: Response | None = None
    timer_c: IDelayedCall | None = None
    cancel_wanted: bool = False  # RFC 3261 §9.1: CANCEL once a provisional arrives
    cancelled: bool = False
    attempt: int = 0
    via_sent_by: str | None = None
    #: sent on a connection the policy chose (an RFC 5626 flow), not on a resolved target
    on_flow: bool = False


@dataclass(eq=False, slots=True)
class ProxiedRequest:
    """The per-request context handed to the policy."""

    request: Request  # the working copy: our Routes removed; the policy may change it
    connection: Connection  # where it came from
    server_transaction: Any = None
    original: Request | None = None  # as received (loop hash and branch ids use it)
    #: how many Route values were ours (> 0: the request was loose-routed to us, e.g. in-dialog)
    own_routes_removed: int = 0
    state: ProxyState = ProxyState.ROUTING
    branches: list[Branch] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)  # finals received, in order
    cancelled: bool = False
    decision: Decision | None = None
    #: the policy's own typed record of this request (the eP-CSCF: the call leg or REGISTER it
    #: belongs to, ``epcscf.pcscf.call_model.CallLeg``); the proxy never reads it
    attached: object | None = None
    #: responses waiting to go upstream, in arrival order (RFC 3261 §16.7 step 9)
    upstream: list[Response] = field(default_factory=list)
    _branch_ids: Iterator[int] = field(default_factory=itertools.count)
    _loop_hash: str | None = None
    #: ids of the responses the proxy made up for its branches (see ``StatefulProxy._synthetic``)
    local_responses: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.original is None:
            self.original = self.request

    @property
    def request_as_received(self) -> Request:
        assert self.original is not None
        return self.original

    def move_to(self, state: ProxyState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"proxied request: no transition {self.state.name} → {state.name}")
        self.state = state

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def next_branch_id(self, secret: bytes) -> str:
        """The Via branch of this request's next client transaction (RFC 3261 §16.6 step 8):
        the loop hash of the request as received (§16.3 step 4, computed once) and a fresh
        per-request counter."""
        received = self.original  # ``request_as_received``: set since __post_init__
        assert received is not None
        if self._loop_hash is None:
            self._loop_hash = rules.loop_hash(received)
        return rules.branch_for(received, next(self._branch_ids), secret, self._loop_hash)


def is_deferred(value: object) -> bool:
    """``isinstance(value, Deferred)``, asked of every routing decision and every response the
    policy rewrites: ``Deferred`` is an ``Awaitable`` ABC, so ``isinstance`` with it runs
    ``ABCMeta.__instancecheck__`` (Python code) for every plain answer.  A Deferred's class
    has ``Deferred`` in its MRO (nothing registers virtual subclasses of it)."""
    return defer.Deferred in type(value).__mro__


class ProxyOperations(Protocol):
    """What the policy's call manager (``epcscf.pcscf.calls``) may ask of the proxy core:
    the proxy → policy direction is ``ProxyPolicy``; this is the other one."""

    def cancel_branches(self, context: ProxiedRequest) -> None:
        """CANCEL every pending branch of ``context`` (RFC 3261 §9.1, after a provisional)."""

    def respond_upstream(self, context: ProxiedRequest, response: Response) -> None:
        """Answer ``context`` ourselves now, with a To tag (ignored once it has a final)."""

    def send_request(self, request: Request, connection: Connection, user: ClientTransactionUser) -> None:
        """A request of our own (a BYE ending a call): its own client transaction (§17.1)."""


class LateBoundProxy:
    """``ProxyOperations`` handed out before the proxy exists: the proxy needs the policy,
    the policy needs the call manager, and the call manager needs the proxy.  Created first
    and typed; ``bind`` is called once, by whoever builds the graph (``epcscf.pcscf.node``)."""

    def __init__(self) -> None:
        self._proxy: ProxyOperations | None = None

    def bind(self, proxy: ProxyOperations) -> None:
        if self._proxy is not None:
            raise RuntimeError("LateBoundProxy is already bound")
        self._proxy = proxy

    @property
    def proxy(self) -> ProxyOperations:
        if self._proxy is None:
            raise RuntimeError("LateBoundProxy used before the proxy was built")
        return self._proxy

    def cancel_branches(self, context: ProxiedRequest) -> None:
        self.proxy.cancel_branches(context)

    def respond_upstream(self, context: ProxiedRequest, response: Response) -> None:
        self.proxy.respond_upstream(context, response)

    def send_request(self, request: Request, connection: Connection, user: ClientTransactionUser) -> None:
        self.proxy.send_request(request, connection, user)



# The requests that create dialogs: INVITE (RFC 3261 §12.1), SUBSCRIBE and NOTIFY (RFC 6665
# §4.1.2, §4.2.1), REFER (RFC 3515 §2.4.4, its implicit subscription).  Both the eP-CSCF and the
# default proxy Record-Route exactly these (RFC 3261 §16.6 step 4: to stay "on the path of
# future requests in a dialog created by this request").  Decision: no other method.  An
# in-dialog request's Record-Route is ignored, the route set being fixed when the dialog is
# created (RFC 3261 §12.2.1.2: a target refresh does not change it); UPDATE, PRACK, INFO and
# BYE only occur in dialogs, and MESSAGE creates none (RFC 3428 §4), so adding it there would
# only lengthen messages.
DIALOG_CREATING_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


class DefaultRoutingPolicy:
    """Route by Route header (or R-URI for a request that reached us through our own
    Record-Route), else ``next_hops`` (SIP URIs tried in order), else R-URI."""

    def __init__(
        self,
        transports: Any,
        resolver: Any,
        next_hops: Sequence[str] = (),
        *,
        public_host: str = "",
        record_route: bool = True,
    ) -> None:
        self._transports = transports  # TransportManager-like: local_address(transport)
        self._resolver = resolver  # NextHopResolver-like: resolve_uri(uri)
        self._next_hops = [parse_uri(uri) for uri in next_hops]
        # RFC 3263 §4.2: numeric next hops never need DNS: resolve them once, here.
        numeric = [resolver.resolve_numeric(uri) if isinstance(uri, SipUri) else [] for uri in self._next_hops]
        self._static_targets: list[Target] | None = (
            [t for found in numeric for t in found] if all(found is not None for found in numeric) else None
        )
        self._public_host = public_host
        self._record_route = record_route

    # -- our URIs
    def own_uri(self, transport: str) -> str | None:
        """``sip:host:port;transport=x;lr`` of our listener for ``transport``."""
        local = self._transports.local_address(transport)
        if local is None:
            return None
        host = self._public_host or local.host
        host = f"[{host}]" if ":" in host else host
        return f"sip:{host}:{local.port};transport={transport.lower()};lr"

    def is_own_uri(self, uri: str) -> bool:
        try:
            parsed = parse_uri(uri)
        except UriError:
            return False
        if not isinstance(parsed, SipUri):
            return False
        host = parsed.host.strip("[]")
        for transport in ("UDP", "TCP", "TLS"):
            local = self._transports.local_address(transport)
            if local is None or host not in (local.host, self._public_host):
                continue
            port = parsed.port or DEFAULT_PORTS[transport]
            if port == local.port:
                return True
        return False

    # -- requests
    def route_request(self, context: "ProxiedRequest") -> "Decision | defer.Deferred":
        request = context.request
        # A request loose-routed to us (in-dialog, our Record-Route came back as Route) follows
        # its Route set / R-URI; anything else goes to the configured next hops.
        follow_request = context.own_routes_removed > 0 or "route" in request.headers or not self._next_hops
        if not follow_request and self._static_targets is not None:
            return self._decide(context, self._static_targets)
        if follow_request:
            try:
                uris = [parse_uri(rules.next_hop_uri(request))]  # §16.6 step 7: Route, else R-URI
            except UriError as error:
                return Reject(make_response(request, 400, f"Bad Request (next hop: {error})"[:120]))
        else:
            uris = list(self._next_hops)
        sip_uris = [uri for uri in uris if isinstance(uri, SipUri)]

        def decide(results: list[list[Target]]) -> Decision:
            return self._decide(context, [target for found in results for target in found])

        # RFC 3263 §4.2: numeric hosts need no DNS: decide at once, without a Deferred.
        immediate = [self._resolver.resolve_numeric(uri) for uri in sip_uris]
        if all(found is not None for found in immediate):
            return decide(immediate)  # type: ignore[arg-type]
        resolving = [self._resolver.resolve_uri(uri) for uri in sip_uris]
        return defer.gatherResults(resolving, consumeErrors=True).addCallback(decide)

    def _decide(self, context: "ProxiedRequest", targets: list[Target]) -> Decision:
        record_route: list[str] = []
        if self._record_route and context.request.method in DIALOG_CREATING_METHODS and targets:
            record_route = self.record_route_for(context.connection.transport, targets[0].transport)
        return Forward(context.request, list(targets), record_route)

    def record_route_for(self, inbound: str, outbound: str) -> list[str]:
        """RFC 5658 §4: one entry, or two (outbound-facing first) when the transport changes."""
        out_uri = self.own_uri(outbound)
        in_uri = self.own_uri(inbound)
        if out_uri is None:
            return [in_uri] if in_uri else []
        if in_uri is None or inbound.upper() == outbound.upper():
            return [out_uri]
        return [out_uri, in_uri]

    # -- responses
    def response_to_forward(self, context: "ProxiedRequest | None", response: Response) -> Response:
        return response

    def response_destination(self, response: Response) -> None:
        return None

    def transaction_ended(self, context: "ProxiedRequest") -> None:
        pass

    def cancel_received(self, context: "ProxiedRequest", cancel: Request) -> None:
        pass
