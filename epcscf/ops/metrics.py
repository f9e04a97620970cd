"""Prometheus metrics of one epcscf (``[metrics]``), served by ``twisted.web`` at ``/metrics``.

Theory of operation
-------------------
Most figures are *read at scrape time* (``LiveStateCollector``) through the eP-CSCF's
``NodeOperations`` (``stats()``, ``calls()``): nothing in a hot path pays for them.  Events
that leave no state behind (a refused WebSocket handshake, an unparseable message, a
REGISTER's final status) are counted by the ``EpcscfMetrics`` observer methods, handed
to the node at its construction as ``NodeObservers``.

Each service has its own ``CollectorRegistry`` (never the process-global one), so tests
can run several services in one process.

Exposition is rendered by ``prometheus_client.exposition`` in the reactor thread.  The
library's ``prometheus_client.twisted.MetricsResource`` runs collection in the reactor's
thread pool instead, which would have collectors walk the flow table and the calls while
the reactor changes them; a scrape of a few hundred lines takes well under a millisecond,
so it is done where the objects live.

Counters derived from state:

* ``epcscf_ws_connections_opened_total`` = flows closed so far (counted by the
  ``flow_closed`` observer) + flows open now;
* ended calls are counted once each the first time a scrape sees them in
  ``calls()`` (kept ``[calls] history`` seconds, far longer than any scrape interval), with
  their end cause, failing layer and final media figures; media packet/byte totals are
  those of the ended calls counted so far plus those of the live calls.

Leak accounting: the gauges of ``resource_counts()`` (transactions, calls, ICE agents,
DTLS sessions, media ports, SIP timers, reactor delayed calls, asyncio tasks) go back
to their idle values once traffic stops and timers have run; open file descriptors and RSS
come from prometheus-client's ``ProcessCollector`` (``process_open_fds``,
``process_resident_memory_bytes``), registered on this registry as well.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from epcscf.pcscf.operations import MEDIA_DIRECTIONS, NodeObservers, NodeOperations

log = Logger(namespace="epcscf.ops.metrics")

MEDIA_FAILURE_LAYERS = ("ice", "dtls", "consent")
#: (metric, key of ``NodeOperations.resource_counts()``, help) of the leak-accounting gauges; the open
#: file descriptors are the process collector's ``process_open_fds``.
RESOURCE_GAUGES = (
    ("epcscf_sip_timers", "sip_timers", "RFC 3261 transaction timers armed now"),
    ("epcscf_ice_agents", "ice_agents", "ICE agents toward WICs not yet closed"),
    ("epcscf_dtls_sessions", "dtls_sessions", "DTLS-SRTP sessions started and not yet closed"),
    ("epcscf_media_ports_in_use", "media_ports_in_use", "UDP ports of [media] port_range in use (ICE, RTP, RTCP)"),
    ("epcscf_media_ports_parked", "media_ports_parked", "UDP ports of [media] port_range bound by sockets kept for the next calls"),
    ("epcscf_reactor_delayed_calls", "delayed_calls", "timers pending in the reactor (reactor.getDelayedCalls())"),
    ("epcscf_asyncio_tasks", "asyncio_tasks", "asyncio tasks not done on the reactor's event loop (aioice)"),
)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def registration_result(status: int) -> str:
    """The ``result`` label of a REGISTER's final response."""
    if 200 <= status < 300:
        return "ok"
    if status in (401, 407):
        return "challenged"  # RFC 3261 §22: the WIC answers the digest challenge
    if status == 423:
        return "interval_too_brief"
    if status >= 500:
        return "server_error"
    return "rejected"


def media_failure_kind(layer: str, cause: str) -> str | None:
    """``ice``, ``consent`` or ``dtls`` for a call ended by its media, else None.

    The call manager reports consent loss (RFC 7675 §5.1) with layer ``ice``; its cause text
    says "consent", which is what tells it apart from ICE connectivity checks failing.
    """
    if layer == "ice" and "consent" in cause.lower():
        return "consent"
    return layer if layer in ("ice", "dtls") else None


class EventLoopLag:
    """Measures how late the reactor runs a timer (RFC-free: a health signal).

    A timer is due every ``interval`` seconds; the lag is how much later than due it ran.
    An event loop blocked by a long computation shows up here before it shows up as SIP
    retransmissions.
    """

    def __init__(self, clock: IReactorTime, histogram: Histogram, interval: float = 1.0) -> None:
        self.clock = clock
        self.histogram = histogram
        self.interval = interval
        self.last: float | None = None
        self.worst = 0.0
        self._due = 0.0
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        lag = max(0.0, self.clock.seconds() - self._due)
        self.last = lag
        self.worst = max(self.worst, lag)
        self.histogram.observe(lag)
        self._schedule()


class EpcscfMetrics:
    """The registry of one service and the observer methods other layers call."""

    def __init__(self, operations: Callable[[], NodeOperations]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._ws_refused = Counter(
            "epcscf_ws_connections_refused", "WebSocket handshakes refused, by reason", ["reason"], registry=self.registry
        )
        self._janus_refused = Counter(
            "epcscf_janus_requests_refused", "non-SIP WIC (Janus API) requests refused, by Janus error code", ["code"], registry=self.registry
        )
        self._parse_errors = Counter(
            "epcscf_sip_parse_errors", "SIP messages that did not parse, by transport", ["transport"], registry=self.registry
        )
        self._registration_results = Counter(
            "epcscf_registration_results", "final responses to REGISTERs from WICs, by result", ["result"], registry=self.registry
        )
        # One labelled child per result, looked up once: register_response runs for every
        # REGISTER and Counter.labels() is not cheap.
        self._registration_result_counters = {
            result: self._registration_results.labels(result) for result in ("ok", "challenged", "rejected", "server_error")
        }
        self._requests_refused = Counter(
            "epcscf_requests_refused",
            "SIP requests refused at the border (403, an ACK dropped), by side (wic, core) and reason",
            ["side", "reason"],
            registry=self.registry,
        )
        self._registrations_ended = Counter(
            "epcscf_registrations_ended", "registration bindings that ended, by reason", ["reason"], registry=self.registry
        )
        self._reg_events = Counter(
            "epcscf_reg_event",
            "steps of the eP-CSCF's own reg-event subscriptions (TS 24.229 §5.2.3), by event",
            ["event"],
            registry=self.registry,
        )
        self.loop_lag_histogram = Histogram(
            "epcscf_event_loop_lag_seconds", "how late the reactor ran a 1 s timer", buckets=LAG_BUCKETS, registry=self.registry
        )
        self._overload_refusals = Counter(
            "epcscf_overload_refusals",
            "requests refused by admission control (503/403 before routing), by reason",
            ["reason"],
            registry=self.registry,
        )
        self._overload_refusals_by_reason: dict[str, Any] = {}
        self._token_refusals = Counter(
            "epcscf_token_refusals",
            "WIC tokens refused (web-credential access: REGISTER 401/403, WebSocket handshake), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.live = LiveStateCollector(operations)
        self.registry.register(self.live)
        # process_open_fds, process_resident_memory_bytes, CPU…: the library's own collector,
        # registered here too because this registry is not the process-global one.
        self.process = ProcessCollector(registry=self.registry)

    def process_figures(self) -> dict[str, float]:
        """The process collector's samples by name (``process_open_fds``…), for the console."""
        return {sample.name: sample.value for family in self.process.collect() for sample in family.samples}

    def observers(self) -> NodeObservers:
        """The callbacks the eP-CSCF is given at construction."""
        return NodeObservers(
            ws_refused=self.ws_refused,
            parse_error=self.parse_error,
            register_response=self.register_response,
            request_refused=self.request_refused,
            admission_refused=self.overload_refused,
            flow_closed=self.flow_closed,
            registration_ended=self.registration_ended,
            janus_refused=self.janus_refused,
            reg_event=self.reg_event,
            token_refused=self.token_refused,
        )

    # --- observer hooks (called by the layers that see the event) -----------------------------

    def ws_refused(self, reason: str) -> None:
        """A WebSocket opening handshake was refused (``origin``, ``subprotocol``, ``draining``)."""
        self._ws_refused.labels(reason).inc()

    def janus_refused(self, code: int) -> None:
        """A non-SIP WIC's Janus API request was answered with Janus error ``code``."""
        self._janus_refused.labels(str(code)).inc()

    def overload_refused(self, reason: str) -> None:
        """Admission control refused a request (``overloaded``, ``new_work_rate``, ``flow_rate``,
        ``auth_failures``, ``draining``)."""
        # Called for each refused INVITE at twice the sustainable rate: the labelled child is
        # looked up once per reason, not per call (``labels`` validates and locks each time).
        child = self._overload_refusals_by_reason.get(reason)
        if child is None:
            child = self._overload_refusals_by_reason[reason] = self._overload_refusals.labels(reason)
        child.inc()

    def parse_error(self, transport: str) -> None:
        """A SIP message that did not parse arrived on ``transport`` (``ws``, ``udp``, ``tcp``…)."""
        self._parse_errors.labels(transport.lower()).inc()

    def register_response(self, status: int) -> None:
        """The final response to a WIC's REGISTER passed toward the WIC."""
        if status >= 200:
            result = registration_result(status)
            counter = self._registration_result_counters.get(result)
            if counter is None:
                counter = self._registration_results.labels(result)
            counter.inc()

    def request_refused(self, side: str, reason: str) -> None:
        """A request was refused before routing (``epcscf.pcscf.guard``: not in a dialog through
        us, bad or foreign flow token, untrusted core source…)."""
        self._requests_refused.labels(side, reason).inc()

    def registration_ended(self, reason: str) -> None:
        self._registrations_ended.labels(reason).inc()

    def reg_event(self, event: str) -> None:
        """A step of our reg-event subscriptions: subscribe_sent, subscribed, refreshed,
        subscribe_failed, notify, notify_unknown, notify_bad, shortened, terminated."""
        self._reg_events.labels(event).inc()

    def flow_closed(self) -> None:
        self.live.flows_closed += 1

    def token_refused(self, reason: str) -> None:
        """A WIC's token refused (``missing``, ``signature``, ``expired``, ``audience``, ``issuer``,
        ``identity``…)."""
        self._token_refusals.labels(reason).inc()

    # --- exposition ------------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


CallKey = tuple[str, str, float]  # Call-ID, direction, created


class LiveStateCollector:
    """Reads the running eP-CSCF at scrape time (see the module docstring)."""

    def __init__(self, operations: Callable[[], NodeOperations]) -> None:
        self.operations = operations
        self.flows_closed = 0
        #: ended calls already counted (those still in ``calls()``: the older ones are gone from it)
        self._counted: set[CallKey] = set()
        self._ended: dict[tuple[str, str, str], int] = {}
        self._media_failures: dict[str, int] = {layer: 0 for layer in MEDIA_FAILURE_LAYERS}
        self._ended_packets: dict[str, int] = {direction: 0 for direction in MEDIA_DIRECTIONS}
        self._ended_bytes: dict[str, int] = {direction: 0 for direction in MEDIA_DIRECTIONS}

    def describe(self) -> list[Metric]:
        return []  # collected lazily; nothing to check at registration

    def account_ended(self, call: dict[str, Any]) -> None:
        """Count an ended call once: its end cause and layer, and its last media figures."""
        key = (call["call_id"], call["direction"], call["created"])
        if key in self._counted:
            return
        self._counted.add(key)
        layer = call.get("layer") or ""
        ended = (call["direction"], call.get("cause") or "", layer)
        self._ended[ended] = self._ended.get(ended, 0) + 1
        kind = media_failure_kind(layer, call.get("cause") or "")
        if kind is not None:
            self._media_failures[kind] += 1
        for direction in MEDIA_DIRECTIONS:
            self._ended_packets[direction] += call["packets"].get(direction, 0)
            self._ended_bytes[direction] += call["bytes"].get(direction, 0)

    def collect(self) -> Iterator[Metric]:
        operations = self.operations()
        stats = operations.stats()
        yield from self._ws(stats)
        registrations = GaugeMetricFamily("epcscf_registrations", "registration bindings held now")
        registrations.add_metric([], stats["registrations"])
        yield registrations
        yield from self._resources(operations.resource_counts())
        yield from self._calls(operations.calls())
        yield from self._media_engine(operations.media_engine())
        draining = GaugeMetricFamily("epcscf_draining", "1 while the service drains before stopping")
        draining.add_metric([], 1 if stats["draining"] else 0)
        yield draining
        overloaded = GaugeMetricFamily("epcscf_overloaded", "1 while new dialogs and registrations are refused for load")
        overloaded.add_metric([], 1 if stats["overloaded"] else 0)
        yield overloaded
        stateless = CounterMetricFamily(
            "epcscf_stateless", "new INVITEs answered 503 before any transaction (overload), and the ACKs of those 503s absorbed",
            labels=["what"])
        stateless.add_metric(["responses"], stats["stateless_responses"])
        stateless.add_metric(["acks_absorbed"], stats["stateless_acks_absorbed"])
        yield stateless
        yield from self._reconnections(stats)

    def _reconnections(self, stats: dict[str, Any]) -> Iterator[Metric]:
        """[calls] reconnect_grace: calls waiting for their WIC now, and how the waits ended."""
        suspended = GaugeMetricFamily("epcscf_calls_suspended", "calls whose WIC lost its WebSocket, waiting for it to register again")
        suspended.add_metric([], stats["calls_suspended"])
        yield suspended
        ended = CounterMetricFamily("epcscf_call_reconnections", "suspended calls by outcome: adopted by a new flow, or released at the end of the grace period", labels=["result"])
        ended.add_metric(["adopted"], stats["calls_reconnected"])
        ended.add_metric(["expired"], stats["calls_not_reconnected"])
        yield ended

    def _ws(self, stats: dict[str, Any]) -> Iterator[Metric]:
        current = GaugeMetricFamily("epcscf_ws_connections", "WebSocket connections open now")
        current.add_metric([], stats["ws_connections"])
        yield current
        opened = CounterMetricFamily("epcscf_ws_connections_opened", "WebSocket connections (flows) opened")
        opened.add_metric([], self.flows_closed + stats["flows"])
        yield opened

    def _resources(self, counts: dict[str, int]) -> Iterator[Metric]:
        """Leak accounting: what calls and flows hold now (``NodeOperations.resource_counts``)."""
        family = GaugeMetricFamily("epcscf_sip_transactions", "SIP transactions alive now", labels=["kind"])
        family.add_metric(["server"], counts["server_transactions"])
        family.add_metric(["client"], counts["client_transactions"])
        yield family
        for name, key, text in RESOURCE_GAUGES:
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], counts[key])
            yield gauge

    def _media_engine(self, engine: dict[str, Any]) -> Iterator[Metric]:
        """Which engine relays media; for rtpengine, per node: up, ng commands, errors, timeouts."""
        info = GaugeMetricFamily("epcscf_media_engine", "the [media] engine in use (value 1)", labels=["engine"])
        info.add_metric([engine["engine"]], 1)
        yield info
        nodes = engine.get("nodes")
        if not nodes:
            return
        up = GaugeMetricFamily("epcscf_rtpengine_node_up", "1 while the rtpengine node answers ng commands", labels=["node"])
        sent = CounterMetricFamily("epcscf_rtpengine_commands", "ng commands sent, by node and command", labels=["node", "command"])
        errors = CounterMetricFamily("epcscf_rtpengine_errors", "ng replies with result error, by node", labels=["node"])
        timeouts = CounterMetricFamily("epcscf_rtpengine_timeouts", "ng commands unanswered after every retransmission", labels=["node"])
        for node, figures in nodes.items():
            up.add_metric([node], 1 if figures["state"] == "up" else 0)
            for command, count in figures["sent"].items():
                sent.add_metric([node, command], count)
            errors.add_metric([node], figures["errors"])
            timeouts.add_metric([node], figures["timeouts"])
        calls = GaugeMetricFamily("epcscf_rtpengine_calls", "calls whose media rtpengine relays now")
        calls.add_metric([], engine["calls"])
        deletes = CounterMetricFamily("epcscf_rtpengine_deletes", "ng delete commands of ended calls, by result", labels=["result"])
        deletes.add_metric(["ok"], engine["deleted"])
        deletes.add_metric(["failed"], engine["delete_failures"])
        queries = CounterMetricFamily("epcscf_rtpengine_queries", "ng query commands of live calls (media watch)")
        queries.add_metric([], engine["queries"])
        yield from (up, sent, errors, timeouts, calls, deletes, queries)

    def _calls(self, calls: list[dict[str, Any]]) -> Iterator[Metric]:
        ended_calls = [call for call in calls if not call["live"]]
        for call in ended_calls:
            self.account_ended(call)  # once per call; adds its media to the ended totals
        self._counted &= {(call["call_id"], call["direction"], call["created"]) for call in ended_calls}
        current = GaugeMetricFamily("epcscf_calls", "calls alive now, by direction", labels=["direction"])
        by_direction = {"originating": 0, "terminating": 0}
        packets = dict(self._ended_packets)
        octets = dict(self._ended_bytes)
        for call in calls:
            if not call["live"]:
                continue
            by_direction[call["direction"]] = by_direction.get(call["direction"], 0) + 1
            for direction in MEDIA_DIRECTIONS:
                packets[direction] += call["packets"].get(direction, 0)
                octets[direction] += call["bytes"].get(direction, 0)
        for direction, count in by_direction.items():
            current.add_metric([direction], count)
        yield current
        ended = CounterMetricFamily(
            "epcscf_calls_ended", "calls that ended, by direction, cause and failing layer", labels=["direction", "cause", "layer"]
        )
        for (direction, cause, layer), count in sorted(self._ended.items()):
            ended.add_metric([direction, cause, layer], count)
        yield ended
        failures = CounterMetricFamily("epcscf_media_failures", "calls ended by an ICE, consent or DTLS failure", labels=["layer"])
        for layer, count in self._media_failures.items():
            failures.add_metric([layer], count)
        yield failures
        packet_family = CounterMetricFamily("epcscf_media_packets", "RTP packets relayed, by direction", labels=["direction"])
        byte_family = CounterMetricFamily("epcscf_media_bytes", "RTP bytes relayed, by direction", labels=["direction"])
        for direction in MEDIA_DIRECTIONS:
            packet_family.add_metric([direction], packets[direction])
            byte_family.add_metric([direction], octets[direction])
        yield packet_family
        yield byte_family


class MetricsPage(Resource):
    """``GET /metrics``: the exposition format the scraper asks for (text or OpenMetrics)."""

    isLeaf = True

    def __init__(self, metrics: EpcscfMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        accept = request.getHeader("accept")
        body, content_type = self.metrics.render(accept)
        request.setHeader("Content-Type", content_type)
        return body


class _QuietSite(Site):
    """No access-log line per scrape (one every 15 s would drown the daemon's log)."""

    noisy = False  # no "Starting factory" line either

    def log(self, request: Request) -> None:
        pass


class MetricsService(Service):
    """The ``[metrics]`` HTTP listener and the event-loop lag probe."""

    name = "metrics"

    def __init__(self, metrics: EpcscfMetrics, address: str, port: int, reactor: Any, clock: IReactorTime | None = None) -> None:
        self.metrics = metrics
        self.address = address
        self.port_number = port
        self.reactor = reactor
        self.lag = EventLoopLag(clock if clock is not None else reactor, metrics.loop_lag_histogram)
        self._listener: IListeningPort | None = None

    @property
    def port(self) -> int | None:
        """The bound port (useful when configured as 0)."""
        return None if self._listener is None else self._listener.getHost().port

    def startService(self) -> None:  # noqa: N802
        root = Resource()
        root.putChild(b"metrics", MetricsPage(self.metrics))
        # Bound synchronously so that a port in use stops the start-up with a clear error.
        self._listener = self.reactor.listenTCP(self.port_number, _QuietSite(root), interface=self.address)
        self.lag.start()
        super().startService()
        log.info("Prometheus metrics on http://{address}:{port}/metrics", address=self.address, port=self.port)

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802
        super().stopService()
        self.lag.stop()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            return defer.maybeDeferred(listener.stopListening)
        return None
