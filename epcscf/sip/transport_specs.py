"""What a SIP transport is built from: listener specs, settings, and the sink it feeds.

``epcscf.sip.transport.TransportManager`` takes these; the UDP and stream transports
(``transport_udp``, ``transport_stream``) read ``TransportSettings`` for limits and timers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from epcscf.sip.connection import Connection
from epcscf.sip.message import Message
from epcscf.sip.parser import ParserLimits

#: where every whole message goes, with the ``Connection`` it came on (the transaction layer)
MessageSink = Callable[[Message, Connection], None]


@dataclass(frozen=True)
class ListenerSpec:
    """One listening socket: ``udp:127.0.0.1:5060``, ``tcp:…``, ``tls:…`` (port 0 = any)."""

    transport: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "ListenerSpec":
        transport, sep, rest = text.partition(":")
        if not sep or transport.lower() not in ("udp", "tcp", "tls"):
            raise ValueError(f"listener {text!r} is not udp|tcp|tls:address:port")
        if rest.startswith("["):
            host, _, port_text = rest[1:].partition("]:")
        else:
            host, _, port_text = rest.rpartition(":")
        if not host or not port_text.isdigit():
            raise ValueError(f"listener {text!r} is not udp|tcp|tls:address:port")
        return cls(transport.upper(), host, int(port_text))

    @classmethod
    def of(cls, spec: "str | ListenerSpec | Any") -> "ListenerSpec":
        """Accept a string, a ListenerSpec or anything with transport/address/port (config.Listener)."""
        if isinstance(spec, ListenerSpec):
            return spec
        if isinstance(spec, str):
            return cls.parse(spec)
        return cls(str(spec.transport).upper(), spec.address, int(spec.port))


@dataclass(frozen=True)
class TransportSettings:
    limits: ParserLimits = field(default_factory=ParserLimits)
    #: close a TCP/TLS connection after this long without traffic in either direction
    idle_timeout: float = 600.0
    #: forget a UDP peer this long after its last datagram (it is recreated on demand)
    udp_idle_timeout: float = 180.0
    tls_certificate: str = ""  # PEM file for tls listeners
    tls_private_key: str = ""
    #: trust root for outbound TLS (``ssl.Certificate`` or ``platformTrust()``); None = platform
    tls_trust_root: Any = None
    connect_timeout: float = 10.0
    #: SO_RCVBUF for UDP listeners, bytes (0: the system default)
    udp_receive_buffer: int = 4 * 1024 * 1024
