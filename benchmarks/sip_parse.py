"""Parse + serialize throughput for a typical ~1.2 KB INVITE with SDP (one core).

Run: ``.venv/bin/python benchmarks/sip_parse.py [seconds]``.  Prints messages/s.
"""

from __future__ import annotations

import sys
import time

from epcscf.sip.parser import parse_message

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


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    parse_message(INVITE).serialize()  # warm up
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            parse_message(INVITE).serialize()
        count += 1000
        now = time.perf_counter()
        if now >= deadline:
            break
    print(f"message size {len(INVITE)} bytes: {count / (now - start):,.0f} parse+serialize messages/s")


if __name__ == "__main__":
    main()
