"""The next hop toward the core and the core-side sources the eP-CSCF trusts.

Embedded mode: the core's listeners are fixed (``core_targets``) and trusted by host and port.
External mode: ``[core] next_hop`` URIs are resolved for every request toward the core
(RFC 3263 §4; failover follows the list), numeric ones at once from a cache; unless
``[core] trusted_sources`` names the trusted sources, every host a next hop resolves to
becomes one (any source port: a core opens TCP connections from ephemeral ports).
The config is read through ``config()`` on every use: ``[core]`` is reloadable.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from epcscf.config import Config, parse_trusted_source
from epcscf.pcscf.guard import SourceRule, TrustedSources
from epcscf.sip.resolver import NextHopResolver, Target
from epcscf.sip.uri import SipUri, UriError, parse_uri

log = Logger(namespace="epcscf.pcscf")


class CoreEntry:
    """Where requests toward the core go, and whose requests need no flow token."""

    def __init__(
        self,
        config: Callable[[], Config],
        resolver: NextHopResolver,
        trusted_sources: TrustedSources,
        core_targets: Callable[[], list[Target]] | None,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.trusted_sources = trusted_sources
        #: fixed next hop toward the core (the embedded core); None: resolve [core] next_hop
        self.core_targets = core_targets
        #: ([core] next_hop, its targets or None when one needs DNS): config is reloadable
        self._numeric_next_hop_cache: tuple[tuple[str, ...], tuple[Target, ...] | None] | None = None

    def fixed_targets(self) -> list[Target] | None:
        """The embedded core's targets; None in external mode."""
        return self.core_targets() if self.core_targets is not None else None

    def targets(self) -> defer.Deferred:
        """Deferred[list[Target]] of the core entry point, whichever the mode."""
        if self.core_targets is not None:
            return defer.succeed(self.core_targets())
        return self.resolve_next_hop()

    def resolve_next_hop(self) -> defer.Deferred:
        """[core] next_hop URIs → Targets in order (RFC 3263 §4; failover follows the list)."""
        found = self.next_hop_targets()
        return found if isinstance(found, defer.Deferred) else defer.succeed(found)

    def next_hop_targets(self) -> list[Target] | defer.Deferred:
        """``resolve_next_hop`` for the policy, which forwards every REGISTER and every request
        without a Service-Route by it: numeric hosts (RFC 3263 §4.2: no DNS) come back as the
        list itself, so such a request is routed with no Deferred (nor coroutine) at all."""
        numeric = self._numeric_next_hops()
        if numeric is not None:
            if not self.config().core.trusted_sources:
                self._trust_next_hops(numeric)
            return numeric

        async def resolve() -> list[Target]:
            targets: list[Target] = []
            for text in self.config().core.next_hop:
                try:
                    uri = parse_uri(text)
                except UriError:
                    log.error("[core] next_hop {uri!r} is not a SIP URI", uri=text)
                    continue
                if isinstance(uri, SipUri):
                    targets.extend(await self.resolver.resolve_uri(uri))
            return targets

        resolving = defer.ensureDeferred(resolve())
        if not self.config().core.trusted_sources:
            resolving.addCallback(self._trust_next_hops)
        return resolving

    def _numeric_next_hops(self) -> list[Target] | None:
        """The targets of ``[core] next_hop`` when every URI has a numeric host; else None."""
        next_hops = tuple(self.config().core.next_hop)
        cached = self._numeric_next_hop_cache
        if cached is not None and cached[0] == next_hops:
            return list(cached[1]) if cached[1] is not None else None
        targets: list[Target] | None = []
        for text in next_hops:
            try:
                uri = parse_uri(text)
            except UriError:
                targets = None  # logged by the general path
                break
            found = self.resolver.resolve_numeric(uri) if isinstance(uri, SipUri) else None
            if found is None:
                targets = None
                break
            targets.extend(found)
        self._numeric_next_hop_cache = (next_hops, tuple(targets) if targets is not None else None)
        return targets

    def _trust_next_hops(self, targets: list[Target]) -> list[Target]:
        for target in targets:
            self.trusted_sources.add(target.host)
        return targets

    def trust_core_sources(self) -> None:
        """``[core] trusted_sources``, else the embedded core's listeners (host and port), else
        the hosts of the ``[core] next_hop`` URIs (any source port: a core opens TCP connections
        from ephemeral ports).  Names are resolved (A/AAAA) and added when the answers come."""
        configured = self.config().core.trusted_sources
        if configured:
            for text in configured:
                host, port, network = parse_trusted_source(text)
                if network is not None:
                    self.trusted_sources.add_rule(SourceRule(network, port))
                else:
                    self._trust_resolved(self.resolver.resolve(host, port or 5060), port)
        elif self.core_targets is not None:
            for target in self.core_targets():
                self.trusted_sources.add(target.host, target.port)
        else:
            self._trust_resolved(self.resolve_next_hop(), None)  # (also trusted at each later resolution)

    def _trust_resolved(self, resolving: defer.Deferred, port: int | None) -> None:
        def trust(targets: list[Target]) -> None:
            for target in targets:
                self.trusted_sources.add(target.host, port)

        resolving.addCallback(trust).addErrback(lambda failure: log.error("trusted core source not resolved: {why}", why=failure.value))
