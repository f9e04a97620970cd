"""The eIMS-AGW role toward the WIC: DTLS-SRTP termination and RTP/RTCP relay to the core.

Knows nothing of SIP; `epcscf.pcscf` owns one `MediaSession` per media stream and feeds it
the ICE agent's datagrams.
"""

from epcscf.media.certificate import Certificate, Fingerprint, FingerprintError, certificate_fingerprint
from epcscf.media.demux import PacketKind, classify
from epcscf.media.dtls import DtlsEndpoint, DtlsError, DtlsRole, DtlsState, SrtpKeys, SrtpProfile
from epcscf.media.relay import MediaError
from epcscf.media.session import (
    DatagramTransportLike,
    Direction,
    DirectionStats,
    MediaSession,
    MediaSessionConfig,
    MediaStats,
)
from epcscf.media.srtp import SrtpContext, SrtpErrorCounts

__all__ = [
    "Certificate",
    "DatagramTransportLike",
    "Direction",
    "DirectionStats",
    "DtlsEndpoint",
    "DtlsError",
    "DtlsRole",
    "DtlsState",
    "Fingerprint",
    "FingerprintError",
    "MediaError",
    "MediaSession",
    "MediaSessionConfig",
    "MediaStats",
    "PacketKind",
    "SrtpContext",
    "SrtpErrorCounts",
    "SrtpKeys",
    "SrtpProfile",
    "certificate_fingerprint",
    "classify",
]
