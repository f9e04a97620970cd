"""A refresh made of the same texts updates the bindings in place, with the same outcome as
parsing it again (expiry, timer, order, moves, what changed in the 2xx)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.registration import RegistrationBinding, Registrations
from epcscf.sip.message import Request, Response
from tests.test_pcscf_registration import INSTANCE, ok, register

OUTBOUND = f"<sip:a@x.invalid;transport=ws;ob>;+sip.instance={INSTANCE};reg-id=1"


def observable(binding: RegistrationBinding) -> tuple[Any, ...]:
    """Everything a reader of a binding sees."""
    return (
        binding.aor,
        binding.contact,
        binding.flow_id,
        binding.instance_id,
        binding.reg_id,
        binding.associated_uris,
        binding.service_route,
        binding.registered_at,
        binding.expires_at,
        binding.origin,
        binding.outbound,
        binding.key(),
        binding._timer.getTime() if binding._timer is not None and binding._timer.active() else None,
    )


class ParsedEveryTime(Registrations):
    """The reference: every 2xx parsed and its bindings made anew (no refresh in place)."""

    def _refresh(self, recorded: Any) -> bool:
        return False


class CountingRefreshes(Registrations):
    refreshed = 0

    def _refresh(self, recorded: Any) -> bool:
        done = super()._refresh(recorded)
        self.refreshed += done
        return done


class RefreshTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.removed: list[tuple[str, str]] = []
        self.registrations = Registrations(self.clock, lambda b, why: self.removed.append((b.contact, why)))

    def record(self, request: Request, response: Response, flow: str = "flow-1", **kw: Any) -> list[RegistrationBinding]:
        return self.registrations.record(request, response, flow, **kw)

    def fresh_pair(self, contact: str = OUTBOUND, expires: int = 600) -> tuple[Request, Response]:
        """A new REGISTER and 2xx with the same texts (new message objects, as on the wire)."""
        request = register(contact)
        return request, ok(request, expires)

    def test_identical_refresh_keeps_the_binding_and_moves_its_expiry_and_timer(self) -> None:
        [first] = self.record(*self.fresh_pair(), origin="http://o")
        timer = first._timer
        self.clock.advance(200)
        [again] = self.record(*self.fresh_pair(), origin="http://o")
        self.assertIs(again, first)
        self.assertEqual((again.registered_at, again.expires_at), (200, 800))
        self.assertIs(again._timer, timer)  # reset, not cancelled and re-armed
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [800])
        self.clock.advance(400)  # past the first expiry (600)
        self.assertEqual(self.registrations.all(), [first])
        self.clock.advance(200)
        self.assertEqual(self.registrations.all(), [])
        self.assertEqual(self.removed, [(first.contact, "expired")])

    def test_changed_service_route_or_identities_make_a_new_binding(self) -> None:
        [first] = self.record(*self.fresh_pair())
        request, response = self.fresh_pair()
        response.headers.set("Service-Route", "<sip:orig2@127.0.0.1:5070;lr>")
        [second] = self.record(request, response)
        self.assertEqual(second.service_route, ("<sip:orig2@127.0.0.1:5070;lr>",))
        request, response = self.fresh_pair()
        response.headers.set("Service-Route", "<sip:orig2@127.0.0.1:5070;lr>")
        response.headers.set("P-Associated-URI", "<tel:+15559999>")
        [third] = self.record(request, response)
        self.assertEqual(third.associated_uris, ("<tel:+15559999>",))
        self.assertEqual(self.registrations.all(), [third])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertNotIn(first, self.registrations.all())

    def test_shorter_grant_rearms_the_timer_earlier(self) -> None:
        self.record(*self.fresh_pair(expires=600))
        self.clock.advance(10)
        [binding] = self.record(*self.fresh_pair(expires=60))
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [70])
        self.clock.advance(60)
        self.assertEqual(self.registrations.all(), [])
        self.assertEqual(self.removed, [(binding.contact, "expired")])

    def test_same_texts_on_another_flow_move_the_binding(self) -> None:
        self.record(*self.fresh_pair(), flow="flow-1")
        [moved] = self.record(*self.fresh_pair(), flow="flow-2")
        self.assertEqual(moved.flow_id, "flow-2")
        self.assertEqual(self.registrations.for_flow("flow-1"), [])
        self.assertIs(self.registrations.registration_for_request("flow-2"), moved)
        [back] = self.record(*self.fresh_pair(), flow="flow-1")  # the texts of the first one again
        self.assertEqual(back.flow_id, "flow-1")
        self.assertEqual(self.registrations.all(), [back])

    def test_same_texts_after_expiry_or_deregistration_register_anew(self) -> None:
        [first] = self.record(*self.fresh_pair(expires=100))
        self.clock.advance(100)
        self.assertEqual(self.registrations.all(), [])
        [second] = self.record(*self.fresh_pair(expires=100))
        self.assertIsNot(second, first)
        self.assertEqual(second.expires_at, 200)
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [200])
        goodbye = register(OUTBOUND.replace("reg-id=1", "reg-id=1;expires=0"))
        self.assertEqual(self.record(goodbye, ok(goodbye, None)), [])
        self.assertEqual(self.registrations.all(), [])
        [third] = self.record(*self.fresh_pair(expires=100))
        self.assertIsNot(third, second)
        self.assertEqual(self.removed, [(first.contact, "expired"), (second.contact, "deregistered")])

    def test_one_of_two_contacts_removed_then_same_texts_bind_both_again(self) -> None:
        request = register("<sip:a@x.invalid;transport=ws>, <sip:b@x.invalid;transport=ws>")
        first = self.record(request, ok(request))
        self.assertEqual(len(first), 2)
        self.registrations.remove(first[0])
        request = register("<sip:a@x.invalid;transport=ws>, <sip:b@x.invalid;transport=ws>")
        again = self.record(request, ok(request))
        self.assertEqual([b.contact for b in again], [b.contact for b in first])
        self.assertEqual(len(self.registrations.all()), 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)

    def test_refreshed_binding_goes_last_as_a_replacing_one_would(self) -> None:
        self.record(*self.fresh_pair("<sip:a@x.invalid;transport=ws>"))
        self.record(*self.fresh_pair("<sip:b@x.invalid;transport=ws>"))
        self.record(*self.fresh_pair("<sip:a@x.invalid;transport=ws>"))
        self.assertEqual([b.contact for b in self.registrations.all()], ["<sip:b@x.invalid;transport=ws>", "<sip:a@x.invalid;transport=ws>"])
        self.assertEqual(
            [b.contact for b in self.registrations.for_flow("flow-1")],
            ["<sip:b@x.invalid;transport=ws>", "<sip:a@x.invalid;transport=ws>"],
        )
        # Both registered at time 0: requests use the same one as when every 2xx is parsed.
        reference = ParsedEveryTime(Clock())
        for contact in ("<sip:a@x.invalid;transport=ws>", "<sip:b@x.invalid;transport=ws>", "<sip:a@x.invalid;transport=ws>"):
            request = register(contact)
            reference.record(request, ok(request), "flow-1")
        self.assertEqual(
            self.registrations.registration_for_request("flow-1").contact, reference.registration_for_request("flow-1").contact
        )

    def test_a_sequence_of_registrations_ends_as_if_each_was_parsed_again(self) -> None:
        reference = ParsedEveryTime(Clock())
        self.registrations = CountingRefreshes(self.clock)
        clocks = [self.clock, reference.clock]
        contacts = [OUTBOUND, "<sip:a@x.invalid;transport=ws>", OUTBOUND.replace("sip:a@x", "sip:a@y")]
        steps: list[tuple[float, int, str, int]] = [
            (0, 0, "flow-1", 600),
            (10, 1, "flow-1", 300),
            (20, 0, "flow-1", 600),
            (30, 0, "flow-1", 600),
            (40, 2, "flow-2", 600),  # the instance moves to a new flow
            (50, 0, "flow-1", 600),  # and back
            (60, 1, "flow-1", 30),
            (70, 1, "flow-1", 30),
            (100, 0, "flow-1", 0),  # de-registration granted 0
            (110, 0, "flow-1", 600),
            (120, 0, "flow-1", 600),
        ]
        for when, contact, flow, expires in steps:
            for clock in clocks:
                clock.advance(when - clock.seconds())
            for registrations in (self.registrations, reference):
                request = register(contacts[contact])
                registrations.record(request, ok(request, expires), flow, origin="http://o", outbound=True)
            self.assertEqual(
                [observable(b) for b in self.registrations.all()], [observable(b) for b in reference.all()], f"after t={when}"
            )
            self.assertEqual(sorted(c.getTime() for c in self.clock.getDelayedCalls()), sorted(c.getTime() for c in reference.clock.getDelayedCalls()))
        self.assertEqual(self.registrations.refreshed, 4)  # at t=20, 30, 70 and 120
        for clock in clocks:
            clock.advance(1000)
        self.assertEqual(self.registrations.all(), [])
        self.assertEqual(reference.all(), [])
        self.assertEqual(self.registrations._by_flow, {})  # nothing kept for bindings gone
