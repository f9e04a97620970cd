"""Payload-type selection under a `CodecPolicy` (no transcoding; IMS codecs per TS 26.114)."""

from __future__ import annotations

from epcscf.sdp import h264
from epcscf.sdp.model import Attribute, MediaDescription, RtpMap
from epcscf.sdp.params import CodecPolicy

TELEPHONE_EVENT = "telephone-event"
COMFORT_NOISE = "cn"

#: what a rejected line shows in m= when the policy kept nothing: a codec of its media type
#: the IMS side would know (a rejected video line reads `m=video 0 RTP/AVP 102`), else the first
#: offered format.
_PLACEHOLDER_POLICY = CodecPolicy(audio=("PCMU", "PCMA", "G722", "opus", "AMR-WB", "AMR", "EVS"),
                                  video=("H264",))


def is_auxiliary(codec: RtpMap) -> bool:
    """telephone-event and CN ride along with a real codec; alone they carry no call."""
    return codec.encoding.lower() in (TELEPHONE_EVENT, COMFORT_NOISE)


def select_payload_types(media: MediaDescription, policy: CodecPolicy) -> list[str]:
    """PTs of `media` the policy lets through, in the offered order (RFC 3264 §5.1 preference).

    telephone-event is kept only when its clock rate equals a kept codec's (RFC 4733 §2.5.1.1:
    events use the clock of the audio they accompany); CN likewise (RFC 3389 §4).  Empty when no
    real codec is left, which rejects the stream.
    """
    codecs = media.rtpmap()
    main = [pt for pt in media.formats
            if pt in codecs and not is_auxiliary(codecs[pt]) and policy.allows(media.media, codecs[pt].encoding)]
    h264_types = [pt for pt in main if codecs[pt].encoding.upper() == "H264"]
    if h264_types:
        dropped = h264.redundant_mode_0(media.fmtp(), h264_types)  # RFC 6184 §8.2.2
        main = [pt for pt in main if pt not in dropped]
    if not main:
        return []
    clocks = {codecs[pt].clock_rate for pt in main}
    keep = set(main)
    for pt in media.formats:
        codec = codecs.get(pt)
        if codec is None or codec.clock_rate not in clocks:
            continue
        name = codec.encoding.lower()
        if (name == TELEPHONE_EVENT and policy.telephone_event) or (name == COMFORT_NOISE and policy.comfort_noise):
            keep.add(pt)
    return [pt for pt in media.formats if pt in keep]


def main_payload_types(media: MediaDescription, payload_types: list[str],
                       codecs: dict[str, RtpMap] | None = None) -> list[str]:
    """``codecs``: ``media.rtpmap()`` when the caller has it already."""
    if codecs is None:
        codecs = media.rtpmap()
    return [pt for pt in payload_types if pt in codecs and not is_auxiliary(codecs[pt])]


def placeholder_formats(media: MediaDescription) -> list[str]:
    """The fmt list of a rejected m= line (RFC 8866 §5.14 needs at least one)."""
    candidates = main_payload_types(media, select_payload_types(media, _PLACEHOLDER_POLICY))
    return candidates[:1] or media.formats[:1]


def same_codec(left: RtpMap | None, right: RtpMap | None) -> bool:
    if left is None or right is None:
        return left is right
    return (left.encoding.lower() == right.encoding.lower() and left.clock_rate == right.clock_rate)


def same_format(offered: MediaDescription, answered: MediaDescription, pt: str,
                offered_codecs: dict[str, RtpMap] | None = None,
                answered_codecs: dict[str, RtpMap] | None = None) -> bool:
    """The answer's payload type ``pt`` is the offer's codec with compatible parameters
    (RFC 3264 §6.1; for H.264 the packetization mode and profile, RFC 6184 §8.2.2).
    ``offered_codecs``/``answered_codecs``: the lines' ``rtpmap()`` when the caller has them
    (an answer's formats are compared one by one, each line's map read once)."""
    if offered_codecs is None:
        offered_codecs = offered.rtpmap()
    if answered_codecs is None:
        answered_codecs = answered.rtpmap()
    offered_codec, answered_codec = offered_codecs.get(pt), answered_codecs.get(pt)
    if not same_codec(offered_codec, answered_codec):
        return False
    if offered_codec is not None and offered_codec.encoding.upper() == "H264":
        return h264.compatible(offered.fmtp().get(pt), answered.fmtp().get(pt))
    return True


def payload_attributes(rtpmap_source: MediaDescription, fmtp_source: MediaDescription,
                       payload_types: list[str]) -> list[Attribute]:
    """a=rtpmap (from `rtpmap_source`) and a=fmtp (from `fmtp_source`) for each kept PT, in PT order."""
    rtpmaps = {v.split(" ", 1)[0]: v for v in rtpmap_source.attribute_values("rtpmap")}
    fmtps = fmtp_source.fmtp()
    attributes: list[Attribute] = []
    for pt in payload_types:
        if pt in rtpmaps:
            attributes.append(Attribute("rtpmap", rtpmaps[pt]))
        if pt in fmtps:
            attributes.append(Attribute("fmtp", f"{pt} {fmtps[pt]}" if fmtps[pt] else pt))
    return attributes


def feedback_attributes(media: MediaDescription, payload_types: list[str],
                        allowed: tuple[str, ...] | None) -> list[Attribute]:
    """a=rtcp-fb lines (RFC 4585 §4.2) of kept PTs whose feedback type is allowed (None: all)."""
    keep = set(payload_types)
    result: list[Attribute] = []
    for value in media.attribute_values("rtcp-fb"):
        pt, _, kind = value.partition(" ")
        if (pt in keep or pt == "*") and (allowed is None or kind.strip() in allowed):
            result.append(Attribute("rtcp-fb", value))
    return result
