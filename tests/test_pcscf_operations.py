"""``NodeOperations`` (``epcscf.pcscf.operations``): what the console, the metrics and the drain
ask of a running eP-CSCF, as plain data — what a supervisor will later ask each worker over AMP."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

from twisted.trial import unittest

from epcscf.ops.lifecycle import LIVE_KEYS
from epcscf.pcscf.call_state import CallDirection
from epcscf.pcscf.operations import NodeOperations, PcscfOperations
from tests.support.deployment import DOMAIN, start_deployment
from tests.test_ops_console import add_call, asyncio_test, install_call_manager, registered_wic


def protocol_methods(protocol: type) -> list[str]:
    return sorted(name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_"))


class InterfaceTests(unittest.TestCase):
    def test_pcscf_operations_has_every_method_of_the_protocol_with_its_signature(self) -> None:
        for name in protocol_methods(NodeOperations):
            self.assertEqual(
                inspect.signature(getattr(PcscfOperations, name)), inspect.signature(getattr(NodeOperations, name)), name
            )

    def test_a_reload_has_one_parameter_per_live_key_of_ws_and_sip(self) -> None:
        for section, operation in (("ws", NodeOperations.update_ws_settings), ("sip", NodeOperations.update_limits)):
            parameters = set(inspect.signature(operation).parameters) - {"self"}
            self.assertEqual(parameters, {key for live_section, key in LIVE_KEYS if live_section == section}, section)


class RunningNodeTests(unittest.TestCase):
    """Against a running deployment (embedded core, a WIC over a real WebSocket)."""

    def setUp(self) -> None:
        self.service = start_deployment(self)
        self.operations: NodeOperations = self.service.operations

    def assert_plain(self, data: Any) -> None:
        """JSON encodes it without help: nothing but dicts, lists, str, numbers, bools and None."""

        def not_plain(value: Any) -> Any:
            self.fail(f"not plain data: {value!r}")

        json.dumps(data, default=not_plain)

    @asyncio_test
    async def test_every_answer_is_plain_data(self) -> None:
        client = await registered_wic(self, self.service, "alice")
        (flow,) = list(self.service.pcscf.flows)
        add_call(install_call_manager(self.service), "call-1@wic", flow.connection, CallDirection.ORIGINATING, packets=7)
        stats = self.operations.stats()
        self.assertEqual((stats["flows"], stats["registrations"], stats["calls_originating"]), (1, 1, 1))
        self.assertIs(stats["draining"], False)
        (registration,) = self.operations.registrations()
        self.assertEqual(registration["aor"], f"sip:alice@{DOMAIN}")
        (flow_row,) = self.operations.flows()
        self.assertEqual((flow_row["flow"], flow_row["registrations"]), (flow.id, 1))
        (call,) = self.operations.calls()
        self.assertEqual((call["call_id"], call["live"], call["packets"]), ("call-1@wic", True, {"wic_to_core": 7, "core_to_wic": 8}))
        self.assertEqual([entry["kind"] for entry in self.operations.call_timeline("call-1@wic")], ["sip-in", "state"])
        counts = self.operations.resource_counts()
        self.assertEqual(counts["calls"], 1)
        for answer in (stats, counts, self.operations.registrations(), self.operations.flows(), self.operations.calls()):
            self.assert_plain(answer)
        self.assertIsInstance(self.operations.pending_transactions(), int)
        self.assertIsInstance(self.operations.pending_client_transactions(), int)
        self.assertIsNone(self.operations.release_call("no-such-call", "test"))
        self.assertFalse(self.operations.disconnect_flow("no-such-flow", 1000, "test"))
        self.assertTrue(self.operations.disconnect_flow(flow.id, 1000, "closed by the test"))
        await asyncio.wait_for(client.socket.wait_closed(), 5)
        self.assertEqual((client.socket.close_code, client.socket.close_reason), (1000, "closed by the test"))

    def test_update_limits_reach_the_running_udp_listeners(self) -> None:
        self.operations.update_limits(max_message_size=3000, max_headers=40, max_line_length=900)
        transports = self.service.pcscf.transports
        self.assertEqual(transports.settings.limits.max_message_size, 3000)
        # each running UDP listener parses the next datagrams with the new limits
        self.assertTrue(transports._udp)
        for udp in transports._udp:  # the test looks inside; ops/ may not
            self.assertIs(udp._settings, transports.settings)

    def test_set_draining_puts_its_check_first_and_shows_in_stats(self) -> None:
        self.operations.set_draining(7)
        self.assertIs(self.operations.stats()["draining"], True)
        self.assertEqual(self.service.pcscf.admission.names()[0], "draining")
