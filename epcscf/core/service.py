"""The embedded IMS core as a Twisted service: listeners + transactions + registrar + proxy.

Theory of operation
-------------------
``EmbeddedCore`` runs, in the eP-CSCF's own process, what would otherwise be an
external I-CSCF/S-CSCF, reached over real SIP on its own listeners (by default
``udp:127.0.0.1:5070``) exactly as an external core would be:

    TransportManager ──messages──▶ TransactionLayer ──requests──▶ CoreTransactionUser
                                                                   │ REGISTER → Registrar (UAS)
                                                                   │ SUBSCRIBE Event: reg → RegEventNotifier
                                                                   │ OPTIONS to the core → 200
                                                                   └ anything else → StatefulProxy
                                                                       (policy: CoreProxyPolicy)

REGISTER is answered locally (RFC 3261 §10.3, merged requests → 482 per §8.2.2.2),
and so are reg-event subscriptions for our users (RFC 3680, ``epcscf.core.regevent``);
every other request is proxied with the routing of ``epcscf.core.routing``.  The
Service-Route the registrar hands out is ``sip:orig@<first listener>;lr``, so the
eP-CSCF's originating requests come back here and are recognised as originating.

Expired bindings are swept every ``purge_interval`` seconds on the injected
reactor; readers never see them anyway (``LocationService`` checks expiry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from twisted.names import error as dns_error
from twisted.names import hosts

from epcscf.core.digest import DigestAuthenticator
from epcscf.core.location import LocationService, aor_of
from epcscf.core.randomness import random_hex
from epcscf.core.regevent import RegEventNotifier, is_reg_subscription
from epcscf.core.registrar import DEFAULT_EXPIRES, DEFAULT_MIN_EXPIRES, Registrar, RegistrarSettings
from epcscf.core.routing import CoreProxyPolicy, CoreRouter
from epcscf.core.users import User, UserDirectory, read_users
from epcscf.logging import level_predicate
from epcscf.sip.connection import Address, Connection
from epcscf.sip.headers import HeaderError, to_tag
from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.proxy import ProxySettings, StatefulProxy
from epcscf.sip.resolver import NextHopResolver
from epcscf.sip.transaction import ServerTransaction, TimerSettings, TransactionLayer
from epcscf.sip.transport import TransportManager
from epcscf.sip.transport_specs import ListenerSpec
from epcscf.sip.uri import SipUri, UriError, parse_uri

log = Logger(namespace="epcscf.core")

# RFC 3261 §20.5: what the core itself answers (REGISTER, OPTIONS) or proxies.
ALLOWED_METHODS = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, MESSAGE, SUBSCRIBE, NOTIFY, REFER"


@dataclass(frozen=True)
class EmbeddedCoreSettings:
    domain: str
    #: listener specs (``udp:127.0.0.1:5070`` or ``config.Listener``); port 0 picks a free port
    listen: tuple[Any, ...]
    #: the users file (``epcscf.core.users``)
    users_file: str
    max_expires: int = DEFAULT_EXPIRES
    min_expires: int = DEFAULT_MIN_EXPIRES
    default_expires: int = DEFAULT_EXPIRES
    #: RFC 7616 §3.3: how long a nonce is accepted before the client gets stale=true
    nonce_lifetime: float = 300.0
    #: digest algorithms challenged, in this order (RFC 8760 §2.4: the preferred first).
    #: Clients differ in which challenge they answer: sipp 3.6 takes the first and knows
    #: only MD5; JsSIP 3.x keeps only the *last* WWW-Authenticate it parsed and knows only
    #: MD5. ``[core] digest_algorithms`` sets the order (default "SHA-256, MD5", which
    #: JsSIP and RFC 8760 clients both answer); this dataclass default suits sipp.
    digest_algorithms: tuple[str, ...] = ("MD5", "SHA-256")
    timers: TimerSettings = TimerSettings()
    purge_interval: float = 60.0
    #: hosts whose REGISTERs marked integrity-protected="auth-done" are not challenged (the
    #: eP-CSCF's core-side addresses when ``[core] trust_asserted_identity``; TS 33.203 Annex U)
    trusted_nodes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> "EmbeddedCoreSettings":
        """From ``epcscf.config.Config`` ([core] and the [sip] timers)."""
        core = config.core
        return cls(
            domain=core.domain,
            listen=tuple(core.listen),
            users_file=core.users,
            max_expires=core.registration_max_expires,
            default_expires=core.registration_max_expires,
            digest_algorithms=core.digest_algorithms,
            timers=TimerSettings(t1=config.sip.t1, t2=config.sip.t2, t4=config.sip.t4),
            trusted_nodes=_pcscf_hosts(config) if core.trust_asserted_identity else (),
        )


def _pcscf_hosts(config: Any) -> tuple[str, ...]:
    """The addresses the eP-CSCF's requests reach the core from: its [sip] listeners' hosts."""
    hosts = {listener.address for listener in config.sip.listen if listener.address not in ("0.0.0.0", "::")}
    if config.sip.public_address:
        hosts.add(config.sip.public_address)
    return tuple(sorted(hosts))


def _debug_logged() -> bool:
    """Whether the process log filter lets this module's debug events through ([log] level)."""
    return level_predicate.logLevelForNamespace(log.namespace) is LogLevel.debug


class CoreTransactionUser:
    """The TU of the core's transaction layer: REGISTER and OPTIONS locally, the rest to the proxy."""

    def __init__(self, core: "EmbeddedCore") -> None:
        self.core = core

    def request_received(self, request: Request, server_transaction: Any) -> None:
        core = self.core
        if request.method == "REGISTER":
            own = server_transaction if isinstance(server_transaction, ServerTransaction) else None
            if core.transactions.is_merged_request(request, own):
                # RFC 3261 §8.2.2.2: the same request arrived on another path: 482.
                server_transaction.respond(make_response(request, 482, to_tag=_tag()))
                return
            trusted = server_transaction.connection.remote.host in core.settings.trusted_nodes
            response = core.registrar.register(request, trusted)
            if response.status >= 200 and response.status != 401 and (response.status >= 300 or _debug_logged()):
                # A success is debug, not info, and not even built unless debug is on: one line
                # per registration costs a few % of the core's CPU at registration rates
                # (benchmarks/w2_register.py).  Refusals stay info.
                log.emit(
                    LogLevel.debug if response.status < 300 else LogLevel.info,
                    "REGISTER {to} from {peer}: {status} {reason}",
                    to=request.headers.get("to"),
                    peer=server_transaction.connection.remote,
                    status=response.status,
                    reason=response.reason,
                )
            server_transaction.respond(response)
            return
        if is_reg_subscription(request) and self._reg_subscription(request, server_transaction):
            return
        if request.method == "OPTIONS" and core.addressed_to_core(request):
            # RFC 3261 §11.2: the core answers capability queries addressed to itself.
            response = make_response(request, 200, to_tag=_tag())
            response.headers.add("Allow", ALLOWED_METHODS)
            response.headers.add("Supported", "path, outbound")
            server_transaction.respond(response)
            return
        if (
            core.addressed_to_core(request)
            and _in_dialog(request)
            and not request.headers.get("route")  # else a strict router swapped the R-URI (§16.4)
            and request.method not in ("ACK", "CANCEL")
        ):
            # RFC 3261 §12.2.2: a request inside a dialog of ours that we do not know.
            server_transaction.respond(make_response(request, 481))
            return
        core.proxy.request_received(request, server_transaction)

    def _reg_subscription(self, request: Request, server_transaction: Any) -> bool:
        """RFC 3680: the core is the notifier of its users' reg event; True if handled here."""
        core = self.core
        if _in_dialog(request):
            subscription = core.notifier.find(request)
            if subscription is None:
                return False
            core.notifier.refresh(request, server_transaction, subscription)
            return True
        try:
            aor = core.identities.get(aor_of(parse_uri(request.uri)))
        except UriError:
            return False
        if aor is None:
            return False
        core.notifier.subscribe(request, server_transaction, aor)
        return True

    def ack_received(self, request: Request, connection: Connection) -> None:
        self.core.proxy.ack_received(request, connection)

    def stray_response_received(self, response: Response, connection: Connection) -> None:
        self.core.proxy.stray_response_received(response, connection)


class EmbeddedCore(Service):
    """Registrar + location service + routing proxy with digest auth, on its own listeners."""

    name = "embedded-core"

    def __init__(self, settings: EmbeddedCoreSettings, reactor: Any = None, dns_resolver: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.settings = settings
        self.reactor = reactor
        users = read_users(settings.users_file, settings.domain)
        self.users = UserDirectory(users)
        self.identities = identity_map(users)
        self.registration_sets = {aor_of(parse_uri(u.identities[0])): u.identities for u in users}
        self.location = LocationService(reactor)
        self.authenticator = DigestAuthenticator(
            settings.domain, self.users, reactor, settings.nonce_lifetime, algorithms=settings.digest_algorithms
        )
        self.router = CoreRouter(settings.domain, self.location, self.identities.get)
        self.transports = TransportManager(reactor, self._deliver)
        self.resolver = NextHopResolver(dns_resolver if dns_resolver is not None else _hosts_resolver())
        self.policy = CoreProxyPolicy(self.router, self.transports, self.resolver, self._service_route_hosts)
        self.transactions = TransactionLayer(reactor, CoreTransactionUser(self), lambda connection: settings.timers)
        self.proxy = StatefulProxy(
            reactor, self.transports, self.resolver, self.policy,
            ProxySettings(supported_option_tags=frozenset({"path", "outbound"})), transactions=self.transactions,
        )
        self.notifier = RegEventNotifier(
            reactor,
            self.location,
            self.registration_sets.get,
            self.transactions,
            self.transports,
            self.resolver,
            lambda: self.contact_uri,
        )
        self.addresses: list[tuple[str, Address]] = []
        self.service_route = ""
        self.contact_uri = ""
        self.registrar: Registrar | None = None
        self._purge: task.LoopingCall | None = None

    # --- lifecycle ---

    def startService(self) -> None:  # noqa: N802
        specs = [ListenerSpec.of(spec) for spec in self.settings.listen]
        if not specs:
            raise ValueError("the embedded core needs at least one listener")
        try:
            for spec in specs:
                address = self.transports.listen(spec)
                self.addresses.append((spec.transport, address))
        except Exception:
            # A listener that cannot bind must not leave the others open behind it.
            self.addresses.clear()
            self.transports.close()
            raise
        self.service_route = _service_route(*self.addresses[0])
        self.contact_uri = _contact_uri(*self.addresses[0])
        self.registrar = Registrar(
            RegistrarSettings(
                self.settings.domain,
                self.service_route,
                min_expires=self.settings.min_expires,
                max_expires=self.settings.max_expires,
                default_expires=self.settings.default_expires,
            ),
            self.location,
            self.authenticator,
            self.users,
        )
        self._purge = task.LoopingCall(self.location.purge_expired)
        self._purge.clock = self.reactor
        self._purge.start(self.settings.purge_interval, now=False)
        log.info(
            "embedded core for {domain} on {addresses}; Service-Route {route}",
            domain=self.settings.domain,
            addresses=", ".join(f"{t.lower()}:{a}" for t, a in self.addresses),
            route=self.service_route,
        )
        super().startService()

    def stopService(self) -> defer.Deferred:  # noqa: N802
        super().stopService()
        if self._purge is not None and self._purge.running:
            self._purge.stop()
        self.notifier.close()
        self.proxy.close()  # Timer C of calls still in progress
        self.transactions.close()
        return self.transports.close()

    # --- helpers ---

    def _deliver(self, message: Any, connection: Connection) -> None:
        self.transactions.receive(message, connection)

    def _service_route_hosts(self) -> set[tuple[str, int]]:
        return {(address.host, address.port) for _, address in self.addresses}

    def addressed_to_core(self, request: Request) -> bool:
        """An R-URI without user part naming our domain or one of our listeners."""
        try:
            uri = parse_uri(request.uri)
        except UriError:
            return False
        if not isinstance(uri, SipUri) or uri.user is not None:
            return False
        if uri.host.lower() == self.settings.domain.lower():
            return True
        return (uri.host_without_brackets, uri.port or 5060) in self._service_route_hosts()

    @property
    def udp_address(self) -> Address | None:
        return next((a for t, a in self.addresses if t == "UDP"), None)


def _service_route(transport: str, address: Address) -> str:
    # RFC 3608 §6: the URI originating requests must be sent through (loose routing).
    suffix = "" if transport == "UDP" else f";transport={transport.lower()}"
    return f"sip:orig@{address}{suffix};lr"


def _contact_uri(transport: str, address: Address) -> str:
    suffix = "" if transport == "UDP" else f";transport={transport.lower()}"
    return f"sip:{address}{suffix}"


def _in_dialog(request: Request) -> bool:
    try:
        return to_tag(request) is not None
    except HeaderError:
        return False


class HostsFileResolver(hosts.Resolver):
    """Names for the embedded core come from /etc/hosts only (it talks to loopback peers).

    Every other record type (NAPTR, SRV) has no answer, so RFC 3263 falls back to A/AAAA
    of the host (§4.1, §4.2) instead of failing.
    """

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred:  # noqa: A002
        return defer.fail(dns_error.DomainError(name))


def _hosts_resolver() -> Any:
    return HostsFileResolver()


def _tag() -> str:
    return random_hex(6)


def identity_map(users: Iterable[User]) -> dict[str, str]:
    """Every public identity (as an AOR) → the AOR its user registers (the default identity).

    TS 24.229 §5.4.3.3: a request for any of a user's public identities reaches the
    contacts that user registered.
    """
    mapping: dict[str, str] = {}
    for user in users:
        default = aor_of(parse_uri(user.identities[0]))
        for identity in user.identities:
            mapping[aor_of(parse_uri(identity))] = default
    return mapping
