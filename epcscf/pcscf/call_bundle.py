"""The BUNDLE group of one call's media toward the WIC (RFC 8843), between SDP and the relay.

``CallMedia`` keeps one ``Stream`` (core RTP port pair, relay session) per m= line; the lines of
a BUNDLE group share the ICE agent and the DTLS-SRTP association of the group's first line, the
transport owner.  This module reads from the WIC's SDP what the relay's ``BundleDemux`` needs to
tell the lines apart (RFC 8843 §9.2): each line's mid, the SSRCs the WIC signals for it
(a=ssrc, RFC 5576) and its payload types.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from epcscf.media.bundle import BundleDemux, BundleLine
from epcscf.sdp import SessionDescription


def wic_bundle_lines(sdp: SessionDescription, indexes: tuple[int, ...]) -> tuple[BundleLine, ...]:
    """What the WIC's SDP says about each bundled m= line, in ``indexes`` order."""
    lines = []
    for index in indexes:
        media = sdp.media[index]
        ssrcs = []
        for value in media.attribute_values("ssrc"):
            token = value.split(" ", 1)[0]
            if token.isdigit() and int(token) < 2**32:
                ssrcs.append(int(token))
        payload_types = tuple(int(pt) for pt in media.formats if pt.isdigit() and int(pt) < 128)
        lines.append(BundleLine(index, media.attribute_value("mid"), tuple(dict.fromkeys(ssrcs)), payload_types))
    return tuple(lines)


def wic_bundle_demux(sdp: SessionDescription, indexes: tuple[int, ...]) -> BundleDemux:
    """The demultiplexer of a group whose m= lines are ``indexes`` of the WIC's ``sdp``.

    The MID header extension is not negotiated toward the WIC (a=extmap does not cross the
    eP-CSCF), so SSRC and payload type decide (RFC 8843 §9.2)."""
    return BundleDemux(wic_bundle_lines(sdp, indexes))


def bundle_sessions(streams: dict[int, Any], bundle: tuple[int, ...], wic_sdp: SessionDescription) -> None:
    """Point the group's relay sessions at one demultiplexer built from the WIC's SDP."""
    members = {index: streams[index].session for index in bundle if index in streams}
    if len(members) > 1:
        streams[bundle[0]].session.bundle(wic_bundle_demux(wic_sdp, tuple(members)), members)


def join_bundle(streams: list[Any]) -> list[defer.Deferred]:
    """The streams after the first leave their own ICE agents for the first one's (RFC 8843
    §7.3: the answerer accepted the group); the closing of the agents they leave."""
    owner, closing = streams[0], []
    for stream in streams[1:]:
        if stream.owns_transport:
            stream.agent.on_consent_lost = None
            stream.agent.on_state_change = None
            closing.append(stream.agent.close())
            stream.agent, stream.owns_transport = owner.agent, False
    return closing
