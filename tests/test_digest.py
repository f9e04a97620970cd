"""Digest authentication for the embedded core (RFC 3261 §22.4, RFC 7616, RFC 8760) and the users file."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from epcscf.core.digest import (
    AuthStatus,
    DigestAuthenticator,
    DigestParseError,
    compute_response,
    parse_digest,
)
from epcscf.core.users import UserDirectory, UsersFileError, parse_users
from epcscf.sip.message import Response

REALM = "ims.localdomain"
URI = "sip:ims.localdomain"


class RfcVectorTests(unittest.TestCase):
    """Worked examples from the RFCs (the response values are quoted from the RFC text)."""

    # RFC 7616 §3.9.1
    RFC7616 = dict(
        username="Mufasa",
        realm="http-auth@example.org",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        qop="auth",
    )

    def test_rfc7616_md5_example(self) -> None:
        self.assertEqual(compute_response("MD5", **self.RFC7616), "8ca523f5e9506fed4657c9700eebdbec")

    def test_rfc7616_sha256_example(self) -> None:
        self.assertEqual(
            compute_response("SHA-256", **self.RFC7616),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        )

    def test_rfc2617_md5_example(self) -> None:
        # RFC 2617 §3.5
        self.assertEqual(
            compute_response(
                "MD5", "Mufasa", "testrealm@host.com", "Circle Of Life", "GET", "/dir/index.html",
                "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth",
            ),
            "6629fae49393a05397450978507c4ef1",
        )

    def test_parse_the_rfc7616_authorization_example(self) -> None:
        params = parse_digest(
            'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
            'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
            'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
            'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
            'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
        )
        self.assertEqual(params["username"], "Mufasa")
        self.assertEqual(params["algorithm"], "SHA-256")
        self.assertEqual(params["nc"], "00000001")
        self.assertEqual(params["qop"], "auth")

    def test_parse_rejects_broken_values(self) -> None:
        for bad in ('Basic abc', 'Digest username="a', 'Digest username="a", username="b"', 'Digest a=b,', "Digest =x"):
            self.assertRaises(DigestParseError, parse_digest, bad)
        self.assertEqual(parse_digest(r'Digest username="a\"b, c"')["username"], 'a"b, c')


class Users:
    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords

    def password(self, name: str) -> str | None:
        return self.passwords.get(name)


class DigestAuthenticatorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.auth = DigestAuthenticator(REALM, Users({"alice": "alice-secret"}), self.clock, nonce_lifetime=60)

    def answer(
        self,
        challenge: str,
        username: str = "alice",
        password: str = "alice-secret",
        nc: str = "00000001",
        method: str = "REGISTER",
        uri: str = URI,
        **override: str,
    ) -> str:
        """What a UAC sends back for ``challenge`` (RFC 7616 §3.4)."""
        params = parse_digest(challenge)
        algorithm = params.get("algorithm", "MD5")
        fields = {
            "username": username,
            "realm": params["realm"],
            "nonce": params["nonce"],
            "uri": uri,
            "algorithm": algorithm,
            "qop": "auth",
            "nc": nc,
            "cnonce": "0a4f113b",
        }
        fields["response"] = compute_response(
            algorithm, username, params["realm"], password, method, uri, params["nonce"], nc, "0a4f113b", "auth"
        )
        fields.update(override)
        quoted = {"username", "realm", "nonce", "uri", "cnonce", "response"}
        return "Digest " + ", ".join(f'{k}="{v}"' if k in quoted else f"{k}={v}" for k, v in fields.items())

    def test_challenge_offers_sha256_first_then_md5_with_qop_auth(self) -> None:
        values = self.auth.challenge()
        self.assertEqual(len(values), 2)
        first, second = (parse_digest(value) for value in values)
        self.assertEqual(first["algorithm"], "SHA-256")
        self.assertEqual(second["algorithm"], "MD5")
        for params in (first, second):
            self.assertEqual(params["realm"], REALM)
            self.assertEqual(params["qop"], "auth")
            self.assertNotIn("stale", params)
        self.assertEqual(parse_digest(self.auth.challenge(stale=True)[0])["stale"], "true")
        self.assertEqual(len(self.auth.challenge(algorithms=["MD5"])), 1)
        self.assertRaises(ValueError, self.auth.challenge, algorithms=["SHA-512-256"])

    def test_round_trip_with_each_algorithm(self) -> None:
        auth = DigestAuthenticator(
            REALM, Users({"alice": "alice-secret"}), self.clock, algorithms=("SHA-512-256", "SHA-256", "MD5")
        )
        for index in range(3):
            challenge = auth.challenge()[index]  # a fresh 401 each time: the nonce is shared within one
            result = auth.verify("REGISTER", self.answer(challenge), request_uri=URI)
            self.assertTrue(result.ok, result)
            self.assertEqual(result.username, "alice")
            self.assertEqual(result.algorithm, parse_digest(challenge)["algorithm"])

    def test_missing_algorithm_means_md5(self) -> None:
        challenge = self.auth.challenge(algorithms=["MD5"])[0]
        value = self.answer(challenge).replace(", algorithm=MD5", "")
        self.assertNotIn("algorithm", value)
        self.assertTrue(self.auth.verify("REGISTER", value).ok)

    def test_wrong_password(self) -> None:
        result = self.auth.verify("REGISTER", self.answer(self.auth.challenge()[0], password="guess"))
        self.assertEqual(result.status, AuthStatus.WRONG_PASSWORD)
        self.assertFalse(result.ok)
        self.assertFalse(result.stale)

    def test_response_for_another_method_is_wrong(self) -> None:
        value = self.answer(self.auth.challenge()[0], method="INVITE")
        self.assertEqual(self.auth.verify("REGISTER", value).status, AuthStatus.WRONG_PASSWORD)

    def test_unknown_user(self) -> None:
        result = self.auth.verify("REGISTER", self.answer(self.auth.challenge()[0], username="mallory"))
        self.assertEqual(result.status, AuthStatus.UNKNOWN_USER)
        self.assertEqual(result.username, "mallory")

    def test_expired_nonce_is_stale_when_the_password_is_right(self) -> None:
        challenge = self.auth.challenge()[0]
        self.clock.advance(60)
        self.assertTrue(self.auth.verify("REGISTER", self.answer(challenge)).ok)
        self.clock.advance(1)
        result = self.auth.verify("REGISTER", self.answer(challenge, nc="00000002"))
        self.assertEqual(result.status, AuthStatus.STALE)
        self.assertTrue(result.stale)
        self.assertFalse(result.ok)
        wrong = self.auth.verify("REGISTER", self.answer(challenge, nc="00000003", password="guess"))
        self.assertEqual(wrong.status, AuthStatus.WRONG_PASSWORD)

    def test_nonce_of_another_key_or_forged_is_stale_not_ok(self) -> None:
        other = DigestAuthenticator(REALM, Users({"alice": "alice-secret"}), self.clock)
        self.assertEqual(self.auth.verify("REGISTER", self.answer(other.challenge()[0])).status, AuthStatus.STALE)
        forged = 'Digest realm="ims.localdomain", nonce="made-up-nonce", algorithm=SHA-256, qop="auth"'
        self.assertEqual(self.auth.verify("REGISTER", self.answer(forged)).status, AuthStatus.STALE)

    def test_nonce_count_must_grow(self) -> None:
        challenge = self.auth.challenge()[0]
        self.assertTrue(self.auth.verify("REGISTER", self.answer(challenge, nc="00000001")).ok)
        replay = self.auth.verify("REGISTER", self.answer(challenge, nc="00000001"))
        self.assertEqual(replay.status, AuthStatus.REPLAYED)
        self.assertTrue(replay.stale)
        self.assertTrue(self.auth.verify("REGISTER", self.answer(challenge, nc="00000002")).ok)
        self.assertEqual(self.auth.verify("REGISTER", self.answer(challenge, nc="00000002")).status, AuthStatus.REPLAYED)

    def test_nonce_counts_are_forgotten_when_nonces_expire(self) -> None:
        for _ in range(5):
            self.assertTrue(self.auth.verify("REGISTER", self.answer(self.auth.challenge()[0])).ok)
        self.assertEqual(len(self.auth._nonce_counts), 5)
        self.clock.advance(61)
        self.assertTrue(self.auth.verify("REGISTER", self.answer(self.auth.challenge()[0])).ok)
        self.assertEqual(len(self.auth._nonce_counts), 1)

    def test_malformed_credentials_are_reported_not_raised(self) -> None:
        challenge = self.auth.challenge()[0]
        cases = {
            "not digest": "Basic YWxpY2U6c2VjcmV0",
            "garbage": "Digest ,,,,",
            "no response": self.answer(challenge).replace("response=", "xresponse="),
            "other realm": self.answer(challenge, realm="evil.example"),
            "no qop": self.answer(challenge).replace(", qop=auth", ""),
            "auth-int": self.answer(challenge, qop="auth-int"),
            "bad nc": self.answer(challenge, nc="1"),
            "sess": self.answer(challenge, algorithm="MD5-sess"),
            "unknown algorithm": self.answer(challenge, algorithm="SHA-1"),
            "userhash": self.answer(challenge, userhash="true"),
        }
        for name, value in cases.items():
            result = self.auth.verify("REGISTER", value)
            self.assertEqual(result.status, AuthStatus.MALFORMED, f"{name}: {result}")
            self.assertTrue(result.detail, name)
            self.assertFalse(result.ok or result.stale, name)

    def test_uri_must_match_the_request_uri_when_given(self) -> None:
        value = self.answer(self.auth.challenge()[0], uri="sip:elsewhere.example")
        self.assertEqual(self.auth.verify("REGISTER", value, request_uri=URI).status, AuthStatus.MALFORMED)
        self.assertTrue(self.auth.verify("REGISTER", value).ok)

    def test_bad_configuration_is_refused(self) -> None:
        users = Users({})
        self.assertRaises(ValueError, DigestAuthenticator, 'bad"realm', users, self.clock)
        self.assertRaises(ValueError, DigestAuthenticator, REALM, users, self.clock, algorithms=("SHA-1",))
        self.assertRaises(ValueError, DigestAuthenticator, REALM, users, self.clock, nonce_lifetime=0)


class UsersFileTests(unittest.TestCase):
    def test_parse_users_with_default_and_extra_identities(self) -> None:
        users = parse_users(
            "# embedded core users\n\nalice:alice-secret\n  bob:p@ss:w0rd sip:bob@ims.localdomain tel:+15550002\n",
            REALM,
        )
        directory = UserDirectory(users)
        self.assertEqual(len(directory), 2)
        self.assertEqual(directory.password("alice"), "alice-secret")
        self.assertEqual(directory.password("bob"), "p@ss:w0rd")
        self.assertEqual(directory.public_identities("alice"), ["sip:alice@ims.localdomain"])
        self.assertEqual(directory.public_identities("bob"), ["sip:bob@ims.localdomain", "tel:+15550002"])
        self.assertIsNone(directory.password("carol"))
        self.assertIsNone(directory.public_identities("carol"))

    def test_errors_name_the_line(self) -> None:
        cases = {
            "alice\n": "expected user:password",
            "ok:x\nalice:\n": "empty password",
            "a@b:x\n": "user name",
            "alice:x\nalice:y\n": "listed twice",
            "alice:x http://example.com\n": "not a SIP or tel URI",
        }
        for text, reason in cases.items():
            with self.assertRaises(UsersFileError) as raised:
                parse_users(text, REALM, "users.txt")
            self.assertIn(reason, str(raised.exception))
            self.assertEqual(raised.exception.line, text.count("\n"))
            self.assertIn("users.txt line", str(raised.exception))

    def test_from_file_and_with_digest(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("alice:alice-secret\n")
        directory = UserDirectory.from_file(path, REALM)
        clock = Clock()
        auth = DigestAuthenticator(REALM, directory, clock)
        params = parse_digest(auth.challenge()[0])
        response = compute_response("SHA-256", "alice", REALM, "alice-secret", "REGISTER", URI, params["nonce"], "00000001", "c", "auth")
        value = (
            f'Digest username="alice", realm="{REALM}", nonce="{params["nonce"]}", uri="{URI}", '
            f'algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c", response="{response}"'
        )
        self.assertTrue(auth.verify("REGISTER", value).ok)

    def test_missing_file_is_a_clear_error(self) -> None:
        with self.assertRaises(UsersFileError) as raised:
            UserDirectory.from_file(self.mktemp(), REALM)
        self.assertIn("cannot read", str(raised.exception))


class RegistrarWithDigestTests(unittest.TestCase):
    """The embedded registrar with the real authenticator and users file (TS 24.371 SIP digest)."""

    def setUp(self) -> None:
        from epcscf.core.location import LocationService
        from epcscf.core.registrar import Registrar, RegistrarSettings

        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        users = UserDirectory(parse_users("alice:alice-secret tel:+15550001\n", REALM))
        self.auth = DigestAuthenticator(REALM, users, self.clock, nonce_lifetime=60)
        self.registrar = Registrar(
            RegistrarSettings(REALM, "sip:orig@127.0.0.1:5070;lr"), LocationService(self.clock), self.auth, users
        )

    def register(self, authorization: str | None, cseq: int) -> Response:
        from epcscf.sip.message import Headers, Request

        headers = Headers()
        headers.add("Via", f"SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK-{cseq}")
        headers.add("Path", "<sip:tok3n@127.0.0.1:5060;lr;ob>")
        headers.add("To", f"<sip:alice@{REALM}>")
        headers.add("From", f"<sip:alice@{REALM}>;tag=abc")
        headers.add("Call-ID", "digest-call")
        headers.add("CSeq", f"{cseq} REGISTER")
        headers.add("Contact", "<sip:alice@df7jal23ls0d.invalid;transport=ws>;expires=600")
        if authorization is not None:
            headers.add("Authorization", authorization)
        return self.registrar.register(Request("REGISTER", URI, headers))

    def credentials(self, challenge: str, nc: str = "00000001", password: str = "alice-secret") -> str:
        params = parse_digest(challenge)
        algorithm = params["algorithm"]
        response = compute_response(algorithm, "alice", REALM, password, "REGISTER", URI, params["nonce"], nc, "c0ffee", "auth")
        return (
            f'Digest username="alice", realm="{REALM}", nonce="{params["nonce"]}", uri="{URI}", '
            f'algorithm={algorithm}, qop=auth, nc={nc}, cnonce="c0ffee", response="{response}"'
        )

    def test_challenge_then_registration_with_either_algorithm(self) -> None:
        for index, algorithm in enumerate(("SHA-256", "MD5")):
            challenged = self.register(None, cseq=10 * index + 1)
            self.assertEqual(challenged.status, 401)
            challenge = challenged.headers.get_all("www-authenticate")[index]
            self.assertIn(f"algorithm={algorithm}", challenge)
            accepted = self.register(self.credentials(challenge), cseq=10 * index + 2)
            self.assertEqual(accepted.status, 200, accepted.reason)
            self.assertEqual(accepted.headers.get("p-associated-uri"), f"<sip:alice@{REALM}>, <tel:+15550001>")

    def test_wrong_password_is_403_and_stale_nonce_is_401_stale(self) -> None:
        challenge = self.register(None, cseq=1).headers.get_all("www-authenticate")[0]
        self.assertEqual(self.register(self.credentials(challenge, password="guess"), cseq=2).status, 403)
        self.clock.advance(61)
        stale = self.register(self.credentials(challenge), cseq=3)
        self.assertEqual(stale.status, 401)
        self.assertTrue(all("stale=true" in value for value in stale.headers.get_all("www-authenticate")))
