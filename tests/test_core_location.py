"""Location service of the embedded core: bindings, replacement and expiry on the clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.core.location import Binding, LocationService, contact_key

AOR = "sip:alice@ims.localdomain"


def binding(contact: str, at: float, expires: float = 100, instance: str | None = None, reg_id: int | None = None, q: float = 1.0) -> Binding:
    return Binding(AOR, contact, "", (), instance, reg_id, "c", 1, at + expires, at, q)


class LocationTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.location = LocationService(self.clock)

    def test_binding_lives_until_its_expiry_instant(self) -> None:
        self.location.put(binding("sip:a@h1", at=0, expires=100))
        self.clock.advance(99.5)
        self.assertEqual(len(self.location.bindings(AOR)), 1)
        self.assertEqual(self.location.bindings(AOR)[0].remaining(self.clock.seconds()), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.location.bindings(AOR), [])
        self.assertEqual(list(self.location.aors()), [])

    def test_same_contact_replaces(self) -> None:
        self.location.put(binding("sip:a@H1;transport=TCP", at=0))
        self.location.put(binding("sip:a@h1;transport=tcp", at=5))
        [only] = self.location.bindings(AOR)
        self.assertEqual(only.registered_at, 5)

    def test_same_flow_replaces_whatever_the_contact(self) -> None:
        self.location.put(binding("sip:a@h1", at=0, instance="urn:x", reg_id=1))
        self.location.put(binding("sip:a@h2", at=1, instance="urn:x", reg_id=1))
        self.location.put(binding("sip:a@h3", at=2, instance="urn:x", reg_id=2))
        self.assertEqual([b.contact for b in self.location.bindings(AOR)], ["sip:a@h3", "sip:a@h2"])
        self.assertEqual(self.location.find_flow(AOR, "urn:x", 1).contact, "sip:a@h2")

    def test_order_is_q_then_most_recent(self) -> None:
        self.location.put(binding("sip:a@h1", at=0, q=1.0))
        self.location.put(binding("sip:a@h2", at=1, q=0.5))
        self.location.put(binding("sip:a@h3", at=2, q=1.0))
        self.assertEqual([b.contact for b in self.location.bindings(AOR)], ["sip:a@h3", "sip:a@h1", "sip:a@h2"])

    def test_purge_drops_expired_bindings_of_every_aor(self) -> None:
        self.location.put(binding("sip:a@h1", at=0, expires=10))
        self.location.put(binding("sip:a@h2", at=0, expires=20))
        self.clock.advance(15)
        self.assertEqual(self.location.purge_expired(), 1)
        self.assertEqual(self.location.find(AOR, "sip:a@h2").contact, "sip:a@h2")

    def test_contact_key_ignores_case_of_host_but_not_of_user(self) -> None:
        self.assertEqual(contact_key("<sip:Bob@EXAMPLE.com>"), contact_key("sip:Bob@example.com;ob"))
        self.assertNotEqual(contact_key("sip:Bob@example.com"), contact_key("sip:bob@example.com"))
        self.assertNotEqual(contact_key("sip:b@example.com"), contact_key("sip:b@example.com;transport=tcp"))
