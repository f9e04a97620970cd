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


class ParseDigestAgainstLoopTests(unittest.TestCase):
    def test_many_shapes(self) -> None:
        """Every shape gives the result (or the error) of the parameter-at-a-time loop."""
        from epcscf.sip import digest  # the parser moved there; core re-exports parse_digest

        def loop(rest: str) -> dict[str, str] | str:
            params: dict[str, str] = {}
            position = 0
            while position < len(rest):
                match = digest._PARAM_RE.match(rest, position)
                if match is None:
                    return "cannot parse"
                name = match.group(1).lower()
                if name in params:
                    return "twice"
                quoted, token = match.group(2), match.group(3)
                params[name] = token if quoted is None else digest._QUOTED_PAIR_RE.sub(r"\1", quoted)
                position = match.end()
                if match.group(4) == "," and position >= len(rest):
                    return "trailing"
            return params

        pieces = ['a=1', 'b="x y"', 'c=""', 'd="q\\"q"', 'e="\\\\"', "f=tok", 'g="a,b"', "A=2", '"', ",", " ", "\n", "h=", 'i="x\ny"', "j=k l"]
        values = {""}
        for first in pieces:
            values.add(first)
            for second in pieces:
                for joint in (",", ", ", " ,", ""):
                    values.add(first + joint + second)
        for rest in sorted(values):
            expected = loop(rest.strip())
            try:
                got: dict[str, str] | str = digest.parse_digest("Digest " + rest)
            except digest.DigestParseError as error:
                got = "twice" if "twice" in str(error) else "trailing" if "trailing" in str(error) else "cannot parse"
            self.assertEqual(got, expected, repr(rest))
