"""ini text → checked values: the converters behind every key of ``epcscf.config``.

Each converter takes a key's text and the directory of the ini file that set it
(relative paths are resolved against it) and returns the value, or raises
``_Invalid`` with a reason a user can act on; ``epcscf.config`` adds the file,
section and key and raises ``ConfigError``, one line, which is what the user sees
on the terminal before a non-zero exit.  The converters are private to the two
config modules; ``ConfigError``, ``Listener``, ``parse_trusted_source`` and the
algorithm and codec lists are public and re-exported by ``epcscf.config``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union


class ConfigError(Exception):
    """A bad ini file: one line naming file, section, key and reason."""

    def __init__(self, path: str, section: str | None, key: str | None, reason: str) -> None:
        self.path = path
        self.section = section
        self.key = key
        self.reason = reason
        where = path
        if section is not None:
            where += f": [{section}]"
        if key is not None:
            where += f" {key}"
        super().__init__(f"{where}: {reason}")


class _Invalid(ValueError):
    """Raised by converters; the loader adds file, section and key."""


# --- converters: text → value, raising _Invalid with a reason a user can act on ---


def _text(value: str, base: Path) -> str:
    return value.strip()


def _boolean(value: str, base: Path) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise _Invalid(f"expected true or false, got {value.strip()!r}")


def _integer(low: int, high: int) -> Callable[[str, Path], int]:
    def convert(value: str, base: Path) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise _Invalid(f"expected a whole number, got {value.strip()!r}") from None
        if not low <= number <= high:
            raise _Invalid(f"must be between {low} and {high}, got {number}")
        return number

    return convert


def _seconds(value: str, base: Path) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise _Invalid(f"expected a number of seconds, got {value.strip()!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise _Invalid(f"must be a positive number of seconds, got {value.strip()!r}")
    return number


def _zero_or_positive(unit: str, zero_means: str) -> Callable[[str, Path], float]:
    """0 (``zero_means``) or a positive number ``unit``, e.g. "of seconds", "per second"."""

    def convert(value: str, base: Path) -> float:
        try:
            number = float(value.strip())
        except ValueError:
            raise _Invalid(f"expected a number {unit}, got {value.strip()!r}") from None
        if not 0 <= number < float("inf"):
            raise _Invalid(f"must be 0 ({zero_means}) or a positive number {unit}, got {value.strip()!r}")
        return number

    return convert


_seconds_or_zero = _zero_or_positive("of seconds", "off")


def _choice(*choices: str) -> Callable[[str, Path], str]:
    def convert(value: str, base: Path) -> str:
        lowered = value.strip().lower()
        if lowered not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}, got {value.strip()!r}")
        return lowered

    return convert


def _path(value: str, base: Path) -> str:
    text = value.strip()
    if not text:
        return ""
    return str((base / os.path.expanduser(text)).resolve())


def _existing_file(value: str, base: Path) -> str:
    resolved = _path(value, base)
    if resolved and not os.path.isfile(resolved):
        raise _Invalid(f"file {resolved} does not exist")
    return resolved


def _ip_address(value: str, base: Path) -> str:
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Invalid(f"expected an IP address, got {text!r}") from None


def _optional_ip_address(value: str, base: Path) -> str:
    return _ip_address(value, base) if value.strip() else ""


def _words(value: str) -> list[str]:
    return [item.strip() for item in value.replace("\n", ",").split(",") if item.strip()]


def _string_list(value: str, base: Path) -> tuple[str, ...]:
    return tuple(_words(value))


def _origin_list(value: str, base: Path) -> tuple[str, ...]:
    origins = []
    for origin in _words(value):
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise _Invalid(f"{origin!r} is not an origin like https://wic.example.com:443")
        origins.append(origin)
    return tuple(origins)


def _websocket_url(value: str, base: Path) -> str:
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if text and (not sep or scheme not in ("ws", "wss") or not rest or " " in rest):
        raise _Invalid(f"{text!r} is not a WebSocket URL like wss://pcscf.example.com:8443")
    return text


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_trusted_source(text: str) -> tuple[str, int | None, Network | None]:
    """``10.0.0.0/8``, ``192.0.2.1``, ``192.0.2.1:5060``, ``[2001:db8::1]:5060``, ``cscf.example``,
    ``cscf.example:5060`` → (host, port, network); network is None for a name (to resolve).
    Raises ValueError with a reason a user can act on."""
    item = text.strip()
    if "/" in item:
        try:
            return item, None, ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not a network like 10.0.0.0/8") from None
    host, port_text = item, ""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{item!r} is not [IPv6]:port")
        port_text = rest[1:]
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} in {item!r} is not 1-65535")
        port = int(port_text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if not host or not all(label and len(label) < 64 and label.replace("-", "").isalnum() for label in labels):
            raise ValueError(f"{item!r} is neither an IP address, a network nor a host name") from None
        return host.lower(), port, None
    return str(address), port, ipaddress.ip_network(address)


def _source_list(value: str, base: Path) -> tuple[str, ...]:
    sources = []
    for item in _words(value):
        try:
            parse_trusted_source(item)
        except ValueError as error:
            raise _Invalid(str(error)) from None
        sources.append(item)
    return tuple(sources)


DIGEST_ALGORITHMS = ("SHA-256", "SHA-512-256", "MD5")


def _algorithm_list(value: str, base: Path) -> tuple[str, ...]:
    algorithms = tuple(word.upper() for word in _words(value))
    unknown = [a for a in algorithms if a not in DIGEST_ALGORITHMS]
    if unknown or not algorithms:
        raise _Invalid(f"expected some of {', '.join(DIGEST_ALGORITHMS)}, got {value.strip()!r}")
    return algorithms


#: video codecs the relay passes without transcoding (TS 26.114 §5.2.2 H.264; RFC 7742 VP8)
VIDEO_CODECS = ("H264", "VP8")


def _video_codec_list(value: str, base: Path) -> tuple[str, ...]:
    by_name = {codec.upper(): codec for codec in VIDEO_CODECS}
    codecs = tuple(by_name.get(word.upper(), word) for word in _words(value))
    unknown = [codec for codec in codecs if codec not in VIDEO_CODECS]
    if unknown:
        raise _Invalid(f"expected some of {', '.join(VIDEO_CODECS)} (or nothing), got {value.strip()!r}")
    return codecs


#: RFC 7518 §3.1 / RFC 8037: the public-key JWS algorithms (never "none" nor a shared secret)
JWS_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")


def _jws_algorithms(value: str, base: Path) -> tuple[str, ...]:
    names = _words(value)
    for name in names:
        if name not in JWS_ALGORITHMS:
            raise _Invalid(f"{name!r} is not a public-key JWS algorithm (known: {', '.join(JWS_ALGORITHMS)})")
    if not names:
        raise _Invalid("name at least one algorithm")
    return tuple(names)


_rate = _zero_or_positive("per second", "no limit")


def _workers(value: str, base: Path) -> int:
    """``auto`` (one per CPU this process may run on) or a count; 1 is one process, no supervisor."""
    text = value.strip().lower()
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    return _integer(1, 64)(text, base)


def _port_range(value: str, base: Path) -> tuple[int, int]:
    low_text, sep, high_text = value.strip().partition("-")
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise _Invalid(f"expected a port range like 20000-29999, got {value.strip()!r}") from None
    if not sep or not 1024 <= low < high <= 65535:
        raise _Invalid(f"expected 1024 <= low < high <= 65535, got {value.strip()!r}")
    return low, high


def _rtpengine_nodes(value: str, base: Path) -> tuple[tuple[str, int, int], ...]:
    """``udp:10.0.0.5:2223, udp:[2001:db8::5]:2223=2`` → ((host, port, weight), ...)."""
    nodes = []
    for item in _words(value):
        text, _, weight_text = item.partition("=")
        scheme, sep, rest = text.strip().partition(":")
        if scheme.lower() != "udp" or not sep:
            raise _Invalid(f"{item!r} is not a node like udp:127.0.0.1:2223 (weight: udp:127.0.0.1:2223=2)")
        try:
            host, port, _network = parse_trusted_source(rest)
            ipaddress.ip_address(host)
        except ValueError:
            raise _Invalid(f"{item!r}: the node must be an IP address and port, like udp:127.0.0.1:2223") from None
        if port is None:
            raise _Invalid(f"{item!r} has no port (rtpengine's listen-ng port, e.g. 2223)")
        weight = 1
        if weight_text:
            if not weight_text.strip().isdigit() or not 1 <= int(weight_text) <= 1000:
                raise _Invalid(f"{item!r}: the weight must be 1-1000")
            weight = int(weight_text)
        nodes.append((host, port, weight))
    return tuple(nodes)


@dataclass(frozen=True)
class Listener:
    """One listening socket: ``transport:address:port`` in the ini file."""

    transport: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.transport}:{host}:{self.port}"


def _listeners(*transports: str) -> Callable[[str, Path], tuple[Listener, ...]]:
    def convert(value: str, base: Path) -> tuple[Listener, ...]:
        result = []
        for item in _words(value):
            transport, sep, rest = item.partition(":")
            if not sep:
                raise _Invalid(f"{item!r} is not transport:address:port")
            transport = transport.lower()
            if transport not in transports:
                raise _Invalid(f"transport {transport!r} in {item!r} must be one of {', '.join(transports)}")
            if rest.startswith("["):
                host, _, port_text = rest[1:].partition("]:")
            else:
                host, _, port_text = rest.rpartition(":")
            try:
                host = str(ipaddress.ip_address(host))
            except ValueError:
                raise _Invalid(f"address {host!r} in {item!r} is not an IP address") from None
            try:
                port = int(port_text)
            except ValueError:
                raise _Invalid(f"port {port_text!r} in {item!r} is not a number") from None
            if not 0 <= port <= 65535:
                raise _Invalid(f"port {port} in {item!r} is out of range")
            result.append(Listener(transport, host, port))
        return tuple(result)

    return convert
