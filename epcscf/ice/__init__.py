"""ICE agents toward the WIC (full on aioice, or lite), with RFC 7675 consent freshness.

Knows nothing of SIP; `epcscf.pcscf` owns one `IceAgent` per media stream.
"""

from epcscf.ice.agent import IceAgent, parse_candidate
from epcscf.ice.ports import PortsExhausted, UdpPortPool
from epcscf.ice.types import (
    IceAgentConfig,
    IceCandidateError,
    IceClosed,
    IceCredentials,
    IceError,
    IceFailed,
    IceState,
    IceStateError,
    IceStats,
    SelectedPair,
)

__all__ = [
    "IceAgent",
    "IceAgentConfig",
    "IceCandidateError",
    "IceClosed",
    "IceCredentials",
    "IceError",
    "IceFailed",
    "IceState",
    "IceStateError",
    "IceStats",
    "PortsExhausted",
    "SelectedPair",
    "UdpPortPool",
    "parse_candidate",
]
