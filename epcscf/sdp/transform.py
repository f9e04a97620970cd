"""TS 24.371 §7.4 SDP transformations between the WIC (WebRTC) and the IMS core, as pure functions.

    WIC-originated (§7.4.2):  offer_toward_core(wic_offer)   → INVITE to the core
                              answer_toward_wic(core_answer) → 18x/200 to the WIC
    WIC-terminated (§7.4.3):  offer_toward_wic(core_offer)   → INVITE to the WIC
                              answer_toward_core(wic_answer) → 18x/200 to the core

Every function takes the input description(s) and the leg parameters (addresses, ports, ICE
credentials, fingerprint, o= line) and returns a new `SessionDescription`; nothing is random,
nothing touches a socket.  The rules come from TS 23.228 Annex U.1 (WebRTC media-plane
extensions stop at the eP-CSCF), TS 23.334 (IMS-ALG DTLS-SRTP: RTP/AVP toward the core,
UDP/TLS/RTP/SAVPF toward the WIC) and RFC 3264.  Attributes are copied by *whitelist*, so no
ICE/DTLS/BUNDLE attribute and no browser address can reach the core and no IMS-only attribute
(preconditions, capability negotiation) reaches the WIC.  m= lines keep their number and order
in both directions; a line we do not serve gets port 0 (RFC 3264 §6).

Raises `SdpRejected` (488 + Warning) when the input cannot be served and `SdpError` (400) for a
malformed candidate/fingerprint.  A leg without a port/transport for a line we would accept is a
programming error in the caller (ValueError).

How a call uses this (WIC-originated; the other direction mirrors it with plan_offer_toward_wic):

    lines = plan_offer_toward_core(wic_offer, policy)        # 488 here, before allocating anything
    # one ICE agent + one core RTP port pair per index in `lines`, kept for the whole call
    core_leg = CoreLeg(core_versioner.origin, core_ip, ports)   # ports[i] None for other lines
    wic_leg = WicLeg(wic_versioner.origin, transports, fingerprint)
    invite_body = core_versioner.stamp(offer_toward_core(wic_offer, core_leg, policy)).serialize()
    ... each 18x/200 answer from the core:
    wic_body = wic_versioner.stamp(answer_toward_wic(core_answer, wic_offer, wic_leg)).serialize()
"""

from __future__ import annotations

from epcscf.sdp.codecs import (
    feedback_attributes,
    main_payload_types,
    payload_attributes,
    placeholder_formats,
    same_format,
    select_payload_types,
)
from epcscf.sdp.extract import (
    CORE_RTP_PROTOS,
    RTP_MEDIA,
    WEBRTC_RTP_PROTOS,
    WicMediaParams,
    extract_wic_media_params,
    require_usable_wic_media,
)
from epcscf.sdp.model import (
    Attribute,
    Bandwidth,
    Connection,
    MediaDescription,
    RtpMap,
    SessionDescription,
)
from epcscf.sdp.params import (
    WARN_INCOMPATIBLE_MEDIA_FORMAT,
    WARN_MISCELLANEOUS,
    CodecPolicy,
    CoreLeg,
    SdpRejected,
    WicLeg,
    WicTransport,
)

#: TS 23.334: audio toward the core is RTP/AVP; video RTP/AVPF, which keeps nack/pli feedback (RFC 4585).
CORE_PROTO = {"audio": "RTP/AVP", "video": "RTP/AVPF"}
#: What every RTP line toward the WIC uses (RFC 5764 §8, TS 23.334).
WIC_PROTO = "UDP/TLS/RTP/SAVPF"
#: ptime we add toward the core when the WIC gave none (Chrome never does), 20 ms = one G.711 frame.
DEFAULT_PTIME = "20"

__all__ = ["offer_toward_core", "answer_toward_wic", "offer_toward_wic", "answer_toward_core",
           "plan_offer_toward_core", "plan_offer_toward_wic", "core_bound_payload_types", "accepted_lines",
           "hold_direction"]


def hold_direction(direction: str, hold_address: bool) -> str:
    """RFC 3264 §8.4: c=0.0.0.0 means "do not send to me"; express it as a direction attribute.

    The peer that wrote c=0.0.0.0 still may send, so sendrecv → sendonly, recvonly → inactive.
    """
    if not hold_address:
        return direction
    return {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)


def _session(origin_leg: WicLeg | CoreLeg, connection: Connection | None) -> SessionDescription:
    return SessionDescription(origin=origin_leg.origin, connection=connection)


def _is_rtp_line(media: MediaDescription) -> bool:
    return media.media in RTP_MEDIA and "RTP" in media.proto.upper()


def _timing_attributes(source: MediaDescription, *, add_default_ptime: bool, keep_maxptime: bool) -> list[Attribute]:
    attributes: list[Attribute] = []
    ptime = source.attribute_value("ptime")
    if ptime:
        attributes.append(Attribute("ptime", ptime))
    elif add_default_ptime:
        attributes.append(Attribute("ptime", DEFAULT_PTIME))
    maxptime = source.attribute_value("maxptime")
    if maxptime and keep_maxptime:
        attributes.append(Attribute("maxptime", maxptime))
    return attributes


# --- toward the core (WebRTC → IMS) ---------------------------------------------------------------

def _rejected_toward_core(media: MediaDescription) -> MediaDescription:
    if _is_rtp_line(media):
        # e.g. `m=video 0 RTP/AVP 102` (a rejected line needs no feedback profile).
        return MediaDescription(media.media, 0, "RTP/AVP", placeholder_formats(media))
    # Non-RTP lines (webrtc-datachannel, ...) keep their proto and formats: the core only needs to
    # see the line exists, with port 0 (RFC 3264 §6).
    return MediaDescription(media.media, 0, media.proto, list(media.formats))


def _core_port(leg: CoreLeg, index: int) -> int:
    port = leg.port(index)
    if port is None:
        raise ValueError(f"CoreLeg has no RTP port for accepted m= line {index}")
    return port


def core_bound_payload_types(wic_offer: SessionDescription, policy: CodecPolicy,
                             params: list[WicMediaParams] | None = None) -> list[list[str]]:
    """Per WIC m= line, the PTs offered to the core ([] = rejected); validates the WebRTC lines.
    ``params``: ``extract_wic_media_params(wic_offer)`` when the caller has it already."""
    if params is None:
        params = extract_wic_media_params(wic_offer)
    kept: list[list[str]] = []
    for index, media in enumerate(wic_offer.media):
        if media.port == 0 or not _is_rtp_line(media):
            kept.append([])
            continue
        require_usable_wic_media(params[index], answer=False)
        kept.append(select_payload_types(media, policy))
    if not any(kept):
        raise SdpRejected(_no_codec_warning(wic_offer, "the IMS core"), WARN_INCOMPATIBLE_MEDIA_FORMAT)
    return kept


def plan_offer_toward_core(wic_offer: SessionDescription, policy: CodecPolicy,
                           params: list[WicMediaParams] | None = None) -> tuple[int, ...]:
    """Indexes of the WIC's m= lines `offer_toward_core` will accept: allocate a core port (and a
    WIC-side ICE transport) for exactly these, then build the offer.  Raises like offer_toward_core,
    so a 488 is known before anything is allocated."""
    return accepted_lines(core_bound_payload_types(wic_offer, policy, params))


def accepted_lines(payload_types: list[list[str]]) -> tuple[int, ...]:
    """The indexes of the m= lines that keep payload types (the others are rejected)."""
    return tuple(i for i, kept in enumerate(payload_types) if kept)


def offer_toward_core(wic_offer: SessionDescription, leg: CoreLeg, policy: CodecPolicy,
                      params: list[WicMediaParams] | None = None,
                      payload_types: list[list[str]] | None = None) -> SessionDescription:
    """TS 24.371 §7.4.2 b): the IMS offer built from the WIC's WebRTC offer.

    Raises SdpRejected when an RTP line lacks ICE/DTLS parameters or no stream keeps a codec.
    ``params`` as in ``plan_offer_toward_core`` (the WIC offer's, read once per offer);
    ``payload_types``: ``core_bound_payload_types`` of the same offer, policy and params when the
    caller planned with it (the selection and its checks then run once per offer, not twice).
    """
    if payload_types is None:
        payload_types = core_bound_payload_types(wic_offer, policy, params)
    out = _session(leg, Connection.for_address(leg.address))
    for index, (media, kept) in enumerate(zip(wic_offer.media, payload_types)):
        if not kept:
            out.media.append(_rejected_toward_core(media))
            continue
        line = MediaDescription(media.media, _core_port(leg, index), CORE_PROTO.get(media.media, "RTP/AVP"), kept)
        bandwidth = leg.bandwidth_as.get(media.media)
        if bandwidth is not None:
            line.bandwidths.append(Bandwidth("AS", bandwidth))  # TS 24.229 §6.1.1
        line.attributes.extend(payload_attributes(media, media, kept))
        if line.proto == "RTP/AVPF":
            line.attributes.extend(feedback_attributes(media, kept, policy.video_feedback))
        line.attributes.extend(_timing_attributes(media, add_default_ptime=media.media == "audio", keep_maxptime=True))
        line.direction = wic_offer.media_direction(media)  # RFC 3264 §5.1
        out.media.append(line)
    return out


def _answered_formats(offered: MediaDescription, answered: MediaDescription,
                      offered_codecs: dict[str, RtpMap]) -> list[str]:
    """The answer's payload types that are the offer's, with compatible formats (RFC 3264 §6.1)."""
    answered_codecs = answered.rtpmap()
    return [pt for pt in answered.formats
            if pt in offered.formats and same_format(offered, answered, pt, offered_codecs, answered_codecs)]


def answer_toward_core(wic_answer: SessionDescription, core_offer: SessionDescription,
                       leg: CoreLeg) -> SessionDescription:
    """TS 24.371 §7.4.3 b): the IMS answer built from the WIC's WebRTC answer."""
    if len(wic_answer.media) != len(core_offer.media):
        raise SdpRejected(f"WIC answer has {len(wic_answer.media)} m= lines, the offer had "
                          f"{len(core_offer.media)} (RFC 3264 §6)", WARN_MISCELLANEOUS)
    params = extract_wic_media_params(wic_answer)
    out = _session(leg, Connection.for_address(leg.address))
    for index, (offered, answered) in enumerate(zip(core_offer.media, wic_answer.media)):
        rejected = MediaDescription(offered.media, 0, offered.proto, offered.formats[:1])
        if offered.port == 0 or answered.port == 0 or not _is_rtp_line(offered) \
                or offered.proto.upper() not in CORE_RTP_PROTOS:
            out.media.append(rejected)
            continue
        require_usable_wic_media(params[index], answer=True)
        offered_codecs = offered.rtpmap()
        kept = _answered_formats(offered, answered, offered_codecs)
        if not main_payload_types(offered, kept, offered_codecs):
            out.media.append(rejected)
            continue
        line = MediaDescription(offered.media, _core_port(leg, index), offered.proto, kept)
        bandwidth = leg.bandwidth_as.get(offered.media)
        if bandwidth is not None:
            line.bandwidths.append(Bandwidth("AS", bandwidth))
        line.attributes.extend(payload_attributes(offered, answered, kept))
        if offered.proto.upper() == "RTP/AVPF":
            offered_feedback = tuple(v.partition(" ")[2] for v in offered.attribute_values("rtcp-fb"))
            line.attributes.extend(feedback_attributes(answered, kept, offered_feedback))
        line.attributes.extend(_timing_attributes(answered, add_default_ptime=offered.media == "audio",
                                                  keep_maxptime=True))
        line.direction = wic_answer.media_direction(answered)
        out.media.append(line)
    return out


# --- toward the WIC (IMS → WebRTC) ----------------------------------------------------------------

def _transport_attributes(leg: WicLeg, transport: WicTransport, setup: str) -> list[Attribute]:
    """Our ICE (RFC 8839) and DTLS (RFC 5763 §5) parameters, a=rtcp-mux; never a=ice-options:trickle."""
    attributes = [Attribute("ice-ufrag", transport.ice.ufrag), Attribute("ice-pwd", transport.ice.pwd)]
    attributes.extend(Attribute("candidate", candidate) for candidate in transport.candidates)
    attributes.append(Attribute("end-of-candidates"))
    attributes.append(Attribute("fingerprint", leg.fingerprint))
    attributes.append(Attribute("setup", setup))
    if leg.tls_id is not None:
        attributes.append(Attribute("tls-id", leg.tls_id))
    attributes.append(Attribute("rtcp-mux"))
    return attributes


def _leg_default_connection(leg: WicLeg, transport: WicTransport | None) -> Connection:
    if transport is None:
        transport = next((t for t in leg.transports if t is not None), None)
    return Connection.for_address(transport.default_address[0] if transport else "0.0.0.0")


def _rejected_toward_wic(leg: WicLeg, media: MediaDescription, proto: str, formats: list[str],
                         mid: str | None) -> MediaDescription:
    line = MediaDescription(media.media, 0, proto, formats)
    line.connection = _leg_default_connection(leg, None)
    if mid is not None:
        line.add_attribute("mid", mid)
    return line


def _wic_session(leg: WicLeg) -> SessionDescription:
    out = _session(leg, None)
    if leg.ice_lite:
        out.add_attribute("ice-lite")  # RFC 8839 §5.3: session level only
    return out


def answer_toward_wic(core_answer: SessionDescription, wic_offer: SessionDescription,
                      leg: WicLeg) -> SessionDescription:
    """TS 24.371 §7.4.2: the WebRTC answer to the WIC's offer, built from the core's answer.

    Call it again for every answer of the call (183, 200, forks): the same `leg` gives the same
    ICE/DTLS lines, and `OriginVersioner.stamp` keeps the version when nothing changed.
    """
    if len(core_answer.media) != len(wic_offer.media):
        raise SdpRejected(f"core answer has {len(core_answer.media)} m= lines, the offer had "
                          f"{len(wic_offer.media)} (RFC 3264 §6)", WARN_MISCELLANEOUS)
    out = _wic_session(leg)
    for index, (offered, answered) in enumerate(zip(wic_offer.media, core_answer.media)):
        mid = offered.attribute_value("mid")
        transport = leg.transport(index)
        offered_codecs = offered.rtpmap()
        kept = _answered_formats(offered, answered, offered_codecs)
        if offered.port == 0 or answered.port == 0 or transport is None or not _is_rtp_line(offered) \
                or offered.proto.upper() not in WEBRTC_RTP_PROTOS or not main_payload_types(offered, kept, offered_codecs):
            formats = [pt for pt in answered.formats if pt in offered.formats][:1] or offered.formats[:1]
            out.media.append(_rejected_toward_wic(leg, offered, offered.proto, formats, mid))
            continue
        host, port = transport.default_address
        line = MediaDescription(offered.media, port, offered.proto, kept)
        line.connection = Connection.for_address(host)
        if mid is not None:
            line.add_attribute("mid", mid)  # RFC 3264 §6, RFC 5888: echo the offer's mid
        line.attributes.extend(_transport_attributes(leg, transport, leg.answer_setup))
        line.attributes.extend(payload_attributes(offered, answered, kept))
        if answered.proto.upper() == "RTP/AVPF":
            # RFC 4585 §4.2: feedback both sides listed (e.g. nack pli for H.264 video).
            answered_feedback = tuple(v.partition(" ")[2] for v in answered.attribute_values("rtcp-fb"))
            line.attributes.extend(feedback_attributes(offered, kept, answered_feedback))
        line.attributes.extend(_timing_attributes(answered, add_default_ptime=False, keep_maxptime=True))
        connection = core_answer.media_connection(answered)
        line.direction = hold_direction(core_answer.media_direction(answered),
                                        connection is not None and connection.is_hold_address)
        out.media.append(line)
    return out


def _wic_bound_payload_types(core_offer: SessionDescription, policy: CodecPolicy) -> list[list[str]]:
    """Per core m= line, the PTs offered to the WIC ([] = rejected).  RTP/SAVP(F) lines from the
    core are rejected: they would need SDES keys (RFC 4568), which we do not terminate."""
    kept = [select_payload_types(media, policy)
            if media.port != 0 and _is_rtp_line(media) and media.proto.upper() in CORE_RTP_PROTOS else []
            for media in core_offer.media]
    if not any(kept):
        raise SdpRejected(_no_codec_warning(core_offer, "the WebRTC client"), WARN_INCOMPATIBLE_MEDIA_FORMAT)
    return kept


def plan_offer_toward_wic(core_offer: SessionDescription, policy: CodecPolicy) -> tuple[int, ...]:
    """Indexes of the core's m= lines `offer_toward_wic` will accept: gather an ICE transport (and
    allocate a core port) for exactly these.  Raises SdpRejected like offer_toward_wic."""
    return tuple(i for i, kept in enumerate(_wic_bound_payload_types(core_offer, policy)) if kept)


def offer_toward_wic(core_offer: SessionDescription, leg: WicLeg, policy: CodecPolicy) -> SessionDescription:
    """TS 24.371 §7.4.3: the WebRTC offer built from the core's offer.

    m= line i gets mid "i" (stable across re-offers, RFC 3264 §8).  Raises SdpRejected (305) when no
    stream keeps a codec the WIC can decode without transcoding (e.g. an AMR-WB-only offer).
    """
    out = _wic_session(leg)
    for index, (media, kept) in enumerate(zip(core_offer.media, _wic_bound_payload_types(core_offer, policy))):
        mid = str(index)
        if not kept:
            proto = WIC_PROTO if _is_rtp_line(media) else media.proto
            out.media.append(_rejected_toward_wic(leg, media, proto, list(media.formats), mid))
            continue
        transport = leg.transport(index)
        if transport is None:
            raise ValueError(f"WicLeg has no ICE transport for accepted m= line {index}")
        host, port = transport.default_address
        line = MediaDescription(media.media, port, WIC_PROTO, kept)
        line.connection = Connection.for_address(host)
        line.bandwidths = [b for b in media.bandwidths if b.bwtype.upper() == "AS"]
        line.add_attribute("mid", mid)
        line.attributes.extend(_transport_attributes(leg, transport, "actpass"))  # RFC 5763 §5: offerer
        line.attributes.extend(payload_attributes(media, media, kept))
        line.attributes.extend(feedback_attributes(media, kept, None))
        # maxptime is dropped: IMS values (240 for AMR bundling) mean nothing to a browser's codecs.
        line.attributes.extend(_timing_attributes(media, add_default_ptime=False, keep_maxptime=False))
        connection = core_offer.media_connection(media)
        line.direction = hold_direction(core_offer.media_direction(media),
                                        connection is not None and connection.is_hold_address)
        out.media.append(line)
    return out


def _no_codec_warning(sdp: SessionDescription, side: str) -> str:
    offered: list[str] = []
    for media in sdp.media:
        if media.port and _is_rtp_line(media):
            codecs = media.rtpmap()
            offered.extend(str(codecs[pt]) for pt in main_payload_types(media, media.formats))
    listing = ", ".join(dict.fromkeys(offered)) or "none"
    return f"no codec usable toward {side} without transcoding (offered: {listing})"
