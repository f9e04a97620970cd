"""`MediaSession`: one media stream of a call relayed between the WIC and the IMS core.

Theory of operation (the eIMS-AGW role of TS 23.334 §5.20).

    WIC ──ICE pair──▶ datagram_received ─┬─ DTLS (20..63) ─▶ DtlsEndpoint ─▶ keys ─▶ SrtpContext
                                        └─ SRTP/SRTCP (128..191, rtcp-mux) ─▶ unprotect ─▶ core RTP/RTCP port
    core RTP port  ─▶ protect ─▶ wic.send          core RTCP port ─▶ protect_rtcp ─▶ wic.send

The WIC side is anything with `send(bytes)` (`DatagramTransportLike`: the ICE agent's selected
pair in production, a UDP socket in tests); the owner wires the agent's non-STUN datagrams to
`datagram_received`.  The core side is a `CorePorts` pair bound on the core-facing address.

Rules the relay keeps:
- RFC 7983: demultiplex by first byte; RTCP vs RTP by the second (RFC 5761 §4).
- Nothing reaches the WIC before DTLS is connected (there are no keys before), and nothing from
  the WIC reaches the core before then either.
- SSRC, sequence number and timestamp pass unchanged (RFC 3711 protects the header, never
  rewrites it): the relay only re-encrypts.
- rtcp-mux toward the WIC always (RFC 5761; browsers require it); toward the core only when
  the core's SDP says so.
- Direction gating (TS 23.334 through-connection) applies to RTP only: RFC 3264 §5.1 keeps
  RTCP flowing on hold.
- Every packet the relay does not forward is counted in the stats of its direction.

`close()` stops the DTLS association, both sockets and every timer, and gives the ports back
to the pool; it is idempotent and safe from any state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorSocket, IReactorTime
from twisted.logger import Logger

from epcscf.ice.ports import UdpPortPool
from epcscf.ice.shelf import SocketShelf
from epcscf.media.bundle import BundleDemux
from epcscf.media.certificate import Certificate, Fingerprint
from epcscf.media.dtls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MTU,
    DEFAULT_SRTP_PROFILES,
    DtlsEndpoint,
    DtlsRole,
    SrtpKeys,
)
from epcscf.media.relay import Address, CorePorts, CoreRemote, MediaError, parse_ip
from epcscf.media.srtp import SrtpContext, SrtpErrorCounts

log = Logger()

# DTLS datagrams from the WIC kept until start_dtls() knows our role (RFC 5763 §5: a ClientHello
# may beat the SDP answer); a handshake flight is a handful of datagrams.
EARLY_DTLS_DATAGRAMS = 16

# RFC 3550 Appendix A.1: a jump of more than MAX_DROPOUT sequence numbers is a restart, not loss.
MAX_DROPOUT = 3000


class DatagramTransportLike(Protocol):
    """The WIC-side datagram channel (the ICE agent's selected pair)."""

    def send(self, data: bytes) -> object: ...


class Direction(enum.Enum):
    """The WIC stream's SDP direction, seen from the WIC (RFC 3264 §6.1).

    `sendonly`: the WIC sends, so only WIC→core RTP flows; `recvonly`: only core→WIC."""

    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def to_core(self) -> bool:
        return self is Direction.SENDRECV or self is Direction.SENDONLY

    @property
    def to_wic(self) -> bool:
        return self is Direction.SENDRECV or self is Direction.RECVONLY


#: the members by their SDP names (``set_direction``)
_DIRECTION_BY_VALUE: dict[str, Direction] = {member.value: member for member in Direction}


@dataclass
class DirectionStats:
    """Counters of one relay direction.  `bytes` counts plain RTP/RTCP (before SRTP or after it
    was removed); `lost` is estimated from RTP sequence gaps (RFC 3550 §6.4.1 cumulative lost)."""

    packets: int = 0
    bytes: int = 0
    rtcp_packets: int = 0
    rtcp_bytes: int = 0
    lost: int = 0
    dropped: int = 0  # not forwarded: before DTLS, gated, no destination, SRTP error, foreign source
    first_packet_time: float | None = None
    last_packet_time: float | None = None
    _ssrc: int = field(default=-1, repr=False)
    _highest_seq: int = field(default=0, repr=False)

    def count_rtp(self, packet: bytes, now: float) -> None:
        self.packets += 1
        self.bytes += len(packet)
        if self.first_packet_time is None:
            self.first_packet_time = now
        self.last_packet_time = now
        ssrc = int.from_bytes(packet[8:12], "big")
        seq = (packet[2] << 8) | packet[3]
        if ssrc != self._ssrc:
            self._ssrc = ssrc
            self._highest_seq = seq
            return
        delta = (seq - self._highest_seq) & 0xFFFF
        if 0 < delta < MAX_DROPOUT:
            self.lost += delta - 1
            self._highest_seq = seq
        elif delta >= 0x8000 and self.lost:
            self.lost -= 1  # a late packet that was counted lost when the gap opened
        elif MAX_DROPOUT <= delta < 0x8000:
            self._highest_seq = seq  # the sender restarted its sequence

    def count_rtcp(self, packet: bytes, now: float) -> None:
        self.rtcp_packets += 1
        self.rtcp_bytes += len(packet)
        if self.first_packet_time is None:
            self.first_packet_time = now
        self.last_packet_time = now


_Counters = TypeVar("_Counters", DirectionStats, SrtpErrorCounts)


def _snapshot(counters: _Counters) -> _Counters:
    """A copy of a plain dataclass of counters (no slots, no __post_init__): what ``copy.copy``
    gives, without its generic ``__reduce_ex__`` round (tests.test_media_session checks both)."""
    snapshot = object.__new__(type(counters))
    snapshot.__dict__.update(counters.__dict__)
    return snapshot


@dataclass(frozen=True)
class MediaStats:
    """A snapshot for the ops console and the per-call timeline."""

    wic_to_core: DirectionStats
    core_to_wic: DirectionStats
    srtp_errors: SrtpErrorCounts
    dtls_state: str
    srtp_profile: str | None
    direction: str
    core_rtp_target: Address | None
    core_rtcp_target: Address | None
    dtls_retransmissions: int


@dataclass(frozen=True)
class MediaSessionConfig:
    """How sessions bind and negotiate (the `[media]` section; `core_address` is where the
    core-facing RTP ports bind and what goes into c= toward the core)."""

    core_address: str = "127.0.0.1"
    latching: bool = True
    srtp_profiles: tuple[str, ...] = DEFAULT_SRTP_PROFILES
    mtu: int = DEFAULT_MTU
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


class MediaSession:
    """One relayed media stream (an m= line of a call)."""

    def __init__(
        self,
        reactor: IReactorSocket,
        clock: IReactorTime,
        config: MediaSessionConfig,
        certificate: Certificate,
        wic: DatagramTransportLike,
        pool: UdpPortPool | None = None,
        shelf: SocketShelf | None = None,
    ) -> None:
        self.config = config
        self.certificate = certificate
        self.on_connected: Callable[[], object] | None = None
        self.on_failed: Callable[[str], object] | None = None
        self.wic_to_core = DirectionStats()
        self.core_to_wic = DirectionStats()
        self._clock = clock
        self._wic_send = wic.send
        self._dtls: DtlsEndpoint | None = None
        self._srtp: SrtpContext | None = None
        self._early_dtls: list[bytes] = []
        self._direction = Direction.SENDRECV
        self._to_core = True
        self._to_wic = True
        self._remote: CoreRemote | None = None
        self._rtp_target: Address | None = None
        self._rtcp_target: Address | None = None
        self._latching = config.latching
        self._rtp_latched = False
        self._rtcp_latched = False
        self._closed: Deferred[None] | None = None
        self._srtp_errors = SrtpErrorCounts()
        # RFC 8843: on the transport owner, the demultiplexer and the sessions of its group (by
        # m= line); on every member, the demultiplexer and its own m= line (core SSRCs it sees).
        self._bundle: BundleDemux | None = None
        self._bundle_index = -1
        self._members: dict[int, MediaSession] = {}
        # Binding last: a PortsExhausted/MediaError leaves nothing to clean up.
        self._ports = CorePorts(reactor, config.core_address, pool, self._core_rtp_received, self._core_rtcp_received, shelf)

    def __repr__(self) -> str:
        return f"<MediaSession core {self.core_address}:{self.core_rtp_port} {self.state}>"

    # -- what the call (and SDP) needs ------------------------------------------------------

    @property
    def core_address(self) -> str:
        return self._ports.address

    @property
    def core_rtp_port(self) -> int:
        return self._ports.rtp_port

    @property
    def core_rtcp_port(self) -> int:
        return self._ports.rtcp_port

    @property
    def local_fingerprint(self) -> Fingerprint:
        return self.certificate.fingerprint

    @property
    def state(self) -> str:
        """"new" before start_dtls, then the DTLS state; "closed" after close()."""
        if self._closed is not None:
            return "closed"
        return self._dtls.state._value_ if self._dtls is not None else "new"  # ``.value`` is a property

    @property
    def connected(self) -> bool:
        return self._srtp is not None and self._closed is None

    def start_dtls(self, role: DtlsRole | str, remote_fingerprint: Fingerprint | None) -> None:
        """Start the DTLS association once our role is known (RFC 5763 §5, from a=setup).

        `remote_fingerprint` may be None when the WIC's certificate is not yet known; give it
        later with `set_remote_fingerprint`."""
        if self._closed is not None:
            raise MediaError("media session is closed")
        if self._dtls is not None:
            raise MediaError("DTLS already started for this media session")
        try:
            dtls_role = DtlsRole(role)
        except ValueError:
            raise MediaError(f"DTLS role must be 'client' or 'server', got {role!r}") from None
        self._dtls = DtlsEndpoint(
            dtls_role,
            self.certificate,
            remote_fingerprint,
            self._clock,
            self._send_dtls,
            on_connected=self._dtls_connected,
            on_failed=self._dtls_failed,
            srtp_profiles=self.config.srtp_profiles,
            mtu=self.config.mtu,
            handshake_timeout=self.config.handshake_timeout,
        )
        self._dtls.start()
        early, self._early_dtls = self._early_dtls, []
        for datagram in early:
            if self._dtls is None:
                break
            self._dtls.datagram_received(datagram)

    def drop_dtls(self) -> None:
        """Forget the DTLS association and its SRTP keys, so that ``start_dtls`` can begin a new
        one: the WIC's re-offer changed its a=fingerprint or a=setup role (RFC 8842 §5.5; a new
        RTCPeerConnection brings a new certificate).  No close_notify: the old association's
        peer is gone.  Nothing is relayed until the new handshake gives keys (RFC 5764 §4.1)."""
        if self._closed is not None:
            raise MediaError("media session is closed")
        dtls, self._dtls = self._dtls, None
        if dtls is not None:
            dtls.on_connected = None
            dtls.on_failed = None
            dtls.close(notify=False)
        if self._srtp is not None:
            self._srtp_errors = self._srtp.errors
        self._srtp = None
        for member in self._members.values():
            member._srtp = None
        self._early_dtls = []

    def bundle(self, demux: BundleDemux, members: dict[int, MediaSession]) -> None:
        """Carry the m= lines of one BUNDLE group on this session's transport (RFC 8843).

        This session (one of ``members``, by m= line) owns the DTLS association and its SRTP
        keys; every packet from the WIC goes, once SRTP is removed, to the member ``demux``
        names, which relays it to its own core port.  Members send toward the WIC through this
        session's transport with the shared keys (one SRTP context per transport, RFC 5764 §4.1).
        """
        self._bundle = demux
        self._members = dict(members)
        for index, member in members.items():
            member._bundle = demux
            member._bundle_index = index
            if member is not self:
                member._wic_send = self._wic_send
                member._srtp = self._srtp

    @property
    def bundled(self) -> bool:
        return self._bundle is not None

    def set_remote_fingerprint(self, fingerprint: Fingerprint) -> None:
        if self._dtls is None:
            raise MediaError("start_dtls() first")
        self._dtls.set_remote_fingerprint(fingerprint)

    def set_core_remote(self, host: str, rtp_port: int, rtcp_port: int | None = None, rtcp_mux: bool = False) -> None:
        """Where the core's SDP wants media (c= and m= port; a=rtcp; a=rtcp-mux, RFC 5761)."""
        address = parse_ip(host)
        for port in (rtp_port, rtcp_port):
            if port is not None and not 0 < port <= 65535:
                raise MediaError(f"core media port {port} is out of range")
        rtp = (address, rtp_port)
        # RFC 3605: without a=rtcp, RTCP is on the RTP port + 1; with rtcp-mux on the RTP port.
        rtcp = rtp if rtcp_mux else (address, rtcp_port if rtcp_port is not None else rtp_port + 1)
        self._remote = CoreRemote(rtp, rtcp, rtcp_mux)
        # A new remote (re-INVITE) starts latching over.
        self._rtp_target, self._rtcp_target = rtp, rtcp
        self._rtp_latched = self._rtcp_latched = False

    def set_direction(self, direction: Direction | str) -> None:
        """Gate RTP per the WIC stream's SDP direction (hold/resume, RFC 3264 §5.1)."""
        # By value from a dict: ``Direction(text)`` is EnumType.__call__, Python code, each answer.
        self._direction = _DIRECTION_BY_VALUE.get(direction) or Direction(direction)  # type: ignore[call-overload]
        self._to_core = self._direction.to_core
        self._to_wic = self._direction.to_wic

    @property
    def direction(self) -> Direction:
        return self._direction

    def stats(self) -> MediaStats:
        srtp = self._srtp
        return MediaStats(
            # Snapshots of the live counters (dataclasses.replace walks the fields, copy.copy
            # goes through __reduce_ex__: ``_snapshot`` copies the instance dict).
            wic_to_core=_snapshot(self.wic_to_core),
            core_to_wic=_snapshot(self.core_to_wic),
            srtp_errors=_snapshot(srtp.errors if srtp is not None else self._srtp_errors),
            dtls_state=self.state,
            srtp_profile=srtp.keys.profile.name if srtp is not None else None,
            direction=self._direction.value,
            core_rtp_target=self._rtp_target,
            core_rtcp_target=self._rtcp_target,
            dtls_retransmissions=self._dtls.retransmissions if self._dtls is not None else 0,
        )

    def close(self) -> Deferred[None]:
        """Release everything; the Deferred fires when the ports are back in the pool."""
        if self._closed is None:
            if self._srtp is not None:
                self._srtp_errors = self._srtp.errors
            self._srtp = None
            self._early_dtls = []
            if self._dtls is not None:
                dtls, self._dtls = self._dtls, None
                try:
                    dtls.close()  # close_notify toward the WIC
                except Exception:
                    log.failure("closing DTLS of {session}", session=self)
            self.on_connected = None
            self.on_failed = None
            self._members = {}
            self._closed = self._ports.close()
            self._closed.addErrback(lambda failure: log.failure("closing core ports", failure))
        if self._closed.called:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._closed.addBoth(lambda outcome: (done.callback(None), outcome)[1])
        return done

    # -- WIC side ---------------------------------------------------------------------------

    def datagram_received(self, data: bytes) -> None:
        """Every non-STUN datagram from the WIC (the ICE agent's `datagram_received`)."""
        if not data:
            return
        first = data[0]
        if 128 <= first <= 191:  # RFC 7983: RTP/RTCP
            srtp = self._srtp
            stats = self.wic_to_core
            if srtp is None:
                stats.dropped += 1
                return
            bundle = self._bundle
            if len(data) > 1 and 192 <= data[1] <= 223:  # RFC 5761 §4: RTCP on the muxed port
                rtcp = srtp.unprotect_rtcp(data)
                if rtcp is None:
                    stats.dropped += 1
                    return
                if bundle is None:
                    self._rtcp_to_core(rtcp)
                    return
                member = self._members.get(bundle.route_rtcp(rtcp))
                (member if member is not None else self)._rtcp_to_core(rtcp)
                return
            rtp = srtp.unprotect(data)
            if rtp is None or len(rtp) < 12:
                stats.dropped += 1
                return
            if bundle is None:
                self._rtp_to_core(rtp)
                return
            member = self._members.get(bundle.route_rtp(rtp))  # type: ignore[arg-type]
            if member is None:
                stats.dropped += 1  # RFC 8843 §9.2: no m= line of the group claims it
                return
            member._rtp_to_core(rtp)
        elif 20 <= first <= 63:  # RFC 7983: DTLS
            dtls = self._dtls
            if dtls is not None:
                dtls.datagram_received(data)
            elif self._closed is None and len(self._early_dtls) < EARLY_DTLS_DATAGRAMS:
                self._early_dtls.append(data)
        else:
            # STUN belongs to the ICE agent; ZRTP, TURN channels and the rest are not ours.
            self.wic_to_core.dropped += 1

    def _rtp_to_core(self, rtp: bytes) -> None:
        stats = self.wic_to_core
        target = self._rtp_target
        if target is None or not self._to_core:
            stats.dropped += 1
            return
        stats.count_rtp(rtp, self._clock.seconds())
        self._send_core(self._ports.send_rtp, rtp, target, stats)

    def _rtcp_to_core(self, rtcp: bytes) -> None:
        stats = self.wic_to_core
        target = self._rtcp_target
        if target is None:
            stats.dropped += 1
            return
        stats.count_rtcp(rtcp, self._clock.seconds())
        send = self._ports.send_rtp if self._remote is not None and self._remote.rtcp_mux else self._ports.send_rtcp
        self._send_core(send, rtcp, target, stats)

    @staticmethod
    def _send_core(send: Callable[[bytes, Address], int], packet: bytes, target: Address, stats: DirectionStats) -> None:
        try:
            send(packet, target)
        except OSError:
            # ICMP port unreachable from an earlier packet, or a full socket buffer: media is
            # lossy; count it and keep going.
            stats.dropped += 1

    def _send_dtls(self, data: bytes) -> None:
        try:
            self._wic_send(data)
        except Exception:
            log.failure("sending DTLS toward the WIC")

    def _dtls_connected(self, keys: SrtpKeys) -> None:
        self._srtp = SrtpContext(keys)
        for member in self._members.values():
            member._srtp = self._srtp  # one SRTP context per BUNDLE transport (RFC 8843 §9)
        log.info("media: DTLS-SRTP up ({profile})", profile=keys.profile.name)
        callback = self.on_connected
        if callback is not None:
            callback()

    @property
    def dtls_closed_by_peer(self) -> bool:
        """The WIC closed DTLS in order (close_notify) rather than failing."""
        return self._dtls is not None and self._dtls.closed_by_peer

    def _dtls_failed(self, reason: str) -> None:
        if self._srtp is not None:
            self._srtp_errors = self._srtp.errors
        self._srtp = None  # RFC 5764: no keys, no media
        for member in self._members.values():
            member._srtp = None
        callback = self.on_failed
        if callback is not None:
            callback(reason)

    # -- core side --------------------------------------------------------------------------

    def _core_rtp_received(self, data: bytes, source: Address) -> None:
        if len(data) > 1 and 192 <= data[1] <= 223:
            # RFC 5761 §4: RTCP on the RTP port when the core multiplexes.
            self._core_rtcp_received(data, source)
            return
        stats = self.core_to_wic
        if len(data) < 12 or not 128 <= data[0] <= 191:
            stats.dropped += 1
            return
        if self._latching and not self._rtp_latched:
            # RFC 4961 symmetric RTP: answer where the core really sends from.
            self._rtp_target = source
            self._rtp_latched = True
        elif self._latching and source != self._rtp_target:
            stats.dropped += 1  # not the latched source: injected or stray media
            return
        srtp = self._srtp
        if srtp is None or not self._to_wic:
            stats.dropped += 1
            return
        bundle = self._bundle
        if bundle is not None:
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc not in bundle.core_ssrcs:
                bundle.bind_core_ssrc(ssrc, self._bundle_index)
        now = self._clock.seconds()
        srtp_packet = srtp.protect(data)
        if srtp_packet is None:
            stats.dropped += 1
            return
        stats.count_rtp(data, now)
        self._wic_send(srtp_packet)

    def _core_rtcp_received(self, data: bytes, source: Address) -> None:
        stats = self.core_to_wic
        if len(data) < 8 or not 128 <= data[0] <= 191:
            stats.dropped += 1
            return
        if self._latching and not self._rtcp_latched:
            self._rtcp_target = source
            self._rtcp_latched = True
        elif self._latching and source != self._rtcp_target:
            stats.dropped += 1
            return
        srtp = self._srtp
        if srtp is None:
            stats.dropped += 1
            return
        srtcp = srtp.protect_rtcp(data)
        if srtcp is None:
            stats.dropped += 1
            return
        stats.count_rtcp(data, self._clock.seconds())
        self._wic_send(srtcp)
