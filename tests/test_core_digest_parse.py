"""Fast paths of epcscf.core.digest: parse_digest in one pass (RFC 7616 §3.4, RFC 7230 §3.2.6), HMAC-SHA256 nonce signing (RFC 2104)."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.core.digest import DigestParseError, parse_digest

CREDENTIALS = (
    'Digest username="alice", realm="ims.localdomain", nonce="AAABohtr8CIy5QZinJy1CPOlB8Y0L5NxNmncATP3ciE=", '
    'uri="sip:ims.localdomain", response="a9de8bc62d7d130caff73a12ba384dc7ea31edc078c69ed501016b1b068db0c5", '
    'algorithm=SHA-256, qop=auth, nc=00000001, cnonce="6e96d89e2663c5d3"'
)


class ParseDigestTests(unittest.TestCase):
    def test_credentials(self) -> None:
        self.assertEqual(
            parse_digest(CREDENTIALS),
            {
                "username": "alice",
                "realm": "ims.localdomain",
                "nonce": "AAABohtr8CIy5QZinJy1CPOlB8Y0L5NxNmncATP3ciE=",
                "uri": "sip:ims.localdomain",
                "response": "a9de8bc62d7d130caff73a12ba384dc7ea31edc078c69ed501016b1b068db0c5",
                "algorithm": "SHA-256",
                "qop": "auth",
                "nc": "00000001",
                "cnonce": "6e96d89e2663c5d3",
            },
        )

    def test_spacing_case_quoting(self) -> None:
        self.assertEqual(
            parse_digest('  DIGEST  Realm = "a\\"b" ,\tNonce=x,opaque="" ,qop="auth"  '),
            {"realm": 'a"b', "nonce": "x", "opaque": "", "qop": "auth"},
        )
        self.assertEqual(parse_digest("Digest"), {})
        self.assertEqual(parse_digest("Digest a=1"), {"a": "1"})

    def test_errors_are_those_of_the_loop(self) -> None:
        cases = {
            'Digest realm="a", REALM="b"': "parameter realm given twice",
            'Digest realm="a",': "trailing comma",
            'Digest realm="a", nonce': "cannot parse parameters at ' nonce'",
            'Digest realm="a" nonce="b"': "cannot parse parameters at 'realm=\"a\" nonce=\"b\"'",
            'Digest realm="a': "cannot parse parameters at 'realm=\"a'",
            'Basic realm="a"': "scheme is 'Basic', not Digest",
        }
        for value, message in cases.items():
            with self.assertRaises(DigestParseError) as raised:
                parse_digest(value)
            self.assertEqual(str(raised.exception), message, value)


class HmacSha256Tests(unittest.TestCase):
    def test_same_as_hmac_module(self) -> None:
        import hmac

        from epcscf.core.digest import HmacSha256

        for key in (b"", b"k" * 32, b"k" * 64, bytes(range(65)), b"x" * 200):
            signer = HmacSha256(key)
            for message in (b"", b"nonce body", b"y" * 1000):
                self.assertEqual(signer.digest(message), hmac.digest(key, message, "sha256"), (key, message))
