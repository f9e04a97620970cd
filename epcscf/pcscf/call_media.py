"""The media of one call: per m= line an ICE agent toward the WIC and a DTLS-SRTP relay session.

Theory of operation
-------------------
``CallMedia`` implements ``calls.CallMediaLike``: the call manager hands it every SDP body
in the order offers and answers happen, and gets back the body for the other side.  Inside:

* one ``Stream`` per accepted m= line: an ``IceAgent`` toward the WIC and a ``MediaSession``
  whose core-side RTP/RTCP ports come from the same shared ``UdpPortPool``.  The lines of a
  BUNDLE group (RFC 8843) share the agent and DTLS association of the group's first line
  (``call_bundle``); toward the core every line stays unbundled.
  The agent's datagrams feed the session; the session sends through the agent; a DTLS
  failure revokes ICE consent (RFC 7675 §5.2).  Made, gathered, given the WIC's ICE and
  closed by ``call_streams.CallStreams``.
* roles: when the WIC offers, our agent is controlled (full mode) and we answer
  ``a=setup:active`` to ``actpass`` (RFC 5763 §5: active is RECOMMENDED for an answerer);
  when we offer to the WIC, our agent is controlling and we offer ``actpass``, taking the
  opposite of the WIC's answer.  DTLS starts when ICE has selected a pair
  (``call_dtls.CallDtls``).
* the ``WicLeg``/``CoreLeg`` given to the SDP transformations are built from the live agents
  and sessions, and every body goes through one ``OriginVersioner`` per leg, so ICE
  credentials, candidates, fingerprint and ports stay the same for the whole call (new
  ufrag/pwd would restart ICE, RFC 8445 §9; a WIC applies every 18x/2xx answer afresh) and o=
  versions only move when the content does (RFC 3264 §8) (``call_legs.CallLegs``).  A
  re-offer from the WIC with new ice-ufrag/pwd restarts ICE on that stream (RFC 8445 §9).
* ``close()`` frees every agent (sockets, ports, asyncio tasks, timers) and session.

This module holds the offer/answer steps: for each body, which SDP transformation runs and
what it asks, in which order, of the streams (``call_streams``), their DTLS (``call_dtls``) and
our side of each leg (``call_legs``); each part keeps its own state.  SDP that cannot be served
becomes the call manager's refusal in ``sdp_refusals``.

``CallMediaEngine`` is the per-process part: settings, the port pool and the one DTLS
certificate (generated at start).  Calling it with a call makes that call's ``CallMedia``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from twisted.internet import defer
from twisted.logger import Logger

from epcscf.ice import IceAgentConfig, UdpPortPool
from epcscf.ice.shelf import SocketShelf
from epcscf.media import Certificate, MediaSessionConfig
from epcscf.pcscf.call_bundle import bundle_sessions
from epcscf.pcscf.call_dtls import CallDtls
from epcscf.pcscf.call_legs import CallLegs
from epcscf.pcscf.call_model import MediaRejected, succeeded_already
from epcscf.pcscf.call_streams import CallStreams, Stream, first_error, gather
from epcscf.pcscf.sdp_refusals import parse_sdp, transformed, wic_params
from epcscf.sdp import (
    CodecPolicy,
    SdpError,
    SessionDescription,
    WicMediaParams,
    answer_toward_core,
    answer_toward_wic,
    extract_core_media_params,
    offer_toward_core,
    offer_toward_wic,
    parse_sdpfrag,
)
from epcscf.sdp import transform as sdp_transform
from epcscf.sdp.bundle import add_bundle_group, resolve_bundled_lines
from epcscf.sip.timers import TimerQueue

log = Logger(namespace="epcscf.pcscf.call_media")

REVERSED_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


@dataclass(frozen=True)
class CallMediaSettings:
    ice: IceAgentConfig = field(default_factory=IceAgentConfig)
    media: MediaSessionConfig = field(default_factory=MediaSessionConfig)
    codecs: CodecPolicy = field(default_factory=CodecPolicy)
    #: RFC 5763 §5: our a=setup when we answer an actpass offer (active is RECOMMENDED there)
    answer_setup: Literal["active", "passive"] = "active"
    origin_username: str = "epcscf"
    #: keep the media sockets of ended calls bound for the next calls (`epcscf.ice.shelf`);
    #: needs a port range (`ice.port_range`), whose ports the parked sockets hold.  On in a node
    #: (`node_settings.call_media_settings`, which also closes them at stop); an engine made
    #: alone leaves it off unless it calls `CallMediaEngine.close()` itself.
    park_sockets: bool = False


class CallMediaEngine:
    """Per process: settings, the shared port pool and the DTLS certificate; a media factory."""

    def __init__(
        self,
        reactor: Any,
        settings: CallMediaSettings | None = None,
        pool: UdpPortPool | None = None,
        certificate: Certificate | None = None,
        clock: Any = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        #: the calls' media timers (ICE connect timeout, RFC 7675 consent checks and expiry, DTLS
        #: retransmission and handshake timeouts, the peer-close grace): nearly all of them are
        #: cancelled, so they are entries of one queue rather than a reactor call each
        self.timers = TimerQueue(self.clock)
        self.settings = settings or CallMediaSettings()
        if pool is None and self.settings.ice.port_range is not None:
            pool = UdpPortPool(*self.settings.ice.port_range)
        self.pool = pool
        self.shelf = SocketShelf(pool, self.clock) if pool is not None and self.settings.park_sockets else None
        self.certificate = certificate or Certificate.generate()  # one per process (RFC 5763 §5)
        #: every CallMedia made and not yet fully closed (its sockets, tasks and timers freed)
        self._live: set[CallMedia] = set()

    def __call__(self, call: Any) -> "CallMedia":
        media = CallMedia(self, getattr(call, "call_id", ""))
        self._live.add(media)
        return media

    def close(self) -> None:
        """Shutdown: close the parked media sockets (the calls' own close with their calls)."""
        if self.shelf is not None:
            self.shelf.close()

    def closed(self, media: "CallMedia") -> None:
        """``media`` has freed everything it held (called once its close finished)."""
        self._live.discard(media)

    def resource_counts(self) -> dict[str, int]:
        """What the calls' media hold now (leak accounting for ``/metrics`` and the console).

        An agent or session counts from its creation until the close of its call's media has
        finished, so one that is never closed shows here for as long as it lives.
        """
        streams = [stream for media in self._live for stream in media.streams.values()]
        return {
            "ice_agents": len({id(stream.agent) for stream in streams}),  # a BUNDLE group shares one
            # DTLS started and not closed yet (a failed handshake still holds its endpoint)
            "dtls_sessions": sum(1 for stream in streams if stream.session.state not in ("new", "closed")),
            "media_ports_in_use": self.pool.used_count if self.pool is not None else 0,
            # bound by sockets parked for the next calls (not a call's; closed at shutdown)
            "media_ports_parked": self.pool.parked_count if self.pool is not None else 0,
        }


class CallMedia:
    """``calls.CallMediaLike`` for one call (see module docstring)."""

    def __init__(self, engine: CallMediaEngine, call_id: str = "") -> None:
        self.engine = engine
        self.settings = engine.settings
        self.call_id = call_id
        self.on_failure: Callable[[str, str], None] | None = None
        self.on_event: Callable[[str, str], None] | None = None
        #: set by the call manager: the id of the WIC's flow, None while it has none (suspended)
        self.wic_flow: Callable[[], str | None] | None = None
        self._dtls = CallDtls(engine.timers, self.settings.answer_setup, self._event, self._fail, self._wic_flow)
        self._streams = CallStreams(engine, self._event, self._fail, self._dtls.start, self._dtls.failed)
        self.streams: dict[int, Stream] = self._streams.streams
        self._legs = CallLegs(engine)
        self._wic_offer: SessionDescription | None = None  # the WIC's last offer (we answer it)
        self._core_offer: SessionDescription | None = None  # the core's last offer (we answer it)
        self._saved: tuple[SessionDescription | None, SessionDescription | None] = (None, None)
        self._controlling: bool | None = None  # decided by who offers first (RFC 8445 §6.1.1)
        self._closed = False
        #: the m= lines of the BUNDLE group toward the WIC, transport owner first (RFC 8843)
        self.bundle: tuple[int, ...] = ()

    # --- CallMediaLike: the four transformations -----------------------------------------------

    def offer_from_wic(self, sdp: bytes) -> defer.Deferred:
        """§7.4.2: the WIC's offer → the offer toward the core."""
        # RFC 8843: bundle-only lines read as the tagged line's transport; the group is answered.
        wic_offer, group = resolve_bundled_lines(parse_sdp(sdp))
        params = wic_params(wic_offer)
        policy = self.settings.codecs
        # The payload types per line, selected once: they decide the lines allocated here and
        # are the offer's m= formats below.
        payload_types = transformed(lambda: sdp_transform.core_bound_payload_types(wic_offer, policy, params))
        accepted = sdp_transform.accepted_lines(payload_types)
        if self._controlling is None:
            self._controlling = False  # the WIC offered: it controls (RFC 8445 §6.1.1)
        self._save()
        bundled = tuple(i for i in group if i in accepted)
        if not self.streams and (len(bundled) > 1 or bundled[:1] != group[:1]):
            # A lone line is grouped only when it was bundle-only (no transport of its own).
            self.bundle = bundled
        ready = self._ensure_streams(accepted)

        def build(_: object) -> defer.Deferred | None:
            bundle_sessions(self.streams, self.bundle, wic_offer)
            restarts = [self._streams.apply_remote_ice(self.streams[i], params[i]) for i in accepted
                        if i in self.streams and self.streams[i].owns_transport]
            if all(map(succeeded_already, restarts)):
                return None  # nothing to wait for (no ICE restart): as the gathered list would give
            return gather(restarts).addCallback(lambda _: None)

        def offer(_: object) -> bytes:
            out = transformed(lambda: offer_toward_core(wic_offer, self._legs.core(self.streams), policy, params,
                                                             payload_types))
            self._wic_offer = wic_offer
            for index in accepted:
                self._dtls.offered_by_wic(self.streams[index], params[index])
            return self._legs.stamp_core(out)

        if succeeded_already(ready):
            # Sockets from the shelf (gathered at once): the offer is made now, in a fired
            # Deferred, as the chain below would make it (a failure as it would fail:
            # ``first_error`` unwraps only ``gather``'s), without running the chain.
            try:
                built = build(None)
                if built is None:
                    return defer.succeed(offer(None))
            except Exception:
                return defer.fail()
            return built.addCallback(offer).addErrback(first_error)
        return ready.addCallback(build).addCallback(offer).addErrback(first_error)

    def answer_from_core(self, sdp: bytes, fork: str | None = None) -> bytes:
        """The core's answer (18x/2xx, any fork) → the WebRTC answer; media starts.

        Every fork's answer reuses our one WIC-side endpoint; the core-side relay follows the
        latest answer."""
        if self._wic_offer is None:
            raise MediaRejected(488, "an answer from the core without a WIC offer")
        core_answer = parse_sdp(sdp)
        wic_offer = self._wic_offer
        out, core = transformed(lambda: (answer_toward_wic(core_answer, wic_offer, self._legs.wic(self.streams)),
                                         extract_core_media_params(core_answer)))
        self._streams.set_core_remotes(core)
        add_bundle_group(out, tuple(i for i in self.bundle if out.media[i].port != 0))
        for index, media in enumerate(out.media):
            stream = self.streams.get(index)
            if stream is not None:
                # The WIC's own direction is the reverse of what our answer says (RFC 3264 §6.1).
                stream.session.set_direction(REVERSED_DIRECTION.get(out.media_direction(media), "sendrecv"))
                if stream.owns_transport:
                    self._dtls.renew(stream)
                    self._streams.start(stream)
        self._save()
        if fork:
            self._event("media", f"core answer from fork {fork}")
        return self._legs.stamp_wic(out)

    def offer_from_core(self, sdp: bytes) -> defer.Deferred:
        """§7.4.3: the core's offer → the WebRTC offer toward the WIC (actpass, our ICE)."""
        core_offer = parse_sdp(sdp)
        policy = self.settings.codecs
        accepted = transformed(lambda: sdp_transform.plan_offer_toward_wic(core_offer, policy))
        if self._controlling is None:
            self._controlling = True  # we offer to the WIC: we control (RFC 8445 §6.1.1)
        self._save()

        def offer(_: object) -> bytes:
            gathering = [i for i in accepted if not self.streams[i].agent.local_candidates()]
            if gathering:
                # An ICE restart (RFC 8445 §9) is still gathering the new local candidates: the
                # offer crossed an exchange in progress, the core retries (RFC 3261 §14.2: 491).
                raise MediaRejected(491, f"m-line {gathering[0]}: an ICE restart toward the WIC is in progress")
            out = transformed(lambda: offer_toward_wic(core_offer, self._legs.wic(self.streams), policy))
            self._streams.set_core_remotes(transformed(lambda: extract_core_media_params(core_offer)))
            self._core_offer = core_offer
            # RFC 8843 §7.2: every line with its own transport (a WIC may refuse BUNDLE), grouped;
            # a group already agreed keeps its lines on one transport (§7.5.1 subsequent offers).
            add_bundle_group(out, self.bundle or (accepted if len(accepted) > 1 else ()))
            return self._legs.stamp_wic(out)

        return self._ensure_streams(accepted).addCallback(offer).addErrback(first_error)

    def answer_from_wic(self, sdp: bytes) -> defer.Deferred:
        """The WIC's answer → the answer toward the core; ICE and DTLS start (§7.4.3 a)."""
        if self._core_offer is None:
            return defer.fail(MediaRejected(488, "an answer from the WIC without a core offer"))
        core_offer = self._core_offer
        wic_answer, group = resolve_bundled_lines(parse_sdp(sdp))
        params = wic_params(wic_answer)
        bundled = tuple(i for i in group if i in self.streams)
        if not self.bundle and len(bundled) > 1:
            self.bundle = bundled  # RFC 8843 §7.3: the WIC accepted our group; its lines move
            self._streams.join_bundle(bundled)
        bundle_sessions(self.streams, self.bundle, wic_answer)
        try:
            out = transformed(lambda: answer_toward_core(wic_answer, core_offer, self._legs.core(self.streams)))
        except MediaRejected as error:
            return defer.fail(error)

        def answered() -> list[tuple[Stream, WicMediaParams]]:
            """The streams with a transport of their own that the WIC's answer accepts."""
            return [(stream, params[index]) for index, stream in self.streams.items()
                    if index < len(params) and params[index].port != 0 and stream.owns_transport]

        applying = []
        for stream, param in answered():
            self._dtls.answered_by_wic(stream, param)
            stream.session.set_direction(param.direction)
            applying.append(self._streams.apply_remote_ice(stream, param))

        def started(_: object) -> bytes:
            for stream, _param in answered():
                self._dtls.renew(stream)
                self._streams.start(stream)
            self._save()
            return self._legs.stamp_core(out)

        return gather(applying).addCallback(started).addErrback(first_error)

    def offer_failed(self) -> None:
        """A re-offer was refused (488, 491): the previous offer/answer stays (RFC 3261 §14.1)."""
        self._wic_offer, self._core_offer = self._saved
        for stream in self.streams.values():
            stream.next_association = None

    def add_trickle(self, sdpfrag: bytes) -> None:
        """RFC 8840 candidates trickled by the WIC (INFO), handed to the stream's agent."""
        try:
            fragment = parse_sdpfrag(sdpfrag)
        except SdpError as error:
            raise MediaRejected(400, error.reason) from None
        self._streams.add_trickled(fragment.entries, self._wic_offer)

    @property
    def ice_settled(self) -> bool:
        """Whether every stream's ICE is past its checks (connected, failed or closed): the end
        of the edge's part of a call's setup (``epcscf.pcscf.setup_window``)."""
        return self._streams.ice_settled

    def stats(self) -> dict[str, Any]:
        return self._streams.stats()

    def close(self) -> defer.Deferred:
        """Free every agent and session (sockets, ports, tasks, timers); idempotent."""
        self._closed = True
        self._dtls.close()
        return self._streams.close().addCallback(self._released)

    def _released(self, _: object) -> None:
        self._dtls.release()  # nothing calls back once closed: no cycle through this media
        self.engine.closed(self)

    # --- steps ---------------------------------------------------------------------------------

    def _ensure_streams(self, indexes: tuple[int, ...]) -> defer.Deferred:
        return self._streams.ensure(indexes, self.bundle, bool(self._controlling))

    def _save(self) -> None:
        self._saved = (self._wic_offer, self._core_offer)

    def _wic_flow(self) -> str | None:
        return self.wic_flow() if self.wic_flow is not None else ""

    # --- reporting -----------------------------------------------------------------------------

    def _event(self, kind: str, text: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, text)

    def _fail(self, layer: str, reason: str) -> None:
        log.info("call {call_id}: {layer} failure: {reason}", call_id=self.call_id, layer=layer, reason=reason)
        if self.on_failure is not None and not self._closed:
            self.on_failure(layer, reason)
