"""ini files → typed config; every error is one line naming file, section, key and reason."""

from __future__ import annotations

import os
import tempfile

from twisted.trial import unittest

from epcscf import config, config_values
from epcscf.config import ConfigError, Listener, load

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_INI = os.path.join(TOP, "etc", "epcscf.ini")

MINIMAL = {
    "sip": {"listen": "udp:127.0.0.1:0"},
    "ws": {"listen": "ws:127.0.0.1:0"},
    "core": {"mode": "external", "next_hop": "sip:icscf.example.net;transport=tcp"},
}


def ini(changes: dict[str, dict[str, str | None]] | None = None) -> str:
    """MINIMAL with keys changed (None removes a key) and sections added."""
    sections = {name: dict(keys) for name, keys in MINIMAL.items()}
    for name, keys in (changes or {}).items():
        for key, value in keys.items():
            if value is None:
                sections.setdefault(name, {}).pop(key, None)
            else:
                sections.setdefault(name, {})[key] = value
    return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) for name, keys in sections.items())


class ConfigTests(unittest.TestCase):
    def write(self, text: str, name: str = "epcscf.ini") -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def assertConfigError(self, text: str, message: str) -> ConfigError:
        path = self.write(text)
        error = self.assertRaises(ConfigError, load, [path])
        self.assertEqual(str(error), f"{path}: {message}")
        self.assertNotIn("\n", str(error))
        return error

    def test_default_file_loads(self) -> None:
        loaded = load([DEFAULT_INI])
        self.assertEqual(loaded.core.mode, "embedded")
        self.assertEqual(loaded.ws.listen, (Listener("ws", "127.0.0.1", 8080),))
        self.assertIn(Listener("udp", "127.0.0.1", 5060), loaded.sip.listen)
        self.assertTrue(os.path.isfile(loaded.core.users))
        self.assertTrue(loaded.manhole.enabled)
        self.assertEqual(loaded.service.state_dir, os.path.join(TOP, "var"))

    def test_values_are_typed_and_immutable(self) -> None:
        loaded = load([self.write(ini({"media": {"port_range": "30000-30100", "ice_mode": "LITE"}, "sip": {"t1": "0.25"}}))])
        self.assertEqual(loaded.media.port_range, (30000, 30100))
        self.assertEqual(loaded.media.ice_mode, "lite")
        self.assertEqual(loaded.sip.t1, 0.25)
        self.assertEqual(loaded.core.next_hop, ("sip:icscf.example.net;transport=tcp",))
        self.assertRaises(AttributeError, setattr, loaded.sip, "t1", 1.0)

    def test_later_files_override_earlier_ones(self) -> None:
        first = self.write(ini())
        second = self.write("[log]\nlevel = debug\nformat = json\n", "override.ini")
        loaded = load([first, second])
        self.assertEqual((loaded.log.level, loaded.log.format), ("debug", "json"))
        self.assertEqual(loaded.files, (first, second))

    def test_ipv6_listener(self) -> None:
        loaded = load([self.write(ini({"sip": {"listen": "udp:[::1]:5060, tcp:127.0.0.1:5060"}}))])
        self.assertEqual(loaded.sip.listen[0], Listener("udp", "::1", 5060))
        self.assertEqual(str(loaded.sip.listen[0]), "udp:[::1]:5060")

    def test_unknown_section(self) -> None:
        known = ", ".join(config.SECTIONS)
        self.assertConfigError(ini() + "[mdia]\n", f"[mdia]: unknown section (known: {known})")

    def test_unknown_key(self) -> None:
        error = self.assertConfigError(ini({"media": {"bind_adress": "127.0.0.1"}}), "[media] bind_adress: unknown key (known: advertised_address, bind_address, connect_timeout, consent_interval, consent_timeout, core_address, engine, ice_mode, port_range, video_codecs)")
        self.assertEqual((error.section, error.key), ("media", "bind_adress"))

    def test_bad_number(self) -> None:
        self.assertConfigError(ini({"sip": {"t1": "soon"}}), "[sip] t1: expected a number of seconds, got 'soon'")

    def test_negative_seconds(self) -> None:
        self.assertConfigError(ini({"sip": {"t2": "-4"}}), "[sip] t2: must be a positive number of seconds, got '-4'")

    def test_out_of_range_integer(self) -> None:
        self.assertConfigError(ini({"manhole": {"port": "70000"}}), "[manhole] port: must be between 0 and 65535, got 70000")

    def test_bad_boolean(self) -> None:
        self.assertConfigError(ini({"ws": {"allow_any_origin": "perhaps"}}), "[ws] allow_any_origin: expected true or false, got 'perhaps'")

    def test_bad_choice(self) -> None:
        self.assertConfigError(ini({"media": {"ice_mode": "half"}}), "[media] ice_mode: must be one of full, lite, got 'half'")

    def test_bad_listener_transport(self) -> None:
        self.assertConfigError(
            ini({"sip": {"listen": "sctp:127.0.0.1:5060"}}),
            "[sip] listen: transport 'sctp' in 'sctp:127.0.0.1:5060' must be one of udp, tcp, tls",
        )

    def test_bad_listener_address(self) -> None:
        self.assertConfigError(
            ini({"ws": {"listen": "ws:localhost:8080"}}),
            "[ws] listen: address 'localhost' in 'ws:localhost:8080' is not an IP address",
        )

    def test_bad_origin(self) -> None:
        self.assertConfigError(
            ini({"ws": {"allowed_origins": "wic.example.com"}}),
            "[ws] allowed_origins: 'wic.example.com' is not an origin like https://wic.example.com:443",
        )

    def test_trusted_sources(self) -> None:
        text = "10.0.0.0/8, 192.0.2.1, 192.0.2.2:5060, [2001:db8::1]:5060, 2001:db8::/32, scscf.ims.example:5070"
        loaded = load([self.write(ini({"core": {"trusted_sources": text}}))])
        self.assertEqual(len(loaded.core.trusted_sources), 6)
        self.assertEqual(load([self.write(ini())]).core.trusted_sources, ())  # default: next hops / embedded core

    def test_bad_trusted_sources(self) -> None:
        self.assertConfigError(
            ini({"core": {"trusted_sources": "10.0.0.0/33"}}), "[core] trusted_sources: '10.0.0.0/33' is not a network like 10.0.0.0/8"
        )
        self.assertConfigError(
            ini({"core": {"trusted_sources": "192.0.2.1:70000"}}), "[core] trusted_sources: port '70000' in '192.0.2.1:70000' is not 1-65535"
        )
        self.assertConfigError(
            ini({"core": {"trusted_sources": "any host"}}),
            "[core] trusted_sources: 'any host' is neither an IP address, a network nor a host name",
        )

    def test_bad_port_range(self) -> None:
        self.assertConfigError(ini({"media": {"port_range": "30000"}}), "[media] port_range: expected a port range like 20000-29999, got '30000'")

    def test_inverted_port_range(self) -> None:
        self.assertConfigError(ini({"media": {"port_range": "30000-20000"}}), "[media] port_range: expected 1024 <= low < high <= 65535, got '30000-20000'")

    def test_missing_file_named_by_a_key(self) -> None:
        path = self.write(ini({"manhole": {"enabled": "true", "users": "nowhere.users"}}))
        error = self.assertRaises(ConfigError, load, [path])
        missing = os.path.join(os.path.dirname(os.path.abspath(path)), "nowhere.users")
        self.assertEqual(str(error), f"{path}: [manhole] users: file {missing} does not exist")

    def test_overload_section(self) -> None:
        loaded = load([self.write(ini({"overload": {"lag_high": "0.3", "max_new_per_second": "250", "max_connections_per_ip": "0"}}))])
        self.assertEqual(
            (loaded.overload.lag_high, loaded.overload.max_new_per_second, loaded.overload.max_connections_per_ip),
            (0.3, 250.0, 0),
        )
        self.assertTrue(load([self.write(ini())]).overload.enabled)  # on by default, generous limits
        self.assertEqual(load([self.write(ini())]).overload.max_connections_per_ip, 10000)

    def test_bad_overload_values(self) -> None:
        self.assertConfigError(
            ini({"overload": {"flow_messages_per_second": "-1"}}),
            "[overload] flow_messages_per_second: must be 0 (no limit) or a positive number per second, got '-1'",
        )
        self.assertConfigError(
            ini({"overload": {"lag_low": "0.5"}}),
            "[overload] lag_low: must be below lag_high (0.1 s): the band between them is the hysteresis",
        )

    def test_wss_without_certificate(self) -> None:
        self.assertConfigError(
            ini({"ws": {"listen": "wss:127.0.0.1:0"}}), "[ws] certificate: a wss listener needs a certificate"
        )

    def test_external_core_without_next_hop(self) -> None:
        self.assertConfigError(
            ini({"core": {"next_hop": None}}),
            "[core] next_hop: mode = external needs next_hop (the I-CSCF or S-CSCF URI)",
        )

    def test_sip_listener_on_every_address_needs_public_address(self) -> None:
        # The core must be given an address it can reach in Via/Record-Route/Path, never 0.0.0.0.
        self.assertConfigError(
            ini({"sip": {"listen": "tcp:127.0.0.1:0, udp:0.0.0.0:5060"}}),
            "[sip] public_address: the listener udp:0.0.0.0:5060 is on every address: set the one the core reaches us at",
        )
        self.assertConfigError(
            ini({"sip": {"listen": "tcp:[::]:5060"}}),
            "[sip] public_address: the listener tcp:[::]:5060 is on every address: set the one the core reaches us at",
        )
        loaded = load([self.write(ini({"sip": {"listen": "udp:0.0.0.0:5060", "public_address": "192.0.2.10"}}))])
        self.assertEqual(loaded.sip.public_address, "192.0.2.10")

    def test_media_addresses_written_into_sdp_are_never_every_address(self) -> None:
        # A multihomed edge bound to every address must say which one WICs reach (RFC 8445 §5.1.1.1).
        self.assertConfigError(
            ini({"media": {"bind_address": "0.0.0.0"}}),
            "[media] bind_address: 0.0.0.0 is every address, which no WIC can send to: "
            "set bind_address to the WIC-side address, or advertised_address to the one WICs reach",
        )
        self.assertConfigError(
            ini({"media": {"bind_address": "198.51.100.10", "advertised_address": "::"}}),
            "[media] advertised_address: :: is every address, which no WIC can send to: "
            "set bind_address to the WIC-side address, or advertised_address to the one WICs reach",
        )
        self.assertConfigError(
            ini({"media": {"core_address": "0.0.0.0"}}),
            "[media] core_address: 0.0.0.0 is every address: set the address the core sends RTP to",
        )
        loaded = load([self.write(ini({"media": {"bind_address": "0.0.0.0", "advertised_address": "198.51.100.10"}}))])
        self.assertEqual((loaded.media.bind_address, loaded.media.advertised_address), ("0.0.0.0", "198.51.100.10"))

    def test_no_ws_listener(self) -> None:
        self.assertConfigError(
            ini({"ws": {"listen": None, "allow_any_origin": "true"}}),
            "[ws] listen: at least one ws or wss listener is needed: it is how WICs reach the eP-CSCF",
        )

    def test_not_an_ini_file(self) -> None:
        path = self.write("listen = 1\n")
        error = self.assertRaises(ConfigError, load, [path])
        self.assertTrue(str(error).startswith(f"{path}: not an ini file: File contains no section headers."), str(error))
        self.assertNotIn("\n", str(error))

    def test_unreadable_file(self) -> None:
        path = os.path.join(tempfile.gettempdir(), "epcscf-no-such-file.ini")
        error = self.assertRaises(ConfigError, load, [path])
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")

    def test_reference_lists_every_key(self) -> None:
        reference = config.describe()
        for name, cls in config.SECTIONS.items():
            self.assertIn(f"[{name}]", reference)
            for f in config.fields(cls):
                self.assertIn(f"  {f.name} = ", reference)

    def test_the_converters_public_names_are_importable_from_epcscf_config(self) -> None:
        # callers import from epcscf.config only; epcscf.config_values is where these live
        for name in ("ConfigError", "Listener", "Network", "parse_trusted_source", "DIGEST_ALGORITHMS", "JWS_ALGORITHMS", "VIDEO_CODECS"):
            self.assertIs(getattr(config, name, None), getattr(config_values, name), name)
            self.assertIn(name, config.__all__)


class RtpengineConfigTests(unittest.TestCase):
    """[media] engine and [rtpengine] (the ng control addresses of the rtpengine nodes)."""

    write = ConfigTests.write
    assertConfigError = ConfigTests.assertConfigError

    def test_rtpengine_nodes_with_weights(self) -> None:
        path = self.write(ini({"media": {"engine": "rtpengine"},
                               "rtpengine": {"nodes": "udp:127.0.0.1:2223, udp:[::1]:2224=3", "flags": "strict-source"}}))
        config = load([path])
        self.assertEqual(config.media.engine, "rtpengine")
        self.assertEqual(config.rtpengine.nodes, (("127.0.0.1", 2223, 1), ("::1", 2224, 3)))
        self.assertEqual(config.rtpengine.flags, ("strict-source",))

    def test_rtpengine_engine_needs_nodes(self) -> None:
        self.assertConfigError(ini({"media": {"engine": "rtpengine"}}),
                               "[rtpengine] nodes: [media] engine = rtpengine needs at least one node")

    def test_rtpengine_node_must_be_udp_address_and_port(self) -> None:
        self.assertConfigError(ini({"rtpengine": {"nodes": "tcp:127.0.0.1:2223"}}),
                               "[rtpengine] nodes: 'tcp:127.0.0.1:2223' is not a node like udp:127.0.0.1:2223 (weight: udp:127.0.0.1:2223=2)")
        self.assertConfigError(ini({"rtpengine": {"nodes": "udp:127.0.0.1"}}),
                               "[rtpengine] nodes: 'udp:127.0.0.1' has no port (rtpengine's listen-ng port, e.g. 2223)")


class ReconnectGraceTests(unittest.TestCase):
    """[calls] reconnect_grace: 10 s by default, 0 switches it off, anything else is one line."""

    write = ConfigTests.write
    assertConfigError = ConfigTests.assertConfigError

    def test_default_off_and_bad_values(self) -> None:
        self.assertEqual(load([self.write(ini())]).calls.reconnect_grace, 10.0)
        self.assertEqual(load([self.write(ini({"calls": {"reconnect_grace": "0"}}))]).calls.reconnect_grace, 0.0)
        self.assertEqual(load([self.write(ini({"calls": {"reconnect_grace": "2.5"}}))]).calls.reconnect_grace, 2.5)
        self.assertConfigError(ini({"calls": {"reconnect_grace": "-1"}}),
                               "[calls] reconnect_grace: must be 0 (off) or a positive number of seconds, got '-1'")
        self.assertConfigError(ini({"calls": {"reconnect_grace": "soon"}}),
                               "[calls] reconnect_grace: expected a number of seconds, got 'soon'")


class UntrustedSourceRateTests(unittest.TestCase):
    """[overload] untrusted_source_messages_per_second: 200 by default, 0 switches it off."""

    write = ConfigTests.write
    assertConfigError = ConfigTests.assertConfigError

    def test_default_off_and_bad_values(self) -> None:
        self.assertEqual(load([self.write(ini())]).overload.untrusted_source_messages_per_second, 200.0)
        off = load([self.write(ini({"overload": {"untrusted_source_messages_per_second": "0"}}))])
        self.assertEqual(off.overload.untrusted_source_messages_per_second, 0.0)
        self.assertConfigError(ini({"overload": {"untrusted_source_messages_per_second": "-5"}}),
                               "[overload] untrusted_source_messages_per_second: must be 0 (no limit) or a positive number per second, got '-5'")
        self.assertConfigError(ini({"overload": {"untrusted_source_messages_per_second": "lots"}}),
                               "[overload] untrusted_source_messages_per_second: expected a number per second, got 'lots'")


class HistoryUnansweredTests(unittest.TestCase):
    """[calls] history_unanswered: 60 s by default, 0 allowed, anything else is one line."""

    write = ConfigTests.write
    assertConfigError = ConfigTests.assertConfigError

    def test_default_and_bad_values(self) -> None:
        self.assertEqual(load([self.write(ini())]).calls.history_unanswered, 60.0)
        self.assertEqual(load([self.write(ini({"calls": {"history_unanswered": "0"}}))]).calls.history_unanswered, 0.0)
        self.assertConfigError(ini({"calls": {"history_unanswered": "-5"}}),
                               "[calls] history_unanswered: must be 0 (off) or a positive number of seconds, got '-5'")


class RtpengineTcpNgPortTests(unittest.TestCase):
    """[rtpengine] tcp_ng_port: 0 (UDP pages) by default, a port number, anything else one line."""

    write = ConfigTests.write
    assertConfigError = ConfigTests.assertConfigError

    def test_default_a_port_and_bad_values(self) -> None:
        self.assertEqual(load([self.write(ini())]).rtpengine.tcp_ng_port, 0)
        self.assertEqual(load([self.write(ini({"rtpengine": {"tcp_ng_port": "2224"}}))]).rtpengine.tcp_ng_port, 2224)
        self.assertConfigError(ini({"rtpengine": {"tcp_ng_port": "70000"}}),
                               "[rtpengine] tcp_ng_port: must be between 0 and 65535, got 70000")
        self.assertConfigError(ini({"rtpengine": {"tcp_ng_port": "tcp"}}),
                               "[rtpengine] tcp_ng_port: expected a whole number, got 'tcp'")
