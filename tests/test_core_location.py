"""Location service of the embedded core: bindings, replacement and expiry on the clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.core.location import Binding, LocationService, aor_of, same_contact
from epcscf.sip.uri import parse_uri

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

    def test_contacts_compare_by_rfc3261_uri_rules(self) -> None:
        self.assertTrue(same_contact("sip:Bob@EXAMPLE.com", "sip:Bob@example.com;ob"))
        self.assertFalse(same_contact("sip:Bob@example.com", "sip:bob@example.com"))
        self.assertFalse(same_contact("sip:b@example.com", "sip:b@example.com;transport=tcp"))

    def test_aor_drops_port_and_parameters_and_lowercases_host(self) -> None:
        self.assertEqual(aor_of(parse_uri("sip:Alice@IMS.localdomain:5060;transport=tcp")), "sip:Alice@ims.localdomain")
        self.assertEqual(aor_of(parse_uri("tel:+15550001;phone-context=x")), "tel:+15550001")

    def test_observers_hear_every_change_including_expiry(self) -> None:
        changes: list[str] = []
        self.location.observers.append(changes.append)
        first = binding("sip:a@h1", at=0, expires=10)
        self.location.put(first)
        self.location.put(binding("sip:a@h2", at=0, expires=20))
        self.location.remove(first)
        self.assertEqual(changes, [AOR, AOR, AOR])
        self.clock.advance(25)
        self.location.purge_expired()
        self.assertEqual(changes, [AOR] * 4)
        self.location.remove_all(AOR)  # nothing left: no change to report
        self.assertEqual(len(changes), 4)
