"""SIP parse + serialize cost (one core, CPU time).

Run: ``.venv/bin/python benchmarks/sip_parse.py [seconds] [--case invite|registration|all]``.

``invite``: a typical ~1.2 KB INVITE with SDP, parse + serialize, messages/s, with every
per-call text different from one message to the next (as from many UEs: no parse memo
helps), then the same bytes over and over for comparison.

``registration``: the 8 messages one REGISTER/401/REGISTER/200 registration costs
through the eP-CSCF and its embedded core (4 parses at each), as captured in
``tests/fixtures/sip/registration_messages.txt``; each is parsed as a stream message, serialised,
and the views the stack reads are read (top Via, From/To tags and addresses, CSeq,
Request-URI, Contact/Path/Service-Route/P-Associated-URI lists).  Prints CPU
microseconds per registration and per message.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

from epcscf.sip.headers import cached_view, cseq, from_tag, from_view, to_tag, to_view, top_via_view
from epcscf.sip.message import Message, Request
from epcscf.sip.parser import parse_message
from epcscf.sip.uri import parse_name_addr_list, parse_uri

SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "a=msid-semantic: WMS\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=candidate:3885250869 1 udp 2122260223 192.0.2.10 54400 typ host generation 0\r\n"
    "a=candidate:1591398493 1 udp 1686052607 198.51.100.7 54400 typ srflx raddr 192.0.2.10 rport 54400\r\n"
    "a=ice-ufrag:Fk2w\r\n"
    "a=ice-pwd:pX3bW4ZcyQ8l5wQ1nG6u2a9k\r\n"
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n"
    "a=setup:actpass\r\n"
    "a=mid:0\r\n"
    "a=sendrecv\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
)

INVITE = (
    "INVITE sip:bob@ims.example.net SIP/2.0\r\n"
    "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK7623549;rport\r\n"
    "Max-Forwards: 69\r\n"
    "Route: <sip:pcscf.ims.example.net;transport=ws;lr>\r\n"
    "To: <sip:bob@ims.example.net>\r\n"
    'From: "Alice" <sip:alice@ims.example.net>;tag=5ns1rtd5fo\r\n'
    "Call-ID: 8rd8pdb2ffmr5uh1qijk\r\n"
    "CSeq: 7458 INVITE\r\n"
    "Contact: <sip:q4v9s1rq@df7jal23ls0d.invalid;transport=ws;ob>\r\n"
    "Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY\r\n"
    "Supported: path,gruu,outbound,timer,ice,replaces\r\n"
    "User-Agent: JsSIP 3.10.0\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n"
    "\r\n" + SDP
).encode()

REGISTRATION_FILE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sip" / "registration_messages.txt"
# The list headers whose elements the registrar and the eP-CSCF read as name-addrs.
_ADDRESS_LISTS = ("contact", "path", "service-route", "p-associated-uri")


def registration_messages() -> list[bytes]:
    """The first registration's 8 messages (``=====`` separated, CRLF line ends)."""
    text = REGISTRATION_FILE.read_bytes()
    messages = [chunk.lstrip(b"\r\n") for chunk in text.split(b"=====\n") if chunk.strip()]
    # The capture ends each message with its blank line and a separator newline.
    return [m if m.endswith(b"\r\n\r\n") else m.rstrip(b"\r\n") + b"\r\n\r\n" for m in messages[:8]]


# The capture's texts that differ from one registration to the next (user, UE host, tags,
# Call-ID, flow token, branches, ICID), replaced by same-length unique ones in each variant.
_PER_REGISTRATION = (
    b"alice", b"dee12855", b"ce83997d", b"5c91d5616f570b8e", b"cQ362nF-O8EMHHdzLThmN2U4MzU1LTE",
    b"24efcd9af29b", b"e5be54694028", b"85029eb2757865ab", b"6d983d70a35fa896", b"461478c09baa",
    b"48a718759859", b"2aee0a8542ab7dc6", b"f41af516a1d8",
)


def registration_variants(count: int) -> list[list[bytes]]:
    """``count`` registrations of distinct UEs, so that no per-text memo carries over from
    one registration to the next, as under real load."""
    template = registration_messages()
    variants = []
    for number in range(count):
        messages = template
        for index, original in enumerate(_PER_REGISTRATION):
            unique = f"{index:x}{number:0{len(original) - 1}x}".encode()[-len(original) :]
            messages = [m.replace(original, unique) for m in messages]
        variants.append(messages)
    return variants


def read_views(message: Message) -> None:
    """What the transaction layer, proxy, eP-CSCF and registrar read of a REGISTER exchange."""
    headers = message.headers
    top_via_view(message)
    cseq(message)
    from_tag(message)
    to_tag(message)
    if isinstance(message, Request):
        cached_view(headers, "uri", message.uri, parse_uri)
        to_view(message)
        from_view(message)
    for name in _ADDRESS_LISTS:
        for value in headers.get_all(name):
            parse_name_addr_list(value)


def _one_registration(messages: list[bytes]) -> None:
    for data in messages:
        message = parse_message(data, require_content_length=True)
        read_views(message)
        message.serialize()


def _cpu_per_call(work: Callable[[], None], seconds: float) -> float:
    """CPU seconds per call of ``work`` (time.process_time, repeated for ``seconds``)."""
    work()  # warm up
    count = 0
    start = time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(100):
            work()
        count += 100
        now = time.process_time()
        if now >= deadline:
            return (now - start) / count


def invite_variants(count: int) -> list[bytes]:
    """``INVITE`` from ``count`` different UEs and dialogs: every per-call text (branch, tags,
    Call-ID, CSeq, user, host) differs, so no parse memo can serve one message from another."""
    text = INVITE.decode()
    return [
        text.replace("z9hG4bK7623549", f"z9hG4bK{index:07d}")
        .replace("5ns1rtd5fo", f"t{index:09d}")
        .replace("8rd8pdb2ffmr5uh1qijk", f"c{index:019d}")
        .replace("7458 INVITE", f"{index + 1} INVITE")
        .replace("df7jal23ls0d", f"h{index:011d}")
        .replace("q4v9s1rq", f"u{index:07d}")
        .encode()
        for index in range(count)
    ]


def bench_invite(seconds: float) -> None:
    variants = invite_variants(2000)  # more distinct texts than any memo keeps
    cycle = iter(())

    def distinct() -> None:
        nonlocal cycle
        data = next(cycle, None)
        if data is None:
            cycle = iter(variants)
            data = next(cycle)
        parse_message(data).serialize()

    per = _cpu_per_call(distinct, seconds)
    print(f"invite ({len(INVITE)} bytes): {per * 1e6:.1f} us CPU parse+serialize, {1 / per:,.0f} messages/s")
    same = _cpu_per_call(lambda: parse_message(INVITE).serialize(), seconds)
    print(f"  the same INVITE over and over (every memo hits): {same * 1e6:.1f} us, {1 / same:,.0f} messages/s")


def bench_registration(seconds: float) -> None:
    variants = registration_variants(2000)  # more distinct texts than any memo keeps
    cycle = iter(())

    def one() -> None:
        nonlocal cycle
        messages = next(cycle, None)
        if messages is None:
            cycle = iter(variants)
            messages = next(cycle)
        _one_registration(messages)

    per = _cpu_per_call(one, seconds)
    print(f"registration (8 messages): {per * 1e6:.1f} us CPU parse+views+serialize per registration")
    same = _cpu_per_call(lambda: _one_registration(variants[0]), seconds / 2)
    print(f"  the same registration over and over (every memo hits): {same * 1e6:.1f} us")
    for index in range(8):
        start_line = variants[0][index].split(b"\r\n", 1)[0].decode()
        column = [messages[index : index + 1] for messages in variants]
        position = 0

        def single() -> None:
            nonlocal position
            _one_registration(column[position])
            position = (position + 1) % len(column)

        # Alone, a message's texts are not shared with the others of its registration: this
        # is its cost without the help of the memos (the sum exceeds the registration's).
        print(f"  message {index + 1} ({start_line[:30]}, {len(variants[0][index])} bytes):"
              f" {_cpu_per_call(single, seconds / 8) * 1e6:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=float, default=2.0)
    parser.add_argument("--case", choices=("invite", "registration", "all"), default="all")
    args = parser.parse_args()
    if args.case in ("invite", "all"):
        bench_invite(args.seconds)
    if args.case in ("registration", "all"):
        bench_registration(args.seconds)


if __name__ == "__main__":
    main()
