"""RFC 5626 flows and flow tokens (REQ-R02, REQ-S07, REQ-T14, REQ-X04)."""

from __future__ import annotations

import base64
import re

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.flows import Flow, FlowGone, FlowTable, FlowTokenCodec, TamperedToken
from epcscf.sip.connection import Connection
from epcscf.sip.uri import parse_uri
from tests.support.fakes import FakeConnection

KEY = bytes(range(32))


class FlowTokenCodecTests(unittest.TestCase):
    def test_round_trip(self) -> None:
        codec = FlowTokenCodec(KEY)
        for connection_id in ("wss-1f3a9c0b-1", "ws-00000000-123456", "udp:127.0.0.1:5060:127.0.0.1:5070"):
            self.assertEqual(codec.decode(codec.encode(connection_id)), connection_id)

    def test_token_is_a_valid_sip_uri_user_part_of_unreserved_characters(self) -> None:
        codec = FlowTokenCodec(KEY)
        for n in range(200):
            token = codec.encode(f"wss-abcdef01-{n}")
            self.assertRegex(token, r"\A[A-Za-z0-9_-]+\Z")
            uri = parse_uri(f"sip:{token}@127.0.0.1:8443;transport=ws;lr;ob")
            self.assertEqual(uri.user, token)

    def test_tokens_of_different_flows_differ(self) -> None:
        codec = FlowTokenCodec(KEY)
        tokens = {codec.encode(f"wss-abcdef01-{n}") for n in range(1000)}
        self.assertEqual(len(tokens), 1000)

    def test_every_single_character_change_is_detected(self) -> None:
        codec = FlowTokenCodec(KEY)
        token = codec.encode("wss-1f3a9c0b-17")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for index in range(len(token)):
            replacement = alphabet[(alphabet.index(token[index]) + 1) % len(alphabet)]
            altered = token[:index] + replacement + token[index + 1 :]
            with self.assertRaises(TamperedToken, msg=f"change at {index} not detected"):
                codec.decode(altered)

    def test_flipped_bit_in_the_decoded_bytes_is_detected(self) -> None:
        codec = FlowTokenCodec(KEY)
        raw = bytearray(base64.urlsafe_b64decode(codec.encode("wss-1f3a9c0b-17") + "=="))
        for index in range(len(raw)):
            altered = bytearray(raw)
            altered[index] ^= 0x01
            token = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
            self.assertRaises(TamperedToken, codec.decode, token)

    def test_token_forged_with_another_key_is_rejected(self) -> None:
        forged = FlowTokenCodec(b"x" * 32).encode("wss-1f3a9c0b-17")
        with self.assertRaises(TamperedToken) as raised:
            FlowTokenCodec(KEY).decode(forged)
        self.assertEqual(raised.exception.status, 403)

    def test_garbage_is_rejected_as_tampered_not_as_a_crash(self) -> None:
        codec = FlowTokenCodec(KEY)
        for garbage in ("", "a", "abc", "not base64!", "%41%42", "x" * 1000, "AAAAAAAAAAAAAA", "é"):
            self.assertRaises(TamperedToken, codec.decode, garbage)

    def test_boot_keys_are_random_and_short_keys_refused(self) -> None:
        self.assertNotEqual(FlowTokenCodec().encode("ws-1"), FlowTokenCodec().encode("ws-1"))
        self.assertRaises(ValueError, FlowTokenCodec, b"short")


class FlowTableTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.table = FlowTable(self.clock, FlowTokenCodec(KEY))

    def test_open_flow_is_found_by_its_token(self) -> None:
        connection = FakeConnection("WSS", id="wss-1f3a9c0b-1", origin="https://wic.example.com:443")
        self.assertIsInstance(connection, Connection)
        flow = self.table.open(connection)
        self.assertEqual(flow.opened, 100)
        self.assertEqual(flow.origin, "https://wic.example.com:443")
        self.assertIs(self.table.flow_for_token(flow.token), flow)
        self.assertEqual(self.table.token_for(connection), flow.token)
        self.assertIs(self.table.open(connection), flow)  # idempotent
        self.assertIn("wss-1f3a9c0b-1", self.table)

    def test_closed_flow_gives_flow_gone_430(self) -> None:
        connection = FakeConnection("WSS", id="wss-1f3a9c0b-2")
        token = self.table.open(connection).token
        self.clock.advance(5)
        closed = self.table.close(connection.id, "closed by peer code 1000")
        assert closed is not None
        self.assertEqual(closed.closed_at, 105)
        self.assertFalse(closed.open)
        with self.assertRaises(FlowGone) as raised:
            self.table.flow_for_token(token)
        self.assertEqual(raised.exception.status, 430)
        self.assertEqual(len(self.table), 0)
        self.assertIsNone(self.table.close(connection.id))

    def test_flow_whose_connection_dropped_before_close_is_gone(self) -> None:
        connection = FakeConnection("WSS", id="wss-1f3a9c0b-3")
        token = self.table.open(connection).token
        connection.connected = False
        self.assertRaises(FlowGone, self.table.flow_for_token, token)

    def test_token_of_a_flow_never_seen_is_gone_not_tampered(self) -> None:
        # e.g. issued before a restart with a configured key: we made it, the flow is gone
        token = self.table.codec.encode("wss-deadbeef-9")
        self.assertRaises(FlowGone, self.table.flow_for_token, token)

    def test_tampered_token_is_403_even_when_flows_exist(self) -> None:
        flow = self.table.open(FakeConnection("WSS", id="wss-1f3a9c0b-4"))
        altered = ("B" if flow.token[0] == "A" else "A") + flow.token[1:]
        self.assertRaises(TamperedToken, self.table.flow_for_token, altered)

    def test_closing_tells_observers_with_the_bound_registrations(self) -> None:
        seen: list[tuple[Flow, set[object]]] = []
        self.table.on_close(lambda flow: seen.append((flow, set(flow.registrations))))
        connection = FakeConnection("WSS", id="wss-1f3a9c0b-5")
        self.table.open(connection)
        self.table.bind(connection.id, ("sip:alice@ims.localdomain", "<urn:uuid:1>", 1))
        self.table.bind(connection.id, ("sip:alice@ims.localdomain", "<urn:uuid:1>", 2))
        self.table.unbind(connection.id, ("sip:alice@ims.localdomain", "<urn:uuid:1>", 2))
        self.table.close(connection.id, "ping timeout")
        self.assertEqual(len(seen), 1)
        flow, registrations = seen[0]
        self.assertEqual(registrations, {("sip:alice@ims.localdomain", "<urn:uuid:1>", 1)})
        self.assertEqual(flow.close_reason, "ping timeout")

    def test_binding_to_a_closed_flow_fails(self) -> None:
        self.assertRaises(FlowGone, self.table.bind, "wss-1f3a9c0b-6", "reg")

    def test_two_connections_cannot_share_an_id(self) -> None:
        self.table.open(FakeConnection("WSS", id="same"))
        self.assertRaises(ValueError, self.table.open, FakeConnection("WSS", id="same"))

    def test_tokens_are_stable_and_distinct_per_flow(self) -> None:
        a = self.table.open(FakeConnection("WSS", id="wss-1f3a9c0b-7"))
        b = self.table.open(FakeConnection("WSS", id="wss-1f3a9c0b-8"))
        self.assertNotEqual(a.token, b.token)
        self.assertEqual(self.table.token_for("wss-1f3a9c0b-7"), a.token)
        self.assertTrue(re.fullmatch(r"[A-Za-z0-9_-]+", a.token))
