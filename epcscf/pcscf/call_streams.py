"""The streams of one call: per m= line an ICE agent toward the WIC and a relay session toward the core.

``CallStreams`` makes a ``Stream`` for every accepted m= line (and for lines added by a
re-offer, RFC 3264 §8.1), gathers its ICE candidates, gives its agent the WIC's credentials and
candidates (a change of them is an ICE restart, RFC 8445 §9), starts the connectivity checks and
closes it all with the call.  The lines of a BUNDLE group ride on the transport of the group's
first line (RFC 8843, ``call_bundle``).  The DTLS side of a stream is ``call_dtls.CallDtls``'s:
this module only tells it when ICE has selected a pair and when a session's DTLS failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from epcscf.ice import IceAgent, IceClosed, IceError, IceState, PortsExhausted
from epcscf.media import DtlsRole, MediaError, MediaSession, PacketKind, classify
from epcscf.media.certificate import Fingerprint as DtlsFingerprint
from epcscf.pcscf.call_bundle import join_bundle
from epcscf.pcscf.call_dtls import DtlsAssociation, Report
from epcscf.pcscf.call_model import MediaRejected
from epcscf.sdp import SessionDescription, WicMediaParams

if TYPE_CHECKING:  # the engine makes the call's media, which makes its streams
    from epcscf.pcscf.call_media import CallMediaEngine

#: what counts as the first media packet of a stream (RFC 7983 §7, RFC 5761 §4: rtcp-mux)
_MEDIA_KINDS = frozenset({PacketKind.RTP, PacketKind.RTCP})
#: ICE states after the connectivity checks (RFC 8445 §8: nominated, failed, or given up)
_ICE_SETTLED = frozenset({IceState.CONNECTED, IceState.FAILED, IceState.CLOSED})


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


class CallStreams:
    """The ``Stream`` of each m= line of one call, by index (see module docstring)."""

    def __init__(self, engine: CallMediaEngine, event: Report, fail: Report,
                 pair_selected: Callable[[Stream], None], dtls_failed: Callable[[Stream, str], None]) -> None:
        self.engine = engine
        self._event = event
        self._fail = fail
        self._pair_selected = pair_selected
        self._dtls_failed = dtls_failed
        self.streams: dict[int, Stream] = {}
        self._retired: list[defer.Deferred] = []  # agents of lines that joined a group
        self.closed = False

    def ensure(self, indexes: tuple[int, ...], bundle: tuple[int, ...], controlling: bool) -> defer.Deferred:
        """Allocate (also for m= lines added later, RFC 3264 §8.1) and gather the missing streams."""
        if self.closed:
            return defer.fail(MediaRejected(503, "the call's media is closed"))
        waiting = []
        owner = bundle[0] if bundle else None
        for index in sorted(indexes, key=lambda i: i != owner):  # a group's transport first
            stream = self.streams.get(index)
            if stream is None:
                try:
                    stream = self._new_stream(index, bundle, controlling)
                except (PortsExhausted, MediaError) as error:
                    return defer.fail(MediaRejected(503, str(error)))
            waiting.append(stream.gathered)
        return gather(waiting).addErrback(_gather_failed)

    def _new_stream(self, index: int, bundle: tuple[int, ...], controlling: bool) -> Stream:
        engine = self.engine
        settings = engine.settings
        owner = self.streams.get(bundle[0]) if bundle and index != bundle[0] else None
        if owner is not None and index in bundle:
            # RFC 8843: a bundled line rides on its group's transport; only its core port is its own.
            session = MediaSession(engine.reactor, engine.timers, settings.media, engine.certificate,
                                   owner.agent, engine.pool, engine.shelf)
            stream = Stream(index, owner.agent, session, defer.Deferred(), owns_transport=False)
            self.streams[index] = stream
            owner.gathered.addBoth(lambda outcome: (stream.gathered.callback(None), outcome)[1])
            return stream
        agent = IceAgent(settings.ice, controlling, engine.timers, engine.pool, shelf=engine.shelf)
        try:
            session = MediaSession(engine.reactor, engine.timers, settings.media, engine.certificate, agent, engine.pool, engine.shelf)
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
        agent.on_state_change = lambda state: self._event("ice", f"m-line {index}: ICE {state._value_}")
        agent.on_consent_lost = lambda reason: self._fail("ice", f"ICE consent lost on m-line {index}: {reason}")
        session.on_connected = lambda: self._event("dtls", f"m-line {index}: DTLS connected")
        session.on_failed = lambda reason: self._dtls_failed(stream, reason)
        self.streams[index] = stream
        agent.gather().chainDeferred(stream.gathered)
        return stream

    def join_bundle(self, indexes: tuple[int, ...]) -> None:
        """RFC 8843 §7.3: the WIC accepted our group: its lines move onto the first one's transport."""
        self._retired.extend(join_bundle([self.streams[i] for i in indexes]))

    def apply_remote_ice(self, stream: Stream, params: WicMediaParams) -> defer.Deferred:
        """The WIC's ICE credentials and candidates for ``stream``; new ones restart ICE."""
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

    def add_trickled(self, entries: Any, wic_offer: SessionDescription | None) -> None:
        """RFC 8840 candidates trickled by the WIC (an sdpfrag's entries), each to its stream's agent."""
        for entry in entries:
            indexes = list(self.streams) if entry.mline_index is None else [_mline(entry, wic_offer)]
            for index in indexes:
                stream = self.streams.get(index) if index is not None else None
                if stream is None or not stream.owns_transport:
                    continue  # a bundled line's candidates are its transport owner's (RFC 8843)
                try:
                    stream.agent.add_remote_candidate(None if entry.candidate is None else entry.candidate.raw)
                except IceError as error:
                    raise MediaRejected(400, str(error)) from None

    def start(self, stream: Stream) -> None:
        """ICE checks, then DTLS on the selected pair (TS 24.371 §7.4.2 a, §7.4.3 a)."""
        if stream.started or self.closed:
            return
        stream.started = True

        def selected(pair: Any) -> None:
            self._event("ice", f"m-line {stream.index}: pair {pair.local} → {pair.remote} selected")
            stream.pair_selected = True
            self._pair_selected(stream)

        def failed(failure: Failure) -> None:
            if self.closed or stream.agent.state is IceState.CLOSED:
                return
            self._fail("ice", f"ICE failed on m-line {stream.index}: {failure.getErrorMessage()}")

        stream.agent.start().addCallbacks(selected, failed)

    def set_core_remotes(self, core_params: list[Any]) -> None:
        """Where each relay session sends toward the core (the core's SDP, per m= line)."""
        for param in core_params:
            stream = self.streams.get(param.index)
            if stream is None or param.rejected:
                continue
            try:
                stream.session.set_core_remote(param.address, param.rtp_port, param.rtcp_port, param.rtcp_mux)
            except MediaError as error:
                raise MediaRejected(488, f"m-line {param.index}: {error}") from None

    @property
    def ice_settled(self) -> bool:
        """Whether every stream's ICE is past its checks (connected, failed or closed)."""
        return self.closed or all(stream.agent.state in _ICE_SETTLED for stream in self.streams.values())

    def stats(self) -> dict[str, Any]:
        return {
            index: {"ice": stream.agent.state._value_, "ice_stats": stream.agent.stats, "media": stream.session.stats()}
            for index, stream in self.streams.items()
        }

    def close(self) -> defer.Deferred:
        """Free every agent and session (sockets, ports, tasks, timers)."""
        self.closed = True
        closing = list(self._retired)
        for stream in self.streams.values():
            stream.gathered.addErrback(lambda failure: None)  # closed while gathering: nobody waits any more
            stream.agent.on_consent_lost = None
            stream.agent.on_state_change = None
            stream.session.on_failed = None
            try:
                closing.append(stream.session.close())
            except Exception:  # as maybeDeferred would: a failure among the others, consumed
                closing.append(defer.fail())
            if stream.owns_transport:
                closing.append(stream.agent.close())
        return all_done(closing).addCallback(self._release)

    def _release(self, result: None) -> None:
        """Once closed, nothing reports any more: the callbacks into the call's media and the
        closures tying each agent to its session (``first_datagram``) are dropped -- cycles
        that only the collector would otherwise free, per call."""
        self._event = self._fail = self._pair_selected = self._dtls_failed = _ignore
        for stream in self.streams.values():
            stream.agent.datagram_received = None  # the agent drops what comes once closed
            stream.session.on_connected = None
        return result


def _ignore(*_: object) -> None:
    """A closed call's report: nobody listens any more."""


def all_done(deferreds: list[defer.Deferred]) -> defer.Deferred[None]:
    """Fires with None once each of ``deferreds`` has fired, its failure consumed: what
    ``DeferredList(deferreds, consumeErrors=True)`` gives a caller that ignores the result list,
    without its per-result bookkeeping (see ``gather``) for the two or three closings of a call.
    Cancelling it cancels those still waiting, as cancelling a DeferredList does."""
    done: defer.Deferred[None] = defer.Deferred(lambda _: [d.cancel() for d in deferreds if not d.called])
    remaining = len(deferreds)

    def one_fired() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not done.called:
            done.callback(None)

    def succeeded(result: object) -> object:
        one_fired()
        return result  # left on the Deferred, as DeferredList leaves it

    def failed(_: Failure) -> None:
        one_fired()
        return None  # consumed (consumeErrors=True)

    if not deferreds:
        done.callback(None)
    for deferred in deferreds:
        deferred.addCallbacks(succeeded, failed)
    return done


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


def first_error(failure: Failure) -> Failure:
    """The failure inside a failed ``gather`` (as it was raised), any other one as it is."""
    if failure.check(defer.FirstError):
        return failure.value.subFailure  # type: ignore[union-attr]
    return failure


def _gather_failed(failure: Failure) -> Failure:
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


def _mline(entry: Any, offer: SessionDescription | None) -> int | None:
    """The m= line a trickled candidate belongs to: by mid in the WIC's SDP, else by position."""
    if entry.mid is not None and offer is not None:
        for index, media in enumerate(offer.media):
            if media.attribute_value("mid") == entry.mid:
                return index
    return entry.mline_index
