"""The full agent's host socket toward the WIC: aioice's `StunProtocol` with our demultiplexing,
parking between calls and one-pass STUN encoding.

- data: first byte 0..3 is STUN, anything else goes straight to the generation (RFC 7983 §7);
- an agent that is closing gets no more STUN: a check or response that arrives then (the WIC's
  checks in flight when the BYE came) is dropped before it is parsed.  aioice would parse it,
  then drop it (`Connection.request_received` ignores requests once closing, and the check
  transactions a response could end are being cancelled);
- signed messages are encoded once (`stun_wire.sign`): `request` signs a check, and
  `send_stun` sends the bytes already made for a signed message, for each retransmission;
  what arrives is parsed by `stun_wire.parse` (aioice's parse, cheaper for our checks' answers);
- closing parks the bound socket on the shelf instead of closing it (`epcscf.ice.shelf`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aioice.ice
from aioice import stun

from epcscf.ice.sockets import is_stun
from epcscf.ice.stun_wire import encode, parse, sign

if TYPE_CHECKING:
    from epcscf.ice.full import _AgentConnection

_aioice_log = aioice.ice.logger

# The shelf key of our host sockets toward the WIC, with the bind address.
SHELF_KIND = "ice-host"


class _ParkedHostSocket(asyncio.DatagramProtocol):
    """An ICE host socket between calls: still bound and read, everything it gets dropped
    (the tail of the call that closed it)."""

    def __init__(self, transport: asyncio.DatagramTransport, port: int) -> None:
        self.transport = transport
        self.port = port

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        pass

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for a datagram of the old call

    def close(self) -> None:
        self.transport.close()


class _StunSocket(aioice.ice.StunProtocol):
    """aioice's socket protocol, demultiplexing data by first byte (RFC 7983) and counting checks."""

    receiver: _AgentConnection

    def __init__(self, receiver: _AgentConnection, bind_address: str) -> None:
        super().__init__(receiver)
        self.pool_port: int | None = None
        self.bind_address = bind_address
        self.parked = False
        # The bytes of the signed requests of transactions in flight, by transaction id.
        self._signed: dict[bytes, bytes] = {}

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        data = bytes(data) if not isinstance(data, bytes) else data
        generation = self.receiver._generation()  # the property's weak reference, read once
        if not is_stun(data):
            generation.received_data(self, data, (addr[0], addr[1]))
            return
        if generation.closing:
            if data[:2] == b"\x00\x01":  # a Binding request: counted as aioice's path counted it
                generation.stats.checks_received += 1
            return
        # aioice's `StunProtocol.datagram_received`, with `stun_wire.parse`.
        addr = (addr[0], addr[1])
        try:
            message = parse(data)
        except ValueError:
            self.receiver.data_received(data, self.local_candidate.component)
            return
        if _aioice_log.isEnabledFor(logging.DEBUG):
            _aioice_log.debug("%s %s < %s %s", self.receiver, self, addr, message)  # as aioice logs it
        kind = message.message_class
        if kind is stun.Class.REQUEST:
            self.receiver.request_received(message, addr, self)
        elif kind is not stun.Class.INDICATION:
            transaction = self.transactions.get(message.transaction_id)
            if transaction is not None:
                transaction.response_received(message, addr)

    def send_stun(self, message: stun.Message, addr: tuple[str, int], wire: bytes | None = None) -> None:
        """Send `message`; `wire` is its bytes when the caller has them (`stun_wire.sign`)."""
        if message.message_class == stun.Class.REQUEST:
            self.receiver._generation().stats.checks_sent += 1
        if wire is None:
            wire = self._signed.get(message.transaction_id) or encode(message)
        self.transport.sendto(wire, addr)

    async def request(
        self,
        request: stun.Message,
        addr: tuple[str, int],
        integrity_key: bytes | None = None,
        retransmissions: int | None = None,
    ) -> tuple[stun.Message, tuple[str, int]]:
        """aioice's `StunProtocol.request`, with the request signed and encoded once for every
        retransmission."""
        tid = request.transaction_id
        assert tid not in self.transactions
        if integrity_key is not None:
            self._signed[tid] = sign(request, integrity_key)
        transaction = stun.Transaction(request, addr, self, retransmissions=retransmissions, integrity_key=integrity_key)
        self.transactions[tid] = transaction
        try:
            return await transaction.run()
        finally:
            del self.transactions[tid]
            self._signed.pop(tid, None)

    async def close(self) -> None:
        shelf = self.receiver.generation.shelf
        port = self.pool_port
        if shelf is not None and port is not None and not self.transport.is_closing():
            parked = _ParkedHostSocket(self.transport, port)
            if shelf.park((SHELF_KIND, self.bind_address), parked):
                self.transport.set_protocol(parked)
                self.parked = True
                # What the loop would call after a real close: aioice's bookkeeping of a lost socket.
                self.connection_lost(None)
                return
        await super().close()
