"""BUNDLE in the WIC's SDP (RFC 8843, attribute categories of RFC 8859), as pure functions.

A WIC with ``bundlePolicy: 'max-bundle'`` offers its first m= line with a transport and every
other bundled line with port 0 and ``a=bundle-only`` (RFC 8843 §7.2.1); RFC 8859 lets a bundled
line omit its TRANSPORT and IDENTICAL attributes (ICE, DTLS, rtcp-mux), which then are the
tagged line's.  ``resolve_bundled_lines`` makes every bundled line read as the tagged one's
transport, so the per-line transformations of ``transform`` serve bundled and unbundled offers
alike; ``add_bundle_group`` writes the group into what we send to the WIC.
"""

from __future__ import annotations

from epcscf.sdp.model import Attribute, SessionDescription

#: RFC 8859 TRANSPORT and IDENTICAL attributes a bundled m= line takes from the tagged line.
TRANSPORT_ATTRIBUTES = ("ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "candidate", "end-of-candidates",
                        "fingerprint", "setup", "tls-id", "rtcp-mux", "rtcp-mux-only")

__all__ = ["TRANSPORT_ATTRIBUTES", "add_bundle_group", "bundle_group", "resolve_bundled_lines"]


def bundle_group(sdp: SessionDescription) -> tuple[int, ...]:
    """Indexes of the m= lines of the first ``a=group:BUNDLE`` (RFC 8843 §7.1), tag order.

    A mid naming no m= line is ignored; () when there is no group."""
    mids = {media.attribute_value("mid"): index for index, media in enumerate(sdp.media)}
    for value in sdp.attribute_values("group"):
        semantics, *tags = value.split()
        if semantics.upper() == "BUNDLE":
            return tuple(dict.fromkeys(mids[tag] for tag in tags if tag in mids))
    return ()


def tagged_line(sdp: SessionDescription, group: tuple[int, ...]) -> int | None:
    """The offerer-tagged m= line (RFC 8843 §7.2.1): the first of the group with a port that is
    not bundle-only."""
    for index in group:
        media = sdp.media[index]
        if media.port != 0 and not media.has_attribute("bundle-only"):
            return index
    return None


def resolve_bundled_lines(sdp: SessionDescription) -> tuple[SessionDescription, tuple[int, ...]]:
    """A copy of ``sdp`` where every bundled line has the tagged line's transport, and the group.

    A ``bundle-only`` line with port 0 takes the tagged line's port (RFC 8843 §6: port 0 there
    does not reject it); a bundled line without TRANSPORT/IDENTICAL attributes takes the tagged
    line's (RFC 8859 §5.4, §5.5).  Without a group, or without a tagged line, ``sdp`` is
    returned as it is with the group (); a group of the tagged line alone returns ``sdp`` too.
    """
    group = bundle_group(sdp)
    tagged = tagged_line(sdp, group)
    if tagged is None:
        return sdp, ()
    if group == (tagged,):
        return sdp, group  # the tagged line alone (one audio line, the usual call): nothing to resolve
    out = sdp.copy()  # written-out deep copy: copy.deepcopy's walk was ~5 % of a call
    source = out.media[tagged]
    borrowed = [attribute for attribute in source.attributes if attribute.name in TRANSPORT_ATTRIBUTES]
    for index in group:
        media = out.media[index]
        if index == tagged:
            continue
        if media.port == 0:
            if not media.has_attribute("bundle-only"):
                continue  # rejected by the offerer itself (RFC 8843 §7.5.3)
            media.port = source.port
            media.connection = source.connection
        if not media.has_attribute("ice-ufrag"):
            media.remove_attributes(TRANSPORT_ATTRIBUTES)
            media.attributes.extend(Attribute(a.name, a.value) for a in borrowed)
        elif not media.has_attribute("candidate") and source.has_attribute("candidate"):
            # Candidates belong to the transport: a bundled line's are the tagged line's.
            media.remove_attributes(("candidate", "end-of-candidates"))
            media.attributes.extend(Attribute(a.name, a.value) for a in borrowed
                                    if a.name in ("candidate", "end-of-candidates"))
    return out, tuple(i for i in group if out.media[i].port != 0)


def add_bundle_group(sdp: SessionDescription, indexes: tuple[int, ...]) -> SessionDescription:
    """``sdp`` with ``a=group:BUNDLE`` of the mids of the given m= lines, in that order (RFC 8843 §7)."""
    mids = [sdp.media[index].attribute_value("mid") for index in indexes if index < len(sdp.media)]
    mids = [mid for mid in mids if mid]
    if mids:
        sdp.attributes = [a for a in sdp.attributes if not (a.name == "group" and (a.value or "").upper().startswith("BUNDLE"))]
        sdp.attributes.insert(0, Attribute("group", "BUNDLE " + " ".join(mids)))
    return sdp
