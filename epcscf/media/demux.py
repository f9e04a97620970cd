"""RFC 7983 demultiplexing of what arrives on the one WIC-side port (eIMS-AGW, TS 23.334 §5.20).

RFC 7983 §7 classifies a datagram by its first byte:

    0..3      STUN            (the ICE agent answers these; they never reach media)
    16..19    ZRTP            (not used by WebRTC: dropped)
    20..63    DTLS
    64..79    TURN channel    (we are no TURN server: dropped)
    128..191  RTP or RTCP

RTP and RTCP share the range when rtcp-mux is on (RFC 5761).  RFC 5761 §4: RTCP packet types
192..223 occupy the second byte where RTP has marker + payload type, so an RTP payload type in
64..95 (second byte 192..223 with the marker set) would be ambiguous; WebRTC never uses those
payload types, and neither may we.
"""

from __future__ import annotations

import enum


class PacketKind(enum.Enum):
    STUN = "stun"
    DTLS = "dtls"
    RTP = "rtp"
    RTCP = "rtcp"
    OTHER = "other"


# Lookup table indexed by the first byte: one index on the hot path instead of comparisons.
_FIRST_BYTE: tuple[PacketKind, ...] = tuple(
    PacketKind.STUN if b <= 3
    else PacketKind.DTLS if 20 <= b <= 63
    else PacketKind.RTP if 128 <= b <= 191
    else PacketKind.OTHER
    for b in range(256)
)

# RFC 5761 §4: RTCP packet types SR 200 … XR 207, plus the reserved neighbours 192..223.
RTCP_PACKET_TYPES = range(192, 224)

# RFC 3550 §5.1 fixed header and §6.4.1 SR/RR common header lengths.
RTP_HEADER_LENGTH = 12
RTCP_HEADER_LENGTH = 8


def is_rtcp(data: bytes) -> bool:
    """An RTP-range datagram carries RTCP when its second byte is an RTCP packet type (RFC 5761 §4)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def classify(data: bytes) -> PacketKind:
    """Kind of one datagram from the WIC-side (ICE) socket, per RFC 7983 §7 and RFC 5761 §4."""
    if not data:
        return PacketKind.OTHER
    kind = _FIRST_BYTE[data[0]]
    if kind is PacketKind.RTP:
        if len(data) >= 2 and 192 <= data[1] <= 223:
            return PacketKind.RTCP if len(data) >= RTCP_HEADER_LENGTH else PacketKind.OTHER
        if len(data) < RTP_HEADER_LENGTH:
            return PacketKind.OTHER
    return kind
