"""One eP-CSCF: listeners on both sides, the transaction layer, the proxy and its policy.

``PcscfNode`` is what ``epcscf.service`` (which wires the services together) builds and
starts; tests start one directly with listeners on port 0.  Inside it, the message path:

    WS listener ──► WsSink ─┐                              ┌─► StatefulProxy ─► PcscfPolicy ─► CallManager
    UDP/TCP/TLS ──► TransportManager ─► TransactionLayer ─┤
                                                           └─ (responses, retransmissions, timers)

The node wires; the parts live in their own modules: ``node_settings`` (config sections →
settings), ``ingress`` (the WebSocket and core-side sinks with their message rates),
``core_entry`` (next hop toward the core, trusted core sources), ``edge_collaborators``
(everything the policy consults, given to it at construction).

Operations (console, metrics, drain, reload) see the node only through ``operations``
(``epcscf.pcscf.operations.NodeOperations``); the metrics' event callbacks come in once,
as the ``observers`` given at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from epcscf.config import Config, Listener
from epcscf.nonsip.websocket import JanusWebSocketFactory
from epcscf.pcscf.admission import AdmissionChain, LoadProbe, NewWorkGate, OverloadController
from epcscf.pcscf.call_suspension import instance_keys
from epcscf.pcscf.calls import CallManager, CallSettings
from epcscf.pcscf.core_entry import CoreEntry
from epcscf.pcscf.deregistration import RegistrationEnd
from epcscf.pcscf.early_refusal import EarlyInviteGate
from epcscf.pcscf.edge import EdgeAddresses, PcscfPolicy
from epcscf.pcscf.edge_collaborators import EdgeCollaborators
from epcscf.pcscf.flows import Flow, FlowTable
from epcscf.pcscf.guard import TrustedSources
from epcscf.pcscf.ingress import CoreSink, WsSink
from epcscf.pcscf.limits import AuthFailures, FlowRateLimiter, RateRefusals
from epcscf.pcscf.media_engine import build_media_engine, start_media_engine, stop_media_engine
from epcscf.pcscf.node_settings import (
    call_media_settings,
    overload_settings,
    system_dns_resolver,
    token_settings,
    window_settings,
    ws_settings,
)
from epcscf.pcscf.nonsip_gateway import JanusGateway
from epcscf.pcscf.operations import NodeObservers, PcscfOperations
from epcscf.pcscf.reg_event import RegEventSettings, RegEventSubscriber
from epcscf.pcscf.registration import RegistrationBinding, Registrations
from epcscf.pcscf.setup_window import SetupWindow, reactor_thread_usage
from epcscf.pcscf.web_auth import TokenAccess, TokenVerifier
from epcscf.pcscf.wic_reg_subscriptions import WicRegSubscriptions
from epcscf.sip.connection import WEBSOCKET_TRANSPORTS, Address, Connection
from epcscf.sip.parser import ParserLimits
from epcscf.sip.proxy import ProxySettings, StatefulProxy
from epcscf.sip.proxy_policy import LateBoundProxy
from epcscf.sip.replay import StatelessReplays
from epcscf.sip.resolver import NextHopResolver, Target
from epcscf.sip.tls import HTTP_PROTOCOLS, server_tls_from_files
from epcscf.sip.transaction import TimerSettings, TransactionLayer
from epcscf.sip.transport import TransportManager
from epcscf.sip.transport_specs import TransportSettings
from epcscf.ws.protocol import SipWebSocketServerFactory

log = Logger(namespace="epcscf.pcscf")


@dataclass(frozen=True)
class BoundListener:
    transport: str  # "UDP", "TCP", "TLS", "WS", "WSS"
    address: Address

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.address}"


class PcscfNode(Service):
    """The eP-CSCF proper (the embedded core, when used, is a sibling service)."""

    name = "pcscf"

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        core_targets: Callable[[], list[Target]] | None = None,
        dns_resolver: Any = None,
        observers: NodeObservers | None = None,
        token_keys: str = "",
        ws_port_opener: Callable[[Listener, Any, Any], IListeningPort] | None = None,
        sip_fds: Mapping[str, int] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.observers = observers if observers is not None else NodeObservers()
        self.flows = FlowTable(reactor)
        self.registrations = Registrations(reactor, self._binding_removed)
        #: TS 24.229 §5.2.5: calls released and the WIC told when a registration ends
        self.registration_end = RegistrationEnd(
            reactor, self.registrations, self.flows, lambda: self.calls, config.reg_event.close_grace
        )
        #: the WICs' own reg-event subscriptions, watched as they pass (TS 24.229 §5.2.5.1)
        self.wic_subscriptions = WicRegSubscriptions()
        #: our reg-event subscriptions (TS 24.229 §5.2.3), built before the policy (startService)
        self.reg_events: RegEventSubscriber | None = None
        self.transactions = TransactionLayer(reactor, self, self._timers_for)
        limits = ParserLimits(
            max_message_size=config.sip.max_message_size,
            max_headers=config.sip.max_headers,
            max_line_length=config.sip.max_line_length,
        )
        self.transports = TransportManager(
            reactor,
            CoreSink(self),  # every message from the core to the transactions; untrusted sources rate-limited
            TransportSettings(
                limits=limits,
                idle_timeout=config.sip.idle_timeout,
                tls_certificate=config.sip.tls_certificate,
                tls_private_key=config.sip.tls_private_key,
            ),
        )
        #: copies of statelessly forwarded 2xx and ACKs, sent on unparsed (a late edge's UAS
        #: retransmits its 2xx and each copy brings an ACK again; epcscf.sip.replay)
        self.replays = StatelessReplays(reactor)
        self.transports.replays = self.replays
        self.resolver = NextHopResolver(dns_resolver if dns_resolver is not None else system_dns_resolver())
        self.core_timers = TimerSettings(t1=config.sip.t1, t2=config.sip.t2, t4=config.sip.t4)
        self.wic_timers = TimerSettings.toward_ue(config.sip.wic_t1, config.sip.wic_t2, config.sip.wic_t4)
        self.listeners: list[BoundListener] = []
        self._ws_ports: list[IListeningPort] = []
        #: (listener, factory, TLS options or None) → port; None: listenTCP/listenSSL (one process)
        self._ws_port_opener = ws_port_opener
        #: inherited, already bound [sip] sockets by listener text (``udp:127.0.0.1:5061``): a worker
        #: process adopts the ones its supervisor holds open across restarts (epcscf.workers.sockets)
        self._sip_fds: Mapping[str, int] = sip_fds or {}
        self.ws_factory: SipWebSocketServerFactory | None = None
        self.policy: PcscfPolicy | None = None
        self.proxy: StatefulProxy | None = None
        self.flows.on_close(self._flow_closed)
        self.calls: CallManager | None = None
        #: core-side sources served without a flow token (``[core] trusted_sources``)
        self.trusted_sources = TrustedSources()
        #: the next hop toward the core ([core] next_hop, or the embedded core's listeners)
        self.core_entry = CoreEntry(lambda: self.config, self.resolver, self.trusted_sources, core_targets)
        # Admission control (epcscf.pcscf.admission): one chain of checks before routing.
        self.overload_settings = overload_settings(config)
        self.overload = OverloadController(self.overload_settings, reactor)
        self.auth_failures = AuthFailures(self.overload_settings, reactor)
        self.admission = AdmissionChain()
        self.admission.on_refused = self.observers.admission_refused
        self.setup_window = SetupWindow(window_settings(self.overload_settings), reactor, reactor_thread_usage)
        self.new_work_gate = NewWorkGate(self.overload, self.registrations, self.setup_window)
        self.admission.add("overload", self.new_work_gate)
        self.admission.add("auth_failures", self.auth_failures)
        #: the same decision for new INVITEs, made before a transaction exists (stateless 503)
        # The observer itself, not ``admission_refused``'s indirection: it is called for each refused INVITE.
        self.early_invites = EarlyInviteGate(self.overload, self.setup_window, self.observers.admission_refused)
        self.transactions.early_admission = self.early_invites
        self.flow_limiter = (
            FlowRateLimiter(self.overload_settings, reactor) if self.overload_settings.flow_messages_per_second > 0 else None
        )
        self.source_limiter = (
            FlowRateLimiter(self.overload_settings, reactor, lambda settings: settings.untrusted_source_messages_per_second)
            if self.overload_settings.untrusted_source_messages_per_second > 0 else None
        )
        #: what a message over its flow's or source's rate gets (503 or nothing), counted
        self.refused_over_rate = RateRefusals(reactor, self.admission_refused, self.overload.retry_after)
        self._load_probe: LoadProbe | None = None
        self.media_engine: Any = None  # media_engine.MediaEngine, by [media] engine
        #: the non-SIP WIC front end (``[nonsip] listen``), None when not configured
        self.janus: JanusGateway | None = None
        self.janus_factory: JanusWebSocketFactory | None = None
        #: web-credential access ([auth] mode = token | both; in digest mode it only refuses forged
        #: integrity-protected parameters)
        settings = token_settings(config, token_keys)
        self.token_access = TokenAccess(settings, TokenVerifier(settings) if settings.mode != "digest" else None)
        self.token_access.on_refused = self.observers.token_refused
        #: the one interface operations use (plain data in and out)
        self.operations = PcscfOperations(self)

    # --- TransactionUser: everything goes through the proxy ---------------------------------

    def request_received(self, request: Any, transaction: Any) -> None:
        assert self.proxy is not None
        self.proxy.request_received(request, transaction)

    def ack_received(self, request: Any, connection: Connection) -> None:
        assert self.proxy is not None
        self.proxy.ack_received(request, connection)

    def stray_response_received(self, response: Any, connection: Connection) -> None:
        assert self.proxy is not None
        self.proxy.stray_response_received(response, connection)

    def _timers_for(self, connection: Connection) -> TimerSettings:
        # TS 24.229 Table 7.7.1: toward a UE T1/T2/T4 are 2/16/17 s, between IMS nodes 0.5/4/5 s.
        return self.wic_timers if connection.transport in WEBSOCKET_TRANSPORTS else self.core_timers

    # --- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        sip = [
            BoundListener(l.transport.upper(), self.transports.listen(l, self._sip_fds.get(str(l))))
            for l in self.config.sip.listen
        ]
        self.ws_factory = SipWebSocketServerFactory(ws_settings(self.config), WsSink(self), reactor=self.reactor)
        self.ws_factory.on_refused = self.observers.ws_refused
        self.ws_factory.on_parse_error = self.observers.parse_error
        self.ws_factory.replays = self.replays
        if self.token_access.verifier is not None:
            self.ws_factory.authenticate = self.token_access.handshake
        ws = [self._listen_ws(listener) for listener in self.config.ws.listen]
        self.listeners = sip + ws
        core_side = self._public(sip[0])
        wic_side = self._public(ws[0])
        addresses = EdgeAddresses(
            core_host=core_side.address.host,
            core_port=core_side.address.port,
            core_transport=core_side.transport.lower(),
            wic_host=wic_side.address.host,
            wic_port=wic_side.address.port,
            wic_transport=wic_side.transport.lower(),
        )
        # The one place the proxy ⇄ policy graph is built.  The proxy needs the policy; the
        # policy needs the call manager and the reg-event subscriber; both of those send
        # requests through the proxy.  That cycle is broken here, once: the call manager and
        # the subscriber get a typed stand-in for the proxy (``LateBoundProxy``), bound when
        # the proxy exists, so the policy is built whole, with every collaborator, before it.
        proxy_operations = LateBoundProxy()
        # The core-facing address marks our rtpengine calls: a restarted process has it again.
        owner = f"{core_side.transport.lower()}:{core_side.address.host}:{core_side.address.port}"
        self.media_engine = build_media_engine(self.config, self.reactor, call_media_settings(self.config), owner)
        start_media_engine(self.media_engine)
        # TS 24.371 §7: every INVITE dialog goes through the call manager (ICE, SDP, media).
        self.calls = CallManager(
            self.reactor,
            addresses,
            self.media_engine,
            CallSettings(keep_ended=self.config.calls.history, warning_agent=addresses.core_host,
                         reconnect_grace=self.config.calls.reconnect_grace,
                         keep_unanswered=self.config.calls.history_unanswered),
            proxy_operations,
        )
        self.reg_events = self._reg_event_subscriber(addresses, proxy_operations)
        core_entry = self.core_entry
        self.policy = PcscfPolicy(
            addresses,
            self.flows,
            self.registrations,
            core_entry.fixed_targets(),
            network_id=self.config.core.domain,
            calls=self.calls,
            next_hop_resolver=None if core_entry.core_targets is not None else core_entry.next_hop_targets,
            collaborators=self._edge_collaborators(self.calls, self.reg_events),
        )
        core_entry.trust_core_sources()
        self.proxy = StatefulProxy(
            self.reactor,
            self.transports,
            self.resolver,
            self.policy,
            ProxySettings(timer_c=self.config.sip.timer_c, supported_option_tags=frozenset({"path", "outbound"})),
            transactions=self.transactions,
        )
        self.proxy.replays = self.replays
        proxy_operations.bind(self.proxy)
        if self.overload_settings.enabled:
            proxy = self.proxy
            # Read only when watched: active() lists every request in progress.
            pending = (lambda: len(proxy.active())) if self.overload_settings.max_pending > 0 else (lambda: 0)
            self._load_probe = LoadProbe(self.reactor, self.overload_settings.lag_interval, self._load_sample, pending)
            self._load_probe.start()
        self._start_nonsip()
        log.info("eP-CSCF listening on {listeners}", listeners=", ".join(str(l) for l in self.listeners))
        super().startService()

    def _start_nonsip(self) -> None:
        """TS 24.371 §7.2.1 non-SIP WICs: the Janus API listeners, onto the same flows sink."""
        if not self.config.nonsip.listen:
            return
        self.janus = JanusGateway(self.reactor, WsSink(self), self.wic_timers, self.config.nonsip.session_timeout)
        factory = JanusWebSocketFactory(ws_settings(self.config), self.janus, reactor=self.reactor)
        self.janus_factory = factory
        self.janus.on_refused = self.observers.janus_refused
        factory.on_refused = self.observers.ws_refused
        if self.token_access.verifier is not None:
            factory.authenticate = self.token_access.handshake  # [auth] handshake: this door too
        for listener in self.config.nonsip.listen:
            bound = self._listen_ws(listener, factory)
            self.listeners.append(BoundListener(f"JANUS-{bound.transport}", bound.address))

    def _reg_event_subscriber(self, addresses: EdgeAddresses, proxy: LateBoundProxy) -> RegEventSubscriber:
        """[reg_event]: our SUBSCRIBEs go through the proxy's client transactions."""
        section = self.config.reg_event
        settings = RegEventSettings(section.subscribe, section.expires, section.close_grace)
        reg_events = RegEventSubscriber(
            self.reactor, settings, addresses, self.registrations, proxy, self.transports.connect,
            self.resolver.resolve_uri, self.core_entry.targets, self.registration_end.network_deregistered,
            self.observers.reg_event,
        )
        self.registration_end.subscriptions = reg_events
        if settings.enabled:
            self.registration_end.wic_subscriptions = self.wic_subscriptions
            self.registration_end.proxy = proxy
            self.registration_end.wic_sent_by = addresses.wic_sent_by
        return reg_events

    def _edge_collaborators(self, calls: CallManager, reg_events: RegEventSubscriber) -> EdgeCollaborators:
        """Everything the edge policy consults besides flows and registrations; what is off
        in the config keeps the collaborator's no-op default."""
        observers = self.observers
        hooks = EdgeCollaborators(
            admission=self.admission,
            register_access=self.token_access.register,
            trusted_sources=self.trusted_sources,
            core_entry=", ".join(self.config.core.next_hop) if self.config.core.mode == "external" else "",
            on_register_final=self._register_answered,
        )
        if calls.suspensions is not None:
            hooks = replace(hooks, reconnections=calls.suspensions)
        if observers.register_response is not None:
            hooks = replace(hooks, on_register_response=observers.register_response)
        if observers.request_refused is not None:
            hooks = replace(hooks, on_refused=observers.request_refused)
        if reg_events.settings.enabled:
            hooks = replace(
                hooks, on_registered=reg_events.registered, own_notify=reg_events.handle_notify,
                wic_subscriptions=self.wic_subscriptions,
            )
        return hooks

    def _public(self, listener: BoundListener) -> BoundListener:
        """The address written in Path/Record-Route/Via for a listener (``public_address`` if set)."""
        host = listener.address.host
        if listener.transport not in WEBSOCKET_TRANSPORTS and self.config.sip.public_address:
            host = self.config.sip.public_address
        if host in ("0.0.0.0", "::"):
            # Only a [ws] listener gets here from a loaded config ([sip] needs public_address).
            # A WIC sends every request over its own WebSocket (RFC 7118 §5), so the host in
            # the Via and Record-Route we give it only has to be the one we recognise.
            log.warn("{listener} is on every address: Via and Record-Route toward WICs name 127.0.0.1", listener=listener)
            host = "127.0.0.1"
        return BoundListener(listener.transport, Address(host, listener.address.port))

    def _listen_ws(self, listener: Listener, factory: Any = None) -> BoundListener:
        """A [ws] listener (``factory`` None: the SIP one) or a [nonsip] one (the Janus factory)."""
        if factory is None:
            factory = self.ws_factory
        assert factory is not None
        if self._ws_port_opener is not None:
            # A worker process: the port is shared with the other workers (epcscf.workers.sockets).
            options = (
                server_tls_from_files(self.config.ws.certificate, self.config.ws.private_key, HTTP_PROTOCOLS)
                if listener.transport == "wss"
                else None
            )
            port = self._ws_port_opener(listener, factory, options)
        elif listener.transport == "wss":
            # RFC 7118 §5 / RFC 6455 §4.1: the opening handshake is HTTP/1.1, which browsers offer by ALPN.
            options = server_tls_from_files(self.config.ws.certificate, self.config.ws.private_key, HTTP_PROTOCOLS)
            port = self.reactor.listenSSL(listener.port, factory, options, interface=listener.address)
        else:
            port = self.reactor.listenTCP(listener.port, factory, interface=listener.address)
        self._ws_ports.append(port)
        host = port.getHost()
        return BoundListener(listener.transport.upper(), Address(host.host, host.port))

    def stop_accepting(self) -> defer.Deferred:
        """Close the WebSocket listeners: no new WIC connections (drain); flows stay up."""
        ports, self._ws_ports = self._ws_ports, []
        return defer.DeferredList([defer.maybeDeferred(port.stopListening) for port in ports], consumeErrors=True)

    def update_overload(self, values: dict[str, Any]) -> None:
        """New [overload] values (SIGHUP): every holder of the settings gets the new ones."""
        settings = replace(self.overload_settings, **values)
        self.overload_settings = settings
        self.overload.reconfigure(settings)
        self.auth_failures.settings = settings
        if self.flow_limiter is not None:
            self.flow_limiter.settings = settings
        if self.source_limiter is not None:
            self.source_limiter.settings = settings
        self.setup_window.reconfigure(window_settings(settings))

    def _load_sample(self, lag: float, pending: int) -> None:
        # The window's throughput is measured on the probe's clock too, not only when INVITEs come.
        self.setup_window.tick()
        self.overload.sample(lag, pending)
        for limiter in (self.flow_limiter, self.source_limiter):
            if limiter is not None:
                limiter.sweep()

    def _register_answered(self, context: Any, response: Any) -> None:
        self.auth_failures.register_answered(context.request, response)
        self.new_work_gate.register_answered(context, response)
        suspensions = self.calls.suspensions if self.calls is not None else None
        if suspensions is not None and 200 <= response.status < 300:
            # RFC 5626 §4.2: the same instance, authenticated afresh by the core, adopts its calls.
            connection = context.connection
            suspensions.registered(connection, self.registrations.for_flow(connection.id))

    def admission_refused(self, reason: str) -> None:
        """Count a refusal made outside the chain (the per-flow limit) like the chain's own."""
        if self.admission.on_refused is not None:
            self.admission.on_refused(reason)

    def stopService(self) -> defer.Deferred:  # noqa: N802
        super().stopService()
        if self._load_probe is not None:
            self._load_probe.stop()
            self._load_probe = None
        stopping = [self.stop_accepting()]
        if self.ws_factory is not None:
            for connection in list(self.ws_factory.connections):
                connection.close(1001, "server shutting down")  # RFC 6455 §7.4.1: going away
        if self.janus is not None and self.janus_factory is not None:
            self.janus.close()
            for janus_connection in list(self.janus_factory.connections):
                janus_connection.going_away()
        if self.calls is not None:
            # the calls' media close first: with rtpengine, their delete commands need the client
            engine = self.media_engine
            stopping.append(self.calls.close().addBoth(lambda _: stop_media_engine(engine)))
        if self.reg_events is not None:
            self.reg_events.close()
        self.registration_end.close()
        self.registrations.close()
        self.transactions.close()
        self.replays.close()
        stopping.append(self.transports.close())
        return defer.DeferredList(stopping, consumeErrors=True)

    # --- flows and registrations --------------------------------------------------------------

    def _flow_closed(self, flow: Flow) -> None:
        log.info("flow {flow} closed ({reason})", flow=flow.id, reason=flow.close_reason)
        if self.observers.flow_closed is not None:
            self.observers.flow_closed()
        if self.calls is not None:
            self.calls.flow_closed(flow.connection, instance_keys(self.registrations.for_flow(flow.id)))
        self.wic_subscriptions.flow_closed(flow.id)

    def _binding_removed(self, binding: RegistrationBinding, reason: str) -> None:
        log.info("registration of {aor} on flow {flow} ended: {reason}", aor=binding.aor, flow=binding.flow_id, reason=reason)
        if self.observers.registration_ended is not None:
            self.observers.registration_ended(reason)
        self.registration_end.binding_removed(binding, reason)

    # --- leak accounting -------------------------------------------------------------------------

    def resource_counts(self) -> dict[str, int]:
        """Live counts of everything a call or a flow holds (``PcscfOperations.resource_counts``)."""
        return self.operations.resource_counts()

    def listener(self, transport: str) -> BoundListener | None:
        return next((l for l in self.listeners if l.transport == transport.upper()), None)

