"""Locating SIP servers (RFC 3263 §4): a next-hop URI → an ordered list of ``Target``s.

Theory of operation
-------------------
``NextHopResolver.resolve(host, port, transport, secure)`` follows RFC 3263 §4:

1. §4.1 transport selection: an explicit ``transport=`` parameter wins; a numeric IP or an
   explicit port means UDP (``sip:``) or TLS (``sips:``); otherwise NAPTR records of the
   domain pick the transports (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``, ordered by order then
   preference) and, without NAPTR records, SRV records are tried for every supported
   transport; with neither, UDP (or TLS for ``sips:``) toward the domain's addresses.
2. §4.2 address selection: a numeric IP is used as is; an explicit port means A/AAAA on the
   host; otherwise SRV records ordered by priority with RFC 2782 weighted selection, each
   target's A/AAAA addresses in turn; without SRV, A/AAAA with the default port.

The proxy walks the list in order, moving to the next ``Target`` on a transport error, a
timeout or a 503 (RFC 3263 §4.3).  DNS goes through an injected ``IResolver`` (tests use
``twisted.names`` against a local authority zone), so nothing here touches the network.

Hosts come from the messages of any peer, so a host that cannot be a DNS name (RFC 3261
§25.1 ``hostname``: LDH labels of 1–63 octets after IDNA, 253 octets in all) is refused with
no lookup at all: it resolves to nothing, and the proxy answers 503 (RFC 3261 §16.9).  Any
failure of a lookup (a DNS error, a timeout, an ``OSError`` of the socket) is "no records".
"""

from __future__ import annotations

import functools
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns, error as dns_error

from epcscf.sip.connection import Address

log = Logger()

# RFC 3261 §18.2.1 / §19.1.2: default ports.
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send a request: one transport, one resolved address (RFC 3263 §4)."""

    transport: str  # "UDP", "TCP" or "TLS"
    host: str
    port: int
    #: name the TLS server certificate must match (RFC 5922 §4); the host when None
    tls_server_name: str | None = None
    _address: Address | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def address(self) -> Address:
        # Made once per target: a numeric next hop's targets are kept and asked per request.
        found = self._address
        if found is None:
            found = Address(self.host, self.port)
            object.__setattr__(self, "_address", found)  # frozen: a cache, not a field value
        return found


# RFC 3263 §4.1 NAPTR service fields and §4.2 SRV prefixes, per transport.
NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
SRV_PREFIXES = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@functools.lru_cache(maxsize=1024)
def is_numeric_host(host: str) -> bool:
    # Memoised: asked several times per request, mostly of the same few hosts (bounded).
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


# RFC 1035 §2.3.4 / RFC 3261 §25.1: label and name lengths; a label is letters, digits and
# hyphens, never starting or ending with a hyphen.
MAX_LABEL_OCTETS = 63
MAX_NAME_OCTETS = 253
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def dns_name_problem(host: str) -> str | None:
    """Why ``host`` (no brackets, no trailing dot) cannot be looked up in the DNS; None if it can."""
    if not host:
        return "empty host"
    try:
        ascii_name = host.encode("idna").decode("ascii")  # RFC 3490 ToASCII, label by label
    except UnicodeError as error:
        return f"not an IDNA name ({error})"
    if len(ascii_name) > MAX_NAME_OCTETS:
        return f"longer than {MAX_NAME_OCTETS} octets"
    for label in ascii_name.split("."):
        if not label:
            return "an empty label"
        if len(label) > MAX_LABEL_OCTETS:
            return f"a label longer than {MAX_LABEL_OCTETS} octets"
        if not _LDH.issuperset(label) or label[0] == "-" or label[-1] == "-":
            return f"label {label[:MAX_LABEL_OCTETS]!r} is not letters, digits and inner hyphens"
    return None


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 ordering: ascending priority; within one priority, weighted random order
    (zero-weight records first in the running sum, so they are picked rarely)."""
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        pool = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
        while pool:
            total = sum(r.weight for r in pool)
            pick = rng.uniform(0, total) if total else 0
            running = 0
            for index, record in enumerate(pool):
                running += record.weight
                if running >= pick:
                    ordered.append(pool.pop(index))
                    break
    return ordered


class NextHopResolver:
    """RFC 3263 §4 with an injected ``twisted.names`` ``IResolver``."""

    def __init__(
        self,
        dns_resolver: Any,
        *,
        supported: Iterable[str] = ("UDP", "TCP", "TLS"),
        rng: random.Random | None = None,
    ) -> None:
        self._dns = dns_resolver
        self._supported = tuple(t.upper() for t in supported)
        self._rng = rng or random.Random()

    def resolve_uri(self, uri: Any) -> defer.Deferred:
        """Targets for a parsed SIP URI (``epcscf.sip.uri.SipUri``): maddr, port, transport."""
        numeric = self.resolve_numeric(uri)
        if numeric is not None:
            # RFC 3263 §4.2: no DNS, so no coroutine either (in-dialog requests to a numeric
            # Contact or Route: several per call).
            return defer.succeed(numeric)
        params = {k.lower(): v for k, v in (getattr(uri, "params", None) or {}).items()}
        host = params.get("maddr") or uri.host  # RFC 3263 §4: maddr replaces the host
        transport = params.get("transport")
        secure = str(getattr(uri, "scheme", "sip")).lower() == "sips"
        return self.resolve(host, getattr(uri, "port", None), transport, secure)

    def resolve_numeric(self, uri: Any) -> list[Target] | None:
        """The targets of a URI whose host is a numeric IP (RFC 3263 §4.2: no DNS), at once;
        None when DNS is needed."""
        params = {k.lower(): v for k, v in (getattr(uri, "params", None) or {}).items()}
        host = (params.get("maddr") or uri.host).strip("[]")
        if not is_numeric_host(host):
            return None
        secure = str(getattr(uri, "scheme", "sip")).lower() == "sips"
        transport = (params.get("transport") or ("TLS" if secure else "UDP")).upper()
        if secure and transport == "TCP":
            transport = "TLS"
        if secure and transport == "UDP":
            return []
        return [Target(transport, host, getattr(uri, "port", None) or DEFAULT_PORTS.get(transport, 5060), None)]

    def resolve(
        self, host: str, port: int | None = None, transport: str | None = None, secure: bool = False
    ) -> defer.Deferred:
        """Deferred[list[Target]] in the order they should be tried (maybe empty)."""
        return defer.ensureDeferred(self._resolve(host, port, transport, secure))

    async def _resolve(self, host: str, port: int | None, transport: str | None, secure: bool) -> list[Target]:
        host = host.strip("[]")
        name = host.rstrip(".")
        if not is_numeric_host(host):
            problem = dns_name_problem(name)
            if problem is not None:
                log.debug("not resolving {host!r}: {problem}", host=host[:300], problem=problem)
                return []
        tls_name = None if is_numeric_host(host) else name
        if transport is not None:
            transport = transport.upper()
            if transport == "UDP" and secure:
                return []  # RFC 3261 §26.2.2: sips over UDP is meaningless
            if secure and transport == "TCP":
                transport = "TLS"  # RFC 3263 §4.1: sips with transport=tcp means TLS over TCP
        default_transport = "TLS" if secure else "UDP"

        # §4.2: a numeric IP is used directly.
        if is_numeric_host(host):
            chosen = transport or default_transport
            return [Target(chosen, host, port or DEFAULT_PORTS.get(chosen, 5060), None)]

        # §4.1/§4.2: an explicit port means A/AAAA only.
        if port is not None:
            chosen = transport or default_transport
            return [Target(chosen, a, port, tls_name) for a in await self._addresses(name)]

        # §4.1: the transport is known, so SRV for that transport, then A/AAAA (§4.2).
        if transport is not None:
            targets = await self._srv_targets(name, transport, tls_name)
            if targets:
                return targets
            return [Target(transport, a, DEFAULT_PORTS.get(transport, 5060), tls_name) for a in await self._addresses(name)]

        # §4.1: NAPTR picks transports and SRV names.
        targets = []
        for service_transport, srv_name in await self._naptr(name, secure):
            targets.extend(await self._srv_targets_at(srv_name, service_transport, tls_name))
        if targets:
            return targets

        # §4.1: no NAPTR: SRV for each supported transport, in our preference order.
        for candidate in self._supported:
            if secure and candidate != "TLS":
                continue
            targets.extend(await self._srv_targets(name, candidate, tls_name))
        if targets:
            return targets

        # §4.2: no SRV: A/AAAA with the default transport and port.
        return [
            Target(default_transport, a, DEFAULT_PORTS[default_transport], tls_name)
            for a in await self._addresses(name)
        ]

    async def _naptr(self, name: str, secure: bool) -> list[tuple[str, str]]:
        answers = await self._query(self._dns.lookupNamingAuthorityPointer, name)
        usable = []
        for record in answers:
            if record.type != dns.NAPTR:
                continue
            payload = record.payload
            service = payload.service.decode("ascii", "replace").upper() if isinstance(payload.service, bytes) else str(payload.service).upper()
            flags = payload.flags.decode("ascii", "replace").lower() if isinstance(payload.flags, bytes) else str(payload.flags).lower()
            transport = NAPTR_SERVICES.get(service)
            # RFC 3263 §4.1: only "s" terminal rules for services we support; sips only TLS.
            if transport is None or transport not in self._supported or flags != "s":
                continue
            if secure and transport != "TLS":
                continue
            usable.append((payload.order, payload.preference, transport, str(payload.replacement).rstrip(".")))
        usable.sort(key=lambda item: (item[0], item[1]))
        return [(transport, replacement) for _, _, transport, replacement in usable]

    async def _srv_targets(self, name: str, transport: str, tls_name: str | None) -> list[Target]:
        if transport not in SRV_PREFIXES:
            return []
        return await self._srv_targets_at(SRV_PREFIXES[transport] + name, transport, tls_name)

    async def _srv_targets_at(self, srv_name: str, transport: str, tls_name: str | None) -> list[Target]:
        answers = await self._query(self._dns.lookupService, srv_name)
        records = [
            SrvRecord(r.payload.priority, r.payload.weight, r.payload.port, str(r.payload.target).rstrip("."))
            for r in answers
            if r.type == dns.SRV
        ]
        # RFC 2782: a single record with target "." means the service is not offered.
        if len(records) == 1 and records[0].target in ("", "."):
            return []
        targets = []
        for record in order_srv(records, self._rng):
            for address in await self._addresses(record.target):
                targets.append(Target(transport, address, record.port, tls_name))
        return targets

    async def _addresses(self, name: str) -> list[str]:
        if is_numeric_host(name):
            return [name]
        if dns_name_problem(name) is not None:
            return []  # an SRV target from the DNS is input too
        found = []
        for lookup, rtype in ((self._dns.lookupAddress, dns.A), (self._dns.lookupIPV6Address, dns.AAAA)):
            for record in await self._query(lookup, name):
                if record.type == rtype:
                    found.append(record.payload.dottedQuad() if rtype == dns.A else _ipv6(record.payload.address))
        return found

    @staticmethod
    async def _query(lookup: Callable[[str], defer.Deferred], name: str) -> list[Any]:
        """The answer section of one query; any failure (no such name, no data, timeout, a
        socket error such as ENETUNREACH, a name the codec refuses) → nothing: RFC 3263 §4.3
        then moves on, and with no target left the proxy answers 503 (RFC 3261 §16.9)."""
        try:
            answers, _authority, _additional = await lookup(name)
        except (dns_error.DomainError, dns_error.AuthoritativeDomainError, dns_error.DNSQueryTimeoutError,
                dns_error.DNSNameError, dns_error.DNSServerError, dns_error.DNSQueryRefusedError,
                dns_error.DNSNotImplementedError, dns_error.DNSFormatError, dns_error.DNSUnknownError,
                defer.TimeoutError) as failure:
            log.debug("DNS lookup failed: {failure!r}", failure=failure)
            return []
        except Exception as error:  # OSError, UnicodeError, or whatever an IResolver raises
            log.info("DNS lookup of {name!r} failed: {error!r}", name=name[:300], error=error)
            return []
        return list(answers)


def _ipv6(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))


__all__ = ["NextHopResolver", "SrvRecord", "Target", "dns_name_problem", "order_srv", "is_numeric_host"]
