"""aioice's `connect()` as calls (`epcscf.ice.connect.ConnectWithoutTask.start_checks`) against
aioice's own `connect()` in a task, for the same candidates, early checks and answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aioice.ice
from aioice import Candidate, stun
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from epcscf.ice.connect import ConnectWithoutTask
from tests.support.reactor import asyncio_loop
from tests.test_ice_stun_wire import FakeTransport

EDGE_PWD = "edgeicepwd0123456789abcd"
WIC_PWD = "wicicepwd0123456789abcde"
WIC = ("127.0.0.1", 51000)


def in_loop(test: Callable[[], Any]) -> Deferred[None]:
    return Deferred.fromFuture(asyncio.ensure_future(test()))


async def turns(count: int = 5) -> None:
    """Loop turns, and past aioice's Ta sleep in connect() (20 ms)."""
    for _ in range(count):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


class Side:
    """One connection (aioice's, or ours), its one host socket on a fake transport."""

    def __init__(self, cls: type[aioice.ice.Connection]) -> None:
        self.connection = cls(ice_controlling=False, components=1, use_ipv4=False, use_ipv6=False,
                              local_username="edgeufrag", local_password=EDGE_PWD)
        self.protocol = aioice.ice.StunProtocol(self.connection)
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]
        self.protocol.local_candidate = Candidate(foundation="1", component=1, transport="udp", priority=2130706431,
                                                  host="127.0.0.1", port=40000, type="host")
        self.connection._protocols.append(self.protocol)
        self.connection._local_candidates.append(self.protocol.local_candidate)
        self.connection._local_candidates_start = self.connection._local_candidates_end = True
        self.connection.remote_username, self.connection.remote_password = "wicufrag", WIC_PWD
        self.failures: list[str] = []
        self.connect: asyncio.Task[None] | None = None

    async def add_wic(self, end: bool = True) -> None:
        await self.connection.add_remote_candidate(Candidate(
            foundation="2", component=1, transport="udp", priority=2130706431, host=WIC[0], port=WIC[1], type="host"))
        if end:
            await self.connection.add_remote_candidate(None)

    def wic_check(self, nominate: bool) -> None:
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = "edgeufrag:wicufrag"
        check.attributes["PRIORITY"] = 1853824767
        check.attributes["ICE-CONTROLLING"] = 2**63
        if nominate:
            check.attributes["USE-CANDIDATE"] = None
        check.add_message_integrity(EDGE_PWD.encode())
        self.protocol.datagram_received(bytes(check), WIC)

    def start(self) -> None:
        if isinstance(self.connection, ConnectWithoutTask):
            self.connection.start_checks(self.failures.append)
        else:
            self.connect = asyncio.ensure_future(self.connection.connect())
            self.connect.add_done_callback(
                lambda task: task.cancelled() or task.exception() is None or self.failures.append(str(task.exception())))

    def answer_checks(self, error: tuple[int, str] | None = None) -> None:
        """Answer each Binding request the edge sent, signed with the WIC's pwd (RFC 8445 §7.2.2)."""
        for data, addr in list(self.transport.sent):
            message = stun.parse_message(data)
            if message.message_class != stun.Class.REQUEST:
                continue
            kind = stun.Class.RESPONSE if error is None else stun.Class.ERROR
            answer = stun.Message(stun.Method.BINDING, kind, transaction_id=message.transaction_id)
            if error is None:
                answer.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 40000)
            else:
                answer.attributes["ERROR-CODE"] = error
            answer.add_message_integrity(WIC_PWD.encode())
            self.protocol.datagram_received(bytes(answer), addr)

    def view(self) -> tuple[Any, ...]:
        """What the check list, its outcome and the wire show (not the random transaction ids)."""
        connection = self.connection
        sent = [(stun.parse_message(data).message_class, addr) for data, addr in self.transport.sent]
        return ([(p.remote_addr, p.state, p.nominated, p.remote_nominated) for p in connection._check_list],
                dict(connection._nominated and {1: connection._nominated[1].remote_addr}),
                connection._check_list_done, connection._early_checks_done, len(connection._early_checks),
                sent, self.failures)

    def stop(self) -> None:
        for pair in self.connection._check_list:
            if pair.task is not None:
                pair.task.cancel()
        if self.connect is not None:
            self.connect.cancel()


class StartChecksTests(unittest.TestCase):
    def setUp(self) -> None:
        self.loop = asyncio_loop()

    async def both(self, scenario: Callable[[Side], Any]) -> list[Side]:
        sides = [Side(aioice.ice.Connection), Side(ConnectWithoutTask)]
        for side in sides:
            self.addCleanup(side.stop)
            await scenario(side)
        self.assertEqual(sides[0].view(), sides[1].view())
        return sides

    def test_a_nominated_pair_completes_as_aioices_connect(self) -> Deferred[None]:
        async def scenario(side: Side) -> None:
            await side.add_wic()
            side.wic_check(nominate=True)  # before connect(): kept, then a triggered check (RFC 8445 §7.3)
            side.start()
            await turns()
            side.answer_checks()
            await turns()

        async def test() -> None:
            theirs, ours = await self.both(scenario)
            self.assertEqual(theirs.failures, [])
            self.assertTrue(ours.connection._check_list_done)
            # No task for connect() or for aioice's consent (ours is the agent's), and no Ta tick left.
            self.assertIsNone(ours.connection._query_consent_task)
            self.assertIsNone(ours.connection._ta_tick)  # type: ignore[attr-defined]
            self.assertTrue(theirs.connect is not None and theirs.connect.done())

        return in_loop(test)

    def test_checks_paced_every_ta_while_candidates_may_come(self) -> Deferred[None]:
        async def scenario(side: Side) -> None:
            await side.add_wic(end=False)
            side.start()
            await asyncio.sleep(0.1)  # RFC 8445 §6.1.4.2: ticks go on while more candidates may come

        async def test() -> None:
            theirs, ours = await self.both(scenario)
            self.assertIsNotNone(ours.connection._ta_tick)  # type: ignore[attr-defined]
            self.assertEqual(len(ours.transport.sent), 1)  # the one pair's check, started once

        return in_loop(test)

    def fails_as_aioice(self, scenario: Callable[[Side], Any], reason: str) -> Deferred[None]:
        async def test() -> None:
            theirs, _ = await self.both(scenario)
            self.assertEqual(theirs.failures, [reason])

        return in_loop(test)

    def test_failed_checks_are_reported_as_connect_raised_them(self) -> Deferred[None]:
        async def scenario(side: Side) -> None:
            await side.add_wic()
            side.start()
            await turns()
            side.answer_checks(error=(400, "Bad Request"))
            await turns()

        return self.fails_as_aioice(scenario, "ICE negotiation failed")

    def test_no_candidate_to_check_fails_a_loop_turn_later(self) -> Deferred[None]:
        async def scenario(side: Side) -> None:
            await side.connection.add_remote_candidate(None)
            side.start()
            if isinstance(side.connection, ConnectWithoutTask):
                self.assertEqual(side.failures, [])  # not within the call, as connect() raised in its task
            await turns()

        return self.fails_as_aioice(scenario, "ICE negotiation failed")

    def test_missing_remote_credentials_fail_with_aioices_message(self) -> Deferred[None]:
        async def scenario(side: Side) -> None:
            side.connection.remote_password = None
            side.start()
            await turns()

        return self.fails_as_aioice(scenario, "Remote username or password is missing")

    def test_closing_reports_nothing_and_stops_the_ticks(self) -> Deferred[None]:
        async def test() -> None:
            side = Side(ConnectWithoutTask)
            await side.add_wic(end=False)
            side.start()
            self.assertIsNotNone(side.connection._ta_tick)  # type: ignore[attr-defined]
            side.protocol.close = _closed  # type: ignore[method-assign]  # the fake transport never reports the loss
            await side.connection.close()
            await turns()
            self.assertEqual(side.failures, [])
            self.assertIsNone(side.connection._ta_tick)  # type: ignore[attr-defined]

        return in_loop(test)


async def _closed() -> None:
    return None
