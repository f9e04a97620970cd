"""Request routing of the embedded core (S-CSCF and I-CSCF roles, TS 24.229 §5.3-5.4).

Theory of operation
-------------------
Every request other than REGISTER that reaches the core is routed by
``CoreRouter.route(request)``, a pure decision over the request and the
location service:

* an in-dialog request (To tag present) follows its Route set and Request-URI:
  the proxy forwards it unchanged (RFC 3261 §16.6; we Record-Routed the
  initial request, so we are on its route);
* an initial request whose Request-URI names one of our public identities is
  *terminating* (TS 24.229 §5.4.3.3): unknown identity → 404, no live binding
  → 480, otherwise one destination per binding, most recently registered first
  (forked in parallel, RFC 3261 §16.6), each with Request-URI = the registered
  contact and Route = the stored Path (RFC 3327 §5.4);
* an initial request toward a URI outside our domain is forwarded to that URI
  when it is *originating*, i.e. it arrived with our Service-Route URI on top
  of its Route (RFC 3608 §5, TS 24.229 §5.4.3.2); from elsewhere it is refused
  with 403 so that the core is not an open relay.

The Route preprocessing of RFC 3261 §16.4 (removing our own URI from the top
of Route) is the proxy's; the router is told whether that URI was our
Service-Route (``originating``).  ``CoreProxyPolicy`` is the ``ProxyPolicy`` of
``epcscf.sip.proxy.StatefulProxy`` that applies these decisions: it rewrites
the Request-URI and Route set of terminating requests, adds P-Called-Party-ID
(TS 24.229 §5.4.3.3) and Record-Routes dialog-creating requests so that
in-dialog requests pass the core too (RFC 3261 §16.6 step 4).

A user registered from several places rings everywhere at once: one Forward
per binding makes the proxy fork in parallel (RFC 3261 §16.6), most recently
registered first; the first 2xx wins and the other branches are CANCELled
(§16.7 step 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer

from epcscf.core.location import LocationService, aor_of
from epcscf.core.randomness import random_hex
from epcscf.sip import proxy_rules as rules
from epcscf.sip.headers import HeaderError, to_tag
from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.proxy_policy import DIALOG_CREATING_METHODS, DefaultRoutingPolicy, Forward, Reject
from epcscf.sip.uri import SipUri, TelUri, Uri, UriError, parse_name_addr_list, parse_uri

if TYPE_CHECKING:
    from epcscf.sip.connection import Connection
    from epcscf.sip.proxy import ProxiedRequest
    from epcscf.sip.resolver import Target

# TS 24.229 §5.4.3.2 / RFC 3608: the user part of our Service-Route URI marks originating requests.
ORIGINATING_USER = "orig"


@dataclass(frozen=True)
class Destination:
    """Where one branch goes: its Request-URI and the Route set to put in front (RFC 3327 §5.4)."""

    request_uri: str
    route: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForwardTo:
    """Proxy the request to these destinations (one branch each, most recent binding first)."""

    destinations: tuple[Destination, ...]
    #: TS 24.229 §5.4.3.3: the identity that was called, for P-Called-Party-ID
    called_party: str | None = None
    #: the AOR whose bindings the destinations are (terminating requests only)
    aor: str | None = None


@dataclass(frozen=True)
class FollowRoute:
    """Proxy the request as it is: its Route set and Request-URI decide (RFC 3261 §16.6 step 6-7)."""


@dataclass(frozen=True)
class CoreBinding:
    """Attached to a request forwarded to one registered contact (``ProxiedRequest.attached``):
    the binding a 430 from the edge proxy removes (RFC 5626 §5.3)."""

    aor: str
    contact: str


@dataclass(frozen=True)
class Refuse:
    status: int
    reason: str | None = None


RoutingDecision = ForwardTo | FollowRoute | Refuse

#: public identity (``sip:bob@ims.localdomain``, ``tel:+1555...``) → the AOR its bindings are under, or None
IdentityResolver = Callable[[str], "str | None"]


class CoreRouter:
    """Routing policy of the embedded core."""

    def __init__(self, domain: str, location: LocationService, resolve_identity: IdentityResolver) -> None:
        self.domain = domain.lower()
        self.location = location
        self.resolve_identity = resolve_identity

    def route(self, request: Request, originating: bool) -> RoutingDecision:
        """Decide where ``request`` goes; ``originating``: it arrived with our Service-Route on top."""
        try:
            in_dialog = to_tag(request) is not None
            if in_dialog or (request.headers.get("route") and not originating):
                # RFC 3261 §16.6: a pre-existing route set (a dialog we record-routed, or a
                # loose route through us) is followed as it is.
                return FollowRoute()
            target = parse_uri(request.uri)
            if self.is_home(target):
                return self._terminating(target)
            if originating:
                # TS 24.229 §5.4.3.2: toward a non-home target the S-CSCF forwards on the Request-URI.
                return ForwardTo((Destination(request.uri),))
            return Refuse(403, "Not Relaying For Foreign Domains")
        except (HeaderError, UriError) as error:
            return Refuse(400, "Bad Request (" + " ".join(str(error).split()) + ")")

    def is_home(self, uri: Uri) -> bool:
        """A URI in our home domain, or a tel URI (which only our users' identities can be here)."""
        if isinstance(uri, TelUri):
            return True
        return isinstance(uri, SipUri) and uri.host.lower() == self.domain

    def _terminating(self, target: Uri) -> RoutingDecision:
        identity = aor_of(target)
        aor = self.resolve_identity(identity)
        if aor is None:
            # TS 24.229 §5.3.2.1 (I-CSCF): the HSS does not know the called identity.
            return Refuse(404, "Not Found")
        bindings = self.location.bindings(aor)
        if not bindings:
            # TS 24.229 §5.4.3.3 / RFC 3261 §10: known but not registered.
            return Refuse(480, "Temporarily Unavailable")
        destinations = tuple(Destination(b.contact, b.path) for b in bindings)
        return ForwardTo(destinations, called_party=identity, aor=aor)


def is_originating_route(route_value: str, own_hosts: set[tuple[str, int]]) -> bool:
    """``route_value`` (a Route header value) starts with our Service-Route URI (``sip:orig@us;lr``)."""
    try:
        uri = parse_name_addr_list(route_value)[0].uri
    except UriError:
        return False
    if not isinstance(uri, SipUri) or uri.user != ORIGINATING_USER or "lr" not in uri.params:
        return False
    return (uri.host_without_brackets.lower(), uri.port or 5060) in own_hosts


class CoreProxyPolicy:
    """``ProxyPolicy`` of the embedded core's StatefulProxy: ``CoreRouter`` decisions applied."""

    def __init__(
        self,
        router: CoreRouter,
        transports: Any,
        resolver: Any,
        service_route_hosts: Callable[[], set[tuple[str, int]]],
    ) -> None:
        self.router = router
        self.resolver = resolver
        self.service_route_hosts = service_route_hosts
        # Our own URIs and Record-Route entries are those of a plain proxy on our listeners.
        self._own = DefaultRoutingPolicy(transports, resolver)

    def is_own_uri(self, uri: str) -> bool:
        return self._own.is_own_uri(uri)

    def route_request(self, context: "ProxiedRequest") -> "Forward | Reject | defer.Deferred":
        received = context.request_as_received
        routes = rules.list_values(received.headers, "route")
        originating = bool(routes) and is_originating_route(routes[0], self.service_route_hosts())
        request = context.request
        decision = self.router.route(request, originating)
        if isinstance(decision, Refuse):
            return Reject(make_response(request, decision.status, decision.reason, to_tag=random_hex(6)))
        if isinstance(decision, FollowRoute):
            return self._forward(context, [request], record=False)
        branches = [self._branch_request(request, decision, destination) for destination in decision.destinations]
        if decision.aor is not None and len(decision.destinations) == 1:
            # Remembered so that a 430 from the edge proxy can remove this binding (RFC 5626).
            context.attached = CoreBinding(decision.aor, decision.destinations[0].request_uri)
        return self._forward(context, branches, record=True)

    @staticmethod
    def _branch_request(request: Request, decision: ForwardTo, destination: Destination) -> Request:
        """The copy of ``request`` for one destination (one branch of a parallel fork)."""
        branch = request.copy()
        remaining = rules.list_values(branch.headers, "route")
        branch.uri = destination.request_uri
        # RFC 3327 §5.4: the stored Path becomes the Route set toward the registered UA.
        branch.headers.replace_all("Route", list(destination.route) + remaining)
        if decision.called_party is not None:
            # TS 24.229 §5.4.3.3: the terminating S-CSCF tells the UA which identity was called.
            branch.headers.set("P-Called-Party-ID", f"<{decision.called_party}>")
        return branch

    def _forward(self, context: "ProxiedRequest", requests: list[Request], record: bool) -> defer.Deferred:
        """Resolve each request's next hop (RFC 3263); one Forward per reachable request.

        Several Forwards make the proxy fork in parallel (RFC 3261 §16.6: every binding
        of the called user rings at once); none reachable → 404.
        """
        request = context.request
        lookups: list[defer.Deferred] = []
        for outgoing in requests:
            try:
                next_hop = parse_uri(rules.next_hop_uri(outgoing))
            except UriError:
                next_hop = None
            if not isinstance(next_hop, SipUri):
                lookups.append(defer.succeed([]))
                continue
            lookups.append(defer.maybeDeferred(self.resolver.resolve_uri, next_hop))

        def decide(found: "list[list[Target]]") -> "Forward | list[Forward] | Reject":
            forwards: list[Forward] = []
            for outgoing, targets in zip(requests, found):
                if not targets:
                    continue
                record_route: list[str] = []
                if record and outgoing.method in DIALOG_CREATING_METHODS:
                    # RFC 3261 §16.6 step 4: stay on the path of the dialog (RFC 5658 §4 if transports differ).
                    record_route = self._own.record_route_for(context.connection.transport, targets[0].transport)
                forwards.append(Forward(outgoing, targets, record_route))
            if not forwards:
                return Reject(make_response(request, 404, "No Route To Destination", to_tag=random_hex(6)))
            return forwards[0] if len(forwards) == 1 else forwards

        return defer.gatherResults(lookups, consumeErrors=True).addCallback(decide)

    def response_to_forward(self, context: "ProxiedRequest | None", response: Response) -> Response:
        binding = context.attached if context is not None else None
        if response.status == 430 and isinstance(binding, CoreBinding):
            # RFC 5626 §5.3/§7: the edge proxy says the flow behind this binding is gone: the
            # binding is stale, so drop it; upstream the user is simply unavailable.
            stale = self.router.location.find(binding.aor, binding.contact)
            if stale is not None:
                self.router.location.remove(stale)
            response.status, response.reason = 480, "Temporarily Unavailable (Flow Failed)"
        return response

    def response_destination(self, response: Response) -> "Target | Connection | None":
        return None

    def transaction_ended(self, context: "ProxiedRequest") -> None:
        pass

    def cancel_received(self, context: "ProxiedRequest", cancel: Request) -> None:
        pass
