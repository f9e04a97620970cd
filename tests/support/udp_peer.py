"""A bare SIP peer on a UDP socket: sees exactly what arrives, answers what the test says."""

from __future__ import annotations

import asyncio

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from epcscf.sip.message import Request, Response, make_response
from epcscf.sip.parser import parse_message


class UdpSipPeer(DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue = asyncio.Queue()
        self.port = None

    def start(self) -> int:
        self.port = reactor.listenUDP(0, self, interface="127.0.0.1")
        return self.port.getHost().port

    def stop(self):
        return self.port.stopListening()

    def datagramReceived(self, data: bytes, addr) -> None:  # noqa: N802
        self.received.put_nowait((parse_message(data), addr))

    async def next_request(self, timeout: float = 5.0) -> tuple[Request, tuple[str, int]]:
        while True:
            message, addr = await asyncio.wait_for(self.received.get(), timeout)
            if isinstance(message, Request):
                return message, addr

    def reply(self, request: Request, addr: tuple[str, int], status: int = 200) -> Response:
        response = make_response(request, status, to_tag="peer1")
        self.transport.write(response.serialize(), addr)
        return response

    def send(self, message: Request | Response, addr: tuple[str, int]) -> None:
        self.transport.write(message.serialize(), addr)
