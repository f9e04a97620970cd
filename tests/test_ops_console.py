"""The operator commands, typed into the SSH console with the real OpenSSH client against a
running epcscf with a really registered WIC (and calls held by the real CallManager)."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from epcscf.media.session import DirectionStats, MediaStats
from epcscf.media.srtp import SrtpErrorCounts
from epcscf.ops.console import Console, Rows, render_table
from epcscf.ops.manhole import hash_password
from epcscf.pcscf.call_state import CallDirection, CallState
from epcscf.pcscf.calls import Call, CallManager
from tests.support.deployment import DOMAIN, USERS, start_deployment, ws_url
from tests.support.ssh_console import run_console
from tests.support.wic import WsSipClient, as_deferred


class FakeCallMedia:
    """The media of a call as the call manager sees it (``CallMediaLike``): fixed figures."""

    def __init__(self, packets: int) -> None:
        self.packets = packets
        self.closed = False
        self.on_failure = None
        self.on_event = None

    def stats(self) -> dict[int, dict[str, Any]]:
        def direction(packets: int) -> DirectionStats:
            return DirectionStats(packets=packets, bytes=packets * 172)

        session = MediaStats(
            wic_to_core=direction(self.packets),
            core_to_wic=direction(self.packets + 1),
            srtp_errors=SrtpErrorCounts(),
            dtls_state="connected",
            srtp_profile="SRTP_AES128_CM_SHA1_80",
            direction="sendrecv",
            core_rtp_target=None,
            core_rtcp_target=None,
            dtls_retransmissions=0,
        )
        return {0: {"ice": "connected", "ice_stats": None, "media": session}}

    def close(self) -> defer.Deferred:
        self.closed = True
        return defer.succeed(None)


def asyncio_test(method: Any) -> Any:
    """Run an ``async def`` test as an asyncio task (the ``websockets`` client needs one)."""

    def wrapper(self: Any) -> defer.Deferred:
        return as_deferred(method(self))

    wrapper.__name__ = method.__name__
    return wrapper


async def wait(deferred: defer.Deferred) -> Any:
    """Await a Twisted Deferred from inside an asyncio task."""
    return await deferred.asFuture(asyncio.get_running_loop())


def install_call_manager(service: Any) -> CallManager:
    """The real CallManager on the running node (the edge wiring is the lead's)."""
    pcscf = service.pcscf
    if pcscf.calls is None:
        pcscf.calls = CallManager(reactor, pcscf.policy.addresses, lambda call: FakeCallMedia(0), proxy=pcscf.proxy)
    return pcscf.calls


def add_call(manager: CallManager, call_id: str, flow: Any, direction: CallDirection, packets: int) -> Call:
    """A confirmed call on ``flow``, as the manager holds one after the 2xx."""
    call = Call(call_id, direction, flow, reactor.seconds(), reactor)
    call.note("sip-in", "INVITE from the WIC")
    call.state = CallState.CONFIRMED
    call.note("state", "offer-forwarded → confirmed (final-2xx)")
    call.media = FakeCallMedia(packets)
    manager._live[call.key] = call  # what originating_invite() does once the INVITE is accepted
    return call


def operator_config(test: unittest.TestCase, password: str) -> str:
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    users = os.path.join(directory, "manhole.users")
    with open(users, "w") as handle:
        handle.write(f"ops:{hash_password(password)}\n")
    return f"[manhole]\nenabled = true\nport = 0\nusers = {users}\nhost_key = {directory}/host_key\n"


async def registered_wic(test: unittest.TestCase, service: Any, user: str = "alice") -> WsSipClient:
    client = WsSipClient(ws_url(service), user, USERS[user], DOMAIN, origin="http://127.0.0.1:8081")
    await client.connect()
    test.addCleanup(lambda: as_deferred(client.close()))
    response = await client.register()
    test.assertEqual(response.status, 200)
    return client


class ConsoleOverSshTests(unittest.TestCase):
    """Every command typed at the prompt, as an operator would."""

    def setUp(self) -> None:
        if shutil.which("ssh") is None:
            self.fail("the OpenSSH client (Debian openssh-client) is needed: bin/test installs it")
        self.service = start_deployment(self, operator_config(self, "s3cret"))

    @asyncio_test
    async def test_every_command_at_the_prompt(self) -> None:
        await registered_wic(self, self.service)
        (flow,) = list(self.service.pcscf.flows)
        manager = install_call_manager(self.service)
        add_call(manager, "call-one@wic", flow.connection, CallDirection.ORIGINATING, packets=250)
        add_call(manager, "call-two@core", flow.connection, CallDirection.TERMINATING, packets=40)
        lines = [
            "registrations()",
            "flows()",
            "calls()",
            "call('call-one')",
            "release('call-two@core', 'maintenance')",
            "calls()[1]['state']",
            "stats()",
            "set_log_level('epcscf.pcscf', 'debug')",
            "set_log_level('epcscf.pcscf', 'loud')",
            "reload()",
            "disconnect('nope')",
            "help()",
            f"disconnect('{flow.id[:-1]}')",
        ]
        code, screen = await wait(run_console(self.service.manhole.port, "ops", "s3cret", lines, timeout=30))
        text = screen.decode("utf-8", "replace").replace("\r", "")
        # registrations(): the AOR, its identities from P-Associated-URI, the flow and the Origin
        self.assertRegex(text, r"AOR\s+IDENTITIES\s+FLOW\s+ORIGIN\s+EXPIRES_IN")
        self.assertRegex(text, rf"sip:alice@{DOMAIN}\s+.*sip:alice@{DOMAIN}.*\s+{flow.id}\s+http://127.0.0.1:8081\s+(59\d|600)")
        # flows(): id, transport, peer, origin, age, state, registrations
        self.assertRegex(text, r"FLOW\s+TRANSPORT\s+PEER\s+ORIGIN\s+AGE\s+STATE\s+REGISTRATIONS")
        self.assertRegex(text, rf"{flow.id}\s+WS\s+127.0.0.1:\d+\s+http://127.0.0.1:8081\s+\d+\.\d\s+open\s+1")
        # calls(): both calls with ICE/DTLS state and packets (both directions added up)
        self.assertRegex(text, r"call-one@wic\s+originating\s+confirmed\s+\d+\.\d\s+connected\s+connected\s+501")
        self.assertRegex(text, r"call-two@core\s+terminating\s+confirmed\s+\d+\.\d\s+connected\s+connected\s+81")
        # call(id) by prefix: a header line and the timeline
        self.assertIn("call call-one@wic originating confirmed", text)
        self.assertRegex(text, r"0\.\d+\s+sip-in\s+INVITE from the WIC")
        # release(): the real call manager ended the call; calls() then shows it ended
        self.assertRegex(text, r"call-two@core\s+1\s+maintenance")
        self.assertIn("'terminated'", text)
        self.assertRegex(text, r"call-two@core\s+terminating\s+terminated\s+.*maintenance")
        # stats()
        self.assertRegex(text, r"registrations\s+1")
        self.assertRegex(text, r"calls originating\s+1")
        self.assertRegex(text, r"calls ended \(kept\)\s+1")
        # set_log_level(): good and bad
        self.assertRegex(text, r"epcscf.pcscf\s+debug")
        self.assertIn("level must be one of debug, info, warn, error, critical, got 'loud'", text)
        # reload() with unchanged files
        self.assertIn("reload: nothing changed", text)
        # help(): every command with its first doc line
        self.assertRegex(text, r"release\(\)\s+End a call from the middle")
        # disconnect(): unknown id refused, a prefix closes the WebSocket
        self.assertIn("no open flow 'nope' (see flows())", text)
        self.assertRegex(text, rf"{flow.id}\s+127.0.0.1:\d+\s+closing")
        self.assertNotIn("Traceback", text)
        for _ in range(50):
            if not self.service.pcscf.flows:
                break
            await asyncio.sleep(0.05)
        self.assertEqual(len(self.service.pcscf.flows), 0)
        self.assertEqual(len(manager.calls()), 0)  # the WebSocket's end released call-one (REQ-B02)


class ConsoleInProcessTests(unittest.TestCase):
    """The same commands called from Python: the data a script gets back."""

    def setUp(self) -> None:
        self.service = start_deployment(self)
        self.console = Console(self.service)
        self.output = io.StringIO()
        self.patch(sys, "stdout", self.output)

    @asyncio_test
    async def test_rows_are_data_and_show_as_a_count(self) -> None:
        await registered_wic(self, self.service, "bob")
        rows = self.console.registrations()
        self.assertIsInstance(rows, Rows)
        self.assertEqual(repr(rows), "(1 row)")
        self.assertEqual(rows[0]["aor"], f"sip:bob@{DOMAIN}")
        self.assertEqual(rows[0]["origin"], "http://127.0.0.1:8081")
        self.assertIn(f"sip:bob@{DOMAIN}", rows[0]["identities"][0])
        (flow,) = self.console.flows()
        self.assertEqual(flow["registrations"], 1)
        self.assertEqual(flow["flow"], rows[0]["flow"])

    def test_calls_without_a_call_manager_say_so(self) -> None:
        self.service.pcscf.calls = None
        self.assertEqual(self.console.calls(), [])
        self.assertEqual(self.console.release("x"), [])
        self.assertIn("no call manager in this service", self.output.getvalue())

    def test_unknown_call_and_release_are_one_line(self) -> None:
        install_call_manager(self.service)
        self.assertEqual(self.console.call("missing"), [])
        self.assertEqual(self.console.release("missing"), [])
        self.assertEqual(
            self.output.getvalue().splitlines(),
            ["no call 'missing' (see calls())", "no live call 'missing' (see calls())"],
        )

    def test_disconnect_refuses_ambiguous_prefixes_and_non_ids(self) -> None:
        self.assertEqual(self.console.disconnect(42), [])
        self.assertIn("disconnect() takes a flow id (see flows())", self.output.getvalue())

    def test_render_table(self) -> None:
        self.assertEqual(render_table([]), "(none)")
        self.assertEqual(
            render_table([{"a": "x", "bb": 1.25}, {"a": "long", "bb": None}]),
            "A     BB\nx     1.2\nlong  -",
        )


class LeakAccountingLinesTests(unittest.TestCase):
    """stats() lists what calls and flows hold; a real transaction between two registered WICs
    shows up there and is gone once its timers have run (short timers through the ini)."""

    def setUp(self) -> None:
        self.service = start_deployment(self, "[sip]\nt1 = 0.05\nt2 = 0.4\nt4 = 0.2\nwic_t1 = 0.05\nwic_t2 = 0.4\nwic_t4 = 0.2\n")
        self.console = Console(self.service)
        self.patch(sys, "stdout", io.StringIO())

    def figures(self) -> dict[str, Any]:
        return {row["name"]: row["value"] for row in self.console.stats()}

    async def until_idle(self) -> dict[str, Any]:
        for _ in range(100):
            figures = self.figures()
            if figures["server transactions"] == figures["client transactions"] == figures["sip timers"] == 0:
                return figures
            await asyncio.sleep(0.05)
        self.fail(f"transactions left: {self.figures()}")

    @asyncio_test
    async def test_a_message_between_two_wics_moves_the_counts_and_they_return_to_zero(self) -> None:
        alice = await registered_wic(self, self.service, "alice")
        bob = await registered_wic(self, self.service, "bob")
        idle = await self.until_idle()
        for label in ("ice agents", "dtls sessions", "media ports in use"):
            self.assertEqual(idle[label], 0, label)
        self.assertGreater(idle["open fds"], 0)  # prometheus-client's process_open_fds
        self.assertGreater(idle["reactor delayed calls"], 0)  # registration expiry, lag probe…
        self.assertGreater(idle["asyncio tasks"], 0)  # the websockets clients of this test

        await alice.send(alice.request("MESSAGE", f"sip:bob@{DOMAIN}", content_type="text/plain", body=b"hi"))
        received = await bob.next_message()
        # alice's MESSAGE at the edge and the core's toward bob: a server and a client transaction each
        during = self.figures()
        self.assertEqual((during["server transactions"], during["client transactions"]), (2, 2))
        self.assertGreater(during["sip timers"], 0)
        await bob.answer(received, 200)
        self.assertEqual((await alice.final_response()).status, 200)
        after = await self.until_idle()
        # nothing of the transaction stays behind (other timers, e.g. a registration's, may end meanwhile)
        self.assertLessEqual(after["reactor delayed calls"], idle["reactor delayed calls"])
        self.assertEqual(after["asyncio tasks"], idle["asyncio tasks"])
