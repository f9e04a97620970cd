"""The border checks as functions: the WIC-side Route rule, the core-side source list."""

from __future__ import annotations

import ipaddress

from twisted.trial import unittest

from epcscf.pcscf import guard
from epcscf.pcscf.edge import EdgeAddresses
from epcscf.pcscf.flows import FlowTokenCodec
from epcscf.sip.connection import Address
from epcscf.sip.message import Headers, Request
from epcscf.sip.resolver import Target

ADDRESSES = EdgeAddresses("192.0.2.10", 5060, "udp", "192.0.2.11", 443, "wss")


def request(uri: str, routes: list[str]) -> Request:
    message = Request("BYE", uri)
    message.headers = Headers.from_pairs([("Route", value) for value in routes])
    return message


class WicRouteTests(unittest.TestCase):
    def setUp(self) -> None:
        self.codec = FlowTokenCodec(b"k" * 32)
        self.token = self.codec.encode("wss-7")

    def check(self, routes: list[str], flow_id: str = "wss-7") -> guard.Refusal | None:
        return guard.check_wic_route(request("sip:bob@198.51.100.20", routes), flow_id, ADDRESSES.is_wic_side, self.codec)

    def test_our_wic_side_entry_with_this_flows_token_passes(self) -> None:
        self.assertIsNone(self.check([f"<{ADDRESSES.wic_uri(self.token)}>", f"<{ADDRESSES.core_uri()}>"]))
        self.assertIsNone(self.check([f"<sip:{self.token}@192.0.2.11;transport=wss;lr>"]))  # default port

    def test_everything_else_is_refused_with_its_reason(self) -> None:
        other = self.codec.encode("wss-8")
        cases = {
            "no Route": ([], guard.NOT_IN_DIALOG),
            "a foreign host": ([f"<sip:{self.token}@198.51.100.1:443;lr>"], guard.NOT_IN_DIALOG),
            "our core side": ([f"<{ADDRESSES.core_uri(self.token)}>"], guard.NOT_IN_DIALOG),
            "ours second": (["<sip:198.51.100.1;lr>", f"<{ADDRESSES.wic_uri(self.token)}>"], guard.NOT_IN_DIALOG),
            "not a URI": (["<tel:+15551234>"], guard.NOT_IN_DIALOG),
            "no user part": ([f"<sip:{ADDRESSES.wic_host}:{ADDRESSES.wic_port};lr>"], guard.BAD_TOKEN),
            "made up": ([f"<{ADDRESSES.wic_uri('MADEUPTOKEN')}>"], guard.BAD_TOKEN),
            "another key": ([f"<{ADDRESSES.wic_uri(FlowTokenCodec(b'x' * 32).encode('wss-7'))}>"], guard.BAD_TOKEN),
            "another flow": ([f"<{ADDRESSES.wic_uri(other)}>"], guard.OTHER_FLOW),
        }
        for name, (routes, expected) in cases.items():
            self.assertEqual(self.check(routes), expected, name)


class NextHopIsCoreTests(unittest.TestCase):
    SERVICE_ROUTE = ("<sip:orig@scscf.ims.example:6060;lr>",)

    def test_service_route_host_trusted_source_or_fixed_target(self) -> None:
        trusted = guard.TrustedSources([guard.SourceRule(ipaddress.ip_network("10.0.0.0/8"))])
        fixed = [Target("UDP", "127.0.0.1", 5070)]
        yes = [
            request("sip:bob@x", ["<sip:scscf.ims.example:6060;lr>"]),
            request("sip:bob@x", ["<sip:10.1.2.3;lr>"]),
            request("sip:bob@127.0.0.1:5070", []),
        ]
        no = [
            request("sip:bob@x", ["<sip:scscf.ims.example;lr>"]),  # 5060 is not the Service-Route's 6060
            request("sip:bob@x", ["<sip:victim.example;lr>"]),
            request("sip:bob@victim.example", []),
            request("sip:bob@10.1.2.3;maddr=198.51.100.9", []),
            request("sip:bob@127.0.0.1:5071", []),
        ]
        for message in yes:
            self.assertTrue(guard.next_hop_is_core(message, self.SERVICE_ROUTE, trusted, fixed), message.serialize())
        for message in no:
            self.assertFalse(guard.next_hop_is_core(message, self.SERVICE_ROUTE, trusted, fixed), message.serialize())


class TrustedSourcesTests(unittest.TestCase):
    def test_networks_hosts_and_ports(self) -> None:
        trusted = guard.TrustedSources()
        trusted.add_rule(guard.SourceRule(ipaddress.ip_network("10.0.0.0/8")))
        trusted.add("192.0.2.7", 5060)
        trusted.add("2001:db8::7")
        self.assertTrue(trusted.allows(Address("10.200.0.1", 40000)))
        self.assertTrue(trusted.allows(Address("192.0.2.7", 5060)))
        self.assertFalse(trusted.allows(Address("192.0.2.7", 5061)))
        self.assertTrue(trusted.allows(Address("2001:db8::7", 1234)))
        self.assertTrue(trusted.allows(Address("::ffff:10.0.0.1", 5060)))  # a dual-stack socket's view
        self.assertFalse(trusted.allows(Address("11.0.0.1", 5060)))
        self.assertFalse(trusted.allows(Address("not-an-address", 5060)))
        trusted.add("192.0.2.7", 5060)
        self.assertEqual(len(trusted), 3)  # no duplicates
