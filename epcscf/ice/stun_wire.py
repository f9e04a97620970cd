"""aioice STUN messages to and from the wire in one pass: the same bytes and messages as aioice,
less work per message.

aioice signs a message (`Message.add_message_integrity`) by serialising it three times: once for
the MESSAGE-INTEGRITY input, once for the FINGERPRINT input, and once more to send (``bytes()``),
each time packing every attribute again (an ``ipaddress`` parse and a byte-by-byte XOR per
XOR-MAPPED-ADDRESS).  `sign` packs the attributes once and derives all three from that: a full
ICE session sends two signed messages (our check, our answer to the WIC's), and a loaded WIC's
resent checks one more answer each.  `parse` is aioice's `parse_message` with an IPv4
XOR-MAPPED-ADDRESS (the answer to each of our checks) read without the byte loop and the
``ipaddress`` object; integrity checks of what arrives stay aioice's.

The message model stays aioice's `stun.Message`: `sign` leaves it exactly as
`add_message_integrity` would (MESSAGE-INTEGRITY and FINGERPRINT last, `_integrity_data` set), so
aioice's later reads of it are unchanged.  `tests/test_ice_stun_wire.py` checks the bytes against
aioice's for every attribute kind we send.
"""

from __future__ import annotations

import binascii
import functools
import hmac
import socket
from struct import Struct

from aioice import stun

_HEADER = Struct("!HHI12s")
_ATTRIBUTE_HEADER = Struct("!HH")
_FINGERPRINT_ATTRIBUTE = Struct("!HHI")
_MESSAGE_INTEGRITY_TYPE = 0x0008
_FINGERPRINT_TYPE = 0x8028
_XOR_MAPPED_ADDRESS_TYPE = 0x0020
_INTEGRITY_ATTRIBUTE_LENGTH = 4 + 20  # RFC 5389 §15.4: HMAC-SHA1, 20 bytes
_FINGERPRINT_ATTRIBUTE_LENGTH = 4 + 4  # RFC 5389 §15.5: CRC-32
# What the port (the cookie's top 16 bits) and the address (the cookie, then for IPv6 the
# transaction id) are XORed with (RFC 5389 §15.2), as aioice's ``xor_data`` lays it out.
_XOR_PAD = (stun.COOKIE >> 16).to_bytes(2, "big") + stun.COOKIE.to_bytes(4, "big")
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
_PADDING_LENGTH = (0, 3, 2, 1)
_METHODS = {method.value: method for method in stun.Method}
_CLASSES = {kind.value: kind for kind in stun.Class}
_XOR_PORT = stun.COOKIE >> 16


@functools.lru_cache(maxsize=1024)  # bounded: the addresses are our peers'
def _family_and_packed(host: str) -> tuple[int, bytes]:
    """(STUN address family, packed address), RFC 5389 §15.1; a name that is no address raises
    ValueError, as aioice's ``ipaddress.ip_address`` does."""
    try:
        return stun.IPV4_PROTOCOL, socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    try:
        return stun.IPV6_PROTOCOL, socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0] if "%" in host else host)
    except OSError:
        raise ValueError(f"{host!r} does not appear to be an IPv4 or IPv6 address") from None


def _xor_address(value: tuple[str, int], transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 5389 §15.2): port and address XORed with the magic cookie
    (and, for IPv6, the transaction id)."""
    family, packed = _family_and_packed(value[0])
    plain = value[1].to_bytes(2, "big") + packed
    pad = _XOR_PAD + transaction_id
    size = len(plain)
    xored = (int.from_bytes(plain, "big") ^ int.from_bytes(pad[:size], "big")).to_bytes(size, "big")
    return b"\x00" + family.to_bytes(1, "big") + xored


def _body(message: stun.Message) -> bytes:
    """The attributes, packed and padded as aioice's ``Message.__bytes__`` packs them."""
    parts = []
    for name, value in message.attributes.items():
        attribute_type, _, pack, _ = stun.ATTRIBUTES_BY_NAME[name]
        if attribute_type == _XOR_MAPPED_ADDRESS_TYPE:
            packed = _xor_address(value, message.transaction_id)
        elif pack is stun.pack_xor_address:
            packed = pack(value, message.transaction_id)
        else:
            packed = pack(value)
        length = len(packed)
        parts.append(_ATTRIBUTE_HEADER.pack(attribute_type, length))
        parts.append(packed)
        parts.append(_PADDING[length % 4])
    return b"".join(parts)


def encode(message: stun.Message) -> bytes:
    """``bytes(message)``, in one pass."""
    body = _body(message)
    return _HEADER.pack(message.message_method | message.message_class, len(body), stun.COOKIE, message.transaction_id) + body


def sign(message: stun.Message, key: bytes) -> bytes:
    """``message.add_message_integrity(key)`` (RFC 5389 §15.4 MESSAGE-INTEGRITY, then §15.5
    FINGERPRINT), and the bytes to send: the attributes are packed once."""
    attributes = message.attributes
    attributes.pop("MESSAGE-INTEGRITY", None)
    attributes.pop("FINGERPRINT", None)
    body = _body(message)
    kind = message.message_method | message.message_class
    tid = message.transaction_id
    integrity_data = _HEADER.pack(kind, len(body), stun.COOKIE, tid) + body
    # The HMAC covers the header with the length as if MESSAGE-INTEGRITY ended the message.
    integrity = hmac.digest(key, _HEADER.pack(kind, len(body) + _INTEGRITY_ATTRIBUTE_LENGTH, stun.COOKIE, tid) + body, "sha1")
    signed_body = body + _ATTRIBUTE_HEADER.pack(_MESSAGE_INTEGRITY_TYPE, 20) + integrity
    length = len(signed_body) + _FINGERPRINT_ATTRIBUTE_LENGTH
    header = _HEADER.pack(kind, length, stun.COOKIE, tid)
    fingerprint = binascii.crc32(header + signed_body) ^ stun.FINGERPRINT_XOR
    attributes["MESSAGE-INTEGRITY"] = integrity
    attributes["FINGERPRINT"] = fingerprint
    message._integrity_data = integrity_data
    return header + signed_body + _FINGERPRINT_ATTRIBUTE.pack(_FINGERPRINT_TYPE, 4, fingerprint)


def parse(data: bytes) -> stun.Message:
    """``stun.parse_message(data)``: the same message, or the same ValueError (RFC 5389 §6, §15;
    attributes after MESSAGE-INTEGRITY but FINGERPRINT are ignored, §15.4)."""
    if len(data) < stun.HEADER_LENGTH:
        raise ValueError("STUN message length is less than 20 bytes")
    message_type, length, _, transaction_id = _HEADER.unpack_from(data)
    if len(data) != stun.HEADER_LENGTH + length:
        raise ValueError("STUN message length does not match")
    attributes: dict[str, object] = {}
    integrity_data = None
    position = stun.HEADER_LENGTH
    last = len(data) - 4
    while position <= last:
        attribute_type, attribute_length = _ATTRIBUTE_HEADER.unpack_from(data, position)
        entry = stun.ATTRIBUTES_BY_TYPE.get(attribute_type)
        if entry is not None:
            name = entry[1]
            if integrity_data is None or name == "FINGERPRINT":
                value = data[position + 4:position + 4 + attribute_length]
                if attribute_type == _XOR_MAPPED_ADDRESS_TYPE and len(value) == 8 and value[1] == stun.IPV4_PROTOCOL:
                    xored = int.from_bytes(value[4:8], "big") ^ stun.COOKIE
                    attributes[name] = (socket.inet_ntoa(xored.to_bytes(4, "big")), int.from_bytes(value[2:4], "big") ^ _XOR_PORT)
                elif entry[3] is stun.unpack_xor_address:
                    attributes[name] = entry[3](value, transaction_id=transaction_id)
                else:
                    attributes[name] = entry[3](value)
                if name == "FINGERPRINT":
                    if attributes[name] != stun.message_fingerprint(data[0:position]):
                        raise ValueError("STUN message fingerprint does not match")
                elif name == "MESSAGE-INTEGRITY":
                    integrity_data = data[0:position]
        position += 4 + attribute_length + _PADDING_LENGTH[attribute_length % 4]
    method = _METHODS.get(message_type & 0x3EEF)
    if method is None:
        raise ValueError(f"{message_type & 0x3EEF} is not a valid Method")
    message = ParsedMessage(method, _CLASSES[message_type & 0x0110], transaction_id, attributes)
    message._integrity_data = integrity_data
    return message


class ParsedMessage(stun.Message):
    """A received message: aioice's, with its MESSAGE-INTEGRITY checked by one HMAC call."""

    def check_message_integrity(self, key: bytes) -> bool:
        """``stun.Message.check_message_integrity``: RFC 5389 §15.4, the HMAC-SHA1 over the message
        up to the attribute, with the length as if the attribute ended it."""
        data = self._integrity_data
        if data is None:
            return False
        length = len(data) - stun.HEADER_LENGTH + _INTEGRITY_ATTRIBUTE_LENGTH
        expected = hmac.digest(key, data[:2] + length.to_bytes(2, "big") + data[4:], "sha1")
        return hmac.compare_digest(self.attributes["MESSAGE-INTEGRITY"], expected)
