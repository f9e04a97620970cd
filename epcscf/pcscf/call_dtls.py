"""The DTLS-SRTP associations of one call's streams toward the WIC (RFC 5763, RFC 8842).

``CallDtls`` decides what each ``Stream``'s association is and when it runs: our role and the
WIC's certificate fingerprint from every offer or answer the WIC sends (RFC 5763 §5), the
start on the ICE pair once one is selected, a new association when the WIC asks for one
(RFC 8842 §5.5), and what a DTLS failure or an orderly close by the WIC means for the call
(a close followed by a BYE is a hang-up, not a failure).  It reports through the two
callbacks ``CallMedia`` gives it, and knows nothing of SDP beyond one m= line's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from epcscf.media import DtlsRole, MediaError
from epcscf.media.certificate import Fingerprint as DtlsFingerprint
from epcscf.media.certificate import FingerprintError
from epcscf.pcscf.call_model import MediaRejected
from epcscf.sdp import WicMediaParams
from epcscf.sip.timers import TimerQueue

if TYPE_CHECKING:  # call_streams keeps a DtlsAssociation on each Stream
    from epcscf.pcscf.call_streams import Stream

#: seconds a WIC's orderly DTLS close may precede its BYE before the call is released for it
PEER_CLOSE_GRACE = 2.0

#: ``(kind or layer, text)``: an event for the call's timeline, or a failure that ends the call
Report = Callable[[str, str], None]


@dataclass(frozen=True)
class DtlsAssociation:
    """Our role and the WIC's certificate fingerprint of one DTLS association (RFC 5763 §5)."""

    role: DtlsRole
    remote_fingerprint: DtlsFingerprint | None


class CallDtls:
    """The DTLS side of one call's streams (see module docstring)."""

    def __init__(self, timers: TimerQueue, answer_setup: str, event: Report, fail: Report,
                 wic_flow: Callable[[], str | None]) -> None:
        self._timers = timers
        #: RFC 5763 §5: our a=setup when we answer an actpass offer
        self._answer_setup = answer_setup
        self._event = event
        self._fail = fail
        #: the WIC's flow id now ("" when nobody tells, None while it has none: suspended)
        self._wic_flow = wic_flow
        self.closed = False
        self._peer_close_timer: Any = None

    # --- what the WIC's SDP asks for -------------------------------------------------------------

    def offered_by_wic(self, stream: Stream, params: WicMediaParams) -> None:
        """The WIC's offer for ``stream``: we answer it (RFC 5763 §5)."""
        # RFC 5763 §5: answering actpass (or passive) we are active; answering active, passive.
        setup = params.setup or "actpass"
        active = self._answer_setup == "active" if setup == "actpass" else setup == "passive"
        self._offered(stream, DtlsAssociation(DtlsRole.CLIENT if active else DtlsRole.SERVER, dtls_fingerprint(params.fingerprint)),
                      role_changed=setup != "actpass" and active != (stream.dtls_role is DtlsRole.CLIENT))

    def answered_by_wic(self, stream: Stream, params: WicMediaParams) -> None:
        """The WIC's answer to our actpass offer for ``stream``."""
        # RFC 5763 §5: the WIC answered our actpass: active → we are the server.
        role = DtlsRole.CLIENT if params.setup == "passive" else DtlsRole.SERVER
        self._offered(stream, DtlsAssociation(role, dtls_fingerprint(params.fingerprint)),
                      role_changed=role is not stream.dtls_role)

    def _offered(self, stream: Stream, association: DtlsAssociation, role_changed: bool) -> None:
        """The DTLS parameters of the WIC's offer or answer for ``stream``.  Before DTLS runs they
        are simply ours; once it runs, a changed a=fingerprint (a new RTCPeerConnection: a new
        certificate) or a=setup role asks for a new association (RFC 8842 §5.5), kept for when
        the exchange completes; otherwise the running association goes on."""
        if not stream.dtls_started:
            stream.dtls_role, stream.remote_fingerprint = association.role, association.remote_fingerprint
        elif stream.owns_transport and (role_changed or association.remote_fingerprint != stream.remote_fingerprint):
            stream.next_association = association

    # --- running ---------------------------------------------------------------------------------

    def start(self, stream: Stream) -> None:
        """DTLS on ``stream``'s selected ICE pair (TS 24.371 §7.4.2 a, §7.4.3 a), once."""
        if stream.dtls_started or stream.dtls_role is None or self.closed:
            return
        stream.dtls_started = True
        try:
            stream.session.start_dtls(stream.dtls_role, stream.remote_fingerprint)
        except MediaError as error:
            self._fail("dtls", f"m-line {stream.index}: {error}")

    def renew(self, stream: Stream) -> None:
        """The exchange asking for a new DTLS association completed: drop the old one (and its
        SRTP keys) and start the new one on the selected pair, or when ICE selects one (after
        an ICE restart).  Our certificate stays; the core side is untouched."""
        association, stream.next_association = stream.next_association, None
        if association is None or self.closed:
            return
        stream.dtls_role, stream.remote_fingerprint = association.role, association.remote_fingerprint
        try:
            stream.session.drop_dtls()
        except MediaError as error:
            self._fail("dtls", f"m-line {stream.index}: {error}")
            return
        stream.dtls_started = False
        if self._peer_close_timer is not None and self._peer_close_timer.active():
            self._peer_close_timer.cancel()  # the closed association is replaced
        self._peer_close_timer = None
        self._event("dtls", f"m-line {stream.index}: new DTLS association ({association.role.value}): "
                            "the WIC changed its a=fingerprint or a=setup role (RFC 8842 §5.5)")
        if stream.started and stream.pair_selected:
            self.start(stream)  # no ICE restart: the pair stays

    def failed(self, stream: Stream, reason: str) -> None:
        """``stream``'s DTLS failed, or the WIC closed it."""
        if stream.session.dtls_closed_by_peer and self._peer_close_timer is None:
            # A browser closes DTLS (close_notify) as it hangs up, and its BYE usually arrives a
            # moment later: that is the end of the call, not a DTLS failure. Only if no BYE
            # follows within the grace period is the call released for it.
            self._peer_close_timer = self._timers.callLater(
                PEER_CLOSE_GRACE, self._peer_closed, stream, reason, self._wic_flow()
            )
            return
        stream.agent.revoke_consent(f"DTLS: {reason}")  # RFC 7675 §5.2
        self._fail("dtls", f"DTLS failed on m-line {stream.index}: {reason}")

    def _peer_closed(self, stream: Stream, reason: str, flow: str | None) -> None:
        """No BYE followed the WIC's close_notify within ``PEER_CLOSE_GRACE``; ``flow``: the
        WIC's flow then (None: it had none, its call suspended)."""
        self._peer_close_timer = None
        now = self._wic_flow()
        if now is None or now != flow:
            # The WIC closed DTLS as its page went away with its WebSocket: while the call is
            # suspended its grace period decides; back on a new flow, the WIC re-offers with a
            # new association for a new RTCPeerConnection (RFC 8842 §5.5): one more grace for that.
            if now is None:
                self._event("dtls", f"m-line {stream.index}: the WIC closed DTLS while away: waiting for its re-offer")
            self._peer_close_timer = self._timers.callLater(PEER_CLOSE_GRACE, self._peer_closed, stream, reason, now)
            return
        self._fail("dtls", f"the WIC closed DTLS on m-line {stream.index} and sent no BYE")
        stream.agent.revoke_consent(f"DTLS: {reason}")  # RFC 7675 §5.2: the peer ended it

    def close(self) -> None:
        """The call's media closes: no association starts any more, no grace runs on."""
        self.closed = True
        if self._peer_close_timer is not None and self._peer_close_timer.active():
            self._peer_close_timer.cancel()
        self._peer_close_timer = None

    def release(self) -> None:
        """The call's media has finished closing: drop the callbacks into it (a cycle per call
        that only the collector would otherwise free)."""
        self._event = self._fail = _ignore
        self._wic_flow = _no_flow


def _ignore(*_: object) -> None:
    """A closed call's report: nobody listens any more."""


def _no_flow() -> str | None:
    return None


def dtls_fingerprint(fingerprint: Any) -> DtlsFingerprint | None:
    """An SDP a=fingerprint as the DTLS layer checks it (488 when it cannot)."""
    if fingerprint is None:
        return None
    try:
        return DtlsFingerprint.parse(fingerprint.algorithm, fingerprint.value)
    except FingerprintError as error:
        raise MediaRejected(488, str(error)) from None
