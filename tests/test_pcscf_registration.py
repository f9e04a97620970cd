"""The eP-CSCF's view of registrations: bindings kept from 2xx to REGISTER, expiry, moves."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.pcscf.identity import assert_identity, strip_core_only_headers, strip_untrusted_headers
from epcscf.pcscf.registration import Registrations
from epcscf.sip.message import Request, Response, make_response

INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-000000000001>"'


def register(contact: str, expires: str | None = None) -> Request:
    request = Request("REGISTER", "sip:ims.localdomain")
    request.headers.add("Via", "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKnashds7")
    request.headers.add("From", "<sip:alice@ims.localdomain>;tag=a73kszlfl")
    request.headers.add("To", "<sip:alice@ims.localdomain>")
    request.headers.add("Call-ID", "1j9FpLxk3uxtm8tn@ims.localdomain")
    request.headers.add("CSeq", "1 REGISTER")
    request.headers.add("Contact", contact)
    if expires is not None:
        request.headers.add("Expires", expires)
    return request


def ok(request: Request, contact_expires: int | None = 600) -> Response:
    response = make_response(request, 200, to_tag="reg1")
    if contact_expires is not None:
        for value in request.headers.get_all("Contact"):
            response.headers.add("Contact", f"{value.split(';expires=')[0]};expires={contact_expires}")
    response.headers.add("P-Associated-URI", "<sip:alice@ims.localdomain>, <tel:+15551234>")
    response.headers.add("Service-Route", "<sip:orig@127.0.0.1:5070;lr>")
    return response


class RegistrationsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.removed: list[tuple[str, str]] = []
        self.registrations = Registrations(self.clock, lambda b, why: self.removed.append((b.aor, why)))

    def test_binding_from_2xx(self) -> None:
        request = register(f"<sip:a@x.invalid;transport=ws;ob>;+sip.instance={INSTANCE};reg-id=1")
        [binding] = self.registrations.record(request, ok(request), "flow-1", origin="http://127.0.0.1:8081")
        self.assertEqual(binding.aor, "sip:alice@ims.localdomain")
        self.assertEqual(binding.associated_uris, ("<sip:alice@ims.localdomain>", "<tel:+15551234>"))
        self.assertEqual(binding.default_identity, "<sip:alice@ims.localdomain>")
        self.assertEqual(binding.service_route, ("<sip:orig@127.0.0.1:5070;lr>",))
        self.assertEqual(binding.expires_at, 600)
        self.assertEqual((binding.instance_id, binding.reg_id), (INSTANCE, "1"))
        self.assertIs(self.registrations.registration_for_request("flow-1"), binding)

    def test_expiry_removes_binding_at_the_granted_time(self) -> None:
        request = register("<sip:a@x.invalid;transport=ws>")
        self.registrations.record(request, ok(request, 300), "flow-1")
        self.clock.advance(299.9)
        self.assertEqual(len(self.registrations.all()), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.registrations.all(), [])
        self.assertEqual(self.removed, [("sip:alice@ims.localdomain", "expired")])

    def test_refresh_restarts_the_timer(self) -> None:
        request = register("<sip:a@x.invalid;transport=ws>")
        self.registrations.record(request, ok(request, 300), "flow-1")
        self.clock.advance(200)
        self.registrations.record(request, ok(request, 300), "flow-1")
        self.clock.advance(200)
        self.assertEqual(len(self.registrations.all()), 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 500)

    def test_deregistration_with_expires_zero(self) -> None:
        request = register("<sip:a@x.invalid;transport=ws>")
        self.registrations.record(request, ok(request), "flow-1")
        goodbye = register("<sip:a@x.invalid;transport=ws>", expires="0")
        self.assertEqual(self.registrations.record(goodbye, ok(goodbye, None), "flow-1"), [])
        self.assertEqual(self.registrations.all(), [])
        self.assertEqual(self.removed, [("sip:alice@ims.localdomain", "deregistered")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_same_instance_on_new_flow_moves_the_binding(self) -> None:
        contact = f"<sip:a@x.invalid;transport=ws;ob>;+sip.instance={INSTANCE};reg-id=1"
        first = register(contact)
        self.registrations.record(first, ok(first), "flow-1")
        again = register(contact.replace("sip:a@x", "sip:b@y"))
        [binding] = self.registrations.record(again, ok(again), "flow-2")
        self.assertEqual([b.flow_id for b in self.registrations.all()], ["flow-2"])
        self.assertEqual(self.registrations.for_flow("flow-1"), [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_close_cancels_timers(self) -> None:
        request = register("<sip:a@x.invalid;transport=ws>")
        self.registrations.record(request, ok(request), "flow-1")
        self.registrations.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class IdentityTests(unittest.TestCase):
    ASSOCIATED = ["<sip:alice@ims.localdomain>", "<tel:+15551234>"]

    def invite(self) -> Request:
        request = Request("INVITE", "sip:bob@ims.localdomain")
        request.headers.add("P-Asserted-Identity", "<sip:admin@ims.localdomain>")
        return request

    def test_forged_pai_is_replaced_by_the_default_identity(self) -> None:
        request = self.invite()
        self.assertEqual(assert_identity(request, self.ASSOCIATED), "<sip:alice@ims.localdomain>")
        self.assertEqual(request.headers.get_all("P-Asserted-Identity"), ["<sip:alice@ims.localdomain>"])

    def test_preferred_identity_honoured_when_associated(self) -> None:
        request = self.invite()
        request.headers.add("P-Preferred-Identity", '"Alice" <tel:+15551234>')
        self.assertEqual(assert_identity(request, self.ASSOCIATED), "<tel:+15551234>")
        self.assertNotIn("P-Preferred-Identity", request.headers)

    def test_preferred_identity_ignored_when_not_associated(self) -> None:
        request = self.invite()
        request.headers.add("P-Preferred-Identity", "<sip:bob@ims.localdomain>")
        self.assertEqual(assert_identity(request, self.ASSOCIATED), "<sip:alice@ims.localdomain>")

    def test_trust_domain_headers_stripped(self) -> None:
        request = self.invite()
        request.headers.add("P-Charging-Vector", "icid-value=1")
        request.headers.add("P-Served-User", "<sip:x@y>")
        request.headers.add("Subject", "kept")
        removed = strip_untrusted_headers(request)
        self.assertEqual(removed, ["P-Asserted-Identity", "P-Charging-Vector", "P-Served-User"])
        self.assertEqual([name for name, _ in request.headers], ["Subject"])

    def test_core_only_headers_stripped_toward_the_wic(self) -> None:
        response = Response(200, "OK")
        response.headers.add("P-Charging-Function-Addresses", "ccf=1.2.3.4")
        response.headers.add("P-Asserted-Identity", "<sip:bob@ims.localdomain>")
        strip_core_only_headers(response)
        self.assertEqual([name for name, _ in response.headers], ["P-Asserted-Identity"])
