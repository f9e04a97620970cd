"""RFC 3263 §4 next-hop resolution against an in-memory authority and a real DNS server."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, reactor
from twisted.names import authority, client, dns, server
from twisted.trial import unittest

from epcscf.sip.resolver import NextHopResolver, SrvRecord, dns_name_problem, order_srv
from epcscf.sip.resolver import Target

ZONE = "ims.example"


class MemoryAuthority(authority.FileAuthority):
    """An authority for one zone built from (name, record) pairs (a fake ``IResolver``)."""

    def loadFile(self, zone: list[tuple[str, Any]]) -> None:  # type: ignore[override]
        self.records = {}
        self.soa = (
            ZONE.encode(),
            dns.Record_SOA(mname=b"ns." + ZONE.encode(), rname=b"root." + ZONE.encode(), serial=1, minimum=60),
        )
        self.records[ZONE.encode()] = [self.soa[1]]
        for name, record in zone:
            self.records.setdefault(name.lower().encode(), []).append(record)


def naptr(order: int, pref: int, service: str, replacement: str) -> dns.Record_NAPTR:
    return dns.Record_NAPTR(order, pref, b"s", service.encode(), b"", replacement.encode())


BASE_ZONE = [
    ("a.ims.example", dns.Record_A("192.0.2.1")),
    ("b.ims.example", dns.Record_A("192.0.2.2")),
    ("b.ims.example", dns.Record_AAAA("2001:db8::2")),
]


def resolver_for(zone: list[tuple[str, Any]], **kwargs: Any) -> NextHopResolver:
    return NextHopResolver(MemoryAuthority(BASE_ZONE + zone), rng=random.Random(7), **kwargs)


class NumericAndExplicitTests(unittest.TestCase):
    def test_numeric_ip_is_used_directly_with_udp(self) -> None:
        # RFC 3263 §4.1/§4.2: numeric IP, no transport → UDP, default port.
        targets = self.successResultOf(resolver_for([]).resolve("192.0.2.9"))
        self.assertEqual(targets, [Target("UDP", "192.0.2.9", 5060, None)])

    def test_numeric_ip_with_transport_and_port(self) -> None:
        targets = self.successResultOf(resolver_for([]).resolve("192.0.2.9", 5080, "tcp"))
        self.assertEqual(targets, [Target("TCP", "192.0.2.9", 5080, None)])

    def test_sips_numeric_defaults_to_tls_5061(self) -> None:
        targets = self.successResultOf(resolver_for([]).resolve("[2001:db8::5]", None, None, secure=True))
        self.assertEqual(targets, [Target("TLS", "2001:db8::5", 5061, None)])

    def test_explicit_port_skips_srv_and_uses_a_and_aaaa(self) -> None:
        zone = [("_sip._udp.b.ims.example", dns.Record_SRV(0, 0, 9999, "a.ims.example"))]
        targets = self.successResultOf(resolver_for(zone).resolve("b.ims.example", 5070))
        self.assertEqual(
            targets,
            [Target("UDP", "192.0.2.2", 5070, "b.ims.example"), Target("UDP", "2001:db8::2", 5070, "b.ims.example")],
        )

    def test_sips_over_udp_gives_nothing(self) -> None:
        self.assertEqual(self.successResultOf(resolver_for([]).resolve("a.ims.example", None, "udp", True)), [])


class SrvTests(unittest.TestCase):
    def test_transport_param_uses_that_srv(self) -> None:
        zone = [
            ("_sip._tcp.ims.example", dns.Record_SRV(10, 0, 5062, "b.ims.example")),
            ("_sip._tcp.ims.example", dns.Record_SRV(5, 0, 5061, "a.ims.example")),
            ("_sip._udp.ims.example", dns.Record_SRV(0, 0, 1, "a.ims.example")),
        ]
        targets = self.successResultOf(resolver_for(zone).resolve("ims.example", None, "TCP"))
        # RFC 2782: lower priority first; every address of each target in turn.
        self.assertEqual(
            targets,
            [
                Target("TCP", "192.0.2.1", 5061, "ims.example"),
                Target("TCP", "192.0.2.2", 5062, "ims.example"),
                Target("TCP", "2001:db8::2", 5062, "ims.example"),
            ],
        )

    def test_transport_param_without_srv_falls_back_to_a_records(self) -> None:
        targets = self.successResultOf(resolver_for([]).resolve("a.ims.example", None, "tcp"))
        self.assertEqual(targets, [Target("TCP", "192.0.2.1", 5060, "a.ims.example")])

    def test_no_naptr_tries_srv_for_each_supported_transport(self) -> None:
        zone = [
            ("_sip._tcp.ims.example", dns.Record_SRV(0, 0, 5060, "b.ims.example")),
            ("_sips._tcp.ims.example", dns.Record_SRV(0, 0, 5061, "a.ims.example")),
        ]
        resolver = resolver_for(zone, supported=("TCP", "TLS"))
        targets = self.successResultOf(resolver.resolve("ims.example"))
        self.assertEqual(
            [(t.transport, t.host, t.port) for t in targets],
            [("TCP", "192.0.2.2", 5060), ("TCP", "2001:db8::2", 5060), ("TLS", "192.0.2.1", 5061)],
        )

    def test_nothing_but_a_records_gives_udp_default_port(self) -> None:
        targets = self.successResultOf(resolver_for([]).resolve("a.ims.example"))
        self.assertEqual(targets, [Target("UDP", "192.0.2.1", 5060, "a.ims.example")])

    def test_unknown_name_gives_empty_list(self) -> None:
        self.assertEqual(self.successResultOf(resolver_for([]).resolve("nowhere.ims.example")), [])

    def test_weighted_order_within_priority_follows_weights(self) -> None:
        records = [SrvRecord(1, 90, 1, "heavy"), SrvRecord(1, 10, 2, "light"), SrvRecord(0, 0, 3, "first")]
        firsts_after_priority0 = [order_srv(records, random.Random(seed))[1].target for seed in range(400)]
        self.assertTrue(all(order_srv(records, random.Random(s))[0].target == "first" for s in range(20)))
        heavy = firsts_after_priority0.count("heavy")
        self.assertGreater(heavy, 300)
        self.assertLess(heavy, 395)


class NaptrTests(unittest.TestCase):
    def test_naptr_order_then_preference_picks_transports(self) -> None:
        zone = [
            ("ims.example", naptr(20, 10, "SIP+D2U", "_sip._udp.ims.example")),
            ("ims.example", naptr(10, 20, "SIP+D2T", "_sip._tcp.ims.example")),
            ("ims.example", naptr(10, 10, "SIPS+D2T", "_sips._tcp.ims.example")),
            ("ims.example", naptr(5, 10, "SIP+D2S", "_sip._sctp.ims.example")),  # unsupported: ignored
            ("_sip._udp.ims.example", dns.Record_SRV(0, 0, 5060, "a.ims.example")),
            ("_sip._tcp.ims.example", dns.Record_SRV(0, 0, 5060, "a.ims.example")),
            ("_sips._tcp.ims.example", dns.Record_SRV(0, 0, 5061, "a.ims.example")),
        ]
        targets = self.successResultOf(resolver_for(zone).resolve("ims.example"))
        self.assertEqual([t.transport for t in targets], ["TLS", "TCP", "UDP"])
        self.assertEqual(targets[0], Target("TLS", "192.0.2.1", 5061, "ims.example"))

    def test_sips_uri_only_uses_sips_naptr(self) -> None:
        zone = [
            ("ims.example", naptr(10, 10, "SIP+D2U", "_sip._udp.ims.example")),
            ("ims.example", naptr(20, 10, "SIPS+D2T", "_sips._tcp.ims.example")),
            ("_sip._udp.ims.example", dns.Record_SRV(0, 0, 5060, "a.ims.example")),
            ("_sips._tcp.ims.example", dns.Record_SRV(0, 0, 5061, "b.ims.example")),
        ]
        targets = self.successResultOf(resolver_for(zone).resolve("ims.example", secure=True))
        self.assertEqual({t.transport for t in targets}, {"TLS"})


class RealDnsServerTests(unittest.TestCase):
    """The same through ``twisted.names.client.Resolver`` talking to a server on 127.0.0.1:0."""

    def setUp(self) -> None:
        zone = [("_sip._tcp.ims.example", dns.Record_SRV(0, 0, 5070, "a.ims.example"))]
        factory = server.DNSServerFactory(authorities=[MemoryAuthority(BASE_ZONE + zone)])
        protocol = dns.DNSDatagramProtocol(factory)
        self.port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = client.Resolver(servers=[("127.0.0.1", self.port.getHost().port)])

        def stop_client() -> None:
            for call in list(getattr(self.client, "_parseCall", None) and [self.client._parseCall] or []):
                if call.active():
                    call.cancel()
            for proto in list(self.client.connections):
                proto.transport.loseConnection()

        self.addCleanup(stop_client)

    @defer.inlineCallbacks
    def test_srv_then_a_over_real_dns(self) -> Any:
        resolver = NextHopResolver(self.client, rng=random.Random(1))
        targets = yield resolver.resolve("ims.example", None, "tcp")
        self.assertEqual(targets, [Target("TCP", "192.0.2.1", 5070, "ims.example")])
        none = yield resolver.resolve("missing.ims.example", None, "tcp")
        self.assertEqual(none, [])


class HostsThatAreNoDnsNamesTests(unittest.TestCase):
    """RFC 3261 §25.1 / RFC 1035 §2.3.4: a host from a message that cannot be a DNS name is
    refused before any lookup; a lookup failing in any way is "no records"."""

    def test_names_that_cannot_be_looked_up(self) -> None:
        for host in ("", "a" * 64 + ".example", ("abcdefghi." * 26) + "example", "a..example",
                     "under_score.example", "-lead.example", "trail-.example", "sp ace.example", "\udcff.example"):
            self.assertIsNotNone(dns_name_problem(host), host)
        for host in ("a" * 63 + ".example", "ims.example", "xn--bcher-kva.example", "bücher.example", "1.2.3"):
            self.assertIsNone(dns_name_problem(host), host)

    def test_no_lookup_for_a_host_that_is_no_dns_name(self) -> None:
        class Refuse:
            def __getattr__(self, name: str) -> Any:
                raise AssertionError(f"{name} called")

        resolver = NextHopResolver(Refuse())
        self.assertEqual(self.successResultOf(resolver.resolve("a" * 64 + ".example")), [])
        self.assertEqual(self.successResultOf(resolver.resolve("a..example", 5060, "udp")), [])

    def test_socket_and_codec_errors_of_a_lookup_are_no_records(self) -> None:
        for error in (OSError(101, "Network is unreachable"), UnicodeError("label too long"), RuntimeError("resolver bug")):

            class Failing:
                def __getattr__(self, name: str) -> Any:
                    def lookup(*args: Any) -> defer.Deferred:
                        return defer.fail(error)

                    return lookup

            self.assertEqual(self.successResultOf(NextHopResolver(Failing()).resolve("ims.example")), [], error)

    def test_a_lookup_raising_at_once_is_no_records(self) -> None:
        class Raising:
            def __getattr__(self, name: str) -> Any:
                def lookup(*args: Any) -> defer.Deferred:
                    raise UnicodeError("label empty or too long")

                return lookup

        self.assertEqual(self.successResultOf(NextHopResolver(Raising()).resolve("ims.example", 5060)), [])


class NumericUriWithoutCoroutineTests(unittest.TestCase):
    """``resolve_uri`` of a numeric URI answers like ``resolve`` (RFC 3263 §4.2), at once and
    without the resolver's coroutine."""

    URIS = ("sip:192.0.2.9", "sip:192.0.2.9:5080;transport=tcp", "sips:[2001:db8::5]", "sips:192.0.2.9;transport=udp",
            "sips:192.0.2.9;transport=tcp", "sip:bob@b.ims.example;maddr=192.0.2.7", "sip:192.0.2.9;transport=ws")

    def test_same_targets_as_resolve_and_no_coroutine(self) -> None:
        from epcscf.sip.uri import parse_uri

        for text in self.URIS:
            uri = parse_uri(text)
            resolver = resolver_for([])
            params = {k.lower(): v for k, v in uri.params.items()}
            expected = self.successResultOf(resolver.resolve(params.get("maddr") or uri.host, uri.port, params.get("transport"),
                                                             uri.scheme == "sips"))
            resolver._resolve = None  # type: ignore[assignment]  # any use of the coroutine fails
            self.assertEqual(self.successResultOf(resolver.resolve_uri(uri)), expected, text)

    def test_a_name_still_goes_through_dns(self) -> None:
        from epcscf.sip.uri import parse_uri

        targets = self.successResultOf(resolver_for([]).resolve_uri(parse_uri("sip:a.ims.example:5070")))
        self.assertEqual(targets, [Target("UDP", "192.0.2.1", 5070, "a.ims.example")])
