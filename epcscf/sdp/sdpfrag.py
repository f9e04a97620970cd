"""Trickle-ICE SDP fragments carried in SIP INFO (RFC 8840 `application/trickle-ice-sdpfrag`).

We do not trickle ourselves (no a=ice-options:trickle in our SDP); a WIC that trickles anyway
sends INFO bodies like

    a=ice-ufrag:EsAw
    a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
    m=audio 9 RTP/AVP 0
    a=mid:0
    a=candidate:1 1 UDP 1658497328 192.0.2.7 5000 typ host
    a=end-of-candidates

RFC 8840 §9: the fragment has the SDP line syntax but no v=/o=/s=/t=; m= lines (with a=mid)
say which stream each candidate belongs to; end-of-candidates may be session level (all streams).
"""

from __future__ import annotations

from dataclasses import dataclass

from epcscf.sdp.extract import IceCandidate
from epcscf.sdp.model import Attribute, SdpError, parse_attribute


@dataclass(frozen=True)
class TrickleEntry:
    """One candidate (or end-of-candidates when `candidate` is None) for a stream.

    `mid`/`mline_index` identify the stream (the fragment's own m= order); both None for a
    session-level end-of-candidates, which applies to every stream.
    """

    mid: str | None
    mline_index: int | None
    candidate: IceCandidate | None

    @property
    def end_of_candidates(self) -> bool:
        return self.candidate is None


@dataclass(frozen=True)
class TrickleFragment:
    ice_ufrag: str | None
    ice_pwd: str | None
    entries: tuple[TrickleEntry, ...]


def parse_sdpfrag(text: str | bytes) -> TrickleFragment:
    """Parse an RFC 8840 fragment; SdpError names the offending line."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("trickle-ice-sdpfrag body is not UTF-8 text") from None
    ufrag: str | None = None
    pwd: str | None = None
    entries: list[TrickleEntry] = []
    mline_index: int | None = None
    mid: str | None = None
    pending: list[tuple[int, Attribute]] = []  # attributes of the current m= section before its a=mid

    def flush() -> None:
        for number, attribute in pending:
            _add(entries, number, attribute, mid, mline_index)
        pending.clear()

    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"sdpfrag line {number}: not '<type>=<value>': {line[:60]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            flush()
            mline_index = 0 if mline_index is None else mline_index + 1
            mid = None
            continue
        if kind != "a":
            continue  # c=/b= etc. carry nothing for trickling
        attribute = parse_attribute(value)
        if attribute.name == "ice-ufrag":
            ufrag = attribute.value
        elif attribute.name == "ice-pwd":
            pwd = attribute.value
        elif attribute.name == "mid" and mline_index is not None:
            mid = attribute.value
        elif attribute.name in ("candidate", "end-of-candidates"):
            if mline_index is None:
                _add(entries, number, attribute, None, None)
            else:
                pending.append((number, attribute))
    flush()
    return TrickleFragment(ufrag, pwd, tuple(entries))


def _add(entries: list[TrickleEntry], number: int, attribute: Attribute, mid: str | None,
         mline_index: int | None) -> None:
    if attribute.name == "end-of-candidates":
        entries.append(TrickleEntry(mid, mline_index, None))
        return
    if mline_index is None:
        raise SdpError(f"sdpfrag line {number}: a=candidate outside an m= section (RFC 8840 §9)")
    try:
        candidate = IceCandidate.parse(attribute.value or "")
    except SdpError as error:
        raise SdpError(f"sdpfrag line {number}: {error.reason}") from None
    entries.append(TrickleEntry(mid, mline_index, candidate))
