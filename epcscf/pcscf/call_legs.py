"""Our side of one call's two legs in the SDP the built-in media engine writes.

``CallLegs`` builds the ``WicLeg``/``CoreLeg`` the transformations fill in from the
call's live streams (ICE credentials and candidates toward the WIC, relay ports toward the
core, our DTLS fingerprint) and stamps every body through one ``OriginVersioner`` per leg, so
the same transport is offered for the whole call (new ufrag/pwd would restart ICE, RFC 8445
§9; a WIC applies every 18x/2xx answer afresh) and o= versions only move when the content does
(RFC 3264 §8).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Mapping

from epcscf.sdp import CoreLeg, IceCredentials, OriginVersioner, SessionDescription, WicLeg, WicTransport

if TYPE_CHECKING:  # the engine makes the call's media, which writes its legs
    from epcscf.pcscf.call_media import CallMediaEngine
    from epcscf.pcscf.call_streams import Stream


class CallLegs:
    """Our side of each leg's SDP for one call (see module docstring)."""

    def __init__(self, engine: CallMediaEngine) -> None:
        self._engine = engine
        settings = engine.settings
        self._session_id = str(secrets.randbelow(10**12) + 1)
        self._core_versioner = OriginVersioner(settings.origin_username, self._session_id, settings.media.core_address)
        self._wic_versioner: OriginVersioner | None = None

    def wic(self, streams: Mapping[int, Stream]) -> WicLeg:
        """Toward the WIC: each line's ICE credentials and candidates, our fingerprint and setup."""
        settings = self._engine.settings
        transports: list[WicTransport | None] = []
        for index in range(max(streams, default=-1) + 1):
            stream = streams.get(index)
            candidates = stream.agent.local_candidates() if stream is not None else []
            if stream is None or not candidates:
                transports.append(None)
                continue
            credentials = stream.agent.local_credentials
            transports.append(WicTransport(IceCredentials(credentials.ufrag, credentials.pwd), tuple(candidates)))
        if self._wic_versioner is None:
            first = next((t for t in transports if t is not None), None)
            address = first.default_address[0] if first else "0.0.0.0"
            self._wic_versioner = OriginVersioner(settings.origin_username, self._session_id, address)
        return WicLeg(
            origin=self._wic_versioner.origin,
            transports=tuple(transports),
            fingerprint=self._engine.certificate.fingerprint.to_sdp(),
            answer_setup=settings.answer_setup,
            ice_lite=settings.ice.mode == "lite",
        )

    def core(self, streams: Mapping[int, Stream]) -> CoreLeg:
        """Toward the core: each line's relay port on our core-side address."""
        ports = tuple(
            streams[i].session.core_rtp_port if i in streams else None
            for i in range(max(streams, default=-1) + 1)
        )
        return CoreLeg(origin=self._core_versioner.origin, address=self._engine.settings.media.core_address, ports=ports)

    def stamp_wic(self, sdp: SessionDescription) -> bytes:
        """The body toward the WIC, o= version moved only if it changed (RFC 3264 §8)."""
        assert self._wic_versioner is not None  # every body toward the WIC is built on ``wic()``
        return self._wic_versioner.stamp_serialized(sdp)

    def stamp_core(self, sdp: SessionDescription) -> bytes:
        """The body toward the core, o= version moved only if it changed (RFC 3264 §8)."""
        return self._core_versioner.stamp_serialized(sdp)
