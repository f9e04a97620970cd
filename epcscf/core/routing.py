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
  (serial forking, RFC 3261 §16.6), each with Request-URI = the registered
  contact and Route = the stored Path (RFC 3327 §5.4);
* an initial request toward a URI outside our domain is forwarded to that URI
  when it is *originating*, i.e. it arrived with our Service-Route URI on top
  of its Route (RFC 3608 §5, TS 24.229 §5.4.3.2); from elsewhere it is refused
  with 403 so that the core is not an open relay.

The Route preprocessing of RFC 3261 §16.4 (removing our own URI from the top
of Route) is the proxy's; the router is told whether that URI was our
Service-Route (``originating``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from epcscf.core.fields import FieldError, aor_of, split_list, uri_of, uri_params
from epcscf.core.location import LocationService
from epcscf.sip.message import Request

# TS 24.229 §5.4.3.2 / RFC 3608: the user part of our Service-Route URI marks originating requests.
ORIGINATING_USER = "orig"


@dataclass(frozen=True)
class Destination:
    """Where one branch goes: its Request-URI and the Route set to put in front (RFC 3327 §5.4)."""

    request_uri: str
    route: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForwardTo:
    """Proxy the request to these destinations, in order (serial forking)."""

    destinations: tuple[Destination, ...]
    #: TS 24.229 §5.4.3.3: the identity that was called, for P-Called-Party-ID
    called_party: str | None = None


@dataclass(frozen=True)
class FollowRoute:
    """Proxy the request as it is: its Route set and Request-URI decide (RFC 3261 §16.6 step 6-7)."""


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
            in_dialog = _has_to_tag(request.headers.get("to") or "")
            if in_dialog or (request.headers.get("route") and not originating):
                # RFC 3261 §16.6: a pre-existing route set (a dialog we record-routed, or a
                # loose route through us) is followed as it is.
                return FollowRoute()
            target = request.uri
            if self.is_home(target):
                return self._terminating(target)
            if originating:
                # TS 24.229 §5.4.3.2: toward a non-home target the S-CSCF forwards on the Request-URI.
                return ForwardTo((Destination(target),))
            return Refuse(403, "Not Relaying For Foreign Domains")
        except FieldError as error:
            return Refuse(400, f"Bad Request ({error})")

    def is_home(self, uri: str) -> bool:
        """A URI in our home domain, or a tel URI (which only our users' identities can be here)."""
        aor = aor_of(uri)
        if aor.startswith("tel:"):
            return True
        host = aor.rpartition("@")[2]
        return host == self.domain

    def _terminating(self, target: str) -> RoutingDecision:
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
        return ForwardTo(destinations, called_party=identity)


def is_originating_route(route_value: str, own_hosts: set[tuple[str, int]]) -> bool:
    """``route_value`` (a Route header value) is our Service-Route URI (``sip:orig@us;lr``)."""
    items = split_list(route_value)
    if not items:
        return False
    uri = uri_of(items[0])
    scheme, _, rest = uri.partition(":")
    user, _, hostport = rest.split(";", 1)[0].rpartition("@")
    host, _, port = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "")
    try:
        port_number = int(port) if port else 5060
    except ValueError:
        return False
    return user == ORIGINATING_USER and (host.lower(), port_number) in own_hosts and "lr" in uri_params(uri)


def _has_to_tag(to_value: str) -> bool:
    # RFC 3261 §12.2: a To tag marks a request inside a dialog.
    tail = to_value[to_value.rfind(">") + 1 :] if ">" in to_value else to_value
    return any(p.strip().lower().startswith("tag=") for p in tail.split(";")[1:])
