"""Registrations by flow (the index every request from a WIC reads) stay equal to a full scan."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.registration import RegistrationBinding, Registrations
from tests.test_pcscf_registration import INSTANCE, ok, register


def scanned(registrations: Registrations, flow_id: str) -> list[RegistrationBinding]:
    return [binding for binding in registrations.all() if binding.flow_id == flow_id]


class FlowIndexTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registrations = Registrations(self.clock)

    def assertIndexMatchesScan(self, *flows: str) -> None:
        for flow in flows:
            self.assertEqual(self.registrations.for_flow(flow), scanned(self.registrations, flow))

    def test_many_flows_each_see_only_their_own_binding(self) -> None:
        for n in range(50):
            request = register(f"<sip:u{n}@x{n}.invalid;transport=ws>")
            self.registrations.record(request, ok(request), f"flow-{n}")
        self.assertEqual([b.contact for b in self.registrations.for_flow("flow-7")], ["<sip:u7@x7.invalid;transport=ws>"])
        self.assertIndexMatchesScan(*(f"flow-{n}" for n in range(50)))
        self.assertEqual(self.registrations.for_flow("flow-unknown"), [])
        self.assertIsNone(self.registrations.registration_for_request("flow-unknown"))

    def test_newest_binding_on_a_flow_is_the_one_requests_use(self) -> None:
        first = register("<sip:a@x.invalid;transport=ws>")
        self.registrations.record(first, ok(first), "flow-1")
        self.clock.advance(5)
        second = register("<sip:b@x.invalid;transport=ws>")
        [newest] = self.registrations.record(second, ok(second), "flow-1")
        self.assertEqual(len(self.registrations.for_flow("flow-1")), 2)
        self.assertIs(self.registrations.registration_for_request("flow-1"), newest)

    def test_expiry_deregistration_move_and_close_leave_the_index_equal_to_a_scan(self) -> None:
        moving = f"<sip:a@x.invalid;transport=ws;ob>;+sip.instance={INSTANCE};reg-id=1"
        request = register(moving)
        self.registrations.record(request, ok(request, 600), "flow-1")
        short = register("<sip:s@x.invalid;transport=ws>")
        self.registrations.record(short, ok(short, 100), "flow-3")
        leaving = register("<sip:l@x.invalid;transport=ws>")
        self.registrations.record(leaving, ok(leaving), "flow-4")

        again = register(moving.replace("sip:a@x", "sip:a@y"))  # RFC 5626 §6: same instance, new flow
        self.registrations.record(again, ok(again), "flow-2")
        self.assertEqual(self.registrations.for_flow("flow-1"), [])
        self.assertEqual(len(self.registrations.for_flow("flow-2")), 1)

        self.clock.advance(100)  # flow-3's binding expires
        self.assertEqual(self.registrations.for_flow("flow-3"), [])

        goodbye = register("<sip:l@x.invalid;transport=ws>", expires="0")
        self.registrations.record(goodbye, ok(goodbye, None), "flow-4")
        self.assertEqual(self.registrations.for_flow("flow-4"), [])
        self.assertIndexMatchesScan("flow-1", "flow-2", "flow-3", "flow-4")

        [binding] = self.registrations.for_flow("flow-2")
        self.registrations.remove(binding)
        self.assertEqual(self.registrations.for_flow("flow-2"), [])

        self.registrations.record(request, ok(request), "flow-5")
        self.registrations.close()
        self.assertEqual(self.registrations.for_flow("flow-5"), [])
