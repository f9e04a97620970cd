"""Parameters of the SDP transformations: the two legs of a call, codec policy, o= versioning, errors.

A call holds one `WicLeg` and one `CoreLeg` for its whole life, so every SDP it sends the WIC
carries the same ICE credentials, candidates, fingerprint and setup role (new ICE credentials
would mean an ICE restart, RFC 8445 §9) and every SDP toward the core the same address and ports
(RFC 3264 §8).  Versions of o= are the job of `OriginVersioner`, one per leg (RFC 3264 §8): the
transformations copy `leg.origin` as given, and the call manager passes the result through
`versioner.stamp()` before sending it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

from epcscf.sdp.model import Origin, SessionDescription, address_type

# RFC 3261 §20.43 warn-codes used with 488 (the call manager writes `Warning: <code> <host> "<text>"`).
WARN_INCOMPATIBLE_TRANSPORT = 302   # profile is not UDP/TLS/RTP/SAVP(F) (or not RTP/AVP(F) from the core)
WARN_MEDIA_TYPE_NOT_AVAILABLE = 304  # no m= line of a type we relay
WARN_INCOMPATIBLE_MEDIA_FORMAT = 305  # no common codec
WARN_MISCELLANEOUS = 399             # missing ICE credentials / fingerprint: no specific code fits


class SdpRejected(Exception):
    """The SDP is well formed but cannot be served: answer `status` (488) with a Warning."""

    def __init__(self, warning: str, warn_code: int = WARN_MISCELLANEOUS, status: int = 488) -> None:
        super().__init__(warning)
        self.warning = warning
        self.warn_code = warn_code
        self.status = status

    def warning_header(self, host: str) -> str:
        """RFC 3261 §20.43: `warn-code SP warn-agent SP warn-text` (a quoted-string)."""
        text = self.warning.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.warn_code} {host} "{text}"'


_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")
_PWD = re.compile(r"[A-Za-z0-9+/]{22,256}")


@dataclass(frozen=True)
class IceCredentials:
    """Our ice-ufrag / ice-pwd for one media stream (RFC 8839 §5.4)."""

    ufrag: str
    pwd: str

    def __post_init__(self) -> None:
        # RFC 8839 §5.4: ufrag 4-256 ice-chars, pwd 22-256 ice-chars.
        if not _UFRAG.fullmatch(self.ufrag):
            raise ValueError(f"ice-ufrag must be 4-256 ice-chars: {self.ufrag!r}")
        if not _PWD.fullmatch(self.pwd):
            raise ValueError("ice-pwd must be 22-256 ice-chars")


@dataclass(frozen=True)
class WicTransport:
    """Our ICE transport for one m= line toward the WIC (one ICE agent per stream, no BUNDLE).

    `candidates` are `a=candidate` values without the `candidate:` prefix, highest priority first,
    exactly as `IceAgent.local_candidates()` returns them; the first is the default candidate that
    c= and the m= port show (RFC 8839 default candidate).
    """

    ice: IceCredentials
    candidates: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("a WIC transport needs at least one candidate")
        if len(self.candidates[0].split()) < 8:
            raise ValueError(f"malformed candidate {self.candidates[0]!r}")

    @property
    def default_address(self) -> tuple[str, int]:
        fields_ = self.candidates[0].split()
        return fields_[4], int(fields_[5])


@dataclass(frozen=True)
class WicLeg:
    """What we put in every SDP sent to the WIC during one call.

    `transports[i]` serves m= line i; None (or a missing entry) for a line we reject.  When the
    WIC or the core adds an m= line in a re-offer, the call manager extends the tuple (RFC 3264 §8.1).
    """

    origin: Origin
    transports: tuple[WicTransport | None, ...]
    fingerprint: str                      # "sha-256 AB:CD:..." of our DTLS certificate
    answer_setup: Literal["active", "passive"] = "passive"  # RFC 5763 §5; offers always say actpass
    ice_lite: bool = True                 # session-level a=ice-lite (TS 24.371 allows a lite eP-CSCF)
    tls_id: str | None = None             # RFC 8842 a=tls-id, when the DTLS layer provides one

    def __post_init__(self) -> None:
        algorithm, _, value = self.fingerprint.partition(" ")
        if not algorithm or not value.strip():
            raise ValueError(f"fingerprint must be '<hash-func> <hex:hex:...>': {self.fingerprint!r}")
        if self.answer_setup not in ("active", "passive"):
            raise ValueError("answer_setup must be 'active' or 'passive' (RFC 5763 §5)")

    def transport(self, index: int) -> WicTransport | None:
        return self.transports[index] if index < len(self.transports) else None


#: TS 24.229 §6.1.1: b=AS (kbit/s) toward the core per media type.
DEFAULT_BANDWIDTH_AS: Mapping[str, int] = MappingProxyType({"audio": 80, "video": 2000})


@dataclass(frozen=True)
class CoreLeg:
    """What we put in every SDP sent to the core during one call.

    `ports[i]` is our even RTP port for m= line i (RTCP is port+1, RFC 3550 §11, so no a=rtcp is
    written); None (or a missing entry) for a line we reject.
    """

    origin: Origin
    address: str
    ports: tuple[int | None, ...]
    bandwidth_as: Mapping[str, int] = field(default_factory=lambda: DEFAULT_BANDWIDTH_AS)

    def __post_init__(self) -> None:
        for port in self.ports:
            if port is not None and (port <= 0 or port > 65534 or port % 2):
                raise ValueError(f"core RTP port {port} must be even and 2-65534 (RTCP uses port+1)")

    def port(self, index: int) -> int | None:
        return self.ports[index] if index < len(self.ports) else None


@dataclass(frozen=True)
class CodecPolicy:
    """Which codecs cross the eP-CSCF without transcoding (there is no transcoder yet).

    Names are matched case-insensitively against a=rtpmap encoding names.  telephone-event and CN
    are kept only when their clock rate equals a kept codec's (RFC 4733 §2.5.1.1, RFC 3389 §4).
    """

    audio: tuple[str, ...] = ("PCMU", "PCMA", "G722")
    video: tuple[str, ...] = ()           # e.g. ("H264",) to let video through (as RTP/AVPF)
    telephone_event: bool = True
    comfort_noise: bool = False
    #: rtcp-fb values kept on video toward the core (RFC 4585, on RTP/AVPF)
    video_feedback: tuple[str, ...] = ("nack", "nack pli", "ccm fir")

    @classmethod
    def with_opus(cls) -> CodecPolicy:
        return cls(audio=("PCMU", "PCMA", "G722", "opus"))

    def allows(self, media: str, encoding: str) -> bool:
        names = self._allowed_audio if media == "audio" else self._allowed_video if media == "video" else ()
        return encoding.lower() in names

    # Lowered once per policy (a policy is built at configuration; `allows` runs per codec per offer).
    @functools.cached_property
    def _allowed_audio(self) -> frozenset[str]:
        return frozenset(name.lower() for name in self.audio)

    @functools.cached_property
    def _allowed_video(self) -> frozenset[str]:
        return frozenset(name.lower() for name in self.video)


#: the o= line two descriptions are compared with (RFC 3264 §8: every other line counts)
_COMPARED_ORIGIN = Origin("-", "0", 0)


class OriginVersioner:
    """One leg's o= line: fixed username/session id/address, version bumped only on change.

    RFC 3264 §8: a changed description carries version+1; an identical re-send keeps the version
    (so a 200 that repeats the 183's answer carries it unchanged).

        versioner = OriginVersioner("epcscf", session_id="4000", address="192.0.2.10")
        body = versioner.stamp(offer_toward_core(...)).serialize()
    """

    def __init__(self, username: str, session_id: str, address: str, initial_version: int = 1) -> None:
        self.origin = Origin(username, session_id, initial_version, "IN", address_type(address), address)
        self._last_content: bytes | None = None

    def stamp(self, sdp: SessionDescription) -> SessionDescription:
        """A copy of `sdp` with our o= line; the version goes up when anything else changed."""
        self._compare(sdp)
        stamped = sdp.copy()  # the caller may keep editing its input
        stamped.origin = self.origin
        return stamped

    def stamp_serialized(self, sdp: SessionDescription) -> bytes:
        """``stamp(sdp).serialize()``, serialising once: the comparison's text with our o= line
        put in (the o= line is always the second, RFC 4566 §5), and no copy of ``sdp``."""
        content = self._compare(sdp)
        version_line, _, rest = content.partition(b"\r\n")
        _, _, after_origin = rest.partition(b"\r\n")
        return b"".join((version_line, b"\r\n", f"o={self.origin}".encode("utf-8"), b"\r\n", after_origin))

    def _compare(self, sdp: SessionDescription) -> bytes:
        """RFC 3264 §8: bump the version when anything but o= changed; the text compared."""
        content = sdp.serialize_with_origin(_COMPARED_ORIGIN)
        if self._last_content is not None and content != self._last_content:
            self.origin = replace(self.origin, session_version=self.origin.session_version + 1)
        self._last_content = content
        return content
