"""STUN in one pass (`epcscf.ice.stun_wire`, `epcscf.ice.host_socket`): the same bytes as aioice's
own path, and the checks of a closing agent dropped before parsing."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import aioice.ice
from aioice import Candidate, stun
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from epcscf.ice import IceAgentConfig, IceCredentials, IceStats
from epcscf.ice.full import FullGeneration
from epcscf.ice.host_socket import _StunSocket
from epcscf.ice.stun_wire import encode, parse, sign
from tests.support.reactor import asyncio_loop

KEY = b"an-ice-pwd-of-22-chars"
TID = bytes(range(1, 13))


def messages() -> list[stun.Message]:
    """What the full agent sends and answers: checks both ways, with and without USE-CANDIDATE,
    Binding responses to v4 and v6 sources, an error with a reason of odd length."""
    checks = []
    for role, nominate in (("ICE-CONTROLLED", False), ("ICE-CONTROLLING", True), ("ICE-CONTROLLING", False)):
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=TID)
        check.attributes["USERNAME"] = "abcd:efghi"  # odd length: padded
        check.attributes["PRIORITY"] = 1853824767
        check.attributes[role] = 0x1234567890ABCDEF
        if nominate:
            check.attributes["USE-CANDIDATE"] = None
        checks.append(check)
    responses = []
    for source in (("127.0.0.1", 50000), ("192.0.2.77", 1), ("2001:db8::1", 65535), ("::1", 9)):
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=TID)
        response.attributes["XOR-MAPPED-ADDRESS"] = source
        responses.append(response)
    error = stun.Message(stun.Method.BINDING, stun.Class.ERROR, transaction_id=TID)
    error.attributes["ERROR-CODE"] = (487, "Role Conflict")
    return checks + responses + [error]


class SignTests(unittest.TestCase):
    def test_sign_sends_what_aioice_sends_and_leaves_the_message_as_aioice_does(self) -> None:
        for message in messages():
            theirs = copy.deepcopy(message)
            theirs.add_message_integrity(KEY)
            ours = copy.deepcopy(message)
            wire = sign(ours, KEY)
            self.assertEqual(wire, bytes(theirs), message)
            self.assertEqual(ours.attributes, theirs.attributes)
            self.assertEqual(list(ours.attributes), list(theirs.attributes))  # MI, then FINGERPRINT, last
            self.assertEqual(ours._integrity_data, theirs._integrity_data)

    def test_a_signed_message_parses_and_verifies_in_aioice(self) -> None:
        for message in messages():
            parsed = stun.parse_message(sign(message, KEY))  # checks the FINGERPRINT (RFC 5389 §15.5)
            self.assertTrue(parsed.check_message_integrity(KEY))
            self.assertFalse(parsed.check_message_integrity(b"another key"))
            self.assertEqual(parsed.attributes, message.attributes)

    def test_signing_again_replaces_integrity_and_fingerprint(self) -> None:
        message = messages()[0]
        sign(message, b"first key")
        theirs = copy.deepcopy(message)
        theirs.add_message_integrity(KEY)
        self.assertEqual(sign(message, KEY), bytes(theirs))

    def test_encode_is_bytes(self) -> None:
        for message in messages():
            self.assertEqual(encode(message), bytes(message))
            message.add_fingerprint()
            self.assertEqual(encode(message), bytes(message))

    def test_a_name_is_no_mapped_address(self) -> None:
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=TID)
        response.attributes["XOR-MAPPED-ADDRESS"] = ("wic.example", 5000)
        with self.assertRaises(ValueError):
            bytes(response)
        with self.assertRaises(ValueError):
            sign(response, KEY)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000)


WIC = ("127.0.0.1", 51000)
CREDENTIALS = IceCredentials("edgeufrag", "edgeicepwd0123456789abcd")


class AnswersTests(unittest.TestCase):
    """Our `_AgentConnection.request_received` against aioice's own, for the same checks."""

    def setUp(self) -> None:
        self.loop = asyncio_loop()

    def edge(self, controlling: bool) -> tuple[FullGeneration, _StunSocket, FakeTransport]:
        generation = FullGeneration(
            IceAgentConfig(bind_addresses=("127.0.0.1",), mode="full"), CREDENTIALS, controlling, None, IceStats(), None,
            on_selected=lambda *_: None, on_failed=lambda *_: None, on_data=lambda *_: None, on_consent=lambda *_: None)
        self.addCleanup(lambda: generation)  # kept alive for the test: the connection refers to it weakly
        return (generation, *self.socket(_StunSocket(generation.connection, "127.0.0.1")))  # type: ignore[return-value]

    def aioice_edge(self, controlling: bool) -> tuple[aioice.ice.Connection, aioice.ice.StunProtocol, FakeTransport]:
        connection = aioice.ice.Connection(ice_controlling=controlling, components=1, use_ipv4=False, use_ipv6=False,
                                           local_username=CREDENTIALS.ufrag, local_password=CREDENTIALS.pwd)
        return (connection, *self.socket(aioice.ice.StunProtocol(connection)))  # type: ignore[return-value]

    def socket(self, protocol: Any) -> tuple[Any, FakeTransport]:
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.local_candidate = Candidate(foundation="1", component=1, transport="udp", priority=1,
                                             host="127.0.0.1", port=40000, type="host")
        return protocol, transport

    def check(self, role: str = "ICE-CONTROLLING", pwd: str = CREDENTIALS.pwd, nominate: bool = True,
              username: str = f"{CREDENTIALS.ufrag}:wicufrag", tie_breaker: int = 2**63) -> bytes:
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = username
        check.attributes["PRIORITY"] = 1853824767
        check.attributes[role] = tie_breaker
        if nominate:
            check.attributes["USE-CANDIDATE"] = None
        check.add_message_integrity(pwd.encode())
        return bytes(check)

    def assert_answered_as_aioice(self, datagram: bytes, controlling: bool, connected: bool) -> list[bytes]:
        generation, ours, our_transport = self.edge(controlling)
        theirs_connection, theirs, their_transport = self.aioice_edge(controlling)
        tie_breaker = theirs_connection._tie_breaker
        generation.connection._tie_breaker = tie_breaker  # the same role-conflict outcome both sides
        for connection in (generation.connection, theirs_connection):
            connection.remote_username, connection.remote_password = "wicufrag", "wicicepwd0123456789abcde"
            connection._early_checks_done = connected
        ours.datagram_received(datagram, WIC)
        theirs.datagram_received(datagram, WIC)
        self.assertEqual(our_transport.sent, their_transport.sent)
        self.assertEqual(generation.connection.ice_controlling, theirs_connection.ice_controlling)
        self.assertEqual(len(generation.connection._early_checks), len(theirs_connection._early_checks))
        self.assertEqual([(p.state, p.remote_nominated) for p in generation.connection._check_list],
                         [(p.state, p.remote_nominated) for p in theirs_connection._check_list])
        for connection in (generation.connection, theirs_connection):
            for pair in connection._check_list:  # the triggered checks' tasks: not run here
                if pair.task is not None:
                    pair.task.cancel()
        return [data for data, _ in our_transport.sent]

    def in_loop(self, test: Any) -> Deferred[None]:
        """Run `test` in an asyncio task: aioice starts a triggered check's task there."""
        async def run() -> None:
            test()

        return Deferred.fromFuture(asyncio.ensure_future(run()))

    def test_a_valid_check_gets_aioices_answer_before_and_after_connect(self) -> Deferred[None]:
        return self.in_loop(self._valid_check)

    def _valid_check(self) -> None:
        for connected in (False, True):
            for nominate in (False, True):
                sent = self.assert_answered_as_aioice(self.check(nominate=nominate), controlling=False, connected=connected)
                answer = stun.parse_message(sent[0])
                self.assertEqual(answer.message_class, stun.Class.RESPONSE)
                self.assertEqual(answer.attributes["XOR-MAPPED-ADDRESS"], WIC)
                self.assertTrue(answer.check_message_integrity(CREDENTIALS.pwd.encode()))

    def test_wrong_password_unknown_user_and_role_conflicts_get_aioices_answers(self) -> Deferred[None]:
        return self.in_loop(self._refused_checks)

    def _refused_checks(self) -> None:
        cases = [
            (self.check(pwd="w" * 22), False),  # 401
            (self.check(username="other:wicufrag"), False),  # 401
            (self.check(role="ICE-CONTROLLED", nominate=False, tie_breaker=0), False),  # controlled both: we switch
            (self.check(role="ICE-CONTROLLED", nominate=False, tie_breaker=2**64 - 1), False),  # 487
            (self.check(tie_breaker=0), True),  # controlling both: 487
            (self.check(tie_breaker=2**64 - 1), True),  # controlling both: we switch
        ]
        for datagram, controlling in cases:
            self.assert_answered_as_aioice(datagram, controlling=controlling, connected=True)

    def test_a_closing_agent_drops_checks_before_parsing(self) -> None:
        generation, ours, transport = self.edge(controlling=False)
        generation._closing = True
        parsed: list[bytes] = []
        self.patch(aioice.ice.stun, "parse_message", parsed.append)
        ours.datagram_received(self.check(), WIC)
        self.assertEqual((parsed, transport.sent), ([], []))
        self.assertEqual(generation.stats.checks_received, 1)  # counted as before

    def test_our_check_goes_out_signed_once_for_every_retransmission(self) -> None:
        generation, ours, transport = self.edge(controlling=False)
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = "wicufrag:edgeufrag"
        key = b"wicicepwd0123456789abcde"
        self.patch(stun, "RETRY_RTO", 0.001)

        async def transaction() -> tuple[stun.Message, tuple[str, int]]:
            return await ours.request(request, WIC, integrity_key=key, retransmissions=2)

        task = asyncio.ensure_future(transaction())

        async def answer() -> None:
            while len(transport.sent) < 3:
                await asyncio.sleep(0.002)
            response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id)
            response.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 40000)
            response.add_message_integrity(key)
            ours.datagram_received(bytes(response), WIC)

        async def run() -> None:
            await answer()
            message, source = await task
            self.assertEqual(source, WIC)
            self.assertEqual(message.message_class, stun.Class.RESPONSE)
            theirs = copy.deepcopy(request)
            theirs.add_message_integrity(key)
            self.assertEqual([data for data, _ in transport.sent], [bytes(theirs)] * 3)
            self.assertEqual(generation.stats.checks_sent, 3)
            self.assertEqual((ours.transactions, ours._signed), ({}, {}))

        return Deferred.fromFuture(asyncio.ensure_future(run()))  # type: ignore[return-value]


class PacingTests(unittest.TestCase):
    """`_AgentConnection._check_periodic`: aioice's Ta tick, without a last tick that has nothing to start."""

    def setUp(self) -> None:
        self.loop = asyncio_loop()

    def connection(self, states: list[aioice.ice.CandidatePair.State], end_of_candidates: bool) -> tuple[Any, list[Any]]:
        generation = FullGeneration(
            IceAgentConfig(bind_addresses=("127.0.0.1",), mode="full"), CREDENTIALS, False, None, IceStats(), None,
            on_selected=lambda *_: None, on_failed=lambda *_: None, on_data=lambda *_: None, on_consent=lambda *_: None)
        self.addCleanup(lambda: generation)  # the connection refers to it weakly
        connection = generation.connection
        started: list[Any] = []
        # As aioice's: the pair gets its task, and stays Waiting until the task runs.
        self.patch(connection, "check_start_task", lambda pair: (started.append(pair), setattr(pair, "task", "a task")))
        protocol = _StunSocket(connection, "127.0.0.1")
        for port, state in enumerate(states, 5000):
            pair = aioice.ice.CandidatePair(protocol, Candidate(foundation=str(port), component=1, transport="udp",
                                                                priority=1, host="127.0.0.1", port=port, type="host"))
            pair.state = state
            connection._check_list.append(pair)
        connection._remote_candidates_end = end_of_candidates
        return connection, started

    def test_the_last_startable_pair_ends_the_pacing(self) -> None:
        State = aioice.ice.CandidatePair.State
        connection, started = self.connection([State.WAITING], end_of_candidates=True)
        self.assertFalse(connection._check_periodic())
        self.assertEqual(started, connection._check_list)  # and it was started

    def test_pacing_goes_on_while_a_pair_or_a_candidate_may_still_come(self) -> None:
        State = aioice.ice.CandidatePair.State
        for states, end in (([State.WAITING, State.FROZEN], True), ([State.WAITING, State.WAITING], True),
                            ([State.WAITING], False), ([], False)):
            connection, started = self.connection(states, end_of_candidates=end)
            self.assertTrue(connection._check_periodic(), (states, end))
            self.assertEqual(len(started), 1 if states else 0)

    def test_nothing_to_start_and_nothing_to_come_is_aioices_false(self) -> None:
        State = aioice.ice.CandidatePair.State
        connection, started = self.connection([State.SUCCEEDED, State.FAILED], end_of_candidates=True)
        self.assertFalse(connection._check_periodic())
        self.assertEqual(started, [])


def datagrams() -> list[bytes]:
    """Signed and unsigned messages of every kind we send, and broken ones."""
    signed = [sign(message, KEY) for message in messages()]
    unsigned = [bytes(message) for message in messages()]
    fingerprinted = []
    for message in messages():
        message.add_fingerprint()
        fingerprinted.append(bytes(message))
    check = signed[1]
    unknown = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=TID)
    unknown.attributes["USERNAME"] = "abcd:efgh"
    with_unknown = bytearray(bytes(unknown))
    with_unknown[2:4] = (len(with_unknown) - 20 + 8).to_bytes(2, "big")
    with_unknown += b"\xc0\x57\x00\x03abc\x00"  # an unknown comprehension-optional attribute, padded
    after_integrity = bytearray(signed[0][:-8])  # PRIORITY after MESSAGE-INTEGRITY: ignored
    after_integrity[2:4] = (len(after_integrity) - 20 + 8).to_bytes(2, "big")
    after_integrity += b"\x00\x24\x00\x04\x00\x00\x00\x07"
    short_address = bytearray(unsigned[3])
    short_address[25] = 2  # an IPv4 address claimed as IPv6: the wrong length
    unknown_method = bytearray(unsigned[0])
    unknown_method[1] = 0x0F
    bad_fingerprint = bytearray(check)
    bad_fingerprint[-1] ^= 1
    return signed + unsigned + fingerprinted + [
        bytes(with_unknown), bytes(after_integrity), bytes(short_address), bytes(unknown_method),
        bytes(bad_fingerprint), check[:19], check[:-1], check + b"\x00\x00\x00\x00", b"",
    ]


class ParseTests(unittest.TestCase):
    def test_parse_gives_aioices_message_or_its_error(self) -> None:
        for data in datagrams():
            try:
                theirs = stun.parse_message(data)
            except ValueError:
                with self.assertRaises(ValueError, msg=data):
                    parse(data)
                continue
            ours = parse(data)
            self.assertEqual(
                (ours.message_method, ours.message_class, ours.transaction_id, ours.attributes, ours._integrity_data),
                (theirs.message_method, theirs.message_class, theirs.transaction_id, theirs.attributes, theirs._integrity_data),
                data)
            self.assertEqual(list(ours.attributes), list(theirs.attributes))
            for key in (KEY, b"another key", b""):
                self.assertEqual(ours.check_message_integrity(key), theirs.check_message_integrity(key), data)


class RemoteCandidateTests(unittest.TestCase):
    """`_AgentConnection.add_remote_now` against aioice's own `add_remote_candidate`."""

    def setUp(self) -> None:
        self.loop = asyncio_loop()

    def connection(self) -> Any:
        generation = FullGeneration(
            IceAgentConfig(bind_addresses=("127.0.0.1",), mode="full"), CREDENTIALS, False, None, IceStats(), None,
            on_selected=lambda *_: None, on_failed=lambda *_: None, on_data=lambda *_: None, on_consent=lambda *_: None)
        self.addCleanup(lambda: generation)  # the connection refers to it weakly
        protocol = _StunSocket(generation.connection, "127.0.0.1")
        protocol.local_candidate = Candidate(foundation="1", component=1, transport="udp", priority=2130706431,
                                             host="127.0.0.1", port=40000, type="host")
        generation.connection._protocols.append(protocol)
        return generation.connection

    @staticmethod
    def aioice_adds(connection: Any, candidate: Candidate | None) -> None:
        adding = connection.add_remote_candidate(candidate)
        try:
            adding.send(None)
        except StopIteration:
            return
        raise AssertionError("aioice waited")

    @staticmethod
    def state(connection: Any) -> tuple[Any, ...]:
        return (
            [(c.to_sdp(), c._network_host) for c in connection._remote_candidates],
            [(p.local_addr, p.remote_addr, p.state) for p in connection._check_list],
            connection._remote_candidates_end, connection._components,
        )

    def test_the_same_candidates_and_pairs_as_aioice(self) -> None:
        def candidates() -> list[Candidate | None]:
            return [Candidate.from_sdp(line) for line in (
                "1 1 udp 2122260223 127.0.0.1 50000 typ host",
                "2 1 udp 1686052607 127.0.0.2 50001 typ srflx raddr 127.0.0.1 rport 50000",
                "3 1 udp 2122260223 127.0.0.1 50000 typ host",  # the same address again: ignored
                "4 1 udp 2122262783 ::1 50002 typ host",  # no IPv6 local candidate: no pair
            )] + [None]

        ours, theirs = self.connection(), self.connection()
        for mine, aioices in zip(candidates(), candidates()):
            ours.add_remote_now(mine)
            self.aioice_adds(theirs, aioices)
            self.assertEqual(self.state(ours), self.state(theirs))
        with self.assertRaises(ValueError):
            ours.add_remote_now(None)
        with self.assertRaises(ValueError):
            self.aioice_adds(theirs, None)

    def test_a_peer_reflexive_candidate_signalled_later_is_updated_as_aioice_does(self) -> None:
        line = "7 1 udp 2122260223 127.0.0.1 50000 typ host"
        ours, theirs = self.connection(), self.connection()
        for connection in (ours, theirs):
            connection._remote_candidates.append(Candidate(foundation="x", component=1, transport="udp", priority=5,
                                                           host="127.0.0.1", port=50000, type="prflx"))
            connection._remote_candidates[0]._network_host = "127.0.0.1"
        ours.add_remote_now(Candidate.from_sdp(line))
        self.aioice_adds(theirs, Candidate.from_sdp(line))
        self.assertEqual(self.state(ours), self.state(theirs))
        self.assertEqual(ours._remote_candidates[0].type, "host")

    def test_a_closing_connection_takes_no_candidate(self) -> None:
        connection = self.connection()
        connection._closing = True
        connection.add_remote_now(Candidate.from_sdp("1 1 udp 2122260223 127.0.0.1 50000 typ host"))
        self.assertEqual(connection._remote_candidates, [])
