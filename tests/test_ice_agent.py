"""IceAgent against a real aioice agent playing the WIC, on 127.0.0.1 (needs --reactor=asyncio)."""

from __future__ import annotations

import asyncio
import functools
import os
import random

import aioice.ice
from aioice import Candidate, stun
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from epcscf.ice import (
    IceAgent,
    IceAgentConfig,
    IceCandidateError,
    IceClosed,
    IceFailed,
    IceState,
    IceStateError,
    UdpPortPool,
)
from epcscf.ice.agent import as_deferred, eager_deferred
from epcscf.ice.sockets import HostCandidate, host_candidate
from tests.support.processes import wait_for
from tests.support.reactor import asyncio_loop

# Real network work is asynchronous: poll for its visible effect (bounded).
until = functools.partial(wait_for, timeout=3.0, interval=0.01)

RTP = b"\x80\x00\x00\x01payload"
DTLS = b"\x16\xfe\xfdhello"


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


class IceTestCase(unittest.TestCase):
    """Skips without the asyncio reactor; checks that no asyncio task or socket leaks."""

    def setUp(self) -> None:
        self.loop = asyncio_loop()
        # aioice never offers loopback addresses as host candidates; here it must.
        self.patch(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
        self.sockets_before = open_sockets()
        self.agents: list[IceAgent] = []
        self.wics: list[aioice.ice.Connection] = []

    async def cleanup(self) -> None:
        for agent in self.agents:
            await agent.close()
        for wic in self.wics:
            await as_deferred(wic.close())
        # Let transports finish closing (asyncio closes sockets on the next loop turn).
        await deferLater(global_reactor, 0, lambda: None)

    def tearDown(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self.cleanup())

        def check(_: object) -> None:
            current = asyncio.current_task(self.loop)
            leaked = [t for t in asyncio.all_tasks(self.loop) if t is not current]
            self.assertEqual(leaked, [], "asyncio tasks left running")
            self.assertEqual(open_sockets(), self.sockets_before, "sockets left open")

        return d.addCallback(check)

    # --- helpers ---

    def agent(self, mode: str = "full", controlling: bool = False, clock: object = None, pool: UdpPortPool | None = None, **config: object) -> IceAgent:
        settings: dict[str, object] = {"bind_addresses": ("127.0.0.1",), "mode": mode}
        if pool is not None:
            settings["port_range"] = (pool.low, pool.high)
        settings.update(config)
        agent = IceAgent(IceAgentConfig(**settings), controlling=controlling, clock=clock or global_reactor, pool=pool)  # type: ignore[arg-type]
        agent.received = []  # type: ignore[attr-defined]
        agent.datagram_received = agent.received.append  # type: ignore[attr-defined]
        agent.states = []  # type: ignore[attr-defined]
        agent.on_state_change = agent.states.append  # type: ignore[attr-defined]
        agent.consent_lost = []  # type: ignore[attr-defined]
        agent.on_consent_lost = agent.consent_lost.append  # type: ignore[attr-defined]
        self.agents.append(agent)
        return agent

    async def wic(self, controlling: bool) -> aioice.ice.Connection:
        wic = aioice.ice.Connection(ice_controlling=controlling, use_ipv6=False)
        self.wics.append(wic)
        await as_deferred(wic.gather_candidates())
        return wic

    async def exchange(self, agent: IceAgent, wic: aioice.ice.Connection, *, wic_knows_us: bool = True,
                       agent_candidates: bool = True, pwd: str | None = None) -> None:
        """Offer/answer: each side learns the other's credentials and candidates."""
        agent.set_remote(
            wic.local_username,
            wic.local_password,
            [c.to_sdp() for c in wic.local_candidates] if agent_candidates else [],
            end_of_candidates=agent_candidates,
            remote_is_lite=False,
        )
        wic.remote_username = agent.local_credentials.ufrag
        wic.remote_password = pwd or agent.local_credentials.pwd
        wic.remote_is_lite = agent.config.mode == "lite"
        if wic_knows_us:
            for line in agent.local_candidates():
                await as_deferred(wic.add_remote_candidate(Candidate.from_sdp(line)))
            await as_deferred(wic.add_remote_candidate(None))

    async def connect(self, agent: IceAgent, wic: aioice.ice.Connection) -> None:
        await agent.gather()
        await self.exchange(agent, wic)
        await Deferred.fromCoroutine(self._both(agent.start(), as_deferred(wic.connect())))

    async def _both(self, a: Deferred[object], b: Deferred[object]) -> None:
        await a
        await b

    async def assert_data_both_ways(self, agent: IceAgent, wic: aioice.ice.Connection) -> None:
        self.assertTrue(agent.send(RTP))
        self.assertEqual(await as_deferred(wic.recv()), RTP)
        await as_deferred(wic.send(DTLS))
        await until(lambda: DTLS in agent.received)  # type: ignore[attr-defined]

    async def assert_wrong_password_rejected(self, agent: IceAgent) -> None:
        """A WIC using a wrong ice-pwd never gets a pair selected (RFC 8489 §9.1.3: 401 to its checks)."""
        wic = await self.wic(controlling=True)
        await agent.gather()
        await self.exchange(agent, wic, pwd="w" * 22)
        started = agent.start()
        wic_connect = as_deferred(wic.connect())
        await until(lambda: agent.stats.checks_rejected >= 2)
        self.assertIsNone(agent.selected_pair)
        self.assertEqual(agent.state, IceState.CHECKING)
        await as_deferred(wic.close())
        with self.assertRaises(ConnectionError):
            await wic_connect
        await agent.close()
        with self.assertRaises(IceClosed):
            await started


class FullIceTests(IceTestCase):
    async def test_wic_offers_agent_controlled_connects_and_carries_data(self) -> None:
        agent = self.agent(controlling=False)
        wic = await self.wic(controlling=True)
        await self.connect(agent, wic)
        self.assertEqual(agent.state, IceState.CONNECTED)
        self.assertEqual(agent.states, [IceState.GATHERED, IceState.CHECKING, IceState.CONNECTED])  # type: ignore[attr-defined]
        local, remote = agent.selected_pair  # type: ignore[misc]
        self.assertEqual(remote, (wic.local_candidates[0].host, wic.local_candidates[0].port))
        self.assertEqual(local, agent.default_address)
        await self.assert_data_both_ways(agent, wic)
        self.assertGreater(agent.stats.checks_received, 0)

    async def test_agent_offers_controlling_uses_regular_nomination(self) -> None:
        agent = self.agent(controlling=True)
        wic = await self.wic(controlling=False)
        seen: list[bool] = []
        original = wic.request_received

        def spy(message: stun.Message, addr: tuple[str, int], protocol: aioice.ice.StunProtocol) -> None:
            seen.append("USE-CANDIDATE" in message.attributes)
            original(message, addr, protocol)

        wic.request_received = spy  # type: ignore[method-assign]
        await self.connect(agent, wic)
        await self.assert_data_both_ways(agent, wic)
        # RFC 8445 §8.1.1: regular nomination: a plain check first, USE-CANDIDATE only on a later one.
        self.assertFalse(seen[0])
        self.assertIn(True, seen)
        self.assertGreater(agent.stats.checks_sent, 1)

    async def test_port_range_is_honoured_and_close_frees_ports(self) -> None:
        low = random.randrange(40000, 60000, 100)
        pool = UdpPortPool(low, low + 9)
        agent = self.agent(pool=pool)
        wic = await self.wic(controlling=True)
        await self.connect(agent, wic)
        port = agent.default_address[1]  # type: ignore[index]
        self.assertTrue(low <= port <= low + 9)
        self.assertEqual(pool.used_count, 1)
        await agent.close()
        await agent.close()  # idempotent
        self.assertEqual(agent.state, IceState.CLOSED)
        self.assertEqual(pool.used_count, 0)
        self.assertFalse(agent.send(RTP))

    async def test_advertised_address_is_written_into_candidates(self) -> None:
        agent = self.agent(advertised_address="192.0.2.10")
        await agent.gather()
        [line] = agent.local_candidates()
        self.assertEqual(line.split()[4], "192.0.2.10")
        self.assertEqual(line.split()[1], "1")  # component 1 only (rtcp-mux)
        self.assertEqual(agent.default_address[0], "192.0.2.10")  # type: ignore[index]

    async def test_gathering_does_not_enumerate_the_host_interfaces(self) -> None:
        # Only the configured addresses are bound: walking every interface (aioice's
        # get_host_addresses, ifaddr) per call is work thrown away before the INVITE is forwarded.
        walked: list[object] = []
        self.patch(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: walked.append(1) or ["127.0.0.1"])
        agent = self.agent()
        await agent.gather()
        self.assertEqual(len(agent.local_candidates()), 1)
        self.assertEqual(walked, [])

    async def test_wrong_password_is_rejected(self) -> None:
        await self.assert_wrong_password_rejected(self.agent(controlling=False, clock=Clock()))

    async def test_connect_timeout_fails_the_agent(self) -> None:
        clock = Clock()
        agent = self.agent(controlling=True, clock=clock, connect_timeout=10.0)
        silent = await self.wic(controlling=False)  # bound, never told our credentials: never answers
        await agent.gather()
        agent.set_remote("silentwic", "s" * 22, [c.to_sdp() for c in silent.local_candidates])
        started = agent.start()
        clock.advance(9.9)
        self.assertEqual(agent.state, IceState.CHECKING)
        clock.advance(0.1)
        self.assertEqual(agent.state, IceState.FAILED)
        with self.assertRaises(IceFailed) as raised:
            await started
        self.assertIn("10 s", str(raised.exception))
        self.assertEqual(agent.states[-1], IceState.FAILED)  # type: ignore[attr-defined]

    async def test_consent_lost_when_the_wic_goes_silent(self) -> None:
        clock = Clock()
        agent = self.agent(controlling=False, clock=clock)
        wic = await self.wic(controlling=True)
        await self.connect(agent, wic)
        # Consent checks every 5 s ±20 % are answered by the live WIC.
        for _ in range(3):
            sent = agent.stats.consent_checks_sent
            clock.advance(6.0)
            self.assertEqual(agent.stats.consent_checks_sent, sent + 1)
            await until(lambda: agent.stats.consent_responses == sent + 1)
        last = clock.seconds()
        await as_deferred(wic.close())
        clock.pump([1.0] * 29)
        self.assertEqual(agent.consent_lost, [])  # type: ignore[attr-defined]
        self.assertEqual(agent.state, IceState.CONNECTED)
        clock.advance(1.0)
        self.assertEqual(clock.seconds(), last + 30)
        self.assertEqual(len(agent.consent_lost), 1)  # type: ignore[attr-defined]
        self.assertEqual(agent.state, IceState.FAILED)
        self.assertEqual(agent.stats.consent_failures, 1)
        # RFC 7675 §5.1: stop sending on that 5-tuple.
        self.assertFalse(agent.send(RTP))
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_stun_403_revokes_consent_at_once(self) -> None:
        clock = Clock()
        agent = self.agent(controlling=True, clock=clock)
        wic = await self.wic(controlling=False)
        await self.connect(agent, wic)

        def forbid(message: stun.Message, addr: tuple[str, int], protocol: aioice.ice.StunProtocol) -> None:
            wic.respond_error(message, addr, protocol, (403, "Forbidden"))

        wic.request_received = forbid  # type: ignore[method-assign]
        clock.advance(6.0)
        await until(lambda: agent.state is IceState.FAILED)
        self.assertEqual(clock.seconds(), 6.0)
        self.assertIn("403", agent.consent_lost[0])  # type: ignore[attr-defined]

    async def test_trickled_candidate_added_late(self) -> None:
        agent = self.agent(controlling=True)
        wic = await self.wic(controlling=False)
        await agent.gather()
        # The WIC does not know our candidates, so only our checks can connect: on the trickled one.
        await self.exchange(agent, wic, wic_knows_us=False, agent_candidates=False)
        started = agent.start()
        wic_connected = as_deferred(wic.connect())
        await deferLater(global_reactor, 0.1, lambda: None)
        self.assertEqual(agent.state, IceState.CHECKING)
        agent.add_remote_candidate("a=candidate:" + wic.local_candidates[0].to_sdp())
        agent.add_remote_candidate(None)
        await started
        await wic_connected
        await self.assert_data_both_ways(agent, wic)

    async def test_ice_restart_keeps_old_pair_until_new_one_is_selected(self) -> None:
        low = random.randrange(40000, 60000, 100)
        pool = UdpPortPool(low, low + 9)
        agent = self.agent(controlling=False, pool=pool)
        old_wic = await self.wic(controlling=True)
        await self.connect(agent, old_wic)
        old_credentials, old_pair = agent.local_credentials, agent.selected_pair

        await agent.restart()
        self.assertNotEqual(agent.local_credentials, old_credentials)
        self.assertEqual(pool.used_count, 2)
        # RFC 8445 §9: media keeps flowing on the old pair during the restart.
        self.assertEqual(agent.selected_pair, old_pair)
        self.assertTrue(agent.send(RTP))
        self.assertEqual(await as_deferred(old_wic.recv()), RTP)

        new_wic = await self.wic(controlling=True)
        await self.exchange(agent, new_wic)
        await Deferred.fromCoroutine(self._both(agent.start(), as_deferred(new_wic.connect())))
        self.assertNotEqual(agent.selected_pair, old_pair)
        self.assertEqual(agent.state, IceState.CONNECTED)
        await self.assert_data_both_ways(agent, new_wic)
        await until(lambda: pool.used_count == 1)
        self.assertEqual(agent.stats.restarts, 1)

    async def test_malformed_remote_input_is_a_clear_error(self) -> None:
        agent = self.agent()
        await agent.gather()
        with self.assertRaises(IceCandidateError) as raised:
            agent.set_remote("abcd", "p" * 22, ["not a candidate"])
        self.assertIn("malformed ICE candidate", str(raised.exception))
        self.assertRaises(IceCandidateError, agent.set_remote, "a", "p" * 22)
        self.assertRaises(IceCandidateError, agent.set_remote, "abcd", "short")

    async def test_candidates_that_are_no_ip_address_are_ignored(self) -> None:
        # Found by benchmarks/fuzz.py: a name (RFC 8839 §5.1 allows an FQDN) or a mangled
        # address reached aioice's pairing, whose ipaddress.ip_address() raised ValueError.
        agent = self.agent()
        await agent.gather()
        agent.set_remote("abcd", "p" * 22, ["1 1 udp 2122260223 wic.example.com 54400 typ host",
                                            "2 1 udp 2122260223 127.0.0\x00.1 54401 typ host"])
        agent.add_remote_candidate("candidate:3 1 udp 2122260223 127.0.0.1x 54402 typ host")
        generation = agent._backend._current  # type: ignore[union-attr]
        self.assertEqual(generation.connection.remote_candidates, [])

    async def test_max_pairs_bounds_the_check_list(self) -> None:
        agent = self.agent(controlling=True, max_pairs=2)
        await agent.gather()
        agent.set_remote("abcd", "p" * 22, [f"{n} 1 udp 2130706431 127.0.0.1 {9000 + n} typ host" for n in range(5)])
        generation = agent._backend._current  # type: ignore[union-attr]
        await until(lambda: len(generation.connection.remote_candidates) == 2)
        await deferLater(global_reactor, 0.05, lambda: None)
        self.assertEqual(len(generation.connection.remote_candidates), 2)


    async def test_role_conflict_is_repaired(self) -> None:
        # Both sides think they are controlling; RFC 8445 §7.3.1.1 tie-breaking settles it.
        agent = self.agent(controlling=True)
        wic = await self.wic(controlling=True)
        await self.connect(agent, wic)
        self.assertNotEqual(agent.controlling, wic.ice_controlling)
        await self.assert_data_both_ways(agent, wic)

    async def test_changed_remote_credentials_need_a_restart(self) -> None:
        agent = self.agent()
        await agent.gather()
        agent.set_remote("abcd", "p" * 22, [], end_of_candidates=False)
        agent.set_remote("abcd", "p" * 22, [])  # same credentials again: fine
        with self.assertRaises(IceStateError) as raised:
            agent.set_remote("efgh", "q" * 22, [])
        self.assertIn("restart()", str(raised.exception))

    async def test_full_agent_against_our_lite_agent(self) -> None:
        # The full agent answers a lite peer's offer: it must take the controlling role (RFC 8445 §6.1.1).
        full = self.agent(mode="full", controlling=False)
        lite = self.agent(mode="lite")
        await full.gather()
        await lite.gather()
        full.set_remote(lite.local_credentials.ufrag, lite.local_credentials.pwd, lite.local_candidates(), remote_is_lite=True)
        lite.set_remote(full.local_credentials.ufrag, full.local_credentials.pwd, full.local_candidates())
        self.assertTrue(full.controlling)
        await Deferred.fromCoroutine(self._both(full.start(), lite.start()))
        self.assertEqual(full.selected_pair, tuple(reversed(lite.selected_pair)))  # type: ignore[arg-type]
        self.assertTrue(full.send(RTP))
        await until(lambda: RTP in lite.received)  # type: ignore[attr-defined]
        self.assertTrue(lite.send(DTLS))
        await until(lambda: DTLS in full.received)  # type: ignore[attr-defined]


class LiteIceTests(IceTestCase):
    async def test_lite_agent_is_nominated_by_the_full_wic_and_carries_data(self) -> None:
        agent = self.agent(mode="lite", controlling=True)  # lite ignores the role: always controlled
        self.assertFalse(agent.controlling)
        wic = await self.wic(controlling=True)
        await self.connect(agent, wic)
        self.assertEqual(agent.state, IceState.CONNECTED)
        await self.assert_data_both_ways(agent, wic)
        # A lite agent sends no checks (RFC 8445 §2.5).
        self.assertEqual((agent.stats.checks_sent, agent.stats.consent_checks_sent), (0, 0))
        self.assertGreater(agent.stats.checks_received, 0)

    async def test_lite_nominated_before_start_still_reports_the_pair(self) -> None:
        agent = self.agent(mode="lite")
        wic = await self.wic(controlling=True)
        await agent.gather()
        await self.exchange(agent, wic)
        await as_deferred(wic.connect())
        self.assertEqual(agent.state, IceState.CONNECTED)
        pair = await agent.start()
        self.assertEqual(pair.remote, (wic.local_candidates[0].host, wic.local_candidates[0].port))

    async def test_lite_wrong_password_is_rejected(self) -> None:
        await self.assert_wrong_password_rejected(self.agent(mode="lite", clock=Clock()))

    async def test_lite_port_range_and_close_frees_ports(self) -> None:
        low = random.randrange(40000, 60000, 100)
        pool = UdpPortPool(low, low + 4)
        agent = self.agent(mode="lite", pool=pool)
        await agent.gather()
        self.assertTrue(low <= agent.default_address[1] <= low + 4)  # type: ignore[index]
        self.assertEqual(pool.used_count, 1)
        await agent.close()
        self.assertEqual(pool.used_count, 0)

    async def test_lite_consent_lost_without_checks_for_30_s(self) -> None:
        clock = Clock()
        agent = self.agent(mode="lite", clock=clock)
        wic = await self.wic(controlling=True)
        await self.connect(agent, wic)
        clock.advance(20)
        # The WIC's consent check (RFC 7675) on the selected pair refreshes consent.
        pair = wic._nominated[1]
        request = wic.build_request(pair, nominate=False)
        await as_deferred(pair.protocol.request(request, pair.remote_addr, integrity_key=wic.remote_password.encode(), retransmissions=0))
        clock.advance(29.9)
        self.assertEqual(agent.state, IceState.CONNECTED)
        clock.advance(0.1)
        self.assertEqual(agent.state, IceState.FAILED)
        self.assertIn("30 s", agent.consent_lost[0])  # type: ignore[attr-defined]
        self.assertFalse(agent.send(RTP))

    async def test_lite_connect_timeout(self) -> None:
        clock = Clock()
        agent = self.agent(mode="lite", clock=clock, connect_timeout=10.0)
        await agent.gather()
        started = agent.start()
        clock.advance(10)
        with self.assertRaises(IceFailed):
            await started
        self.assertEqual(agent.state, IceState.FAILED)

    async def test_lite_ice_restart(self) -> None:
        agent = self.agent(mode="lite")
        old_wic = await self.wic(controlling=True)
        await self.connect(agent, old_wic)
        old_credentials, old_pair = agent.local_credentials, agent.selected_pair
        new_wic = await self.wic(controlling=True)
        # The WIC's re-offer carries its new ufrag/pwd: restart with them in one call.
        await agent.restart(new_wic.local_username, new_wic.local_password, [c.to_sdp() for c in new_wic.local_candidates])
        self.assertEqual(agent.remote_credentials.ufrag, new_wic.local_username)  # type: ignore[union-attr]
        self.assertNotEqual(agent.local_credentials.ufrag, old_credentials.ufrag)
        self.assertEqual(agent.selected_pair, old_pair)
        self.assertTrue(agent.send(RTP))
        self.assertEqual(await as_deferred(old_wic.recv()), RTP)
        new_wic.remote_username, new_wic.remote_password = agent.local_credentials.ufrag, agent.local_credentials.pwd
        new_wic.remote_is_lite = True
        for line in agent.local_candidates():
            await as_deferred(new_wic.add_remote_candidate(Candidate.from_sdp(line)))
        await as_deferred(new_wic.add_remote_candidate(None))
        await Deferred.fromCoroutine(self._both(agent.start(), as_deferred(new_wic.connect())))
        self.assertNotEqual(agent.selected_pair, old_pair)
        await self.assert_data_both_ways(agent, new_wic)
        self.assertEqual(agent.stats.pair_changes, 1)

    async def test_lite_against_lite_peer_is_refused(self) -> None:
        agent = self.agent(mode="lite")
        await agent.gather()
        with self.assertRaises(Exception) as raised:
            agent.set_remote("abcd", "p" * 22, [], remote_is_lite=True)
        self.assertIn("ice_mode = full", str(raised.exception))


class CloseTests(IceTestCase):
    async def test_close_during_gather_leaves_nothing_behind(self) -> None:
        for mode in ("full", "lite"):
            low = random.randrange(40000, 60000, 100)
            pool = UdpPortPool(low, low + 4)
            agent = self.agent(mode=mode, pool=pool)
            gathering = agent.gather()
            await agent.close()
            with self.assertRaises(IceClosed):
                await gathering
            self.assertEqual(pool.used_count, 0, mode)
            self.assertEqual(agent.state, IceState.CLOSED)

    async def test_ports_exhausted_fails_gather(self) -> None:
        from epcscf.ice import PortsExhausted

        low = random.randrange(40000, 60000, 100)
        pool = UdpPortPool(low, low)
        first = self.agent(mode="lite", pool=pool)
        await first.gather()
        second = self.agent(mode="lite", pool=pool)
        with self.assertRaises(PortsExhausted):
            await second.gather()
        self.assertEqual(second.state, IceState.FAILED)


class RemoteCandidateScopeTests(unittest.TestCase):
    """Candidates we could never reach are not paired (no checks toward them)."""

    def test_routable_candidates_are_ignored_by_a_loopback_agent(self) -> None:
        from epcscf.ice.agent import _scope, _usable, parse_candidate

        loopback = frozenset({_scope("127.0.0.1")})
        public = parse_candidate("candidate:1 1 udp 2122260223 192.0.2.20 54400 typ host")
        local = parse_candidate("candidate:2 1 udp 2122260223 127.0.0.1 54400 typ host")
        six = parse_candidate("candidate:3 1 udp 2122260223 ::1 54400 typ host")
        self.assertIn("not reachable", _usable(public, loopback))
        self.assertIsNone(_usable(local, loopback))
        self.assertIn("not reachable", _usable(six, loopback))
        self.assertIsNone(_usable(public, frozenset({_scope("198.51.100.1")})))


class HostCandidatePairingTests(unittest.SynchronousTestCase):
    """Our host candidate pairs exactly as aioice's own `Candidate` would (RFC 8445 §6.1.2.2)."""

    def test_pairs_like_aioice(self) -> None:
        ours = [host_candidate(("127.0.0.1", 40000), None, 0), host_candidate(("::1", 40002), None, 0),
                host_candidate(("10.0.0.1", 40004), "192.0.2.7", 1)]
        for candidate in ours:
            self.assertIsInstance(candidate, HostCandidate)
        theirs = [
            Candidate.from_sdp("1 1 udp 2122260223 192.0.2.10 50000 typ host"),
            Candidate.from_sdp("1 2 udp 2122260222 192.0.2.10 50001 typ host"),
            Candidate.from_sdp("1 1 UDP 2122260223 192.0.2.11 50002 typ host"),
            Candidate.from_sdp("1 1 tcp 1518280447 192.0.2.10 9 typ host tcptype active"),
            Candidate.from_sdp("1 1 udp 2122262783 2001:db8::5 50004 typ host"),
        ]
        answers = []
        for local in ours:
            plain = Candidate(local.foundation, local.component, local.transport, local.priority,
                              local.host, local.port, local.type)
            for remote in theirs:
                expected = plain.can_pair_with(remote)
                self.assertEqual(local.can_pair_with(remote), expected, (local, remote))
                answers.append(expected)
        self.assertIn(True, answers)
        self.assertIn(False, answers)
        # The foundation is aioice's (RFC 8445 §5.1.1.3), worked out once per address.
        self.assertEqual(ours[0].foundation, host_candidate(("127.0.0.1", 40010), None, 0).foundation)
        self.assertNotEqual(ours[0].foundation, ours[2].foundation)
        name = Candidate.from_sdp("1 1 udp 2122260223 peer.invalid 50000 typ host")
        with self.assertRaises(ValueError):  # as aioice: a name is not an address
            ours[0].can_pair_with(name)


class RemoteCredentialsGrammarTests(unittest.SynchronousTestCase):
    """RFC 8839 §5.4: ice-ufrag is 4 to 256 ice-chars, ice-pwd 22 to 256 (ALPHA / DIGIT / "+" / "/")."""

    def test_bounds_and_characters(self) -> None:
        from epcscf.ice.types import ICE_CHARS, IceCredentials

        good = [("abcd", "p" * 22), ("a" * 256, "b" * 256), ("+/09", "AZaz09+/" * 3), (ICE_CHARS[:4], ICE_CHARS[-22:])]
        bad = [("abc", "p" * 22), ("a" * 257, "p" * 22), ("abcd", "p" * 21), ("abcd", "p" * 257),
               ("ab-d", "p" * 22), ("abcd", "p" * 21 + "="), ("abcd\n", "p" * 22), ("abcd", "p" * 22 + "\n"),
               ("abcé", "p" * 22), ("abc١", "p" * 22), ("", "")]
        for ufrag, pwd in good:
            IceCredentials(ufrag, pwd).validate_remote()
        for ufrag, pwd in bad:
            self.assertRaises(IceCandidateError, IceCredentials(ufrag, pwd).validate_remote)


class EagerDeferredTests(unittest.TestCase):
    """`eager_deferred`: run at once up to the first wait, then in a task as `as_deferred`."""

    def setUp(self) -> None:
        self.loop = asyncio_loop()

    def in_loop(self, test: object) -> Deferred[None]:
        async def run() -> None:
            await test()  # type: ignore[operator]

        return Deferred.fromFuture(asyncio.ensure_future(run()))

    def test_a_coroutine_that_never_waits_is_done_before_the_call_returns(self) -> Deferred[None]:
        async def test() -> None:
            steps: list[str] = []

            async def never_waits() -> int:
                steps.append("ran")
                return 7

            tasks_before = asyncio.all_tasks(self.loop)
            d = eager_deferred(never_waits())
            self.assertEqual(steps, ["ran"])
            self.assertEqual(self.successResultOf(d), 7)
            self.assertEqual(asyncio.all_tasks(self.loop), tasks_before)  # no task made for it

        return self.in_loop(test)

    def test_a_waiting_coroutine_goes_on_in_a_task_with_results_and_errors(self) -> Deferred[None]:
        async def test() -> None:
            gate: asyncio.Future[int] = self.loop.create_future()

            async def waits() -> int:
                value = await gate
                await asyncio.sleep(0)
                return value + 1

            async def fails() -> None:
                await asyncio.sleep(0)
                raise ValueError("late")

            d = eager_deferred(waits())
            self.assertNoResult(d)
            gate.set_result(41)
            self.assertEqual(await d.asFuture(self.loop), 42)
            with self.assertRaises(ValueError):
                await eager_deferred(fails()).asFuture(self.loop)

        return self.in_loop(test)

    def test_an_error_before_any_wait_is_a_failed_deferred(self) -> Deferred[None]:
        async def test() -> None:
            async def fails_at_once() -> None:
                raise KeyError("now")

            self.failureResultOf(eager_deferred(fails_at_once()), KeyError)

        return self.in_loop(test)

    def test_cancelling_the_task_cancels_the_coroutine(self) -> Deferred[None]:
        async def test() -> None:
            cancelled: list[bool] = []

            async def waits_forever() -> None:
                try:
                    await self.loop.create_future()
                except asyncio.CancelledError:
                    cancelled.append(True)
                    raise

            d = eager_deferred(waits_forever())
            d.cancel()
            for _ in range(5):  # the task's wake-up and its throw into the coroutine
                await asyncio.sleep(0)
            self.assertEqual(cancelled, [True])
            self.failureResultOf(d)

        return self.in_loop(test)
