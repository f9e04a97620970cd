"""IceAgentConfig rejects what would only fail later, with a message naming the field."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.ice import IceAgentConfig


class IceAgentConfigTests(unittest.TestCase):
    def test_defaults_follow_rfc_7675_and_req_o08(self) -> None:
        config = IceAgentConfig()
        self.assertEqual(
            (config.consent_interval, config.consent_timeout, config.consent_min_interval, config.connect_timeout, config.max_pairs),
            (5.0, 30.0, 4.0, 10.0, 100),
        )

    def test_bad_values_name_the_field(self) -> None:
        cases = {
            "bind_addresses": {"bind_addresses": ("not-an-ip",)},
            "advertised_address": {"advertised_address": "example.com"},
            "port_range": {"port_range": (3000, 2000)},
            "mode": {"mode": "half"},
            "consent_timeout": {"consent_timeout": 0},
            "max_pairs": {"max_pairs": 0},
        }
        for field, kwargs in cases.items():
            error = self.assertRaises(ValueError, IceAgentConfig, **kwargs)  # type: ignore[arg-type]
            self.assertIn(field, str(error))

    def test_advertised_address_needs_a_single_bind_address(self) -> None:
        self.assertRaises(ValueError, IceAgentConfig, bind_addresses=("10.0.0.1", "10.0.0.2"), advertised_address="192.0.2.1")
        IceAgentConfig(bind_addresses=("10.0.0.1",), advertised_address="192.0.2.1")
