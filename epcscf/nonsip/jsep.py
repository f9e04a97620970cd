"""JSEP (RFC 8829) descriptions as a Janus client sends them, made into one SDP for SIP.

A browser trickles its ICE candidates after the offer or answer (RFC 8838); the Janus API
carries them in ``trickle`` requests.  Toward the P-CSCF's SIP side we send one complete
description (RFC 8838 §4.1.1 "half trickle" from our side): each candidate is written into
its m= section as ``a=candidate`` (RFC 8839 §5.1) and, once the browser says gathering is
complete, every section gets ``a=end-of-candidates`` (RFC 8840 §4.1.5 / RFC 8839 §5.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Jsep", "JsepError", "TrickleCandidate", "TrickleBuffer", "parse_jsep", "parse_trickle"]


class JsepError(ValueError):
    """A jsep or trickle object that is not usable."""


@dataclass(frozen=True)
class Jsep:
    type: str  # "offer" | "answer"
    sdp: str
    trickle: bool = True  # False: the SDP already holds every candidate


@dataclass(frozen=True)
class TrickleCandidate:
    candidate: str  # "candidate:…" (RFC 8839 §5.1 attribute value)
    mid: str | None
    mline_index: int | None


def parse_jsep(value: Any) -> Jsep:
    if not isinstance(value, dict):
        raise JsepError("jsep must be an object")
    kind, sdp = value.get("type"), value.get("sdp")
    if kind not in ("offer", "answer"):
        raise JsepError(f"unknown jsep type {str(kind)[:20]!r}")
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or "\nm=" not in sdp:
        raise JsepError("jsep sdp is not a session description")
    # janus.js forwards only type and sdp: a description that already holds candidates was
    # made after gathering (non-trickle); one without any will have them trickled.
    trickle = value.get("trickle") is not False and "a=end-of-candidates" not in sdp and "a=candidate:" not in sdp
    return Jsep(kind, sdp, trickle)


def parse_trickle(value: Any) -> TrickleCandidate | None:
    """One ``candidate`` object; None for ``{"completed": true}`` (end of candidates)."""
    if not isinstance(value, dict):
        raise JsepError("a trickled candidate must be an object")
    if value.get("completed") is True:
        return None
    text = value.get("candidate")
    if not isinstance(text, str) or not text.startswith("candidate:") or "\r" in text or "\n" in text:
        raise JsepError("a trickled candidate needs a candidate:… string")
    mid = value.get("sdpMid")
    index = value.get("sdpMLineIndex")
    return TrickleCandidate(
        text,
        mid if isinstance(mid, str) else None,
        index if isinstance(index, int) and not isinstance(index, bool) else None,
    )


@dataclass
class TrickleBuffer:
    """Candidates trickled for the description being built, and whether gathering ended."""

    candidates: list[TrickleCandidate] = field(default_factory=list)
    completed: bool = False

    def add(self, candidate: TrickleCandidate | None) -> None:
        if candidate is None:
            self.completed = True
        elif len(self.candidates) < 200:  # a browser gathers a handful; more is abuse
            self.candidates.append(candidate)

    def clear(self) -> None:
        self.candidates.clear()
        self.completed = False

    def _by_section(self, media: list[list[str]]) -> dict[int, list[str]]:
        """The trickled candidates' ``a=candidate`` lines by m= section (mid first, else index;
        a candidate for no section of ``media`` is dropped)."""
        mids = [next((l[6:] for l in section if l.startswith("a=mid:")), None) for section in media]
        placed: dict[int, list[str]] = {}
        for candidate in self.candidates:
            if candidate.mid is not None and candidate.mid in mids:
                index = mids.index(candidate.mid)
            elif candidate.mline_index is not None and 0 <= candidate.mline_index < len(media):
                index = candidate.mline_index
            else:
                continue
            placed.setdefault(index, []).append(f"a={candidate.candidate}")
        return placed

    def complete_sdp(self, sdp: str) -> str:
        """``sdp`` with the trickled candidates in their m= sections (and end-of-candidates)."""
        session, media = _sections(sdp)
        for index, lines in self._by_section(media).items():
            media[index].extend(line for line in lines if line not in media[index])
        if self.completed:
            for section in media:
                if "a=end-of-candidates" not in section:
                    section.append("a=end-of-candidates")
        return "\r\n".join(line for section in (session, *media) for line in section) + "\r\n"

    def fragment(self, description: str) -> str | None:
        """RFC 8840 §4.4 ``application/trickle-ice-sdpfrag`` for the candidates trickled after
        ``description`` (the WIC's offer or answer as sent) went out: its ICE credentials (the
        generation the candidates belong to, RFC 8840 §4.4.1), and per m= section (RFC 8840
        §9: port 9, the section's a=mid) the candidates, with ``a=end-of-candidates`` once
        gathering completed.  None when there is nothing to send."""
        session, media = _sections(description)
        wanted = self._by_section(media)
        if self.completed:
            for index in range(len(media)):
                wanted.setdefault(index, [])
        if not wanted:
            return None
        credentials = ("a=ice-ufrag:", "a=ice-pwd:")
        out = ["a=ice-options:trickle", *(l for l in session if l.startswith(credentials))]
        for index in sorted(wanted):
            kind, _, rest = media[index][0][2:].partition(" ")
            out.append(f"m={kind} 9 {' '.join(rest.split(' ')[1:])}")
            out.extend(l for l in media[index] if l.startswith(("a=mid:", *credentials)))
            out.extend(wanted[index])
            if self.completed:
                out.append("a=end-of-candidates")
        return "\r\n".join(out) + "\r\n"


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """The session lines and each m= section's lines of ``sdp``."""
    sections: list[list[str]] = [[]]
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            sections.append([])
        if line:
            sections[-1].append(line)
    return sections[0], sections[1:]


DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def next_version(sdp: str, direction: str | None = None) -> str:
    """The same description as a new offer (RFC 3264 §8: o= version + 1), with every m= section's
    direction set to ``direction`` when given (RFC 3264 §8.4 hold: sendonly, recvonly or inactive)."""
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    out: list[str] = []
    in_media = False
    for line in lines:
        if line.startswith("o="):
            fields = line.split(" ")
            if len(fields) >= 3 and fields[2].isdigit():
                fields[2] = str(int(fields[2]) + 1)
            line = " ".join(fields)
        if line.startswith("m="):
            if in_media and direction is not None and not any(l[2:] in DIRECTIONS for l in out[media_start:]):
                out.append(f"a={direction}")
            in_media = True
            media_start = len(out)
        if direction is not None and line.startswith("a=") and line[2:] in DIRECTIONS:
            line = f"a={direction}" if in_media else ""
        if line:
            out.append(line)
    if in_media and direction is not None and not any(l[2:] in DIRECTIONS for l in out[media_start:]):
        out.append(f"a={direction}")
    return "\r\n".join(out) + "\r\n"


_MIRRORED = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def answer_direction(offer: str) -> str | None:
    """The direction an answer gives to ``offer``'s (RFC 3264 §6.1: sendonly → recvonly, recvonly →
    sendonly, inactive → inactive); None for sendrecv (the answerer keeps its own)."""
    direction = "sendrecv"
    for line in offer.replace("\r\n", "\n").split("\n"):
        if line.startswith("a=") and line[2:] in DIRECTIONS:
            direction = line[2:]  # the first one that is not sendrecv decides (audio-first offers)
            if direction != "sendrecv":
                break
    return _MIRRORED.get(direction)


def as_answer(description: str, remote_answer: str) -> str:
    """An offer we made, reusable as an answer: ``a=setup:actpass`` becomes the role the other
    side's answer left us (RFC 5763 §5: its ``active`` makes us ``passive``, and the reverse)."""
    if "a=setup:actpass" not in description:
        return description
    role = "passive" if "a=setup:active" in remote_answer else "active"
    return description.replace("a=setup:actpass", f"a=setup:{role}")
