"""The common case of RFC 6455 framing, without Autobahn's per-frame machinery.

A SIP WebSocket (RFC 7118) carries one SIP message per WebSocket message, and every client
sends it as one final, masked text or binary frame.  ``read_data_frame`` reads exactly that
frame and nothing else: any other frame (fragmented, control, reserved bits or opcodes,
unmasked, non-minimal length, over the size limit, invalid UTF-8 in a text frame) or an
incomplete one is left to Autobahn's full state machine, which then answers it as RFC 6455
says (1002, 1007, 1009, ping/pong, close).  ``data_frame`` writes the one frame a server
sends per message: final, unmasked (RFC 6455 §5.1), unfragmented.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["DataFrame", "data_frame", "read_data_frame", "unmask", "unmask_with_integers"]

_TEXT_FINAL = 0x81  # FIN, RSV1-3 clear, opcode 1 (RFC 6455 §5.2)
_BINARY_FINAL = 0x82  # FIN, RSV1-3 clear, opcode 2
_MASKED = 0x80
_LENGTH_16 = struct.Struct("!H")


class DataFrame(NamedTuple):
    """One whole data frame read from a buffer: its unmasked payload and where it ended."""

    payload: bytes
    binary: bool
    end: int


def unmask_with_integers(payload: bytes, mask: bytes) -> bytes:
    """RFC 6455 §5.3: XOR with the 4-octet key, repeated.  One big-integer XOR (C speed):
    ``unmask`` when websockets' C helper is not there."""
    size = len(payload)
    if size == 0:
        return b""
    key = (mask * ((size + 3) >> 2))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


try:
    # websockets' C helper does the same XOR in one pass over the octets: about a tenth of the
    # big-integer way's work for a SIP message (two conversions to an int and one back).
    from websockets.speedups import apply_mask as unmask
except ImportError:  # websockets absent, or built without its C extension
    unmask = unmask_with_integers


def read_data_frame(buffer: bytes, start: int, limit: int) -> DataFrame | None:
    """The final, masked text/binary frame at ``buffer[start:]``, or None for anything else.

    ``limit`` is the largest payload accepted (0: no limit); a larger frame is Autobahn's to
    refuse (1009).  A text frame must hold valid UTF-8 (RFC 6455 §8.1); if not, None, and
    Autobahn fails the connection with 1007.
    """
    available = len(buffer) - start
    if available < 6:
        return None
    first = buffer[start]
    if first != _TEXT_FINAL and first != _BINARY_FINAL:
        return None
    second = buffer[start + 1]
    if not second & _MASKED:
        return None  # RFC 6455 §5.1: a client frame must be masked (Autobahn says 1002)
    length = second & 0x7F
    header = 6
    if length == 126:
        if available < 8:
            return None
        length = _LENGTH_16.unpack_from(buffer, start + 2)[0]
        if length < 126:
            return None  # not the minimal length encoding (RFC 6455 §5.2): Autobahn's 1002
        header = 8
    elif length == 127:
        return None  # 64 KiB or more: past any SIP message limit, Autobahn refuses it
    if limit > 0 and length > limit:
        return None
    end = start + header + length
    if end > len(buffer):
        return None
    mask = buffer[start + header - 4 : start + header]
    payload = unmask(buffer[start + header : end], mask)
    binary = first == _BINARY_FINAL
    if not binary and not payload.isascii():  # ASCII (nearly every SIP message) is UTF-8
        try:
            payload.decode("utf-8")  # strict: no surrogates, no overlongs (RFC 3629)
        except UnicodeDecodeError:
            return None
    return _new_frame(DataFrame, (payload, binary, end))  # ``DataFrame(...)`` without its generated ``__new__``'s frame


_new_frame = tuple.__new__


def data_frame(payload: bytes, binary: bool) -> bytes:
    """One final, unmasked data frame (a server never masks, RFC 6455 §5.1)."""
    first = _BINARY_FINAL if binary else _TEXT_FINAL
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload
