"""Which m= line a packet from a BUNDLE transport belongs to (RFC 8843 §9.2), sans-IO.

One ICE/DTLS-SRTP transport toward the WIC carries every m= line of a BUNDLE group; toward
the core each m= line keeps its own plain RTP port (TS 24.371 §7.4.2: the IMS side knows no
BUNDLE).  After SRTP is removed, ``BundleDemux`` names the m= line of each packet:

RTP (RFC 8843 §9.2, in this order):
  1. the MID RTP header extension (RFC 8843 §15.2, one- or two-byte form of RFC 8285), when
     its id was negotiated; a MID that names an m= line also binds the packet's SSRC to it;
  2. the SSRC: signalled by the WIC (a=ssrc, RFC 5576) or bound earlier;
  3. the payload type, when it is unique to one m= line of the group; it binds the SSRC too.
  Nothing matches: the packet belongs to no m= line and is dropped (None).

RTCP (compound, RFC 3550 §6.1, or reduced-size, RFC 5506): the first packet of the compound
that names a known source decides: the sender SSRC of SR/SDES/BYE/XR/feedback when it is one
of the WIC's streams, else a reported or fed-back source (RR/SR report blocks, RFC 4585
feedback's media SSRC) when it is a stream the core sends (``bind_core_ssrc``).  An RTCP
packet that names no known source goes to the group's first m= line, whose core peer sees
all of a receive-only WIC's reports either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: RFC 8843 §15.2: the MID header extension's URI in a=extmap.
MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"

# RFC 3550 §6.4, RFC 4585 §6.1, RFC 3611: RTCP packet types.
_SR, _RR, _SDES, _BYE, _RTPFB, _PSFB, _XR = 200, 201, 202, 203, 205, 206, 207
# RFC 8285 §4.2 / §4.3: the "defined by profile" words of the two header-extension forms.
_ONE_BYTE_PROFILE = 0xBEDE
_TWO_BYTE_PROFILE_MASK = 0xFFF0
_TWO_BYTE_PROFILE = 0x1000


@dataclass(frozen=True)
class BundleLine:
    """What the WIC's SDP says about one bundled m= line."""

    index: int
    mid: str | None
    ssrcs: tuple[int, ...] = ()
    payload_types: tuple[int, ...] = ()


class BundleDemux:
    """The m= line of each packet of one BUNDLE transport (see module docstring)."""

    def __init__(self, lines: tuple[BundleLine, ...], mid_extension_id: int | None = None) -> None:
        if not lines:
            raise ValueError("a BUNDLE group has at least one m= line")
        self.lines = lines
        self.default = lines[0].index
        self.mid_extension_id = mid_extension_id
        self._mids = {line.mid: line.index for line in lines if line.mid is not None}
        #: WIC-sent SSRC → m= line (signalled, or learnt from MID / payload type)
        self.wic_ssrcs: dict[int, int] = {ssrc: line.index for line in lines for ssrc in line.ssrcs}
        #: core-sent SSRC → m= line (what the WIC's receiver reports and feedback name)
        self.core_ssrcs: dict[int, int] = {}
        seen: dict[int, int] = {}
        ambiguous: set[int] = set()
        for line in lines:
            for pt in line.payload_types:
                if pt in seen and seen[pt] != line.index:
                    ambiguous.add(pt)  # RFC 8843 §9.2: a shared PT says nothing
                seen[pt] = line.index
        self._payload_types: Mapping[int, int] = {pt: index for pt, index in seen.items() if pt not in ambiguous}

    def route_rtp(self, packet: bytes) -> int | None:
        """The m= line of a plain RTP packet (at least 12 bytes), or None."""
        ssrc = int.from_bytes(packet[8:12], "big")
        if self.mid_extension_id is not None and packet[0] & 0x10:
            mid = rtp_header_extension(packet, self.mid_extension_id)
            if mid is not None:
                index = self._mids.get(mid.decode("ascii", "replace"))
                if index is not None:
                    self.wic_ssrcs[ssrc] = index
                    return index
        index = self.wic_ssrcs.get(ssrc)
        if index is not None:
            return index
        index = self._payload_types.get(packet[1] & 0x7F)
        if index is not None:
            self.wic_ssrcs[ssrc] = index
        return index

    def bind_core_ssrc(self, ssrc: int, index: int) -> None:
        """The core sends ``ssrc`` on m= line ``index`` (so the WIC's reports on it go there)."""
        self.core_ssrcs[ssrc] = index

    def route_rtcp(self, packet: bytes) -> int:
        """The m= line of a plain (compound or reduced-size) RTCP packet."""
        offset, size = 0, len(packet)
        while offset + 8 <= size:
            first, kind = packet[offset], packet[offset + 1]
            length = (int.from_bytes(packet[offset + 2:offset + 4], "big") + 1) * 4
            sender = int.from_bytes(packet[offset + 4:offset + 8], "big")
            if kind in (_SR, _SDES, _BYE, _XR, _RTPFB, _PSFB):
                index = self.wic_ssrcs.get(sender)
                if index is not None:
                    return index
            about = _reported_sources(packet, offset, first, kind, min(length, size - offset))
            for ssrc in about:
                index = self.core_ssrcs.get(ssrc)
                if index is not None:
                    return index
            if kind == _RR:
                index = self.wic_ssrcs.get(sender)
                if index is not None:
                    return index
            offset += length
        return self.default


def _reported_sources(packet: bytes, offset: int, first: int, kind: int, length: int) -> list[int]:
    """The sources one RTCP packet reports on or feeds back about (RFC 3550 §6.4, RFC 4585 §6.1)."""
    if kind in (_RTPFB, _PSFB):
        return [int.from_bytes(packet[offset + 8:offset + 12], "big")] if length >= 12 else []
    if kind in (_SR, _RR):
        start = offset + (28 if kind == _SR else 8)
        count = first & 0x1F
        return [int.from_bytes(packet[start + 24 * i:start + 24 * i + 4], "big")
                for i in range(count) if start + 24 * i + 4 <= offset + length]
    return []


def rtp_header_extension(packet: bytes, wanted: int) -> bytes | None:
    """The value of header extension element ``wanted`` of an RTP packet (RFC 8285), or None."""
    csrc_end = 12 + 4 * (packet[0] & 0x0F)
    if len(packet) < csrc_end + 4:
        return None
    profile = int.from_bytes(packet[csrc_end:csrc_end + 2], "big")
    end = csrc_end + 4 + 4 * int.from_bytes(packet[csrc_end + 2:csrc_end + 4], "big")
    if end > len(packet):
        return None
    position = csrc_end + 4
    if profile == _ONE_BYTE_PROFILE:
        while position < end:
            byte = packet[position]
            if byte == 0:  # padding (RFC 8285 §4.2)
                position += 1
                continue
            element, size = byte >> 4, (byte & 0x0F) + 1
            if element == 15:
                return None  # RFC 8285 §4.2: stop parsing
            if element == wanted:
                return packet[position + 1:position + 1 + size]
            position += 1 + size
    elif profile & _TWO_BYTE_PROFILE_MASK == _TWO_BYTE_PROFILE:
        while position + 1 < end:
            element = packet[position]
            if element == 0:
                position += 1
                continue
            size = packet[position + 1]
            if element == wanted:
                return packet[position + 2:position + 2 + size]
            position += 2 + size
    return None
