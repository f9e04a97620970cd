"""SRTP/SRTCP toward the WIC: thin wrappers over pylibsrtp (libsrtp 2) for one DTLS association.

One outbound session (what we send, keyed with our master key) and one inbound session (what
the WIC sends, keyed with its master key), each accepting any SSRC (RFC 5764 §4.1: the keys of
a DTLS-SRTP association apply to every SSRC of the stream; WebRTC peers switch SSRCs freely).

The relay's hot path calls these for every packet.  A packet libsrtp rejects (authentication
failure, replay, malformed) yields None and is counted; nothing is raised into the reactor.
"""

from __future__ import annotations

from dataclasses import dataclass

from pylibsrtp import Error, Policy, Session

from epcscf.media.dtls import SrtpKeys

# RFC 3711 §3.3.2: the replay window must be at least 64; libsrtp allows up to 2^15.  A wide
# window tolerates the reordering of a busy path without rejecting good packets as replays.
REPLAY_WINDOW = 1024


@dataclass
class SrtpErrorCounts:
    """Packets libsrtp refused, per operation (replays and forgeries land in `unprotect*`)."""

    protect: int = 0
    unprotect: int = 0
    protect_rtcp: int = 0
    unprotect_rtcp: int = 0
    last_error: str = ""


class SrtpContext:
    """Both directions of SRTP/SRTCP for one DTLS-SRTP association."""

    __slots__ = ("keys", "errors", "_outbound", "_inbound")

    def __init__(self, keys: SrtpKeys) -> None:
        self.keys = keys
        self.errors = SrtpErrorCounts()
        outbound = Policy(
            key=keys.local_master,
            ssrc_type=Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=keys.profile.libsrtp_profile,
        )
        # A core (or a media loop through it) may send the very same RTP packet twice; libsrtp
        # refuses to protect a repeated index unless told to, which would drop it.
        outbound.allow_repeat_tx = True
        inbound = Policy(
            key=keys.remote_master,
            ssrc_type=Policy.SSRC_ANY_INBOUND,
            srtp_profile=keys.profile.libsrtp_profile,
        )
        inbound.window_size = REPLAY_WINDOW
        self._outbound = Session(policy=outbound)
        self._inbound = Session(policy=inbound)

    def protect(self, rtp: bytes) -> bytes | None:
        """RTP from the core → SRTP for the WIC."""
        try:
            return self._outbound.protect(rtp)
        except Error as error:
            self.errors.protect += 1
            self.errors.last_error = str(error)
            return None

    def unprotect(self, srtp: bytes) -> bytes | None:
        """SRTP from the WIC → RTP for the core."""
        try:
            return self._inbound.unprotect(srtp)
        except Error as error:
            self.errors.unprotect += 1
            self.errors.last_error = str(error)
            return None

    def protect_rtcp(self, rtcp: bytes) -> bytes | None:
        """RTCP from the core → SRTCP for the WIC."""
        try:
            return self._outbound.protect_rtcp(rtcp)
        except Error as error:
            self.errors.protect_rtcp += 1
            self.errors.last_error = str(error)
            return None

    def unprotect_rtcp(self, srtcp: bytes) -> bytes | None:
        """SRTCP from the WIC → RTCP for the core."""
        try:
            return self._inbound.unprotect_rtcp(srtcp)
        except Error as error:
            self.errors.unprotect_rtcp += 1
            self.errors.last_error = str(error)
            return None
