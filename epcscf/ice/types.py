"""Plain values of the ICE layer: configuration, states, credentials, pairs, stats, errors.

Nothing here does I/O; `agent.py` composes these with sockets and a clock.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Literal

# RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/".
ICE_CHARS = string.ascii_letters + string.digits + "+/"
# RFC 8839 §5.4: ice-ufrag = 4*256ice-char, ice-pwd = 22*256ice-char (one match per value, not
# a test per character).
_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")
_PWD = re.compile(r"[A-Za-z0-9+/]{22,256}")
# byte → the ice-char its low 6 bits pick (`IceCredentials.generate`), for bytes.translate
_ICE_CHAR_OF_BYTE = bytes(ord(ICE_CHARS[byte & 63]) for byte in range(256))

# RFC 8839 §5.4: the ufrag carries at least 24 bits of randomness, the password at least 128.
# 64 symbols give 6 bits each: 8 characters = 48 bits, 24 characters = 144 bits.
UFRAG_LENGTH = 8
PASSWORD_LENGTH = 24


class IceState(enum.Enum):
    """Life of one ICE agent (one media stream toward the WIC)."""

    NEW = "new"
    GATHERED = "gathered"
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"

    # Members are singletons compared by identity: hashed as such in C, not by `Enum.__hash__`
    # (a Python call for each lookup in ICE_TRANSITIONS, two per transition, four a call).
    __hash__ = object.__hash__


# Allowed transitions; anything else is a bug in the agent and raises IceStateError.
# GATHERED → CONNECTED: a lite agent may be nominated before start() was called (the WIC checks
# as soon as it has our offer).  An ICE restart stays CONNECTED while the old pair still carries data.
ICE_TRANSITIONS: dict[IceState, frozenset[IceState]] = {
    IceState.NEW: frozenset({IceState.GATHERED, IceState.FAILED, IceState.CLOSED}),
    IceState.GATHERED: frozenset({IceState.CHECKING, IceState.CONNECTED, IceState.FAILED, IceState.CLOSED}),
    IceState.CHECKING: frozenset({IceState.CONNECTED, IceState.FAILED, IceState.CLOSED}),
    IceState.CONNECTED: frozenset({IceState.FAILED, IceState.CLOSED}),
    IceState.FAILED: frozenset({IceState.CLOSED}),
    IceState.CLOSED: frozenset(),
}


class IceError(Exception):
    """Base of every error the ICE layer raises; str() is a sentence a user can act on."""


class IceStateError(IceError):
    """An operation that the agent's current state does not allow."""


class IceCandidateError(IceError, ValueError):
    """A remote candidate or ICE credential from the peer's SDP is malformed."""


class IceFailed(IceError):
    """No candidate pair could be selected (checks failed or the connect timeout expired)."""


class IceClosed(IceError):
    """The agent was closed before a pair was selected."""


@dataclass(frozen=True)
class IceAgentConfig:
    """How agents toward the WIC bind, advertise and time out (the `[media]` section).

    `consent_min_interval` is RFC 7675 §5.1's floor of 4 s under the randomised interval; it is a
    field only so tests can run consent at sub-second intervals.
    """

    bind_addresses: tuple[str, ...] = ("127.0.0.1",)
    advertised_address: str | None = None
    port_range: tuple[int, int] | None = None
    mode: Literal["full", "lite"] = "lite"
    consent_interval: float = 5.0
    consent_timeout: float = 30.0
    consent_min_interval: float = 4.0
    connect_timeout: float = 10.0
    max_pairs: int = 100

    def __post_init__(self) -> None:
        if not self.bind_addresses:
            raise ValueError("IceAgentConfig.bind_addresses: at least one address is needed")
        for address in self.bind_addresses:
            _check_ip("bind_addresses", address)
        if self.advertised_address:
            _check_ip("advertised_address", self.advertised_address)
            if len(self.bind_addresses) != 1:
                raise ValueError("IceAgentConfig.advertised_address needs exactly one bind address (1:1 NAT)")
        if self.port_range is not None:
            low, high = self.port_range
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"IceAgentConfig.port_range: expected 1 <= low <= high <= 65535, got {self.port_range}")
        if self.mode not in ("full", "lite"):
            raise ValueError(f"IceAgentConfig.mode must be 'full' or 'lite', got {self.mode!r}")
        for name in ("consent_interval", "consent_timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"IceAgentConfig.{name} must be positive")
        if self.consent_min_interval < 0:
            raise ValueError("IceAgentConfig.consent_min_interval must not be negative")
        if self.max_pairs < 1:
            raise ValueError("IceAgentConfig.max_pairs must be at least 1")


def _check_ip(name: str, address: str) -> None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"IceAgentConfig.{name}: {address!r} is not an IP address") from None


@dataclass(frozen=True)
class IceCredentials:
    """ice-ufrag / ice-pwd of one side (RFC 8839 §5.4)."""

    ufrag: str
    pwd: str

    @classmethod
    def generate(cls) -> IceCredentials:
        # One CSPRNG read for both (secrets.choice reads once per character): 64 ice-chars, so
        # the low 6 bits of each random byte pick one uniformly (256 is a multiple of 64).
        assert len(ICE_CHARS) == 64
        random = secrets.token_bytes(UFRAG_LENGTH + PASSWORD_LENGTH)
        text = random.translate(_ICE_CHAR_OF_BYTE).decode("ascii")
        return cls(ufrag=text[:UFRAG_LENGTH], pwd=text[UFRAG_LENGTH:])

    def validate_remote(self) -> None:
        """RFC 8839 §5.4 grammar: ufrag 4*256 ice-char, pwd 22*256 ice-char."""
        if _UFRAG.fullmatch(self.ufrag) is None:
            raise IceCandidateError(f"ice-ufrag {self.ufrag!r} is not 4 to 256 ice-chars (RFC 8839 §5.4)")
        if _PWD.fullmatch(self.pwd) is None:
            raise IceCandidateError("ice-pwd is not 22 to 256 ice-chars (RFC 8839 §5.4)")


Address = tuple[str, int]


@dataclass(frozen=True)
class SelectedPair:
    """The 5-tuple media flows on: our candidate's address and the WIC's address."""

    local: Address
    remote: Address


@dataclass
class IceStats:
    """Counters for the ops console and the per-call timeline."""

    checks_sent: int = 0
    checks_received: int = 0
    checks_rejected: int = 0
    consent_checks_sent: int = 0
    consent_responses: int = 0
    consent_failures: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    datagrams_dropped: int = 0
    restarts: int = 0
    connect_time: float | None = None
    pair_changes: int = field(default=0)
