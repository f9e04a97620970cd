"""The media of one call: per m= line an ICE agent toward the WIC and a DTLS-SRTP relay session.

Theory of operation
-------------------
``CallMedia`` implements ``calls.CallMediaLike``: the call manager hands it every SDP body
in the order offers and answers happen, and gets back the body for the other side.  Inside:

* one ``Stream`` per accepted m= line (no BUNDLE: TS 24.371 lets the eP-CSCF omit it, and
  Chrome's default ``balanced`` bundle policy works unbundled): an ``IceAgent`` toward the WIC
  and a ``MediaSession`` whose core-side RTP/RTCP ports come from the same shared ``UdpPortPool``.
  The agent's datagrams feed the session; the session sends through the agent; a DTLS
  failure revokes ICE consent (RFC 7675 §5.2).
* roles: when the WIC offers, our agent is controlled (full mode) and we answer
  ``a=setup:active`` to ``actpass`` (RFC 5763 §5: active is RECOMMENDED for an answerer);
  when we offer to the WIC, our agent is controlling and we offer ``actpass``, taking the
  opposite of the WIC's answer.  DTLS starts when ICE has selected a pair.
* the ``WicLeg``/``CoreLeg`` given to the SDP transformations are built from the live agents
  and sessions, and every body goes through one ``OriginVersioner`` per leg, so ICE
  credentials, candidates, fingerprint and ports stay the same for the whole call (new
  ufrag/pwd would restart ICE, RFC 8445 §9; a WIC applies every 18x/2xx answer afresh) and o=
  versions only move when the content does (RFC 3264 §8).  A re-offer from the WIC with new
  ice-ufrag/pwd restarts ICE on that stream (RFC 8445 §9).
* ``close()`` frees every agent (sockets, ports, asyncio tasks, timers) and session.

``CallMediaEngine`` is the per-process part: settings, the port pool and the one DTLS
certificate (generated at start).  Calling it with a call makes that call's ``CallMedia``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from epcscf.ice import IceAgent, IceAgentConfig, IceClosed, IceError, IceState, PortsExhausted, UdpPortPool
from epcscf.ice.shelf import SocketShelf
from epcscf.media import Certificate, DtlsRole, MediaError, MediaSession, MediaSessionConfig, PacketKind, classify
from epcscf.media.certificate import Fingerprint as DtlsFingerprint
from epcscf.media.certificate import FingerprintError
from epcscf.pcscf.call_bundle import bundle_sessions, join_bundle
from epcscf.pcscf.call_model import MediaRejected
from epcscf.sdp import (
    CodecPolicy,
    CoreLeg,
    IceCredentials,
    OriginVersioner,
    SdpError,
    SdpRejected,
    SessionDescription,
    WicLeg,
    WicMediaParams,
    WicTransport,
    answer_toward_core,
    answer_toward_wic,
    extract_core_media_params,
    extract_wic_media_params,
    offer_toward_core,
    offer_toward_wic,
    parse_sdpfrag,
)
from epcscf.sdp import transform as sdp_transform
from epcscf.sdp.bundle import add_bundle_group, resolve_bundled_lines
from epcscf.sip.timers import TimerQueue

log = Logger(namespace="epcscf.pcscf.call_media")

#: seconds a WIC's orderly DTLS close may precede its BYE before the call is released for it
PEER_CLOSE_GRACE = 2.0
REVERSED_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
#: what counts as the first media packet of a stream (RFC 7983 §7, RFC 5761 §4: rtcp-mux)
_MEDIA_KINDS = frozenset({PacketKind.RTP, PacketKind.RTCP})


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


@dataclass(frozen=True)
class DtlsAssociation:
    """Our role and the WIC's certificate fingerprint of one DTLS association (RFC 5763 §5)."""

    role: DtlsRole
    remote_fingerprint: DtlsFingerprint | None


@dataclass(eq=False)
class Stream:
    """One m= line's transport toward the WIC and relay toward the core."""

    index: int
    agent: IceAgent
    session: MediaSession
    gathered: defer.Deferred
    started: bool = False
    dtls_started: bool = False
    dtls_role: DtlsRole | None = None
    remote_fingerprint: DtlsFingerprint | None = None
    #: ICE selected a pair since the last (re)start: DTLS can run on it
    pair_selected: bool = False
    #: the association a re-offer/answer asked for, taken up once it is answered (RFC 8842 §5.5)
    next_association: DtlsAssociation | None = None
    #: False for a bundled line riding on another line's agent and DTLS (RFC 8843)
    owns_transport: bool = True


#: ICE states after the connectivity checks (RFC 8445 §8: nominated, failed, or given up)
_ICE_SETTLED = frozenset({IceState.CONNECTED, IceState.FAILED, IceState.CLOSED})


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
        self.streams: dict[int, Stream] = {}
        self._session_id = str(secrets.randbelow(10**12) + 1)
        self._core_versioner = OriginVersioner(self.settings.origin_username, self._session_id, self.settings.media.core_address)
        self._wic_versioner: OriginVersioner | None = None
        self._wic_offer: SessionDescription | None = None  # the WIC's last offer (we answer it)
        self._core_offer: SessionDescription | None = None  # the core's last offer (we answer it)
        self._saved: tuple[SessionDescription | None, SessionDescription | None] = (None, None)
        self._controlling: bool | None = None  # decided by who offers first (RFC 8445 §6.1.1)
        self._closed = False
        self._peer_close_timer: Any = None
        #: the m= lines of the BUNDLE group toward the WIC, transport owner first (RFC 8843)
        self.bundle: tuple[int, ...] = ()
        self._retired: list[defer.Deferred] = []  # agents of lines that joined a group

    # --- CallMediaLike: the four transformations -----------------------------------------------

    def offer_from_wic(self, sdp: bytes) -> defer.Deferred:
        """§7.4.2: the WIC's offer → the offer toward the core."""
        # RFC 8843: bundle-only lines read as the tagged line's transport; the group is answered.
        wic_offer, group = resolve_bundled_lines(_parse(sdp))
        params = _wic_params(wic_offer)
        policy = self.settings.codecs
        accepted = self._plan(lambda: sdp_transform.plan_offer_toward_core(wic_offer, policy, params))
        if self._controlling is None:
            self._controlling = False  # the WIC offered: it controls (RFC 8445 §6.1.1)
        self._save()
        bundled = tuple(i for i in group if i in accepted)
        if not self.streams and (len(bundled) > 1 or bundled[:1] != group[:1]):
            # A lone line is grouped only when it was bundle-only (no transport of its own).
            self.bundle = bundled
        ready = self._ensure_streams(accepted)

        def build(_: object) -> defer.Deferred:
            bundle_sessions(self.streams, self.bundle, wic_offer)
            restarts = [self._apply_remote_ice(self.streams[i], params[i]) for i in accepted
                        if i in self.streams and self.streams[i].owns_transport]
            return gather(restarts).addCallback(lambda _: None)

        def offer(_: object) -> bytes:
            try:
                out = offer_toward_core(wic_offer, self._core_leg(), policy, params)
            except SdpRejected as error:
                raise MediaRejected(error.status, error.warning, error.warn_code) from None
            except SdpError as error:
                raise MediaRejected(400, error.reason) from None
            self._wic_offer = wic_offer
            for index in accepted:
                stream = self.streams[index]
                # RFC 5763 §5: answering actpass (or passive) we are active; answering active, passive.
                setup = params[index].setup or "actpass"
                active = self.settings.answer_setup == "active" if setup == "actpass" else setup == "passive"
                self._offered_association(stream, DtlsAssociation(
                    DtlsRole.CLIENT if active else DtlsRole.SERVER, _dtls_fingerprint(params[index].fingerprint)),
                    role_changed=setup != "actpass" and active != (stream.dtls_role is DtlsRole.CLIENT))
            return self._core_versioner.stamp_serialized(out)

        return ready.addCallback(build).addCallback(offer).addErrback(self._unwrap)

    def answer_from_core(self, sdp: bytes, fork: str | None = None) -> bytes:
        """The core's answer (18x/2xx, any fork) → the WebRTC answer; media starts.

        Every fork's answer reuses our one WIC-side endpoint; the core-side relay follows the
        latest answer."""
        if self._wic_offer is None:
            raise MediaRejected(488, "an answer from the core without a WIC offer")
        core_answer = _parse(sdp)
        try:
            out = answer_toward_wic(core_answer, self._wic_offer, self._wic_leg())
            core = extract_core_media_params(core_answer)
        except SdpRejected as error:
            raise MediaRejected(error.status, error.warning, error.warn_code) from None
        except SdpError as error:
            raise MediaRejected(400, error.reason) from None
        self._set_core_remotes(core)
        add_bundle_group(out, tuple(i for i in self.bundle if out.media[i].port != 0))
        for index, media in enumerate(out.media):
            stream = self.streams.get(index)
            if stream is not None:
                # The WIC's own direction is the reverse of what our answer says (RFC 3264 §6.1).
                stream.session.set_direction(REVERSED_DIRECTION.get(out.media_direction(media), "sendrecv"))
                if stream.owns_transport:
                    self._renew_association(stream)
                    self._start(stream)
        self._saved = (self._wic_offer, self._core_offer)
        if fork:
            self._event("media", f"core answer from fork {fork}")
        return self._wic_stamp(out)

    def offer_from_core(self, sdp: bytes) -> defer.Deferred:
        """§7.4.3: the core's offer → the WebRTC offer toward the WIC (actpass, our ICE)."""
        core_offer = _parse(sdp)
        policy = self.settings.codecs
        accepted = self._plan(lambda: sdp_transform.plan_offer_toward_wic(core_offer, policy))
        if self._controlling is None:
            self._controlling = True  # we offer to the WIC: we control (RFC 8445 §6.1.1)
        self._save()

        def offer(_: object) -> bytes:
            gathering = [i for i in accepted if not self.streams[i].agent.local_candidates()]
            if gathering:
                # An ICE restart (RFC 8445 §9) is still gathering the new local candidates: the
                # offer crossed an exchange in progress, the core retries (RFC 3261 §14.2: 491).
                raise MediaRejected(491, f"m-line {gathering[0]}: an ICE restart toward the WIC is in progress")
            try:
                out = offer_toward_wic(core_offer, self._wic_leg(), policy)
                self._set_core_remotes(extract_core_media_params(core_offer))
            except SdpRejected as error:
                raise MediaRejected(error.status, error.warning, error.warn_code) from None
            except SdpError as error:
                raise MediaRejected(400, error.reason) from None
            self._core_offer = core_offer
            # RFC 8843 §7.2: every line with its own transport (a WIC may refuse BUNDLE), grouped;
            # a group already agreed keeps its lines on one transport (§7.5.1 subsequent offers).
            add_bundle_group(out, self.bundle or (accepted if len(accepted) > 1 else ()))
            return self._wic_stamp(out)

        return self._ensure_streams(accepted).addCallback(offer).addErrback(self._unwrap)

    def answer_from_wic(self, sdp: bytes) -> defer.Deferred:
        """The WIC's answer → the answer toward the core; ICE and DTLS start (§7.4.3 a)."""
        if self._core_offer is None:
            return defer.fail(MediaRejected(488, "an answer from the WIC without a core offer"))
        wic_answer, group = resolve_bundled_lines(_parse(sdp))
        params = _wic_params(wic_answer)
        bundled = tuple(i for i in group if i in self.streams)
        if not self.bundle and len(bundled) > 1:
            self.bundle = bundled  # RFC 8843 §7.3: the WIC accepted our group; its lines move
            self._retired.extend(join_bundle([self.streams[i] for i in bundled]))
        bundle_sessions(self.streams, self.bundle, wic_answer)
        try:
            out = answer_toward_core(wic_answer, self._core_offer, self._core_leg())
        except SdpRejected as error:
            return defer.fail(MediaRejected(error.status, error.warning, error.warn_code))
        except SdpError as error:
            return defer.fail(MediaRejected(400, error.reason))
        applying = []
        for index, stream in self.streams.items():
            if index >= len(params) or params[index].port == 0 or not stream.owns_transport:
                continue
            param = params[index]
            # RFC 5763 §5: the WIC answered our actpass: active → we are the server.
            role = DtlsRole.CLIENT if param.setup == "passive" else DtlsRole.SERVER
            self._offered_association(stream, DtlsAssociation(role, _dtls_fingerprint(param.fingerprint)),
                                      role_changed=role is not stream.dtls_role)
            stream.session.set_direction(param.direction)
            applying.append(self._apply_remote_ice(stream, param))

        def started(_: object) -> bytes:
            for index, stream in self.streams.items():
                if index < len(params) and params[index].port != 0 and stream.owns_transport:
                    self._renew_association(stream)
                    self._start(stream)
            self._saved = (self._wic_offer, self._core_offer)
            return self._core_versioner.stamp_serialized(out)

        return gather(applying).addCallback(started).addErrback(self._unwrap)

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
        for entry in fragment.entries:
            indexes = list(self.streams) if entry.mline_index is None else [_mline(entry, self._wic_offer)]
            for index in indexes:
                stream = self.streams.get(index) if index is not None else None
                if stream is None or not stream.owns_transport:
                    continue  # a bundled line's candidates are its transport owner's (RFC 8843)
                try:
                    stream.agent.add_remote_candidate(None if entry.candidate is None else entry.candidate.raw)
                except IceError as error:
                    raise MediaRejected(400, str(error)) from None

    @property
    def ice_settled(self) -> bool:
        """Whether every stream's ICE is past its checks (connected, failed or closed): the end
        of the edge's part of a call's setup (``epcscf.pcscf.setup_window``)."""
        return self._closed or all(stream.agent.state in _ICE_SETTLED for stream in self.streams.values())

    def stats(self) -> dict[str, Any]:
        return {
            index: {"ice": stream.agent.state.value, "ice_stats": stream.agent.stats, "media": stream.session.stats()}
            for index, stream in self.streams.items()
        }

    def close(self) -> defer.Deferred:
        """Free every agent and session (sockets, ports, tasks, timers); idempotent."""
        self._closed = True
        if self._peer_close_timer is not None and self._peer_close_timer.active():
            self._peer_close_timer.cancel()
        self._peer_close_timer = None
        closing = list(self._retired)
        for stream in self.streams.values():
            stream.gathered.addErrback(lambda failure: None)  # closed while gathering: nobody waits any more
            stream.agent.on_consent_lost = None
            stream.agent.on_state_change = None
            stream.session.on_failed = None
            closing.append(defer.maybeDeferred(stream.session.close))
            if stream.owns_transport:
                closing.append(stream.agent.close())
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: self.engine.closed(self))

    # --- streams -----------------------------------------------------------------------------

    def _plan(self, plan: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
        try:
            return plan()
        except SdpRejected as error:
            raise MediaRejected(error.status, error.warning, error.warn_code) from None
        except SdpError as error:
            raise MediaRejected(400, error.reason) from None

    def _ensure_streams(self, indexes: tuple[int, ...]) -> defer.Deferred:
        """Allocate (also for m= lines added later, RFC 3264 §8.1) and gather the missing streams."""
        if self._closed:
            return defer.fail(MediaRejected(503, "the call's media is closed"))
        waiting = []
        owner = self.bundle[0] if self.bundle else None
        for index in sorted(indexes, key=lambda i: i != owner):  # a group's transport first
            stream = self.streams.get(index)
            if stream is None:
                try:
                    stream = self._new_stream(index)
                except (PortsExhausted, MediaError) as error:
                    return defer.fail(MediaRejected(503, str(error)))
            waiting.append(stream.gathered)
        return gather(waiting).addErrback(self._gather_failed)

    def _new_stream(self, index: int) -> Stream:
        engine = self.engine
        owner = self.streams.get(self.bundle[0]) if self.bundle and index != self.bundle[0] else None
        if owner is not None and index in self.bundle:
            # RFC 8843: a bundled line rides on its group's transport; only its core port is its own.
            session = MediaSession(engine.reactor, engine.timers, self.settings.media, engine.certificate,
                                   owner.agent, engine.pool, engine.shelf)
            stream = Stream(index, owner.agent, session, defer.Deferred(), owns_transport=False)
            self.streams[index] = stream
            owner.gathered.addBoth(lambda outcome: (stream.gathered.callback(None), outcome)[1])
            return stream
        agent = IceAgent(self.settings.ice, bool(self._controlling), engine.timers, engine.pool, shelf=engine.shelf)
        try:
            session = MediaSession(engine.reactor, engine.timers, self.settings.media, engine.certificate, agent, engine.pool, engine.shelf)
        except Exception:
            agent.close()
            raise
        stream = Stream(index, agent, session, defer.Deferred())

        def first_datagram(data: bytes) -> None:
            # For the timeline: note the first media packet (RFC 7983 §7 as the session
            # demultiplexes it), then hand datagrams straight over.
            if classify(data) in _MEDIA_KINDS:
                self._event("media", f"m-line {index}: first RTP/RTCP packet from the WIC")
                agent.datagram_received = session.datagram_received
            session.datagram_received(data)

        agent.datagram_received = first_datagram
        agent.on_state_change = lambda state: self._event("ice", f"m-line {index}: ICE {state.value}")
        agent.on_consent_lost = lambda reason: self._fail("ice", f"ICE consent lost on m-line {index}: {reason}")
        session.on_connected = lambda: self._event("dtls", f"m-line {index}: DTLS connected")
        session.on_failed = lambda reason: self._dtls_failed(stream, reason)
        self.streams[index] = stream
        agent.gather().chainDeferred(stream.gathered)
        return stream

    def _gather_failed(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, defer.FirstError):
            error = error.subFailure.value
        if isinstance(error, PortsExhausted):
            raise MediaRejected(503, str(error))
        if isinstance(error, IceError) and not isinstance(error, IceClosed):
            # No socket could be bound (ports held by other processes): no media resources,
            # the same 503 as an exhausted pool (RFC 3261 §21.5.4). An agent closed while
            # gathering is the call's release, handled by the call manager.
            raise MediaRejected(503, str(error))
        return failure

    def _apply_remote_ice(self, stream: Stream, params: WicMediaParams) -> defer.Deferred:
        if not params.ice_ufrag or not params.ice_pwd:
            return defer.succeed(None)
        candidates = [c.raw for c in params.candidates]
        # Without trickle, the offer holds every candidate (RFC 8838 §4.1.1 otherwise).
        end = params.end_of_candidates or "trickle" not in params.ice_options
        current = stream.agent.remote_credentials
        try:
            if current is None:
                stream.agent.set_remote(params.ice_ufrag, params.ice_pwd, candidates, end, params.ice_lite)
                return defer.succeed(None)
            if (current.ufrag, current.pwd) != (params.ice_ufrag, params.ice_pwd):
                self._event("ice", f"m-line {stream.index}: ICE restart by the WIC")  # RFC 8445 §9
                stream.started = stream.pair_selected = False
                return stream.agent.restart(params.ice_ufrag, params.ice_pwd, candidates, end, params.ice_lite)
        except IceError as error:
            return defer.fail(MediaRejected(488, f"m-line {stream.index}: {error}"))
        return defer.succeed(None)

    def _start(self, stream: Stream) -> None:
        """ICE checks, then DTLS on the selected pair (TS 24.371 §7.4.2 a, §7.4.3 a)."""
        if stream.started or self._closed:
            return
        stream.started = True

        def selected(pair: Any) -> None:
            self._event("ice", f"m-line {stream.index}: pair {pair.local} → {pair.remote} selected")
            stream.pair_selected = True
            self._start_dtls(stream)

        def failed(failure: Failure) -> None:
            if self._closed or stream.agent.state is IceState.CLOSED:
                return
            self._fail("ice", f"ICE failed on m-line {stream.index}: {failure.getErrorMessage()}")

        stream.agent.start().addCallbacks(selected, failed)

    def _start_dtls(self, stream: Stream) -> None:
        if stream.dtls_started or stream.dtls_role is None or self._closed:
            return
        stream.dtls_started = True
        try:
            stream.session.start_dtls(stream.dtls_role, stream.remote_fingerprint)
        except MediaError as error:
            self._fail("dtls", f"m-line {stream.index}: {error}")

    def _offered_association(self, stream: Stream, association: DtlsAssociation, role_changed: bool) -> None:
        """The DTLS parameters of the WIC's offer or answer for ``stream``.  Before DTLS runs they
        are simply ours; once it runs, a changed a=fingerprint (a new RTCPeerConnection: a new
        certificate) or a=setup role asks for a new association (RFC 8842 §5.5), kept for when
        the exchange completes; otherwise the running association goes on."""
        if not stream.dtls_started:
            stream.dtls_role, stream.remote_fingerprint = association.role, association.remote_fingerprint
        elif stream.owns_transport and (role_changed or association.remote_fingerprint != stream.remote_fingerprint):
            stream.next_association = association

    def _renew_association(self, stream: Stream) -> None:
        """The exchange asking for a new DTLS association completed: drop the old one (and its
        SRTP keys) and start the new one on the selected pair, or when ICE selects one (after
        an ICE restart).  Our certificate stays; the core side is untouched."""
        association, stream.next_association = stream.next_association, None
        if association is None or self._closed:
            return
        stream.dtls_role, stream.remote_fingerprint = association.role, association.remote_fingerprint
        try:
            stream.session.drop_dtls()
        except MediaError as error:
            self._fail("dtls", f"m-line {stream.index}: {error}")
            return
        stream.dtls_started = False
        if self._peer_close_timer is not None and self._peer_close_timer.active():
            self._peer_close_timer.cancel()  # the closed association is replaced
        self._peer_close_timer = None
        self._event("dtls", f"m-line {stream.index}: new DTLS association ({association.role.value}): "
                            "the WIC changed its a=fingerprint or a=setup role (RFC 8842 §5.5)")
        if stream.started and stream.pair_selected:
            self._start_dtls(stream)  # no ICE restart: the pair stays

    def _wic_flow(self) -> str | None:
        return self.wic_flow() if self.wic_flow is not None else ""

    def _dtls_failed(self, stream: Stream, reason: str) -> None:
        if stream.session.dtls_closed_by_peer and self._peer_close_timer is None:
            # A browser closes DTLS (close_notify) as it hangs up, and its BYE usually arrives a
            # moment later: that is the end of the call, not a DTLS failure. Only if no BYE
            # follows within the grace period is the call released for it.
            self._peer_close_timer = self.engine.timers.callLater(
                PEER_CLOSE_GRACE, self._peer_closed, stream, reason, self._wic_flow()
            )
            return
        stream.agent.revoke_consent(f"DTLS: {reason}")  # RFC 7675 §5.2
        self._fail("dtls", f"DTLS failed on m-line {stream.index}: {reason}")

    def _peer_closed(self, stream: Stream, reason: str, flow: str | None) -> None:
        """No BYE followed the WIC's close_notify within ``PEER_CLOSE_GRACE``; ``flow``: the
        WIC's flow then (None: it had none, its call suspended)."""
        self._peer_close_timer = None
        now = self._wic_flow()
        if now is None or now != flow:
            # The WIC closed DTLS as its page went away with its WebSocket: while the call is
            # suspended its grace period decides; back on a new flow, the WIC re-offers with a
            # new association for a new RTCPeerConnection (RFC 8842 §5.5): one more grace for that.
            if now is None:
                self._event("dtls", f"m-line {stream.index}: the WIC closed DTLS while away: waiting for its re-offer")
            self._peer_close_timer = self.engine.timers.callLater(PEER_CLOSE_GRACE, self._peer_closed, stream, reason, now)
            return
        self._fail("dtls", f"the WIC closed DTLS on m-line {stream.index} and sent no BYE")
        stream.agent.revoke_consent(f"DTLS: {reason}")  # RFC 7675 §5.2: the peer ended it

    def _set_core_remotes(self, core_params: list[Any]) -> None:
        for param in core_params:
            stream = self.streams.get(param.index)
            if stream is None or param.rejected:
                continue
            try:
                stream.session.set_core_remote(param.address, param.rtp_port, param.rtcp_port, param.rtcp_mux)
            except MediaError as error:
                raise MediaRejected(488, f"m-line {param.index}: {error}") from None

    # --- legs ----------------------------------------------------------------------------------

    def _wic_leg(self) -> WicLeg:
        transports: list[WicTransport | None] = []
        for index in range(max(self.streams, default=-1) + 1):
            stream = self.streams.get(index)
            if stream is None or not stream.agent.local_candidates():
                transports.append(None)
                continue
            credentials = stream.agent.local_credentials
            transports.append(WicTransport(IceCredentials(credentials.ufrag, credentials.pwd),
                                           tuple(stream.agent.local_candidates())))
        if self._wic_versioner is None:
            first = next((t for t in transports if t is not None), None)
            address = first.default_address[0] if first else "0.0.0.0"
            self._wic_versioner = OriginVersioner(self.settings.origin_username, self._session_id, address)
        return WicLeg(
            origin=self._wic_versioner.origin,
            transports=tuple(transports),
            fingerprint=self.engine.certificate.fingerprint.to_sdp(),
            answer_setup=self.settings.answer_setup,
            ice_lite=self.settings.ice.mode == "lite",
        )

    def _core_leg(self) -> CoreLeg:
        ports = tuple(
            self.streams[i].session.core_rtp_port if i in self.streams else None
            for i in range(max(self.streams, default=-1) + 1)
        )
        return CoreLeg(origin=self._core_versioner.origin, address=self.settings.media.core_address, ports=ports)

    def _wic_stamp(self, sdp: SessionDescription) -> bytes:
        assert self._wic_versioner is not None
        return self._wic_versioner.stamp_serialized(sdp)

    def _save(self) -> None:
        self._saved = (self._wic_offer, self._core_offer)

    # --- reporting -----------------------------------------------------------------------------

    def _event(self, kind: str, text: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, text)

    def _fail(self, layer: str, reason: str) -> None:
        log.info("call {call_id}: {layer} failure: {reason}", call_id=self.call_id, layer=layer, reason=reason)
        if self.on_failure is not None and not self._closed:
            self.on_failure(layer, reason)

    @staticmethod
    def _unwrap(failure: Failure) -> Failure:
        if failure.check(defer.FirstError):
            return failure.value.subFailure  # type: ignore[union-attr]
        return failure


def gather(deferreds: list[defer.Deferred]) -> defer.Deferred:
    """``defer.gatherResults(deferreds, consumeErrors=True)``, with one Deferred (one stream:
    the usual call) chained directly.  Twisted's DeferredList pays a runtime generic
    subscription (``cast(_DeferredListResultListT[Any], …)``) each time it fires: ~1 % of a
    call's CPU for these three per call."""
    if len(deferreds) != 1:
        return defer.gatherResults(deferreds, consumeErrors=True)
    [single] = deferreds
    gathered: defer.Deferred = defer.Deferred(lambda _: single.cancel())

    def succeeded(result: Any) -> Any:
        gathered.callback([result])
        return result

    def failed(failure: Failure) -> None:
        gathered.errback(Failure(defer.FirstError(failure, 0)))
        return None  # consumed, as gatherResults(consumeErrors=True) does

    single.addCallbacks(succeeded, failed)
    return gathered


def _parse(sdp: bytes) -> SessionDescription:
    try:
        return SessionDescription.parse(sdp)
    except SdpError as error:
        raise MediaRejected(400, f"malformed SDP: {error.reason}") from None


def _wic_params(sdp: SessionDescription) -> list[WicMediaParams]:
    try:
        return extract_wic_media_params(sdp)
    except SdpError as error:
        raise MediaRejected(400, error.reason) from None


def _dtls_fingerprint(fingerprint: Any) -> DtlsFingerprint | None:
    if fingerprint is None:
        return None
    try:
        return DtlsFingerprint.parse(fingerprint.algorithm, fingerprint.value)
    except FingerprintError as error:
        raise MediaRejected(488, str(error)) from None


def _mline(entry: Any, offer: SessionDescription | None) -> int | None:
    """The m= line a trickled candidate belongs to: by mid in the WIC's SDP, else by position."""
    if entry.mid is not None and offer is not None:
        for index, media in enumerate(offer.media):
            if media.attribute_value("mid") == entry.mid:
                return index
    return entry.mline_index
