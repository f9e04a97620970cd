"""SDP (RFC 8866) as a small typed model: parse, inspect, edit, serialize.

Theory of operation.  `SessionDescription.parse` splits the text into `<type>=<value>` lines
(CRLF or bare LF, RFC 8866 §5 recommends parsers accept both), checks the mandatory lines and
their fields, and builds plain dataclasses.  Attributes are kept as an ordered list of
`Attribute(name, value)`, unknown ones included, so a parse → serialize round trip of a valid
description gives the same lines in the same order.  `serialize()` always writes CRLF and the
RFC 8866 §5 line order (v o s i u e p c b t r z k a, then each m= block: m i c b k a), which is
the order every valid description already has.

Nothing here knows about WebRTC or IMS: that is `transform.py`.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

CRLF = "\r\n"

# RFC 3264 §5.1 / §6.1: the four direction attributes; absent means sendrecv.
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_DIRECTION_NAMES = frozenset(DIRECTIONS)

# RFC 3551 §6 Table 4/5: static payload types a description may use without a=rtpmap.
STATIC_PAYLOAD_TYPES: dict[str, tuple[str, int, int | None]] = {
    "0": ("PCMU", 8000, 1),
    "3": ("GSM", 8000, 1),
    "4": ("G723", 8000, 1),
    "8": ("PCMA", 8000, 1),
    "9": ("G722", 8000, 1),
    "13": ("CN", 8000, 1),
    "18": ("G729", 8000, 1),
    "34": ("H263", 90000, None),
}

_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 8866 §9 token


class SdpError(ValueError):
    """Malformed SDP.  str() names the line and what is wrong with it (the caller answers 400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RtpMap(NamedTuple):
    """One `a=rtpmap` (RFC 8866 §6.6) or a static payload type's registered values."""

    encoding: str
    clock_rate: int
    channels: int | None = None

    def __str__(self) -> str:
        base = f"{self.encoding}/{self.clock_rate}"
        return base if self.channels is None else f"{base}/{self.channels}"


@dataclass
class Attribute:
    """`a=name` (flag, value None) or `a=name:value`."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass
class Origin:
    """`o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>` (RFC 8866 §5.2)."""

    username: str
    session_id: str
    session_version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    def __str__(self) -> str:
        return (f"{self.username} {self.session_id} {self.session_version} "
                f"{self.nettype} {self.addrtype} {self.address}")


@dataclass
class Connection:
    """`c=<nettype> <addrtype> <connection-address>` (RFC 8866 §5.7); address may carry /ttl."""

    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"

    @property
    def host(self) -> str:
        """The address without a multicast /ttl or /count suffix."""
        return self.address.split("/", 1)[0]

    @property
    def is_hold_address(self) -> bool:
        """RFC 3264 §8.4: the pre-RFC 3264 way to put a stream on hold (c=0.0.0.0)."""
        return self.host in ("0.0.0.0", "::")

    @classmethod
    def for_address(cls, address: str) -> Connection:
        return cls(address=address, addrtype=address_type(address))


@dataclass
class Bandwidth:
    """`b=<bwtype>:<bandwidth>` (RFC 8866 §5.8)."""

    bwtype: str
    value: int

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.value}"


@dataclass
class Timing:
    """`t=<start> <stop>` and its `r=` lines (RFC 8866 §5.9, §5.10)."""

    start: str = "0"
    stop: str = "0"
    repeats: list[str] = field(default_factory=list)


def address_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


_NAME = operator.attrgetter("name")


class _Attributes:
    """Attribute helpers shared by the session and media levels."""

    attributes: list[Attribute]

    def attribute(self, name: str) -> Attribute | None:
        """The first attribute called `name` (flags have value None), or None when absent."""
        # The names listed and searched in C: ~20 lookups a call over ~20 attributes each, a
        # Python loop's iterations were most of them (issue 16).
        names = list(map(_NAME, self.attributes))
        return self.attributes[names.index(name)] if name in names else None

    def attributes_named(self, name: str) -> list[Attribute]:
        return [a for a in self.attributes if a.name == name]

    def attribute_values(self, name: str) -> list[str]:
        """Values of every `a=name:value` (flags contribute "")."""
        return [a.value or "" for a in self.attributes if a.name == name]

    def attribute_value(self, name: str) -> str | None:
        attribute = self.attribute(name)
        return None if attribute is None else (attribute.value or "")

    def has_attribute(self, name: str) -> bool:
        return self.attribute(name) is not None

    def add_attribute(self, name: str, value: str | None = None) -> Attribute:
        attribute = Attribute(name, value)
        self.attributes.append(attribute)
        return attribute

    def remove_attributes(self, names: Iterable[str]) -> int:
        """Drop every attribute whose name is in `names`; returns how many were removed."""
        drop = set(names)
        before = len(self.attributes)
        self.attributes = [a for a in self.attributes if a.name not in drop]
        return before - len(self.attributes)

    @property
    def direction(self) -> str | None:
        """The direction attribute at this level (RFC 3264 §5.1), None when there is none."""
        return next(filter(_DIRECTION_NAMES.__contains__, map(_NAME, self.attributes)), None)

    @direction.setter
    def direction(self, value: str | None) -> None:
        """Replace the direction attribute in place (or append it); None removes it."""
        if value is not None and value not in DIRECTIONS:
            raise ValueError(f"not an SDP direction: {value!r}")
        positions = [i for i, a in enumerate(self.attributes) if a.name in DIRECTIONS]
        kept = [a for a in self.attributes if a.name not in DIRECTIONS]
        if value is not None:
            # Keep the attribute where the first direction line was, so the order is stable.
            kept.insert(positions[0] if positions else len(kept), Attribute(value))
        self.attributes = kept


@dataclass
class MediaDescription(_Attributes):
    """One `m=<media> <port>[/<count>] <proto> <fmt> ...` block (RFC 8866 §5.14)."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    information: str | None = None
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[Bandwidth] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)

    @property
    def connection(self) -> Connection | None:
        return self.connections[0] if self.connections else None

    @connection.setter
    def connection(self, value: Connection | None) -> None:
        self.connections = [] if value is None else [value]

    def copy(self) -> MediaDescription:
        """A deep copy (see `SessionDescription.copy`)."""
        return MediaDescription(
            self.media, self.port, self.proto, list(self.formats), self.port_count, self.information,
            [Connection(c.address, c.nettype, c.addrtype) for c in self.connections],
            [Bandwidth(b.bwtype, b.value) for b in self.bandwidths],
            self.key,
            [Attribute(a.name, a.value) for a in self.attributes],
        )

    @property
    def rejected(self) -> bool:
        """RFC 3264 §6: port 0 rejects (or, in an offer, disables) the stream."""
        return self.port == 0

    def bandwidth(self, bwtype: str) -> int | None:
        for bandwidth in self.bandwidths:
            if bandwidth.bwtype.upper() == bwtype.upper():
                return bandwidth.value
        return None

    def rtpmap(self) -> dict[str, RtpMap]:
        """Payload type → (encoding, clock rate, channels): a=rtpmap lines, then the static PTs
        (RFC 3551) listed in m= without one.  Malformed rtpmap lines are skipped."""
        mapping: dict[str, RtpMap] = {}
        for value in self.attribute_values("rtpmap"):
            parsed = _parse_rtpmap(value)
            if parsed is not None and parsed[0] not in mapping:
                mapping[parsed[0]] = parsed[1]
        for pt in self.formats:
            if pt not in mapping and pt in STATIC_PAYLOAD_TYPES:
                mapping[pt] = RtpMap(*STATIC_PAYLOAD_TYPES[pt])
        return mapping

    def fmtp(self) -> dict[str, str]:
        """Payload type → its `a=fmtp` parameter string (first one wins)."""
        mapping: dict[str, str] = {}
        for value in self.attribute_values("fmtp"):
            pt, _, params = value.partition(" ")
            if pt and pt not in mapping:
                mapping[pt] = params.strip()
        return mapping

    def lines(self) -> Iterator[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        yield " ".join(["m=" + self.media, port, self.proto, *self.formats])
        if self.information is not None:
            yield f"i={self.information}"
        for connection in self.connections:
            yield f"c={connection}"
        for bandwidth in self.bandwidths:
            yield f"b={bandwidth}"
        if self.key is not None:
            yield f"k={self.key}"
        yield from _attribute_lines(self.attributes)


@dataclass
class SessionDescription(_Attributes):
    """A whole SDP body (RFC 8866 §5)."""

    origin: Origin
    session_name: str = "-"
    version: int = 0
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=lambda: [Timing()])
    time_zones: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | bytes) -> SessionDescription:
        return _parse(text)

    def copy(self) -> SessionDescription:
        """A deep copy, written out: ``copy.deepcopy``'s generic walk cost ~0.5 ms per SDP body,
        several times per call.  Every field is a str/int/None or a list of the small
        dataclasses above, each copied here (tests.test_sdp_model checks this against deepcopy)."""
        o, c = self.origin, self.connection
        return SessionDescription(
            Origin(o.username, o.session_id, o.session_version, o.nettype, o.addrtype, o.address),
            self.session_name, self.version, self.information, self.uri, list(self.emails), list(self.phones),
            None if c is None else Connection(c.address, c.nettype, c.addrtype),
            [Bandwidth(b.bwtype, b.value) for b in self.bandwidths],
            [Timing(t.start, t.stop, list(t.repeats)) for t in self.timings],
            self.time_zones, self.key,
            [Attribute(a.name, a.value) for a in self.attributes],
            [m.copy() for m in self.media],
        )

    def serialize(self) -> bytes:
        return self.to_text().encode("utf-8")

    def to_text(self) -> str:
        return CRLF.join(self.lines()) + CRLF

    def serialize_with_origin(self, origin: Origin) -> bytes:
        """``serialize()`` of this description with ``origin`` as its o= line (itself unchanged,
        nothing copied): the o= line is always the second (RFC 8866 §5)."""
        lines = list(self.lines())
        lines[1] = f"o={origin}"
        return (CRLF.join(lines) + CRLF).encode("utf-8")

    def __str__(self) -> str:
        return self.to_text()

    def lines(self) -> Iterator[str]:
        yield f"v={self.version}"
        yield f"o={self.origin}"
        yield f"s={self.session_name}"
        if self.information is not None:
            yield f"i={self.information}"
        if self.uri is not None:
            yield f"u={self.uri}"
        yield from (f"e={email}" for email in self.emails)
        yield from (f"p={phone}" for phone in self.phones)
        if self.connection is not None:
            yield f"c={self.connection}"
        yield from (f"b={bandwidth}" for bandwidth in self.bandwidths)
        for timing in self.timings:
            yield f"t={timing.start} {timing.stop}"
            yield from (f"r={repeat}" for repeat in timing.repeats)
        if self.time_zones is not None:
            yield f"z={self.time_zones}"
        if self.key is not None:
            yield f"k={self.key}"
        yield from _attribute_lines(self.attributes)
        for media in self.media:
            yield from media.lines()

    def media_connection(self, media: MediaDescription) -> Connection | None:
        """RFC 8866 §5.7: the media-level c= wins over the session-level one."""
        return media.connection or self.connection

    def media_direction(self, media: MediaDescription) -> str:
        """RFC 3264 §5.1: media-level direction, else session-level, else sendrecv."""
        return media.direction or self.direction or "sendrecv"

    def media_attribute_value(self, media: MediaDescription, name: str) -> str | None:
        """A media-level attribute, falling back to the session level (ICE/DTLS attributes, RFC 8839 §5)."""
        value = media.attribute_value(name)
        return self.attribute_value(name) if value is None else value


def _attribute_lines(attributes: list[Attribute]) -> list[str]:
    # str(Attribute) written out: one Python call fewer per line, ~20 lines per body, every body.
    return [f"a={a.name}" if a.value is None else f"a={a.name}:{a.value}" for a in attributes]


# --- parsing -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _parse_rtpmap(value: str) -> tuple[str, RtpMap] | None:
    # Memoised: the same few values ("111 opus/48000/2") in every browser's offer, read several
    # times a call; the result is immutable.  Bounded: the values come from the network.
    pt, _, rest = value.strip().partition(" ")
    parts = rest.strip().split("/")
    if not pt.isdigit() or len(parts) < 2 or not parts[0] or not parts[1].isdigit():
        return None
    channels = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return pt, RtpMap(parts[0], int(parts[1]), channels)


# A body of "<letter>=<value>" lines each ended by CRLF, none ending in a blank, no blank line:
# what browsers and cores send.  Its lines need none of the per-line repairs and checks of
# ``_split_repairing``, which gives the same lines for it (tests.test_sdp_model).
_PLAIN_BODY = re.compile(r"(?:[A-Za-z]=(?:[^\r\n]*[^\r\n \t])?\r\n)+")


def _split_lines(text: str | bytes) -> list[tuple[int, str, str]]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SdpError(f"SDP is not UTF-8 text (byte {error.start})") from None
    if _PLAIN_BODY.fullmatch(text):
        return [(number, line[0], line[2:]) for number, line in enumerate(text[:-2].split("\r\n"), start=1)]
    return _split_repairing(text)


def _split_repairing(text: str) -> list[tuple[int, str, str]]:
    result: list[tuple[int, str, str]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        # Trailing blanks are not allowed by RFC 8866 §9 but some SIP UAs send them ("a=sendrecv ").
        line = raw.rstrip("\r").rstrip(" \t")
        if not line.strip():
            continue  # blank lines (often a trailing one) carry nothing
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"line {number}: not '<type>=<value>': {line[:60]!r}")
        result.append((number, line[0], line[2:]))
    return result


def parse_attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    if not name or not _TOKEN.match(name):
        raise SdpError(f"attribute name is not a token: {value[:60]!r}")
    return Attribute(name, rest if colon else None)


def _parse_connection(number: int, value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"line {number}: c= needs '<nettype> <addrtype> <address>', got {value!r}")
    return Connection(nettype=parts[0], addrtype=parts[1], address=parts[2])


def _parse_bandwidth(number: int, value: str) -> Bandwidth:
    bwtype, colon, amount = value.partition(":")
    if not colon or not bwtype or not amount.strip().isdigit():
        raise SdpError(f"line {number}: b= needs '<bwtype>:<integer>', got {value!r}")
    return Bandwidth(bwtype, int(amount))


def parse_media_line(number: int, value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"line {number}: m= needs '<media> <port> <proto> <fmt> ...', got {value!r}")
    media, port_text, proto, *formats = parts
    port_text, slash, count_text = port_text.partition("/")
    if not port_text.isdigit() or int(port_text) > 65535 or (slash and not count_text.isdigit()):
        raise SdpError(f"line {number}: m= port {parts[1]!r} is not a port number (0-65535)")
    if not formats:
        raise SdpError(f"line {number}: m= line has no media formats: {value!r}")
    return MediaDescription(media=media, port=int(port_text), proto=proto, formats=formats,
                            port_count=int(count_text) if slash else None)


def _parse(text: str | bytes) -> SessionDescription:
    lines = _split_lines(text)
    if not lines:
        raise SdpError("SDP body is empty")
    number, kind, value = lines[0]
    if kind != "v" or value.strip() != "0":
        raise SdpError(f"line {number}: SDP must start with v=0")
    origin: Origin | None = None
    session_name: str | None = None
    session = SessionDescription(origin=Origin("-", "0", 0), timings=[])
    current: MediaDescription | None = None
    for number, kind, value in lines[1:]:
        try:
            if current is not None:
                if kind == "a":  # most lines of a body: straight to the m= section's attributes
                    current.attributes.append(parse_attribute(value))
                    continue
                _parse_media_level(current, number, kind, value)
                if kind == "m":
                    current = parse_media_line(number, value)
                    session.media.append(current)
                continue
            if kind == "o":
                parts = value.split()
                if len(parts) != 6 or not parts[2].isdigit():
                    raise SdpError(f"line {number}: o= needs '<username> <sess-id> <sess-version> "
                                   f"<nettype> <addrtype> <address>' with a numeric version, got {value!r}")
                origin = Origin(parts[0], parts[1], int(parts[2]), parts[3], parts[4], parts[5])
            elif kind == "s":
                session_name = value
            elif kind == "i":
                session.information = value
            elif kind == "u":
                session.uri = value
            elif kind == "e":
                session.emails.append(value)
            elif kind == "p":
                session.phones.append(value)
            elif kind == "c":
                session.connection = _parse_connection(number, value)
            elif kind == "b":
                session.bandwidths.append(_parse_bandwidth(number, value))
            elif kind == "t":
                parts = value.split()
                if len(parts) != 2 or not all(p.isdigit() for p in parts):
                    raise SdpError(f"line {number}: t= needs '<start> <stop>' integers, got {value!r}")
                session.timings.append(Timing(parts[0], parts[1]))
            elif kind == "r":
                if not session.timings:
                    raise SdpError(f"line {number}: r= before any t=")
                session.timings[-1].repeats.append(value)
            elif kind == "z":
                session.time_zones = value
            elif kind == "k":
                session.key = value
            elif kind == "a":
                session.attributes.append(parse_attribute(value))
            elif kind == "m":
                current = parse_media_line(number, value)
                session.media.append(current)
            elif kind == "v":
                raise SdpError(f"line {number}: second v= line (one SDP body holds one session)")
            else:
                raise SdpError(f"line {number}: unknown SDP line type {kind!r}")
        except SdpError as error:
            if error.reason.startswith("line "):
                raise
            raise SdpError(f"line {number}: {error.reason}") from None
    if origin is None:
        raise SdpError("SDP has no o= line")
    if session_name is None:
        raise SdpError("SDP has no s= line")
    if not session.timings:
        raise SdpError("SDP has no t= line")
    session.origin = origin
    session.session_name = session_name
    for media in session.media:
        if session.connection is None and not media.connections and media.port != 0:
            raise SdpError(f"m={media.media} line has no c= and there is no session-level c= (RFC 8866 §5.7)")
    return session


def _parse_media_level(media: MediaDescription, number: int, kind: str, value: str) -> None:
    """Lines after an m= line belong to it (RFC 8866 §5); `m` itself is handled by the caller."""
    if kind == "m":
        return
    if kind == "i":
        media.information = value
    elif kind == "c":
        media.connections.append(_parse_connection(number, value))
    elif kind == "b":
        media.bandwidths.append(_parse_bandwidth(number, value))
    elif kind == "k":
        media.key = value
    elif kind == "a":
        media.attributes.append(parse_attribute(value))
    else:
        raise SdpError(f"line {number}: {kind}= is not allowed inside an m= section")
