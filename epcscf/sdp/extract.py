"""Read what the media layer needs out of a WIC description and a core description.

`extract_wic_media_params` gives, per m= line, the peer's ICE credentials, candidates and DTLS
parameters (media level first, session level as fallback, RFC 8839 §5 / RFC 8122 §5);
`extract_core_media_params` gives the core's RTP/RTCP address per m= line.
`require_usable_wic_media` turns the WebRTC defects that earn a 488 into `SdpRejected`.
"""

from __future__ import annotations

from dataclasses import dataclass

from epcscf.sdp.model import MediaDescription, SdpError, SessionDescription
from epcscf.sdp.params import (
    WARN_INCOMPATIBLE_TRANSPORT,
    WARN_MISCELLANEOUS,
    SdpRejected,
)

# RFC 5764 §8 / RFC 8843: the RTP profiles a WebRTC endpoint uses.
WEBRTC_RTP_PROTOS = ("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP")
# RFC 3551 / RFC 4585: the plain RTP profiles we accept from the core (no SDES crypto).
CORE_RTP_PROTOS = ("RTP/AVP", "RTP/AVPF")
RTP_MEDIA = ("audio", "video")


@dataclass(frozen=True)
class IceCandidate:
    """One `a=candidate` (RFC 8839 §5.1).  `raw` is the value without `candidate:`."""

    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: str
    related_address: str | None
    related_port: int | None
    extensions: tuple[tuple[str, str], ...]
    raw: str

    @classmethod
    def parse(cls, value: str) -> IceCandidate:
        text = value.strip()
        for prefix in ("a=", "candidate:"):
            if text.startswith(prefix):
                text = text[len(prefix):]
        parts = text.split()
        try:
            if len(parts) < 8 or parts[6] != "typ":
                raise ValueError("expected '<foundation> <component> <transport> <priority> <address> <port> typ <type>'")
            component, priority, port = int(parts[1]), int(parts[3]), int(parts[5])
            if not 1 <= component <= 256 or not 0 <= port <= 65535:
                raise ValueError("component or port out of range")
            related_address = related_port = None
            extensions: list[tuple[str, str]] = []
            rest = parts[8:]
            if len(rest) % 2:
                raise ValueError("odd number of extension tokens")
            for name, ext_value in zip(rest[::2], rest[1::2]):
                if name == "raddr":
                    related_address = ext_value
                elif name == "rport":
                    related_port = int(ext_value)
                else:
                    extensions.append((name, ext_value))
        except ValueError as error:
            raise SdpError(f"malformed ICE candidate {value!r}: {error}") from None
        return cls(parts[0], component, parts[2], priority, parts[4], port, parts[7],
                   related_address, related_port, tuple(extensions), text)


@dataclass(frozen=True)
class Fingerprint:
    """`a=fingerprint:<hash-func> <fingerprint>` (RFC 8122 §5)."""

    algorithm: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Fingerprint:
        algorithm, _, value = text.strip().partition(" ")
        if not algorithm or not value.strip():
            raise SdpError(f"malformed fingerprint {text!r}: expected '<hash-func> <hex:hex:...>'")
        return cls(algorithm.lower(), value.strip().upper())

    def __str__(self) -> str:
        return f"{self.algorithm} {self.value}"


@dataclass(frozen=True)
class WicMediaParams:
    """The WIC's transport parameters for one m= line."""

    index: int
    media: str
    port: int
    proto: str
    mid: str | None
    ice_ufrag: str | None
    ice_pwd: str | None
    ice_lite: bool
    ice_options: tuple[str, ...]
    candidates: tuple[IceCandidate, ...]
    end_of_candidates: bool
    fingerprints: tuple[Fingerprint, ...]
    setup: str | None
    tls_id: str | None
    rtcp_mux: bool
    direction: str

    @property
    def fingerprint(self) -> Fingerprint | None:
        return self.fingerprints[0] if self.fingerprints else None

    @property
    def rejected(self) -> bool:
        return self.port == 0


@dataclass(frozen=True)
class CoreMediaParams:
    """Where the core wants RTP for one m= line (RTCP per RFC 3605 a=rtcp, else port+1)."""

    index: int
    media: str
    address: str
    rtp_port: int
    rtcp_address: str
    rtcp_port: int
    rtcp_mux: bool
    proto: str
    payload_types: tuple[str, ...]
    direction: str            # as declared (media, session, sendrecv)
    on_hold_address: bool     # RFC 3264 §8.4 c=0.0.0.0: do not send to the core

    @property
    def payload_type(self) -> str | None:
        """The PT the answerer chose first (RFC 3264 §6.1: most preferred first)."""
        return self.payload_types[0] if self.payload_types else None

    @property
    def rejected(self) -> bool:
        return self.rtp_port == 0

    @property
    def core_sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly") and not self.rejected

    @property
    def core_receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly") and not self.on_hold_address and not self.rejected


def _media_ice_lite(sdp: SessionDescription, media: MediaDescription) -> bool:
    # RFC 8839 §5.3: ice-lite is a session-level attribute (we also accept it per media).
    return sdp.has_attribute("ice-lite") or media.has_attribute("ice-lite")


def extract_wic_media_params(sdp: SessionDescription) -> list[WicMediaParams]:
    """Per m= line: ICE, DTLS, mid, mux and direction (raises SdpError on a malformed candidate)."""
    result: list[WicMediaParams] = []
    for index, media in enumerate(sdp.media):
        fingerprints = media.attribute_values("fingerprint") or sdp.attribute_values("fingerprint")
        options = sdp.media_attribute_value(media, "ice-options") or ""
        result.append(WicMediaParams(
            index=index,
            media=media.media,
            port=media.port,
            proto=media.proto,
            mid=media.attribute_value("mid"),
            ice_ufrag=sdp.media_attribute_value(media, "ice-ufrag"),
            ice_pwd=sdp.media_attribute_value(media, "ice-pwd"),
            ice_lite=_media_ice_lite(sdp, media),
            ice_options=tuple(options.split()),
            candidates=tuple(IceCandidate.parse(v) for v in media.attribute_values("candidate")),
            end_of_candidates=media.has_attribute("end-of-candidates") or sdp.has_attribute("end-of-candidates"),
            fingerprints=tuple(Fingerprint.parse(v) for v in fingerprints),
            setup=(sdp.media_attribute_value(media, "setup") or None),
            tls_id=sdp.media_attribute_value(media, "tls-id"),
            rtcp_mux=media.has_attribute("rtcp-mux"),
            direction=sdp.media_direction(media),
        ))
    return result


def require_usable_wic_media(params: WicMediaParams, *, answer: bool) -> None:
    """A WebRTC m= line we accept must carry ICE (RFC 8839) and DTLS-SRTP (RFC 5763 §5) parameters."""
    where = f"m={params.media} line {params.index}"
    if params.proto.upper() not in WEBRTC_RTP_PROTOS:
        raise SdpRejected(f"{where}: profile {params.proto} is not UDP/TLS/RTP/SAVP(F) (DTLS-SRTP required)",
                          WARN_INCOMPATIBLE_TRANSPORT)
    if not params.ice_ufrag or not params.ice_pwd:
        raise SdpRejected(f"{where}: no a=ice-ufrag/a=ice-pwd (ICE is required, RFC 8839)")
    if params.fingerprint is None:
        raise SdpRejected(f"{where}: no a=fingerprint (DTLS-SRTP is required, RFC 5763)")
    if not params.rtcp_mux:
        # The WIC side always multiplexes RTP and RTCP (RFC 5761; browsers require it); we have no
        # component-2 candidates to offer instead.
        raise SdpRejected(f"{where}: no a=rtcp-mux (RTP/RTCP multiplexing is required, RFC 5761)")
    allowed = ("active", "passive") if answer else ("actpass", "active", "passive")
    if params.setup is not None and params.setup not in allowed:
        raise SdpRejected(f"{where}: a=setup:{params.setup} is not allowed in an "
                          f"{'answer' if answer else 'offer'} (RFC 5763 §5)", WARN_MISCELLANEOUS)


def extract_core_media_params(sdp: SessionDescription) -> list[CoreMediaParams]:
    """Per m= line: the core's RTP and RTCP destination, chosen PTs and direction."""
    result: list[CoreMediaParams] = []
    for index, media in enumerate(sdp.media):
        connection = sdp.media_connection(media)
        address = connection.host if connection is not None else "0.0.0.0"
        rtcp_address, rtcp_port = address, media.port + 1 if media.port else 0
        rtcp = media.attribute_value("rtcp")
        if rtcp:
            # RFC 3605 §2.1: a=rtcp:<port> [<nettype> <addrtype> <address>]
            parts = rtcp.split()
            if not parts[0].isdigit() or len(parts) not in (1, 4):
                raise SdpError(f"m={media.media} line {index}: malformed a=rtcp:{rtcp}")
            rtcp_port = int(parts[0])
            if len(parts) == 4:
                rtcp_address = parts[3]
        result.append(CoreMediaParams(
            index=index, media=media.media, address=address, rtp_port=media.port,
            rtcp_address=rtcp_address, rtcp_port=rtcp_port, rtcp_mux=media.has_attribute("rtcp-mux"),
            proto=media.proto, payload_types=tuple(media.formats), direction=sdp.media_direction(media),
            on_hold_address=connection is not None and connection.is_hold_address,
        ))
    return result
