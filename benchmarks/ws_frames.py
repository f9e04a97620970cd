"""Benchmark: process CPU per SIP message round trip through the WebSocket layer, per framing path.

Usage: ``.venv/bin/python benchmarks/ws_frames.py [--round-trips 10000]``

One process, asyncio reactor: epcscf's WebSocket listener (``listen_ws``) with a sink that
answers every REGISTER 200, and a raw TCP client in the same process that sends each REGISTER
as one masked text frame and waits for the answer.  Three modes, each in its own child
process, alternating twice: ``autobahn`` (every frame through Autobahn, sends through
Twisted's queued write: the code before the second CPU pass), ``frames`` (the frame fast path,
queued write), ``frames+send`` (the fast path and ``write_now``: the code now).  The figure is
``time.process_time()`` per round trip (client work included, the same in every mode).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

MODES = ("autobahn", "frames", "frames+send")
REGISTER = (
    "REGISTER sip:ims.localdomain SIP/2.0\r\n"
    "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK{n};rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: <sip:alice@ims.localdomain>\r\n"
    "From: <sip:alice@ims.localdomain>;tag=abc123\r\n"
    "Call-ID: bench-call-id-0001\r\n"
    "CSeq: {n} REGISTER\r\n"
    "Contact: <sip:df7jal23ls0d.invalid;transport=ws>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000000000001>\";reg-id=1;expires=600\r\n"
    "Supported: path, outbound, gruu\r\n"
    "User-Agent: bench\r\n"
    "Content-Length: 0\r\n\r\n"
)


def run_one(mode: str, round_trips: int) -> None:
    import base64

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer, endpoints, protocol, reactor

    from epcscf.sip.message import make_response
    from epcscf.ws import autobahn_shim
    from epcscf.ws.frames import unmask
    from epcscf.ws.protocol import WsListenerSettings, listen_ws

    if mode == "autobahn":
        autobahn_shim.LeanAutobahnProtocol.dataReceived = lambda self, data: self._dataReceived(data)  # type: ignore[method-assign]
        autobahn_shim.LeanAutobahnProtocol.send_data_frame = (  # type: ignore[method-assign]
            lambda self, payload, binary: self.sendMessage(payload, isBinary=binary)
        )
    elif mode == "frames":
        autobahn_shim.write_now = lambda transport, data: transport.write(data)  # type: ignore[assignment]

    class Sink:
        def connection_opened(self, connection: object) -> None: ...
        def connection_closed(self, connection: object, reason: object) -> None: ...
        def message_received(self, message: object, connection: object) -> None:
            connection.send_message(make_response(message, 200, to_tag="srv"))  # type: ignore[attr-defined]

    mask = b"\x11\x22\x33\x44"

    def frame(n: int) -> bytes:
        payload = REGISTER.format(n=n).encode()
        return bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big") + mask + unmask(payload, mask)

    class Client(protocol.Protocol):
        count = 0
        opened = False
        buffer = b""
        started = 0.0

        def connectionMade(self) -> None:  # noqa: N802
            key = base64.b64encode(os.urandom(16)).decode()
            self.transport.write(
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n".encode()
            )

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            if not self.opened:
                self.buffer += data
                if b"\r\n\r\n" in self.buffer:
                    self.opened = True
                    self.started = time.process_time()
                    self.transport.write(frame(0))
                return
            self.count += 1  # one reply frame per read on loopback (checked below)
            assert data[:1] == b"\x81" and b"SIP/2.0 200" in data, data[:40]
            if self.count >= round_trips:
                cpu = time.process_time() - self.started
                print(f"  {mode:12s} {cpu / round_trips * 1e6:6.1f} us CPU per round trip ({round_trips})")
                reactor.stop()
                return
            self.transport.write(frame(self.count))

    async def start() -> None:
        settings = WsListenerSettings(allow_missing_origin=True, ping_interval=0)
        port = await listen_ws(reactor, "tcp:0:interface=127.0.0.1", settings, Sink())  # type: ignore[arg-type]
        client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoints.connectProtocol(client, Client())

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=10000)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.child, args.round_trips)
        return
    with open("/proc/loadavg") as f:
        print(f"SIP over WebSocket, REGISTER → 200 round trips in one process; loadavg {f.read().split()[:3]}")
    for mode in MODES + MODES:
        subprocess.run([sys.executable, __file__, "--child", mode, "--round-trips", str(args.round_trips)], check=True)


if __name__ == "__main__":
    main()
