"""The Node calls generator of the benchmarks (``benchmarks/wic_calls.mjs``) speaks real STUN and
places real calls.

- Its ICE messages, built by the generator's own functions, are parsed by aioice's STUN parser
  (which checks FINGERPRINT, RFC 8489 §14.7) and integrity-checked with the key each must carry
  (RFC 8445 §7.2.2: a check is keyed with the remote password, a response with our own).
- ``benchmarks/calls.py --generator node`` completes a handful of calls with full ICE through a
  real eP-CSCF (twistd, embedded core challenging the registrations) and a sipp UAS.
"""

from __future__ import annotations

import binascii
import json
import os
import re
import subprocess
import sys

from aioice import stun
from twisted.trial import unittest

from tests.support.node_peer import require_node_modules
from tests.support.processes import TOP
from tests.support.sipp import require_sipp

GENERATOR = os.path.join(TOP, "benchmarks", "wic_calls.mjs")

# Emits one nominating check and one success response, built by the generator's functions.
EMIT = """
import { bindingCheck, bindingSuccess, tableCrc32 } from %s;
const check = bindingCheck(Buffer.from("000102030405060708090a0b", "hex"), "edgeufrag", "wicufrag",
                           "edge-password-of-22-chars", Buffer.from("0011223344556677", "hex"));
const response = bindingSuccess(Buffer.from("0b0a09080706050403020100", "hex"), "127.0.0.1", 40001, "wic-password-22-chars!");
process.stdout.write(JSON.stringify({ check: check.toString("hex"), response: response.toString("hex"),
                                      tableCrc: tableCrc32(check) }));
"""


class StunOfTheNodeGeneratorTests(unittest.TestCase):
    def setUp(self) -> None:
        require_node_modules(self, "ws")
        script = EMIT % json.dumps("file://" + GENERATOR)
        done = subprocess.run(["node", "--input-type=module", "-e", script], cwd=TOP, capture_output=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace"))
        self.emitted = json.loads(done.stdout)

    def test_check_is_a_nominating_binding_request_keyed_with_the_edge_password(self) -> None:
        data = bytes.fromhex(self.emitted["check"])
        message = stun.parse_message(data)  # raises when FINGERPRINT is wrong
        self.assertEqual((message.message_method, message.message_class), (stun.Method.BINDING, stun.Class.REQUEST))
        self.assertEqual(message.transaction_id, bytes(range(12)))
        self.assertEqual(message.attributes["USERNAME"], "edgeufrag:wicufrag")  # RFC 8445 §7.2.2: remote:local
        self.assertEqual(message.attributes["PRIORITY"], 1853824767)
        self.assertEqual(message.attributes["ICE-CONTROLLING"], 0x0011223344556677)
        self.assertIn("USE-CANDIDATE", message.attributes)
        self.assertTrue(message.check_message_integrity(b"edge-password-of-22-chars"))
        self.assertFalse(message.check_message_integrity(b"wic-password-22-chars!"))

    def test_response_maps_the_source_address_keyed_with_the_wic_password(self) -> None:
        data = bytes.fromhex(self.emitted["response"])
        message = stun.parse_message(data)
        self.assertEqual((message.message_method, message.message_class), (stun.Method.BINDING, stun.Class.RESPONSE))
        self.assertEqual(message.attributes["XOR-MAPPED-ADDRESS"], ("127.0.0.1", 40001))
        self.assertTrue(message.check_message_integrity(b"wic-password-22-chars!"))
        self.assertFalse(message.check_message_integrity(b"edge-password-of-22-chars"))

    def test_fingerprint_is_refused_by_aioice_when_a_byte_changes(self) -> None:
        data = bytearray.fromhex(self.emitted["check"])
        data[30] ^= 0x01  # inside USERNAME
        with self.assertRaises(ValueError):
            stun.parse_message(bytes(data))

    def test_table_crc_of_old_nodes_is_zlibs_crc32(self) -> None:
        self.assertEqual(self.emitted["tableCrc"], binascii.crc32(bytes.fromhex(self.emitted["check"])))


class NodeGeneratorThroughTheEdgeTests(unittest.TestCase):
    """One short run of the benchmark itself (epcscf, sipp and node as processes, ~6 s)."""

    timeout = 60

    def test_calls_complete_with_full_ice_through_the_edge(self) -> None:
        require_node_modules(self, "ws")
        require_sipp(self)
        done = subprocess.run(
            [sys.executable, os.path.join(TOP, "benchmarks", "calls.py"), "--generator", "node", "--core", "embedded",
             "--rate", "4", "--seconds", "1", "--wics", "3"],
            cwd=TOP, capture_output=True, timeout=50,
        )
        output = done.stdout.decode(errors="replace")
        self.assertEqual(done.returncode, 0, output + done.stderr.decode(errors="replace")[-3000:])
        completed = re.search(r"completed (\d+)/(\d+)", output)
        assert completed is not None, output
        self.assertEqual(completed.groups(), ("3", "3"), output)
        self.assertIn("failures 0 ", output)
        self.assertRegex(output, r"generator \d+\.\d+ s = \d+\.\d+ ms/call")
