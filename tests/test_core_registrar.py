"""Embedded core registrar (RFC 3261 §10.3, RFC 3327, RFC 3608, RFC 5626 §6, RFC 7315)."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.core.digest import DigestAuthenticator, compute_response, parse_digest
from epcscf.core.location import LocationService
from epcscf.core.registrar import Registrar, RegistrarSettings
from epcscf.core.users import UserDirectory, parse_users
from epcscf.sip.message import Headers, Request, Response

DOMAIN = "ims.localdomain"
SERVICE_ROUTE = "sip:orig@127.0.0.1:5070;lr"
PCSCF_PATH = "<sip:tok3n@127.0.0.1:5060;lr;ob>"


@dataclass
class FakeVerification:
    ok: bool
    stale: bool
    username: str | None


class FakeAuthenticator:
    """Stands in for digest: credentials are ``Digest username="u", response="<password>"``."""

    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.stale_nonces: set[str] = set()

    def challenge(self, stale: bool = False) -> list[str]:
        suffix = ", stale=true" if stale else ""
        return [
            f'Digest realm="{DOMAIN}", nonce="n", algorithm=SHA-256, qop="auth"{suffix}',
            f'Digest realm="{DOMAIN}", nonce="n", algorithm=MD5, qop="auth"{suffix}',
        ]

    def verify(self, method: str, authorization: str, request_uri: str | None = None) -> FakeVerification:
        fields = dict(
            part.strip().split("=", 1) for part in authorization.removeprefix("Digest ").split(",")
        )
        username = fields["username"].strip('"')
        response = fields["response"].strip('"')
        nonce = fields.get("nonce", '"n"').strip('"')
        good = self.passwords.get(username) == response
        return FakeVerification(ok=good and nonce not in self.stale_nonces, stale=good and nonce in self.stale_nonces, username=username)


class FakeUsers:
    def __init__(self) -> None:
        self.identities = {
            "alice": [f"sip:alice@{DOMAIN}", "tel:+15550001"],
            "bob": [f"sip:bob@{DOMAIN}"],
        }

    def public_identities(self, user: str) -> list[str] | None:
        return self.identities.get(user)


def register(
    user: str = "alice",
    contact: str | list[str] | None = "<sip:alice@192.0.2.1:5060;transport=ws>",
    cseq: int = 1,
    call_id: str = "call-1",
    expires: int | None = None,
    password: str | None = "alice-secret",
    auth_user: str | None = None,
    path: str | None = PCSCF_PATH,
    supported: str | None = "path, outbound",
    require: str | None = "path",
    from_user: str | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> Request:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-1")
    if path is not None:
        headers.add("Path", path)
    headers.add("To", f"<sip:{user}@{DOMAIN}>")
    headers.add("From", f"<sip:{from_user or user}@{DOMAIN}>;tag=abc")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} REGISTER")
    for value in [contact] if isinstance(contact, str) else contact or []:
        headers.add("Contact", value)
    if expires is not None:
        headers.add("Expires", str(expires))
    if supported is not None:
        headers.add("Supported", supported)
    if require is not None:
        headers.add("Require", require)
    if password is not None:
        headers.add(
            "Authorization",
            f'Digest username="{auth_user or user}", realm="{DOMAIN}", nonce="n", uri="sip:{DOMAIN}", response="{password}"',
        )
    for name, value in extra or []:
        headers.add(name, value)
    return Request("REGISTER", f"sip:{DOMAIN}", headers)


class RegistrarTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.location = LocationService(self.clock)
        self.auth = FakeAuthenticator({"alice": "alice-secret", "bob": "bob-secret"})
        self.registrar = Registrar(
            RegistrarSettings(DOMAIN, SERVICE_ROUTE, min_expires=60, max_expires=3600, default_expires=600),
            self.location,
            self.auth,
            FakeUsers(),
        )

    def contacts(self, response: Response) -> list[str]:
        return response.headers.get_all("contact")


class ChallengeTests(RegistrarTestCase):
    def test_register_without_credentials_is_challenged_with_sha256_and_md5(self) -> None:
        response = self.registrar.register(register(password=None))
        self.assertEqual(response.status, 401)
        challenges = response.headers.get_all("www-authenticate")
        self.assertEqual(len(challenges), 2)
        self.assertIn("SHA-256", challenges[0])
        self.assertIn("MD5", challenges[1])
        self.assertIn(";tag=", response.headers.get("to"))
        self.assertEqual(self.location.bindings(f"sip:alice@{DOMAIN}"), [])

    def test_wrong_password_is_forbidden_and_binds_nothing(self) -> None:
        response = self.registrar.register(register(password="guess"))
        self.assertEqual(response.status, 403)
        self.assertEqual(self.location.bindings(f"sip:alice@{DOMAIN}"), [])

    def test_stale_nonce_is_rechallenged_with_stale_true(self) -> None:
        self.auth.stale_nonces.add("n")
        response = self.registrar.register(register())
        self.assertEqual(response.status, 401)
        self.assertTrue(all("stale=true" in value for value in response.headers.get_all("www-authenticate")))

    def test_credentials_of_another_user_are_forbidden(self) -> None:
        response = self.registrar.register(register(auth_user="bob", password="bob-secret"))
        self.assertEqual(response.status, 403)

    def test_unknown_user_is_forbidden_before_any_challenge(self) -> None:
        response = self.registrar.register(register(user="mallory", password=None))
        self.assertEqual(response.status, 403)
        self.assertEqual(response.headers.get_all("www-authenticate"), [])

    def test_from_other_than_to_is_forbidden(self) -> None:
        response = self.registrar.register(register(from_user="bob"))
        self.assertEqual(response.status, 403)

    def test_foreign_domain_is_not_served(self) -> None:
        request = register()
        request.uri = "sip:example.org"
        self.assertEqual(self.registrar.register(request).status, 404)

    def test_unsupported_required_extension_gets_420_naming_it(self) -> None:
        response = self.registrar.register(register(require="path, sec-agree"))
        self.assertEqual(response.status, 420)
        self.assertEqual(response.headers.get("unsupported"), "sec-agree")


class SuccessTests(RegistrarTestCase):
    def test_success_lists_binding_with_expires_and_ims_headers(self) -> None:
        response = self.registrar.register(register(expires=300))
        self.assertEqual(response.status, 200)
        self.assertEqual(self.contacts(response), ["<sip:alice@192.0.2.1:5060;transport=ws>;expires=300"])
        self.assertEqual(response.headers.get_all("path"), [PCSCF_PATH])
        self.assertEqual(response.headers.get("service-route"), f"<{SERVICE_ROUTE}>")
        self.assertEqual(
            response.headers.get("p-associated-uri"), f"<sip:alice@{DOMAIN}>, <tel:+15550001>"
        )
        self.assertIsNotNone(response.headers.get("date"))
        [binding] = self.location.bindings(f"sip:alice@{DOMAIN}")
        self.assertEqual(binding.path, (PCSCF_PATH,))
        self.assertEqual(binding.expires_at, self.clock.seconds() + 300)

    def test_path_is_not_echoed_to_a_ua_that_does_not_support_it(self) -> None:
        response = self.registrar.register(register(supported=None, require=None))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.get_all("path"), [])
        [binding] = self.location.bindings(f"sip:alice@{DOMAIN}")
        self.assertEqual(binding.path, (PCSCF_PATH,))

    def test_default_expiry_applies_without_expires(self) -> None:
        response = self.registrar.register(register())
        self.assertEqual(self.contacts(response), ["<sip:alice@192.0.2.1:5060;transport=ws>;expires=600"])

    def test_contact_expires_parameter_wins_over_header(self) -> None:
        response = self.registrar.register(
            register(contact="<sip:alice@192.0.2.1:5060>;expires=120", expires=900)
        )
        self.assertEqual(self.contacts(response), ["<sip:alice@192.0.2.1:5060>;expires=120"])

    def test_expiry_above_maximum_is_clamped(self) -> None:
        response = self.registrar.register(register(expires=86400))
        self.assertEqual(self.contacts(response), ["<sip:alice@192.0.2.1:5060;transport=ws>;expires=3600"])

    def test_expiry_below_minimum_gets_423_with_min_expires(self) -> None:
        response = self.registrar.register(register(expires=30))
        self.assertEqual(response.status, 423)
        self.assertEqual(response.headers.get("min-expires"), "60")
        self.assertEqual(self.location.bindings(f"sip:alice@{DOMAIN}"), [])

    def test_query_without_contact_lists_current_bindings(self) -> None:
        self.registrar.register(register(expires=300))
        self.clock.advance(100)
        response = self.registrar.register(register(contact=None, cseq=2))
        self.assertEqual(response.status, 200)
        self.assertEqual(self.contacts(response), ["<sip:alice@192.0.2.1:5060;transport=ws>;expires=200"])

    def test_malformed_cseq_is_a_400_naming_the_field(self) -> None:
        request = register()
        request.headers.set("CSeq", "one REGISTER")
        response = self.registrar.register(request)
        self.assertEqual(response.status, 400)
        self.assertIn("CSeq", response.reason)


class RefreshAndExpiryTests(RegistrarTestCase):
    def test_refresh_extends_the_binding(self) -> None:
        self.registrar.register(register(expires=300))
        self.clock.advance(250)
        response = self.registrar.register(register(expires=300, cseq=2))
        self.assertEqual(response.status, 200)
        self.clock.advance(250)
        [binding] = self.location.bindings(f"sip:alice@{DOMAIN}")
        self.assertEqual(binding.remaining(self.clock.seconds()), 50)

    def test_binding_is_gone_after_expiry(self) -> None:
        self.registrar.register(register(expires=300))
        self.clock.advance(299)
        self.assertEqual(len(self.location.bindings(f"sip:alice@{DOMAIN}")), 1)
        self.clock.advance(1)
        self.assertEqual(self.location.bindings(f"sip:alice@{DOMAIN}"), [])

    def test_same_call_id_with_lower_cseq_is_refused_and_changes_nothing(self) -> None:
        self.registrar.register(register(expires=300, cseq=5))
        response = self.registrar.register(register(expires=0, cseq=4))
        self.assertEqual(response.status, 500)
        self.assertEqual(len(self.location.bindings(f"sip:alice@{DOMAIN}")), 1)

    def test_new_call_id_may_update_whatever_its_cseq(self) -> None:
        self.registrar.register(register(expires=300, cseq=5))
        response = self.registrar.register(register(expires=600, cseq=1, call_id="call-2"))
        self.assertEqual(response.status, 200)
        [binding] = self.location.bindings(f"sip:alice@{DOMAIN}")
        self.assertEqual(binding.call_id, "call-2")

    def test_expires_zero_removes_only_that_contact(self) -> None:
        self.registrar.register(register(contact=["<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>"], expires=300))
        response = self.registrar.register(register(contact="<sip:a@192.0.2.1>", expires=0, cseq=2))
        self.assertEqual(response.status, 200)
        self.assertEqual(self.contacts(response), ["<sip:a@192.0.2.2>;expires=300"])

    def test_wildcard_with_expires_zero_removes_everything(self) -> None:
        self.registrar.register(register(contact=["<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>"], expires=300))
        response = self.registrar.register(register(contact="*", expires=0, cseq=2))
        self.assertEqual(response.status, 200)
        self.assertEqual(self.contacts(response), [])
        self.assertEqual(self.location.bindings(f"sip:alice@{DOMAIN}"), [])

    def test_wildcard_with_nonzero_expiry_is_a_400(self) -> None:
        response = self.registrar.register(register(contact="*", expires=300))
        self.assertEqual(response.status, 400)


class OutboundTests(RegistrarTestCase):
    INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-000000000001>"'

    def contact(self, host: str, reg_id: int = 1) -> str:
        return f"<sip:alice@{host};transport=ws>;+sip.instance={self.INSTANCE};reg-id={reg_id}"

    def test_same_instance_and_reg_id_replaces_the_old_binding(self) -> None:
        self.registrar.register(register(contact=self.contact("a.invalid"), expires=300))
        response = self.registrar.register(
            register(contact=self.contact("b.invalid"), expires=300, call_id="call-2")
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.get("require"), "outbound")
        [binding] = self.location.bindings(f"sip:alice@{DOMAIN}")
        self.assertEqual(binding.contact, "sip:alice@b.invalid;transport=ws")
        self.assertEqual(binding.instance, "<urn:uuid:00000000-0000-1000-8000-000000000001>")
        self.assertEqual(binding.reg_id, 1)
        self.assertEqual(
            self.contacts(response),
            [f"<sip:alice@b.invalid;transport=ws>;+sip.instance={self.INSTANCE};reg-id=1;expires=300"],
        )

    def test_another_reg_id_is_a_second_flow(self) -> None:
        self.registrar.register(register(contact=self.contact("a.invalid", 1), expires=300))
        self.registrar.register(register(contact=self.contact("b.invalid", 2), expires=300, call_id="c2"))
        self.assertEqual(len(self.location.bindings(f"sip:alice@{DOMAIN}")), 2)

    def test_first_hop_without_ob_ignores_reg_id(self) -> None:
        response = self.registrar.register(
            register(contact=self.contact("a.invalid"), path="<sip:p@127.0.0.1;lr>", supported="path")
        )
        self.assertEqual(response.status, 200)
        self.assertIsNone(response.headers.get("require"))
        [binding] = self.location.bindings(f"sip:alice@{DOMAIN}")
        self.assertIsNone(binding.reg_id)

    def test_first_hop_without_ob_is_439_when_ua_requires_outbound(self) -> None:
        response = self.registrar.register(
            register(contact=self.contact("a.invalid"), path="<sip:p@127.0.0.1;lr>", supported="path, outbound")
        )
        self.assertEqual(response.status, 439)

    def test_reg_id_without_any_path_is_not_outbound(self) -> None:
        response = self.registrar.register(register(contact=self.contact("a.invalid"), path=None, supported=None, require=None))
        self.assertEqual(response.status, 200)
        self.assertIsNone(response.headers.get("require"))


class RealDigestTests(unittest.TestCase):
    """The registrar with ``epcscf.core.digest`` and ``epcscf.core.users`` (RFC 8760 digest)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        users = UserDirectory(parse_users("alice:alice-secret tel:+15550001\n", DOMAIN))
        self.location = LocationService(self.clock)
        self.registrar = Registrar(
            RegistrarSettings(DOMAIN, SERVICE_ROUTE),
            self.location,
            DigestAuthenticator(DOMAIN, users, self.clock, nonce_lifetime=30),
            users,
        )

    def answer(self, challenge: str, password: str = "alice-secret", nc: str = "00000001") -> str:
        fields = parse_digest(challenge)
        algorithm = fields["algorithm"]
        response = compute_response(
            algorithm, "alice", DOMAIN, password, "REGISTER", f"sip:{DOMAIN}", fields["nonce"], nc, "c0ffee", "auth"
        )
        return (
            f'Digest username="alice", realm="{DOMAIN}", nonce="{fields["nonce"]}", uri="sip:{DOMAIN}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="c0ffee"'
        )

    def with_auth(self, authorization: str, cseq: int) -> Request:
        request = register(password=None, cseq=cseq, expires=300)
        request.headers.add("Authorization", authorization)
        return request

    def test_challenge_then_sha256_answer_registers(self) -> None:
        challenge = self.registrar.register(register(password=None))
        sha256 = challenge.headers.get_all("www-authenticate")[0]
        self.assertIn("algorithm=SHA-256", sha256)
        response = self.registrar.register(self.with_auth(self.answer(sha256), cseq=2))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.get("p-associated-uri"), f"<sip:alice@{DOMAIN}>, <tel:+15550001>")

    def test_md5_answer_registers(self) -> None:
        challenge = self.registrar.register(register(password=None))
        md5 = challenge.headers.get_all("www-authenticate")[1]
        self.assertIn("algorithm=MD5", md5)
        self.assertEqual(self.registrar.register(self.with_auth(self.answer(md5), cseq=2)).status, 200)

    def test_wrong_password_is_403(self) -> None:
        challenge = self.registrar.register(register(password=None)).headers.get_all("www-authenticate")[0]
        self.assertEqual(self.registrar.register(self.with_auth(self.answer(challenge, "guess"), 2)).status, 403)

    def test_expired_nonce_is_rechallenged_with_stale_true(self) -> None:
        challenge = self.registrar.register(register(password=None)).headers.get_all("www-authenticate")[0]
        self.clock.advance(31)
        response = self.registrar.register(self.with_auth(self.answer(challenge), 2))
        self.assertEqual(response.status, 401)
        self.assertIn("stale=true", response.headers.get("www-authenticate"))
        self.assertEqual(self.location.bindings(f"sip:alice@{DOMAIN}"), [])

    def test_replayed_credentials_are_rechallenged(self) -> None:
        challenge = self.registrar.register(register(password=None)).headers.get_all("www-authenticate")[0]
        credentials = self.answer(challenge)
        self.assertEqual(self.registrar.register(self.with_auth(credentials, 2)).status, 200)
        self.assertEqual(self.registrar.register(self.with_auth(credentials, 3)).status, 401)


class BadInputTests(RegistrarTestCase):
    """Bad REGISTERs get a 400 naming the field, never a traceback (and change nothing)."""

    def assert_400_naming(self, request: Request, field: str) -> None:
        response = self.registrar.register(request)
        self.assertEqual(response.status, 400)
        self.assertIn(field, response.reason)
        self.assertIn(";tag=", response.headers.get("to"))
        self.assertEqual(self.location.bindings(f"sip:alice@{DOMAIN}"), [])

    def test_malformed_expires_header(self) -> None:
        self.assert_400_naming(register(extra=[("Expires", "soon")]), "Expires")

    def test_malformed_contact(self) -> None:
        self.assert_400_naming(register(contact="<sip:alice@>"), "Contact")

    def test_contact_that_is_not_a_sip_uri(self) -> None:
        self.assert_400_naming(register(contact="<tel:+15550001>"), "Contact")

    def test_malformed_path(self) -> None:
        self.assert_400_naming(register(path="<sip:p@127.0.0.1;lr"), "Path")

    def test_bad_request_uri_is_not_served(self) -> None:
        request = register()
        request.uri = "tel:+15550001"
        self.assertEqual(self.registrar.register(request).status, 404)
