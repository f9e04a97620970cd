"""The seam with epcscf.ice: a MediaSession whose WIC side is a real IceAgent, the WIC an aioice
agent carrying a pyOpenSSL DTLS client + pylibsrtp (needs trial --reactor=asyncio).

The media package does not depend on epcscf.ice for its own tests (tests/test_media_session.py
uses a plain UDP socket); this one proves the two fit as `epcscf.pcscf` will wire them:
`MediaSession(..., wic=agent)` and `agent.datagram_received = session.datagram_received`.
"""

from __future__ import annotations

import asyncio
import functools
import os

import aioice.ice
from aioice import Candidate
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from epcscf.ice import IceAgent, IceAgentConfig
from epcscf.ice.agent import as_deferred
from epcscf.media import MediaSession, MediaSessionConfig
from tests.support.processes import wait_for
from tests.support.reactor import asyncio_loop
from tests.test_media_session import SERVER_CERT, WIC_CERT, CoreEndpoint, WicSimulator, rtcp_rr, rtp

# Real ICE and DTLS: poll for the visible effect, fail after 5 s.
until = functools.partial(wait_for, timeout=5.0, interval=0.01)

LOCAL = "127.0.0.1"


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


class AioiceWrite:
    """Lets WicSimulator (a Twisted DatagramProtocol) write through the WIC's aioice agent."""

    def __init__(self, connection: aioice.ice.Connection) -> None:
        self.connection = connection

    def write(self, data: bytes, addr: object = None) -> None:
        asyncio.ensure_future(self.connection.send(data))


class MediaOverIceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.loop = asyncio_loop()
        # aioice never offers loopback (stack.md §4).
        self.patch(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
        self.sockets_before = open_sockets()

    async def test_dtls_srtp_and_relay_over_a_real_ice_pair(self) -> None:
        agent = IceAgent(IceAgentConfig(bind_addresses=(LOCAL,), mode="full"), controlling=False, clock=global_reactor)
        wic = aioice.ice.Connection(ice_controlling=True, use_ipv6=False)
        session = MediaSession(global_reactor, global_reactor, MediaSessionConfig(), SERVER_CERT, agent)
        agent.datagram_received = session.datagram_received
        core = CoreEndpoint()
        core_port = global_reactor.listenUDP(0, core, interface=LOCAL)
        pump: asyncio.Task[None] | None = None
        try:
            session.set_core_remote(LOCAL, core_port.getHost().port)
            await as_deferred(wic.gather_candidates())
            await agent.gather()
            agent.set_remote(
                wic.local_username, wic.local_password, [c.to_sdp() for c in wic.local_candidates],
                end_of_candidates=True, remote_is_lite=False,
            )
            wic.remote_username = agent.local_credentials.ufrag
            wic.remote_password = agent.local_credentials.pwd
            for line in agent.local_candidates():
                await as_deferred(wic.add_remote_candidate(Candidate.from_sdp(line)))
            await as_deferred(wic.add_remote_candidate(None))
            started = agent.start()
            await as_deferred(wic.connect())
            await started

            # The WIC answered a=setup:active, we passive (A6): the WIC is the DTLS client.
            simulator = WicSimulator(WIC_CERT, SERVER_CERT.fingerprint.value, "client")
            simulator.transport = AioiceWrite(wic)  # type: ignore[assignment]
            simulator.peer = ("wic-ice-pair", 0)  # unused: aioice sends on the selected pair

            async def deliver() -> None:
                while True:
                    data = await wic.recv()
                    simulator.datagramReceived(data, ("", 0))

            pump = asyncio.ensure_future(deliver())
            up: list[bool] = []
            session.on_connected = lambda: up.append(True)
            session.start_dtls("server", WIC_CERT.fingerprint)
            simulator.start()
            profile = await simulator.connected
            await until(lambda: bool(up))
            self.assertEqual(profile, "SRTP_AES128_CM_SHA1_80")

            simulator.send_rtp(rtp(1))
            simulator.send_rtcp(rtcp_rr(1))
            await until(lambda: rtp(1) in core.packets)
            core.send(rtp(9, ssrc=3), (LOCAL, session.core_rtp_port))
            await until(lambda: simulator.rtp_received == [rtp(9, ssrc=3)])
            stats = session.stats()
            self.assertEqual((stats.wic_to_core.packets, stats.core_to_wic.packets), (1, 1))
        finally:
            if pump is not None:
                pump.cancel()
                try:
                    await Deferred.fromFuture(pump)
                except (asyncio.CancelledError, Exception):
                    pass
            await session.close()
            await agent.close()
            await as_deferred(wic.close())
            await core_port.stopListening()
            await deferLater(global_reactor, 0, lambda: None)
        current = asyncio.current_task(self.loop)
        self.assertEqual([t for t in asyncio.all_tasks(self.loop) if t is not current and not t.done()], [])
        self.assertEqual(open_sockets(), self.sockets_before)
