"""What each side may ask the eP-CSCF to forward: the border checks before any routing.

Theory of operation
-------------------
An eP-CSCF is a border element (TS 24.229 §5.2, TS 24.371 §5): neither side may use it to
reach an arbitrary destination, and the core side trusts whatever leaves its core-facing
address.  So before the routing policy (``epcscf.pcscf.edge``) chooses a next hop, a request
must show that it belongs here:

* **From the WIC, in a dialog** (a To-tag, or an ACK for a 2xx): RFC 3261 §12.2.1.1 has the
  UA send it along the route set it learnt from Record-Route, whose first entry is the
  WIC-facing URI we Record-Routed (RFC 5658 §4).  Its user part is the flow token of the
  WebSocket the dialog was set up on (RFC 5626 §5.2).  The request is ours to forward only
  when the top Route, as received, is that URI, the token passes its HMAC check and it names
  the flow the request arrived on (``check_wic_route``).  Anything else is not a dialog
  through this proxy: 403 (an ACK is dropped: it is never answered, RFC 3261 §17.1.1.3).
  A token of another flow, live or closed, is refused like a forged one: it names another
  WebSocket, and only the connection a dialog was set up on may use it — or the flow that
  adopted that very dialog when the same UA instance registered again after its flow was
  lost (``epcscf.pcscf.call_suspension``; per Call-ID and tags, never for other dialogs).
* What follows our entries is the dialog's route set (RFC 3261 §16.4, §16.12).  A WIC
  holding a genuine token of its own could still write any Route or Request-URI behind it;
  TS 24.229 §5.2.6.3 has the P-CSCF verify a subsequent request's Route set against the one
  saved from the dialog-forming response and reject it otherwise.  The call manager keeps that
  route set (and the remote target, for a core that did not Record-Route) for every INVITE
  dialog; ``epcscf.pcscf.dialogs.Dialog.wic_route_matches`` is the comparison.  Other dialogs
  (SUBSCRIBE/NOTIFY, or an INVITE dialog already forgotten) are not remembered: for them the
  flow must hold a registration and the next hop behind our entries must be the core — a
  Service-Route hop of that registration, a trusted core source or the embedded core
  (``next_hop_is_core``, compared as written: no name is resolved for it).  So no WIC, not
  even a registered one with its own token, reaches a host of its choosing, nor bypasses the
  S-CSCF with a request dressed as in-dialog (TS 24.229 §5.2.6.3.3: originating requests
  go through the Service-Route).
* **Initial requests from the WIC** never follow a WIC-supplied Route: the eP-CSCF builds the
  route set from the Service-Route (TS 24.229 §5.2.6.3.3, in ``edge``), and the flow must be
  registered (TS 24.229 §5.2.6.3.1).
* **From the core** (UDP/TCP/TLS listeners): the source address must be a trusted core
  address (``[core] trusted_sources``; by default the resolved ``next_hop`` hosts, or the
  embedded core's listeners), or the request must carry one of our flow tokens that passes
  its HMAC check (it followed a Path or Record-Route we issued, RFC 3327, RFC 5626 §5.3.1).
  A NOTIFY of our own reg-event subscription (TS 24.229 §5.2.3) is addressed to our URI without
  a token: it too must come from a trusted core address, and must then match a subscription
  dialog of ours (Call-ID and our tag), else 481 (``epcscf.pcscf.reg_event``).

Every refusal is one info log line (flow or peer, Call-ID, reason) and one count of
``epcscf_requests_refused_total{side,reason}``; no refusal sends anything onward or
resolves a name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable

from epcscf.config import Network
from epcscf.pcscf.flows import FlowTokenCodec, TamperedToken
from epcscf.sip.connection import Address
from epcscf.sip.message import Request
from epcscf.sip.proxy_rules import list_values, name_addr_uri, next_hop_uri
from epcscf.sip.resolver import DEFAULT_PORTS, Target, is_numeric_host
from epcscf.sip.uri import SipUri, UriError, parse_uri, shared_uri

__all__ = ["Refusal", "SourceRule", "TrustedSources", "check_wic_route", "next_hop_is_core"]


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the counter label and the 403 reason phrase."""

    reason: str
    phrase: str


# The reasons (counter labels) and their reason phrases (RFC 3261 §21.4.4: 403 "Forbidden").
NOT_IN_DIALOG = Refusal("not_in_dialog", "Forbidden (not in a dialog through this proxy)")
BAD_TOKEN = Refusal("bad_token", "Forbidden (invalid flow token)")
OTHER_FLOW = Refusal("other_flow", "Forbidden (flow token of another connection)")
ROUTE_SET = Refusal("route_set", "Forbidden (Route does not match the dialog)")
NOT_TOWARD_CORE = Refusal("not_toward_core", "Forbidden (in-dialog request not toward the core)")
NOT_REGISTERED = Refusal("not_registered", "Forbidden (not registered)")
UNTRUSTED_SOURCE = Refusal("untrusted_source", "Forbidden (not a trusted core address)")


def check_wic_route(
    received: Request, flow_id: str, is_wic_side: Callable[[SipUri], bool], codec: FlowTokenCodec,
    adopted: Callable[[str], bool] | None = None,
) -> Refusal | None:
    """None when the top Route of an in-dialog request from the WIC, as received, is our
    WIC-side Record-Route URI with a token that verifies and names ``flow_id`` — or names a
    closed flow whose dialog this very request belongs to and ``flow_id`` adopted (``adopted``
    of the named flow id: ``epcscf.pcscf.call_suspension``, RFC 5626 §4.2 same instance)."""
    routes = list_values(received.headers, "Route")
    if not routes:
        return NOT_IN_DIALOG
    try:
        top = shared_uri(name_addr_uri(routes[0]))  # read only: the memo's object, no copy
    except UriError:
        return NOT_IN_DIALOG
    if not isinstance(top, SipUri) or not is_wic_side(top):
        return NOT_IN_DIALOG
    if not top.user:
        return BAD_TOKEN
    try:
        named = codec.decode(top.user)
    except TamperedToken:
        return BAD_TOKEN
    if named == flow_id or (adopted is not None and adopted(named)):
        return None
    return OTHER_FLOW


def next_hop_is_core(
    request: Request, service_route: Iterable[str], trusted: "TrustedSources | None", fixed: Iterable[Target] = ()
) -> bool:
    """Is the next hop of ``request`` (our Routes removed: top Route, else Request-URI, RFC 3261
    §16.12) a core hop: a Service-Route entry's host and port, a trusted core source or one of
    the fixed next hops?  Hosts are compared as written; nothing is resolved."""
    hop = _host_port(next_hop_uri(request))
    if hop is None:
        return False
    host, port = hop
    if any(_host_port(name_addr_uri(value)) == hop for value in service_route):
        return True
    if any(target.host == host and target.port == port for target in fixed):
        return True
    if trusted is None:
        return True  # no source policy configured (a bare policy in unit tests)
    return is_numeric_host(host) and trusted.allows(Address(host.strip("[]"), port))


def _host_port(text: str) -> tuple[str, int] | None:
    """(host, port) a URI sends to without DNS SRV: maddr over host (RFC 3263 §4), the
    transport's default port when none is written."""
    try:
        uri = parse_uri(text)
    except UriError:
        return None
    if not isinstance(uri, SipUri):
        return None
    host = (uri.params.get("maddr") or uri.host_without_brackets).strip("[]").lower()
    transport = (uri.params.get("transport") or ("tls" if uri.scheme.lower() == "sips" else "udp")).upper()
    return host, uri.port or DEFAULT_PORTS.get(transport, 5060)


# --- trusted core sources ----------------------------------------------------------------


_VERDICTS_KEPT = 1024


@dataclass(frozen=True)
class SourceRule:
    """A network and, optionally, the one source port allowed from it."""

    network: Network
    port: int | None = None

    def allows(self, host: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return host.version == self.network.version and host in self.network and self.port in (None, port)


class TrustedSources:
    """The core-side addresses whose requests need no flow token (see module docstring)."""

    def __init__(self, rules: Iterable[SourceRule] = ()) -> None:
        self._rules: list[SourceRule] = []
        #: (host, port) already added with ``add``: the next hops are re-added at every resolution
        self._hosts: set[tuple[str, int | None]] = set()
        #: verdicts of ``allows`` by (host, port), forgotten whenever the rules change; bounded,
        #: as sources are whatever the network sends from
        self._verdicts: dict[tuple[str, int], bool] = {}
        for rule in rules:
            self.add_rule(rule)

    def __len__(self) -> int:
        return len(self._rules)

    def add_rule(self, rule: SourceRule) -> None:
        if rule not in self._rules:
            self._rules.append(rule)
            self._verdicts.clear()

    def add(self, host: str, port: int | None = None) -> None:
        """Trust one numeric host (any source port when ``port`` is None)."""
        if (host, port) in self._hosts:
            return
        self._hosts.add((host, port))
        self.add_rule(SourceRule(ipaddress.ip_network(ipaddress.ip_address(host.strip("[]"))), port))

    def allows(self, source: Address) -> bool:
        key = (source.host, source.port)
        verdict = self._verdicts.get(key)
        if verdict is None:
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()
            verdict = self._verdicts[key] = self._allows(source)
        return verdict

    def _allows(self, source: Address) -> bool:
        try:
            host = ipaddress.ip_address(source.host.strip("[]"))
        except ValueError:
            return False
        if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
            host = host.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(rule.allows(host, source.port) for rule in self._rules)

    def describe(self) -> list[str]:
        return [f"{rule.network}" + (f" port {rule.port}" if rule.port is not None else "") for rule in self._rules]
