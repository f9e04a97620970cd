"""The media of a call relayed by rtpengine (``[media] engine = rtpengine``).

Theory of operation
-------------------
``RtpengineCallMedia`` implements ``calls.CallMediaLike`` like the built-in ``CallMedia``; the
call manager's state machine and SDP policy stay the same.  What differs is who terminates ICE,
DTLS-SRTP and the relay: an rtpengine node, driven over the ng protocol
(``epcscf.media.rtpengine_ng``).  For every offer and answer:

1. the body as the sender wrote it goes to rtpengine (``offer`` / ``answer``), with flags that
   make rtpengine's side toward the core plain RTP (``RTP/AVP``, ICE removed, rtcp-mux
   demultiplexed) and its side toward the WIC WebRTC (``UDP/TLS/RTP/SAVPF``, ICE forced, DTLS,
   rtcp-mux required) — TS 23.334's IMS-ALG split, done by rtpengine;
2. from rtpengine's rewritten body only the transport is taken: the relay's address and RTP
   port per m= line toward the core (``CoreLeg``), or its ICE credentials, candidates,
   fingerprint and a=setup toward the WIC (``WicLeg``);
3. the body for the other side is built by the same pure transforms as the built-in engine
   (``epcscf.sdp.transform``), so codecs and what the core may see are our policy, and each
   side gets the same SDP whichever engine runs.

Tags: rtpengine keys a call's two monologues by SIP tags; the eP-CSCF's one media leg per side
is named by side ("wic", "core"), so forks, re-offers from either side and UPDATEs all reach the
same two monologues.  The ng call-id is the SIP Call-ID plus the WIC flow (a call forked to two
registrations of one user is two calls here) plus the process's ``owner`` mark; the node is
chosen by the SIP Call-ID alone.  A call between two WICs of one eP-CSCF passes it twice with
one SIP Call-ID (originating and terminating leg, perhaps in two worker processes): the flow
and the mark keep the two ng calls apart.

Orphans: a process that dies (kill -9 of a worker) cannot send its calls' ``delete``.  Its
``owner`` mark is its core-facing SIP address, which its replacement has again and no other
eP-CSCF process in the network has; so at start the engine asks every node for its calls
(``list``) and deletes those with its mark that it does not itself hold.  The ng ``list`` has
a ``limit`` and no offset, and over UDP its reply must fit one datagram (``SWEEP_LIMIT``
call-ids).  With ``tcp_ng_port`` (each node's ``--listen-tcp-ng``) the whole list is read over
TCP at once.  Over UDP the sweep deletes the orphans of a page at once (``delete delay`` 0, so
they leave the node's table) and asks again while a full page still held orphans: that reaches
every orphan unless a full page holds none — other processes' live calls filling it — and then
rtpengine's own ``--timeout`` (no media) and ``--final-timeout`` end what is left (logged).

Consent freshness (RFC 7675), ICE restarts and DTLS are rtpengine's.  What epcscf still checks:
every ``query_interval`` a ``query`` — a call rtpengine no longer knows (its own media timeout
deleted it) is released with a Reason; a node that stops answering releases its calls.
Every release path ends in ``close()``, which sends ``delete``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from epcscf.media.rtpengine_ng import NgClient, NgError, NgNode, NgTimeout, list_over_tcp
from epcscf.pcscf.call_model import MediaRejected
from epcscf.pcscf.sdp_refusals import parse_sdp, transformed
from epcscf.sdp import (
    CodecPolicy,
    CoreLeg,
    IceCredentials,
    OriginVersioner,
    SdpError,
    SessionDescription,
    WicLeg,
    WicTransport,
    answer_toward_core,
    answer_toward_wic,
    extract_wic_media_params,
    offer_toward_core,
    offer_toward_wic,
    parse_sdpfrag,
)
from epcscf.sdp import transform as sdp_transform

log = Logger(namespace="epcscf.pcscf.rtpengine_media")

WIC, CORE = "wic", "core"
#: ng flags for rtpengine's side toward the core: plain RTP (TS 23.334), no ICE, RTCP on port+1
TOWARD_CORE: dict[str, Any] = {"transport-protocol": "RTP/AVP", "ICE": "remove", "DTLS": "off", "rtcp-mux": ["demux"]}
#: ng flags for rtpengine's side toward the WIC: WebRTC transport (RFC 8827 §6.5, RFC 8829 §5.1.1)
TOWARD_WIC: dict[str, Any] = {"transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force", "rtcp-mux": ["offer", "require"]}


@dataclass(frozen=True)
class RtpengineSettings:
    codecs: CodecPolicy = field(default_factory=CodecPolicy)
    origin_username: str = "epcscf"
    #: entries added to every offer/answer's ng ``flags`` list ([rtpengine] flags)
    flags: tuple[str, ...] = ()
    #: seconds between ``query`` commands of a live call (0: never)
    query_interval: float = 10.0
    #: this process's mark at the end of every ng call-id ("" = none, no sweep at start); the
    #: node sets its core-facing SIP address (see the module docstring, Orphans)
    owner: str = ""
    #: each node's TCP ng port (``--listen-tcp-ng``), for the sweep's whole ``list``; 0: UDP pages
    tcp_ng_port: int = 0


#: put before an RFC 8840 fragment sent to rtpengine: its SDP parser starts a description at
#: ``v=`` and, without one, reads no candidate of the fragment (rtpengine 10.5; the ng protocol's
#: ``fragment`` flag takes the fragment's m= sections and ICE lines, the rest is ignored)
FRAGMENT_SESSION = b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"

#: call-ids asked of a node by the sweep at start: its ``list`` reply (~100 bytes a call) must
#: fit one UDP datagram
SWEEP_LIMIT = 500
#: UDP pages the sweep asks for at most per node (500 × 200: 100 000 orphans)
SWEEP_PAGES = 200


class RtpengineEngine:
    """Per process: the ng client and its nodes; a media factory for the call manager."""

    name = "rtpengine"

    def __init__(self, reactor: Any, client: NgClient, settings: RtpengineSettings | None = None,
                 clock: Any = None) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.client = client
        self.settings = settings or RtpengineSettings()
        self._live: set[RtpengineCallMedia] = set()
        self.deleted = 0  # delete commands answered
        self.delete_failures = 0
        self.queries = 0
        self.swept = 0  # a predecessor's sessions deleted at start (see the module docstring)
        client.on_node_down = self._node_down

    def start(self) -> defer.Deferred:
        """Start the ng client; fires when the sweep of a predecessor's sessions is done."""
        self.client.start()
        if not self.settings.owner:
            return defer.succeed(0)
        return defer.gatherResults([self._sweep(node) for node in self.client.nodes]).addCallback(sum)

    def _sweep(self, node: NgNode) -> defer.Deferred:
        """Delete the sessions on ``node`` a previous process with our mark left (module doc,
        Orphans); fires with how many."""
        port = self.settings.tcp_ng_port
        if not port:
            return self._sweep_pages(node, 0, 0).addCallback(self._report, node)

        def over_udp(failure: Failure) -> defer.Deferred:
            log.info("rtpengine {node}: no call list over TCP port {port} ({why}): UDP pages instead",
                     node=node, port=port, why=failure.getErrorMessage())
            return self._sweep_pages(node, 0, 0)

        timeout = max(5.0, self.client.settings.timeout * 5)
        listed = list_over_tcp(self.reactor, node, port, timeout)
        return listed.addCallbacks(lambda calls: self._delete_orphans(node, calls), over_udp).addCallback(self._report, node)

    def _sweep_pages(self, node: NgNode, deleted: int, pages: int) -> defer.Deferred:
        """``list`` over UDP, a page of at most ``SWEEP_LIMIT`` call-ids at a time (see the
        module docstring for what it cannot reach)."""

        def listed(reply: dict[str, Any]) -> defer.Deferred | int:
            calls = reply.get("calls")
            calls = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in calls] if isinstance(calls, list) else []
            return self._delete_orphans(node, calls).addCallback(next_page, len(calls))

        def next_page(count: int, listed_count: int) -> defer.Deferred | int:
            if listed_count < SWEEP_LIMIT:
                return deleted + count  # the whole table was in the page
            if count and pages + 1 < SWEEP_PAGES:
                return self._sweep_pages(node, deleted + count, pages + 1)
            log.warn("rtpengine {node} lists more calls than one ng reply holds and the last page had {count} of "
                     "ours: what is left is ended by its --timeout ([rtpengine] tcp_ng_port reads the whole list)",
                     node=node, count=count)
            return deleted + count

        def failed(failure: Failure) -> int:
            # A node down now: what it holds of ours ends by its own --timeout.
            log.info("rtpengine {node}: no sweep of a previous process's sessions: {why}", node=node, why=failure.value)
            return deleted

        message = {"command": "list", "limit": SWEEP_LIMIT}
        return self.client.command(node, message).addCallback(listed).addErrback(failed)

    def _delete_orphans(self, node: NgNode, calls: list[str]) -> defer.Deferred:
        """``delete`` (at once: ``delete delay`` 0) the listed calls with our mark that we do not
        hold; fires with how many were deleted."""
        mark = f" {self.settings.owner}"
        ours = {media.ng_call_id for media in self._live}
        orphans = [call for call in calls if call.endswith(mark) and call not in ours]
        deletes = [
            self.client.command(node, {"command": "delete", "call-id": call, "delete delay": 0}).addCallbacks(lambda _: 1, lambda _: 0)
            for call in orphans
        ]
        return defer.gatherResults(deletes).addCallback(sum)

    def _report(self, count: int, node: NgNode) -> int:
        if count:
            self.swept += count
            log.info("rtpengine {node}: deleted {count} sessions a previous process of {owner} left",
                     node=node, count=count, owner=self.settings.owner)
        return count

    def stop(self) -> defer.Deferred:
        return self.client.stop()

    def __call__(self, call: Any) -> "RtpengineCallMedia":
        call_id = getattr(call, "call_id", "") or secrets.token_hex(8)
        flow = getattr(getattr(call, "wic_flow", None), "id", "")
        media = RtpengineCallMedia(self, call_id, " ".join(part for part in (call_id, flow, self.settings.owner) if part))
        self._live.add(media)
        return media

    def closed(self, media: "RtpengineCallMedia") -> None:
        self._live.discard(media)

    def resource_counts(self) -> dict[str, int]:
        return {"ice_agents": 0, "dtls_sessions": 0, "media_ports_in_use": 0, "rtpengine_calls": len(self._live)}

    def snapshot(self) -> dict[str, Any]:
        """The engine, its nodes (state, commands, errors) and its call counts, for ops."""
        return {"engine": self.name, "nodes": self.client.snapshot(), "calls": len(self._live),
                "deleted": self.deleted, "delete_failures": self.delete_failures, "queries": self.queries}

    def _node_down(self, node: NgNode) -> None:
        for media in [m for m in self._live if m.node == node]:
            media.fail("media", f"rtpengine {node} stopped answering")


class RtpengineCallMedia:
    """``calls.CallMediaLike`` for one call whose media rtpengine relays (see module docstring)."""

    def __init__(self, engine: RtpengineEngine, call_id: str, ng_call_id: str) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.call_id = call_id
        self.ng_call_id = ng_call_id
        self.on_failure: Callable[[str, str], None] | None = None
        self.on_event: Callable[[str, str], None] | None = None
        self.wic_flow: Callable[[], str | None] | None = None  # unused: rtpengine ends no call on a DTLS close
        self.node: NgNode | None = None
        self._session_id = str(secrets.randbelow(10**12) + 1)
        self._core_versioner: OriginVersioner | None = None
        self._wic_versioner: OriginVersioner | None = None
        self._wic_offer: SessionDescription | None = None
        self._core_offer: SessionDescription | None = None
        self._saved: tuple[SessionDescription | None, SessionDescription | None] = (None, None)
        self._answered = False  # both monologues exist in rtpengine (to-tag known)
        self._closed = False
        self._query: task.LoopingCall | None = None
        #: packet/byte counts from the last query or delete reply; ``stats()`` hands out this very
        #: dict, so the snapshot the call keeps at its end gets the totals of the delete reply
        self._last_stats: dict[str, Any] = {"dtls_state": "", **_directions({"tags": {}})}

    # --- CallMediaLike ---------------------------------------------------------------------

    def offer_from_wic(self, sdp: bytes) -> defer.Deferred:
        """TS 24.371 §7.4.2: the WIC's offer → rtpengine → the offer toward the core."""
        wic_offer = parse_sdp(sdp)
        accepted = transformed(lambda: sdp_transform.plan_offer_toward_core(wic_offer, self.settings.codecs))
        self._saved = (self._wic_offer, self._core_offer)

        def build(reply: dict[str, Any]) -> bytes:
            leg = self._core_leg(_parse_reply(reply), accepted)
            out = transformed(lambda: offer_toward_core(wic_offer, leg, self.settings.codecs))
            self._wic_offer = wic_offer
            return self._stamp_core(out)

        return self._command("offer", WIC, sdp, TOWARD_CORE).addCallback(build)

    def answer_from_core(self, sdp: bytes, fork: str | None = None) -> defer.Deferred:
        """The core's answer (18x/2xx, any fork) → rtpengine → the WebRTC answer."""
        if self._wic_offer is None:
            return defer.fail(MediaRejected(488, "an answer from the core without a WIC offer"))
        wic_offer = self._wic_offer
        core_answer = parse_sdp(sdp)

        def build(reply: dict[str, Any]) -> bytes:
            leg = self._wic_leg(_parse_reply(reply))
            out = transformed(lambda: answer_toward_wic(core_answer, wic_offer, leg))
            self._answered = True
            self._saved = (self._wic_offer, self._core_offer)
            if fork:
                self._event("media", f"core answer from fork {fork}")
            self._watch()
            return self._stamp_wic(out)

        return self._command("answer", WIC, sdp, TOWARD_WIC, to_tag=CORE).addCallback(build)

    def offer_from_core(self, sdp: bytes) -> defer.Deferred:
        """TS 24.371 §7.4.3: the core's offer → rtpengine → the WebRTC offer toward the WIC."""
        core_offer = parse_sdp(sdp)
        transformed(lambda: sdp_transform.plan_offer_toward_wic(core_offer, self.settings.codecs))
        self._saved = (self._wic_offer, self._core_offer)

        def build(reply: dict[str, Any]) -> bytes:
            leg = self._wic_leg(_parse_reply(reply))
            out = transformed(lambda: offer_toward_wic(core_offer, leg, self.settings.codecs))
            self._core_offer = core_offer
            return self._stamp_wic(out)

        return self._command("offer", CORE, sdp, TOWARD_WIC).addCallback(build)

    def answer_from_wic(self, sdp: bytes) -> defer.Deferred:
        """The WIC's answer → rtpengine → the answer toward the core."""
        if self._core_offer is None:
            return defer.fail(MediaRejected(488, "an answer from the WIC without a core offer"))
        core_offer = self._core_offer
        wic_answer = parse_sdp(sdp)

        def build(reply: dict[str, Any]) -> bytes:
            answered = tuple(i for i, media in enumerate(wic_answer.media) if media.port)
            leg = self._core_leg(_parse_reply(reply), answered)
            out = transformed(lambda: answer_toward_core(wic_answer, core_offer, leg))
            self._answered = True
            self._saved = (self._wic_offer, self._core_offer)
            self._watch()
            return self._stamp_core(out)

        return self._command("answer", CORE, sdp, TOWARD_CORE, to_tag=WIC).addCallback(build)

    def offer_failed(self) -> None:
        """A re-offer was refused: our side keeps the previous offer/answer (RFC 3261 §14.1)."""
        self._wic_offer, self._core_offer = self._saved

    def add_trickle(self, sdpfrag: bytes) -> None:
        """RFC 8840 candidates trickled by the WIC (INFO), forwarded to rtpengine as the ng
        protocol asks: an ``offer`` from the WIC's monologue with the ``fragment`` flag and the
        fragment as its ``sdp`` (rtpengine adds the candidates to that side's ICE agent, and
        queues a fragment that comes before the call's offer).  Without it rtpengine would
        learn a trickled address only as peer-reflexive, from the WIC's own checks (RFC 8445
        §7.3.1.3), and never check toward it itself."""
        try:
            fragment = parse_sdpfrag(sdpfrag)
        except SdpError as error:
            raise MediaRejected(400, error.reason) from None
        if self._closed or self.node is None or not fragment.entries:
            return  # nothing for rtpengine yet (no offer went to it) or nothing in the fragment
        message: dict[str, Any] = {"command": "offer", "call-id": self.ng_call_id, "from-tag": WIC,
                                   "sdp": FRAGMENT_SESSION + sdpfrag, "flags": ["fragment"]}
        if self._answered:
            message["to-tag"] = CORE
        node = self.node

        def forwarded(_: object) -> None:
            self._event("ice", f"rtpengine {node}: trickled candidates forwarded (fragment)")

        def failed(failure: Failure) -> None:
            # The INFO is answered already; the WIC's checks still reach rtpengine (peer-reflexive).
            self._event("ice", f"rtpengine {node}: trickled candidates not taken: {failure.getErrorMessage()}")

        self.engine.client.command(node, message).addCallbacks(forwarded, failed)

    def stats(self) -> dict[str, Any]:
        node = str(self.node) if self.node is not None else ""
        return {0: {"engine": "rtpengine", "node": node, "ice": "", "media": self._last_stats}}

    def close(self) -> defer.Deferred:
        """``delete`` the call on its node (idempotent); the reply's totals become the stats."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        if self._query is not None and self._query.running:
            self._query.stop()
        if self.node is None:
            self.engine.closed(self)
            return defer.succeed(None)
        engine = self.engine

        def deleted(reply: dict[str, Any]) -> None:
            engine.deleted += 1
            self._last_stats.update(_directions(reply))
            sent, back = self._last_stats["wic_to_core"], self._last_stats["core_to_wic"]
            self._event("media", f"rtpengine {self.node}: call deleted after {sent['packets']} packets "
                                 f"WIC → core, {back['packets']} core → WIC")

        def failed(failure: Failure) -> None:
            engine.delete_failures += 1
            # rtpengine's own timeout ([rtpengine] documents it) removes what we could not.
            log.info("call {call_id}: rtpengine delete failed: {error}", call_id=self.call_id, error=failure.getErrorMessage())

        client, node = engine.client, self.node

        def delete(_: object) -> defer.Deferred:
            message = {"command": "delete", "call-id": self.ng_call_id}
            return client.command(node, message).addCallbacks(deleted, failed)

        # The final counts come from a query just before the delete (rtpengine 10.5's delete
        # reply carries none); a node that does not answer is not asked twice.
        return client.command(node, {"command": "query", "call-id": self.ng_call_id}).addCallbacks(
            lambda reply: self._last_stats.update(_directions(reply)),
            lambda failure: failure if failure.check(NgTimeout) else None,
        ).addCallbacks(delete, failed).addBoth(lambda _: engine.closed(self))

    # --- failures --------------------------------------------------------------------------

    def fail(self, layer: str, reason: str) -> None:
        log.info("call {call_id}: {layer} failure: {reason}", call_id=self.call_id, layer=layer, reason=reason)
        if self.on_failure is not None and not self._closed:
            self.on_failure(layer, reason)

    def _event(self, kind: str, text: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, text)

    # --- ng commands -----------------------------------------------------------------------

    def _command(self, command: str, from_side: str, sdp: bytes, flags: dict[str, Any],
                 to_tag: str | None = None) -> defer.Deferred:
        if self._closed:
            return defer.fail(MediaRejected(503, "the call's media is closed"))
        client = self.engine.client
        if self.node is None:
            self.node = client.node_for(self.call_id)
            if self.node is None:
                return defer.fail(MediaRejected(503, "no rtpengine node answers"))
            self._event("media", f"engine rtpengine, node {self.node}")
        if to_tag is None and self._answered:
            to_tag = WIC if from_side == CORE else CORE  # a re-offer within the dialog
        message: dict[str, Any] = {"command": command, "call-id": self.ng_call_id, "from-tag": from_side,
                                   "sdp": sdp, "SDES": ["off"],
                                   "flags": ["trust-address", *self.settings.flags], **flags}
        if to_tag is not None:
            message["to-tag"] = to_tag
        node = self.node

        def refused(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, NgTimeout):
                raise MediaRejected(503, f"rtpengine {node} does not answer")
            if isinstance(error, NgError):
                raise MediaRejected(488 if command == "answer" else 503, f"rtpengine {node}: {error.reason}")
            return failure

        self._event("media", f"rtpengine {command} ({from_side} side)")
        return client.command(node, message).addErrback(refused)

    def _watch(self) -> None:
        """Once answered: ``query`` now and then; a call rtpengine dropped is released."""
        interval = self.settings.query_interval
        if self._query is not None or interval <= 0 or self._closed:
            return
        self._query = task.LoopingCall(self._query_once)
        self._query.clock = self.engine.clock
        self._query.start(interval, now=False).addErrback(lambda failure: None)

    def _query_once(self) -> None:
        if self._closed or self.node is None:
            return
        self.engine.queries += 1

        def got(reply: dict[str, Any]) -> None:
            self._last_stats.update(_directions(reply))

        def lost(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, NgError) and not isinstance(error, NgTimeout):
                # RFC 3326 Reason via the call manager: rtpengine's media timeout ended the call.
                self.fail("media", f"rtpengine {self.node} no longer has the call: {error.reason}")

        self.engine.client.command(self.node, {"command": "query", "call-id": self.ng_call_id}).addCallbacks(got, lost)

    # --- legs from rtpengine's bodies ------------------------------------------------------

    def _core_leg(self, relay: SessionDescription, lines: tuple[int, ...]) -> CoreLeg:
        ports: list[int | None] = []
        address = ""
        for index in range(len(relay.media)):
            media = relay.media[index]
            if index not in lines or not media.port:
                ports.append(None)
                continue
            connection = relay.media_connection(media)
            address = address or (connection.host if connection is not None else "")
            ports.append(media.port)
        if not address:
            raise MediaRejected(503, "rtpengine gave no address toward the core")
        if self._core_versioner is None:
            self._core_versioner = OriginVersioner(self.settings.origin_username, self._session_id, address)
        try:
            return CoreLeg(origin=self._core_versioner.origin, address=address, ports=tuple(ports))
        except ValueError as error:
            raise MediaRejected(503, f"rtpengine's ports toward the core: {error}") from None

    def _wic_leg(self, relay: SessionDescription) -> WicLeg:
        try:
            params = extract_wic_media_params(relay)
        except SdpError as error:
            raise MediaRejected(503, f"rtpengine's WebRTC side: {error.reason}") from None
        transports: list[WicTransport | None] = []
        fingerprint, setup = None, "passive"
        try:
            for param in params:
                if not param.port or not param.ice_ufrag or not param.ice_pwd or not param.candidates:
                    transports.append(None)
                    continue
                transports.append(WicTransport(IceCredentials(param.ice_ufrag, param.ice_pwd),
                                               tuple(c.raw for c in param.candidates)))
                if param.fingerprint is not None and fingerprint is None:
                    fingerprint = f"{param.fingerprint.algorithm} {param.fingerprint.value}"
                if param.setup in ("active", "passive"):
                    setup = param.setup
            if fingerprint is None:
                raise ValueError("no a=fingerprint")
            first = next((t for t in transports if t is not None), None)
            if first is None:
                raise ValueError("no ICE transport")
            if self._wic_versioner is None:
                self._wic_versioner = OriginVersioner(self.settings.origin_username, self._session_id,
                                                      first.default_address[0])
            return WicLeg(origin=self._wic_versioner.origin, transports=tuple(transports), fingerprint=fingerprint,
                          answer_setup=setup,  # type: ignore[arg-type]
                          ice_lite=relay.has_attribute("ice-lite"))
        except ValueError as error:
            raise MediaRejected(503, f"rtpengine's WebRTC side: {error}") from None

    def _stamp_core(self, sdp: SessionDescription) -> bytes:
        assert self._core_versioner is not None
        return self._core_versioner.stamp_serialized(sdp)

    def _stamp_wic(self, sdp: SessionDescription) -> bytes:
        assert self._wic_versioner is not None
        return self._wic_versioner.stamp_serialized(sdp)


def _parse_reply(reply: dict[str, Any]) -> SessionDescription:
    body = reply.get("sdp")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes):
        raise MediaRejected(503, "rtpengine replied without SDP")
    try:
        return SessionDescription.parse(body)
    except SdpError as error:
        raise MediaRejected(503, f"rtpengine's SDP: {error.reason}") from None


def _directions(reply: dict[str, Any]) -> dict[str, Any]:
    """rtpengine's per-tag packet/byte counts (``query``/``delete`` replies) as our directions:
    what rtpengine received from the WIC's monologue is WIC → core, and the other way round."""
    tags = reply.get("tags")
    out: dict[str, Any] = {}
    if not isinstance(tags, dict):
        return out
    for tag, direction in ((WIC, "wic_to_core"), (CORE, "core_to_wic")):
        packets = octets = 0
        monologue = tags.get(tag)
        medias = monologue.get("medias", []) if isinstance(monologue, dict) else []
        for media in medias if isinstance(medias, list) else []:
            for stream in media.get("streams", []) if isinstance(media, dict) else []:
                stats = stream.get("stats", {}) if isinstance(stream, dict) else {}
                packets += int(stats.get("packets", 0) or 0) if isinstance(stats, dict) else 0
                octets += int(stats.get("bytes", 0) or 0) if isinstance(stats, dict) else 0
        out[direction] = {"packets": packets, "bytes": octets}
    return out
