"""Seed messages and mutations for ``benchmarks/fuzz.py``.

Theory of operation
-------------------
Mutating a SIP message costs tens of microseconds in Python; the edge parses one in about
as long, so a generator mutating per message would measure itself.  Instead a *pool* of
mutants is built once (``build_pool``), each a template with placeholders, and sending a
message is a handful of ``bytes.replace`` calls that fill in what must change per message
or per dialog:

* ``QQQQQQQQ``: an 8-digit serial, in the Via branch, the Call-ID and the tags, so that every
  message is a new transaction (RFC 3261 §17.2.3) instead of a retransmission the
  transaction layer absorbs;
* ``@CID@``, ``@FTAG@``, ``@TTAG@``, ``@CONTACT@``, ``@WICROUTE@``, ``@COREROUTE@``, ``@PATH@``:
  the dialog and registration the runner really holds (a call from the registered WIC to
  the sipp UAS), so that in-dialog requests reach the call state and not only the 403/481 gates;
* ``@PORT@``: the runner's own UDP/TCP port (Via sent-by, so answers come back to us).

Mutations are what a bad network or an attacker produces: byte flips, truncation, header
duplication, bad Content-Length, invalid UTF-8, NULs, folded lines (RFC 3261 §7.3.1), URI
torture (RFC 4475 style: IPv6 literals, labels over 63 octets, escapes) and SDP torture.
A share of the pool stays unmutated, so real calls and registrations keep happening.
"""

from __future__ import annotations

import os
import random
import re
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SERIAL = b"QQQQQQQQ"

CHROME_OFFER = open(os.path.join(TOP, "tests", "fixtures", "sdp", "chrome_offer_loopback.sdp"), "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
TRICKLE = open(os.path.join(TOP, "tests", "fixtures", "sdp", "trickle_info.sdpfrag"), "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
IMS_OFFER = (b"v=0\r\no=ims 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")

TORTURE_URIS = [
    b"sip:uas@[::1]:5060;transport=udp",  # an IPv6 target for an IPv4-only UDP socket
    b"sip:uas@[::1]:5060;transport=tcp",
    b"sip:uas@" + b"a" * 64 + b".example.com",  # a DNS label over 63 octets (RFC 1035 §2.3.4)
    b"sip:uas@" + b"b" * 300,
    b"sip:uas@.example.com",  # an empty label
    b"sip:uas@example..com",
    b"sip:uas@-bad-.example.com",
    b"sip:uas@127.0.0.1:0",
    b"sip:uas@127.0.0.1:99999",
    b"sip:uas@127.0.0.1:5060;maddr=[::1]",
    b"sip:uas@10.255.255.1;transport=sctp",
    b"sip:@127.0.0.1",
    b"sip:",
    b"sips:uas@127.0.0.1;transport=udp",
    b"tel:+1-555-0100",
    b"urn:service:sos",
    b"sip:%61lice@ims.localdomain",
    b"sip:alice%00@ims.localdomain",
    b"sip:alice@ims.localdomain;lr;lr;lr;transport=ws",
    b"sip:alice@\xc3\x28.invalid;transport=ws",
    b"sip:alice@xn--.invalid",
    b"sip:alice@[fe80::1%25eth0]",
    b"sip:alice@256.256.256.256",
    b"<sip:alice@ims.localdomain",
    b"sip:alice@ims.localdomain?Route=%3Csip:evil%3E",
]
TORTURE_SDP_LINES = [
    b"m=audio 70000 UDP/TLS/RTP/SAVPF 111", b"m=audio 0 UDP/TLS/RTP/SAVPF", b"m=video 9 UDP/TLS/RTP/SAVPF 96 97 98",
    b"m=application 9 UDP/DTLS/SCTP webrtc-datachannel", b"m=audio -1 RTP/AVP 0", b"m=audio 9",
    b"c=IN IP6 ::1", b"c=IN IP4 999.1.1.1", b"c=IN IP4", b"a=candidate:1 1 udp 2122260223 ::1 54400 typ host",
    b"a=candidate:x", b"a=candidate:1 1 udp 1 " + b"h" * 80 + b".local 1 typ host", b"a=ice-ufrag:", b"a=ice-pwd:short",
    b"a=fingerprint:sha-256 ZZ", b"a=fingerprint:md2 00", b"a=setup:bogus", b"a=rtpmap:111", b"a=rtpmap:999999 x/0",
    b"a=mid:" + b"m" * 300, b"a=end-of-candidates", b"a=ice-lite", b"a=inactive", b"a=rtcp:0", b"o=", b"v=1",
    b"a=group:BUNDLE 0 1 2 3", b"a=ssrc:1 cname:" + b"\xff" * 4, b"a=extmap:999 x", b"t=0",
]
JUNK = [b"\x00", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\r", b"\n", b"\r\n\r\n", b" ", b"\t", b";", b",", b"<", b">", b"@", b"%", b'"']


def _lines(*parts: bytes) -> bytes:
    return b"\r\n".join(parts)


def _message(head: list[bytes], body: bytes = b"", content_type: bytes | None = None) -> bytes:
    headers = list(head)
    if content_type:
        headers.append(b"Content-Type: " + content_type)
    headers.append(b"Content-Length: %d" % len(body))
    return _lines(*headers) + b"\r\n\r\n" + body


def wic_seeds() -> dict[str, bytes]:
    """What a WIC sends over its WebSocket (RFC 7118): Via WS, the registered WIC's identity."""
    via = b"Via: SIP/2.0/WS fz.invalid;branch=z9hG4bK-fz-QQQQQQQQ"
    me, peer = b"<sip:@USER@@ims.localdomain>", b"<sip:uas@127.0.0.1:@SIPP@>"
    dialog = [via, b"Max-Forwards: 70", b"From: " + me + b";tag=@FTAG@", b"To: " + peer + b";tag=@TTAG@", b"Call-ID: @CID@"]
    initial = [via, b"Max-Forwards: 70", b"From: " + me + b";tag=fQQQQQQQQ", b"Call-ID: fz-QQQQQQQQ"]
    contact = b"Contact: <sip:@USER@@fz.invalid;transport=ws;ob>"
    return {
        "REGISTER": _message([b"REGISTER sip:ims.localdomain SIP/2.0", via, b"Max-Forwards: 70", b"From: " + me + b";tag=rQQQQQQQQ",
                              b"To: " + me, b"Call-ID: reg-QQQQQQQQ", b"CSeq: 1 REGISTER",
                              b'Contact: <sip:@USER@@fz.invalid;transport=ws;ob>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-4000-8000-QQQQQQQQ0000>";expires=600',
                              b"Supported: path, outbound, gruu"]),
        "INVITE": _message([b"INVITE sip:uas@127.0.0.1:@SIPP@ SIP/2.0", *initial, b"To: " + peer, b"CSeq: 1 INVITE", contact,
                            b"Supported: ice, replaces, outbound", b"Allow: INVITE, ACK, CANCEL, BYE, UPDATE, MESSAGE, OPTIONS, INFO"],
                           CHROME_OFFER, b"application/sdp"),
        "INVITE-core-user": _message([b"INVITE sip:bob@ims.localdomain SIP/2.0", *initial, b"To: <sip:bob@ims.localdomain>",
                                      b"CSeq: 1 INVITE", contact], CHROME_OFFER, b"application/sdp"),
        "re-INVITE": _message([b"INVITE @CONTACT@ SIP/2.0", *dialog, b"Route: @WICROUTE@", b"CSeq: 2QQQQQQQQ INVITE", contact],
                              CHROME_OFFER, b"application/sdp"),
        "ACK": _message([b"ACK @CONTACT@ SIP/2.0", *dialog, b"Route: @WICROUTE@", b"CSeq: 1 ACK"]),
        "BYE": _message([b"BYE @CONTACT@ SIP/2.0", *dialog, b"Route: @WICROUTE@", b"CSeq: 3QQQQQQQQ BYE"]),
        "CANCEL": _message([b"CANCEL sip:uas@127.0.0.1:@SIPP@ SIP/2.0", *initial, b"To: " + peer, b"CSeq: 1 CANCEL"]),
        "INFO": _message([b"INFO @CONTACT@ SIP/2.0", *dialog, b"Route: @WICROUTE@", b"CSeq: 4QQQQQQQQ INFO",
                          b"Info-Package: trickle-ice"], TRICKLE, b"application/trickle-ice-sdpfrag"),
        "SUBSCRIBE": _message([b"SUBSCRIBE sip:@USER@@ims.localdomain SIP/2.0", *initial, b"To: " + me, b"CSeq: 1 SUBSCRIBE",
                               b"Event: reg", b"Expires: 600", b"Accept: application/reginfo+xml", contact]),
        "NOTIFY": _message([b"NOTIFY @CONTACT@ SIP/2.0", *dialog, b"Route: @WICROUTE@", b"CSeq: 5QQQQQQQQ NOTIFY",
                            b"Event: dialog", b"Subscription-State: active;expires=60"], b"<x/>", b"application/dialog-info+xml"),
        "MESSAGE": _message([b"MESSAGE sip:bob@ims.localdomain SIP/2.0", *initial, b"To: <sip:bob@ims.localdomain>", b"CSeq: 1 MESSAGE"],
                            b"hello", b"text/plain"),
        "response": _message([b"SIP/2.0 200 OK", b"Via: SIP/2.0/UDP 127.0.0.1:@EDGEUDP@;branch=z9hG4bK-fz-QQQQQQQQ",
                              b"From: <sip:uas@127.0.0.1>;tag=@TTAG@", b"To: " + me + b";tag=@FTAG@", b"Call-ID: @CID@", b"CSeq: 1 INVITE",
                              contact], CHROME_OFFER, b"application/sdp"),
    }


def core_seeds() -> dict[str, bytes]:
    """What the IMS core sends to the core-facing listener: requests toward the WIC, responses."""
    via = b"Via: SIP/2.0/@TRANSPORT@ 127.0.0.1:@PORT@;rport;branch=z9hG4bK-fz-QQQQQQQQ"
    peer, wic = b"<sip:uas@127.0.0.1:@SIPP@>", b"<sip:@USER@@ims.localdomain>"
    # A request from the callee (the sipp side) in the dialog of the WIC's call (RFC 3261 §12.2.1.1).
    dialog = [via, b"Max-Forwards: 70", b"From: " + peer + b";tag=@TTAG@", b"To: " + wic + b";tag=@FTAG@", b"Call-ID: @CID@"]
    initial = [via, b"Max-Forwards: 70", b"From: <sip:carol@ims.localdomain>;tag=cQQQQQQQQ", b"Call-ID: core-QQQQQQQQ"]
    contact = b"Contact: <sip:core@127.0.0.1:@PORT@>"
    return {
        "INVITE": _message([b"INVITE @REGCONTACT@ SIP/2.0", *initial, b"Route: @PATH@", b"To: " + wic, b"CSeq: 1 INVITE", contact,
                            b"P-Asserted-Identity: <sip:carol@ims.localdomain>"], IMS_OFFER, b"application/sdp"),
        "re-INVITE": _message([b"INVITE @CONTACT@ SIP/2.0", *dialog, b"Route: @COREROUTE@", b"CSeq: 2QQQQQQQQ INVITE", contact],
                              IMS_OFFER, b"application/sdp"),
        "ACK": _message([b"ACK @CONTACT@ SIP/2.0", *dialog, b"Route: @COREROUTE@", b"CSeq: 2 ACK"]),
        "BYE": _message([b"BYE @CONTACT@ SIP/2.0", *dialog, b"Route: @COREROUTE@", b"CSeq: 3QQQQQQQQ BYE"]),
        "CANCEL": _message([b"CANCEL @REGCONTACT@ SIP/2.0", *initial, b"Route: @PATH@", b"To: " + wic, b"CSeq: 1 CANCEL"]),
        "INFO": _message([b"INFO @CONTACT@ SIP/2.0", *dialog, b"Route: @COREROUTE@", b"CSeq: 4QQQQQQQQ INFO"], b"x", b"text/plain"),
        "NOTIFY": _message([b"NOTIFY @REGCONTACT@ SIP/2.0", *initial, b"Route: @PATH@", b"To: " + wic + b";tag=@FTAG@",
                            b"CSeq: 1 NOTIFY", b"Event: reg", b"Subscription-State: active;expires=600", contact],
                           b'<?xml version="1.0"?><reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full"/>',
                           b"application/reginfo+xml"),
        "SUBSCRIBE": _message([b"SUBSCRIBE @REGCONTACT@ SIP/2.0", *initial, b"Route: @PATH@", b"To: " + wic, b"CSeq: 1 SUBSCRIBE",
                               b"Event: presence", contact]),
        "MESSAGE": _message([b"MESSAGE @REGCONTACT@ SIP/2.0", *initial, b"Route: @PATH@", b"To: " + wic, b"CSeq: 1 MESSAGE"],
                            b"hi", b"text/plain"),
        "OPTIONS": _message([b"OPTIONS sip:127.0.0.1:@EDGE@ SIP/2.0", *initial, b"To: <sip:127.0.0.1>", b"CSeq: 1 OPTIONS"]),
        "response-180": _message([b"SIP/2.0 180 Ringing", b"Via: SIP/2.0/@TRANSPORT@ 127.0.0.1:@EDGE@;branch=z9hG4bK-fz-QQQQQQQQ",
                                  b"From: " + wic + b";tag=@FTAG@", b"To: " + peer + b";tag=@TTAG@", b"Call-ID: @CID@", b"CSeq: 1 INVITE"]),
        "response-200": _message([b"SIP/2.0 200 OK", b"Via: SIP/2.0/@TRANSPORT@ 127.0.0.1:@EDGE@;branch=z9hG4bK-fz-QQQQQQQQ",
                                  b"From: " + wic + b";tag=@FTAG@", b"To: " + peer + b";tag=@TTAG@", b"Call-ID: @CID@", b"CSeq: 1 INVITE",
                                  b"Record-Route: @COREROUTE@", contact], IMS_OFFER, b"application/sdp"),
    }


# --- mutations ----------------------------------------------------------------------------------

Mutation = Callable[[bytes, random.Random], bytes]
_HEADER_LINE = re.compile(rb"\r\n([A-Za-z-]+)[ \t]*:[^\r\n]*")


def _random_header(message: bytes, rng: random.Random) -> "re.Match[bytes] | None":
    """One header line of ``message`` (with its leading CRLF), chosen at random."""
    lines = list(_HEADER_LINE.finditer(message))
    return rng.choice(lines) if lines else None


def _split(message: bytes) -> tuple[bytes, bytes]:
    head, separator, body = message.partition(b"\r\n\r\n")
    return head, body if separator else b""


def byte_flips(message: bytes, rng: random.Random) -> bytes:
    data = bytearray(message)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def truncate(message: bytes, rng: random.Random) -> bytes:
    return message[: rng.randrange(1, len(message))] if len(message) > 1 else message


def duplicate_header(message: bytes, rng: random.Random) -> bytes:
    line, place = _random_header(message, rng), _random_header(message, rng)
    if line is None or place is None:
        return message
    return message[: place.end()] + line.group(0) * rng.randint(1, 3) + message[place.end():]


def bad_content_length(message: bytes, rng: random.Random) -> bytes:
    head, body = _split(message)
    value = rng.choice([b"-1", b"99999999999999999999", b"0", b"abc", b"%d" % (len(body) + rng.randint(1, 500)),
                        b"%d" % max(0, len(body) - rng.randint(1, 50)), b"", b"1 2", b"0x10"])
    head = re.sub(rb"(?im)^(Content-Length|l)[ \t]*:[^\r\n]*", b"Content-Length: " + value, head, count=1)
    return head + b"\r\n\r\n" + body


def invalid_utf8(message: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(message))
    return message[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"]) + message[at:]


def nuls(message: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(message))
    return message[:at] + b"\x00" * rng.randint(1, 4) + message[at:]


def fold(message: bytes, rng: random.Random) -> bytes:
    """RFC 3261 §7.3.1 line folding, in places where it is legal and where it is not."""
    line = _random_header(message, rng)
    if line is None:
        return message
    text = line.group(0)
    cut = rng.randrange(2, len(text)) if len(text) > 2 else 2
    return message[: line.start()] + text[:cut] + rng.choice([b"\r\n ", b"\r\n\t", b"\r\n  \r\n ", b"\n "]) + text[cut:] + message[line.end():]


def uri_torture(message: bytes, rng: random.Random) -> bytes:
    uri = rng.choice(TORTURE_URIS)
    if rng.random() < 0.5:
        first, rest = message.split(b"\r\n", 1) if b"\r\n" in message else (message, b"")
        parts = first.split(b" ")
        if len(parts) == 3 and not first.startswith(b"SIP/"):
            return b" ".join([parts[0], uri, parts[2]]) + b"\r\n" + rest
    name = rng.choice([b"To", b"From", b"Contact", b"Route", b"Record-Route", b"Path", b"P-Asserted-Identity"])
    value = b"<" + uri + b">" if rng.random() < 0.7 else uri
    header = re.compile(rb"(?im)^" + name + rb"[ \t]*:[^\r\n]*")
    if header.search(message):
        return header.sub(lambda _: name + b": " + value, message, count=1)
    return message.replace(b"\r\n\r\n", b"\r\n" + name + b": " + value + b"\r\n\r\n", 1)


def sdp_torture(message: bytes, rng: random.Random) -> bytes:
    head, body = _split(message)
    if not body:
        body = CHROME_OFFER
        head = re.sub(rb"(?im)^Content-Type[ \t]*:[^\r\n]*\r\n?", b"", head) + b"\r\nContent-Type: application/sdp"
    lines = body.split(b"\r\n")
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(4)
        at = rng.randrange(len(lines))
        if action == 0:
            lines.insert(at, rng.choice(TORTURE_SDP_LINES))
        elif action == 1 and len(lines) > 1:
            del lines[at]
        elif action == 2:
            lines[at] = rng.choice(TORTURE_SDP_LINES)
        elif len(lines) < 200:
            lines = lines * rng.randint(2, 20)  # many m= lines (once: a body stays under ~100 KB)
    body = b"\r\n".join(lines)
    head = re.sub(rb"(?im)^(Content-Length|l)[ \t]*:[^\r\n]*", b"Content-Length: %d" % len(body), head, count=1)
    return head + b"\r\n\r\n" + body


def header_garbage(message: bytes, rng: random.Random) -> bytes:
    line = _random_header(message, rng)
    if line is None:
        return message
    name = line.group(1)
    choice = rng.randrange(4)
    if choice == 0:  # a mandatory header gone (RFC 3261 §8.1.1)
        return message[: line.start()] + message[line.end():]
    if choice == 1:
        value = b"".join(rng.choice(JUNK) for _ in range(rng.randint(1, 30)))
    elif choice == 2:
        value = b"x" * rng.choice([100, 1000, 8000, 70000])
    else:
        value = rng.choice([b"", b"2 INVITE x", b"4294967296 BYE", b"1", b"SIP/2.0/UDP", b"<>", b";;;", b"z9hG4bK"])
    return message[: line.start()] + b"\r\n" + name + b": " + value + message[line.end():]


def start_line(message: bytes, rng: random.Random) -> bytes:
    first, separator, rest = message.partition(b"\r\n")
    replacement = rng.choice([b"SIP/2.0 999 Nonsense", b"SIP/2.0 1 x", b"SIP/3.0 200 OK", b"INVITE  SIP/2.0", b"FOO sip:a@b SIP/2.0",
                              b"ACK sip:a@b SIP/2.0", b"INVITE sip:a@b", b"", b"SIP/2.0 200", b"sip/2.0 200 OK",
                              b"PRACK " + first.split(b" ")[1] + b" SIP/2.0" if first.count(b" ") >= 2 else b"PRACK"])
    return replacement + separator + rest


MUTATIONS: dict[str, Mutation] = {
    "byte-flips": byte_flips,
    "truncate": truncate,
    "duplicate-header": duplicate_header,
    "bad-content-length": bad_content_length,
    "invalid-utf8": invalid_utf8,
    "nul": nuls,
    "fold": fold,
    "uri": uri_torture,
    "sdp": sdp_torture,
    "header-garbage": header_garbage,
    "start-line": start_line,
}


def mutate(message: bytes, rng: random.Random) -> bytes:
    """One to three mutations, chosen at random."""
    names = list(MUTATIONS)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not message:
            break
        message = MUTATIONS[rng.choice(names)](message, rng)
    return message


def build_pool(seeds: dict[str, bytes], size: int, seed: int, limit: int, clean_share: float = 0.1) -> list[bytes]:
    """``size`` templates: about ``clean_share`` of them the seeds as they are, the rest mutants,
    each cut at ``limit`` bytes (over the edge's message size limit is tested, not 100 MB)."""
    rng = random.Random(seed)
    names = list(seeds)
    pool = []
    for _ in range(size):
        template = seeds[rng.choice(names)]
        pool.append(template if rng.random() < clean_share else mutate(template, rng)[:limit])
    return pool
