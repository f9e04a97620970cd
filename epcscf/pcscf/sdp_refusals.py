"""SDP that a call's media cannot serve, as the refusal the call manager answers with.

Both media engines (``call_media``, ``rtpengine_media``) read each side's body and run the pure
transformations of ``epcscf.sdp.transform``; what those refuse becomes a ``MediaRejected``:
400 for malformed SDP (RFC 3261 §21.4.1), the transformation's status and Warning (488 and a
warn-code, RFC 3261 §20.43) for SDP that is well formed but cannot be served.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from epcscf.pcscf.call_model import MediaRejected
from epcscf.sdp import SdpError, SdpRejected, SessionDescription, WicMediaParams, extract_wic_media_params

T = TypeVar("T")


def parse_sdp(sdp: bytes) -> SessionDescription:
    try:
        return SessionDescription.parse(sdp)
    except SdpError as error:
        raise MediaRejected(400, f"malformed SDP: {error.reason}") from None


def wic_params(sdp: SessionDescription) -> list[WicMediaParams]:
    """Each m= line's ICE, DTLS and direction parameters in the WIC's SDP."""
    try:
        return extract_wic_media_params(sdp)
    except SdpError as error:
        raise MediaRejected(400, error.reason) from None


def transformed(step: Callable[[], T]) -> T:
    """``step()`` (an SDP transformation, or a reading of the core's SDP) with its refusals as
    ``MediaRejected``."""
    try:
        return step()
    except SdpRejected as error:
        raise MediaRejected(error.status, error.warning, error.warn_code) from None
    except SdpError as error:
        raise MediaRejected(400, error.reason) from None
