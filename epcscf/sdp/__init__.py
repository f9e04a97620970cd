"""SDP model (RFC 8866) and the TS 24.371 §7.4 WebRTC ⇄ IMS transformations (pure, no I/O)."""

from epcscf.sdp.extract import (
    CoreMediaParams,
    Fingerprint,
    IceCandidate,
    WicMediaParams,
    extract_core_media_params,
    extract_wic_media_params,
    require_usable_wic_media,
)
from epcscf.sdp.model import (
    Attribute,
    Bandwidth,
    Connection,
    MediaDescription,
    Origin,
    RtpMap,
    SdpError,
    SessionDescription,
    Timing,
)
from epcscf.sdp.params import (
    CodecPolicy,
    CoreLeg,
    IceCredentials,
    OriginVersioner,
    SdpRejected,
    WicLeg,
    WicTransport,
)
from epcscf.sdp.sdpfrag import TrickleEntry, TrickleFragment, parse_sdpfrag
from epcscf.sdp.transform import (
    answer_toward_core,
    answer_toward_wic,
    offer_toward_core,
    offer_toward_wic,
    plan_offer_toward_core,
    plan_offer_toward_wic,
)

__all__ = [
    "Attribute", "Bandwidth", "CodecPolicy", "Connection", "CoreLeg", "CoreMediaParams", "Fingerprint",
    "IceCandidate", "IceCredentials", "MediaDescription", "Origin", "OriginVersioner", "RtpMap", "SdpError",
    "SdpRejected", "SessionDescription", "Timing", "TrickleEntry", "TrickleFragment", "WicLeg",
    "WicMediaParams", "WicTransport", "answer_toward_core", "answer_toward_wic", "extract_core_media_params",
    "extract_wic_media_params", "offer_toward_core", "offer_toward_wic", "parse_sdpfrag",
    "plan_offer_toward_core", "plan_offer_toward_wic",
    "require_usable_wic_media",
]
