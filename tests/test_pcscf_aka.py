"""IMS-AKA keys removed from challenges toward the WIC (TS 24.229 §5.2.2.1), text kept as written."""

from __future__ import annotations

from twisted.trial import unittest

from epcscf.pcscf.aka import strip_aka_keys, strip_sec_agree, without_keys
from epcscf.pcscf.reginfo import ReginfoError, parse_reginfo
from epcscf.sip.message import Request, Response


class WithoutKeysTests(unittest.TestCase):
    def test_ck_and_ik_go_wherever_they_are_the_rest_stays_byte_for_byte(self) -> None:
        cases = {
            'Digest realm="r", nonce="n", algorithm=AKAv1-MD5, ck="c", ik="i", qop="auth"':
                'Digest realm="r", nonce="n", algorithm=AKAv1-MD5, qop="auth"',
            'Digest ck="c",ik="i",realm="r",algorithm="AKAv2-MD5"': 'Digest realm="r",algorithm="AKAv2-MD5"',
            'Digest realm="a, ck=\\"x\\"", CK="c", algorithm=akav1-md5, IK = "i"': 'Digest realm="a, ck=\\"x\\"", algorithm=akav1-md5',
        }
        for given, expected in cases.items():
            self.assertEqual(without_keys(given), expected)

    def test_other_algorithms_and_schemes_are_not_touched(self) -> None:
        for value in ('Digest realm="r", nonce="n", algorithm=MD5, ck="c"', 'Digest realm="r", nonce="n"', 'Bearer ck="c"'):
            self.assertEqual(without_keys(value), value)

    def test_every_challenge_of_a_401_is_rewritten_and_counted(self) -> None:
        response = Response(401, "Unauthorized")
        response.headers.add("WWW-Authenticate", 'Digest realm="r", nonce="n", algorithm=AKAv1-MD5, ck="c", ik="i"')
        response.headers.add("WWW-Authenticate", 'Digest realm="r", nonce="m", algorithm=MD5')
        self.assertEqual(strip_aka_keys(response), 1)
        self.assertEqual(
            response.headers.get_all("WWW-Authenticate"),
            ['Digest realm="r", nonce="n", algorithm=AKAv1-MD5', 'Digest realm="r", nonce="m", algorithm=MD5'],
        )

    def test_sec_agree_headers_end_here(self) -> None:
        request = Request("REGISTER", "sip:ims.localdomain")
        request.headers.add("Security-Client", "ipsec-3gpp; alg=hmac-sha-1-96")
        request.headers.add("security-verify", "ipsec-3gpp; alg=hmac-sha-1-96")
        self.assertEqual(strip_sec_agree(request), ["Security-Client", "Security-Verify"])
        self.assertNotIn("Security-Verify", request.headers)


class ReginfoTests(unittest.TestCase):
    def test_a_full_document(self) -> None:
        info = parse_reginfo(
            b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="3" state="full">'
            b'<registration aor="sip:a@x" id="r" state="active">'
            b'<contact id="c" state="terminated" event="rejected"><uri>sip:a@h.invalid</uri></contact>'
            b"</registration></reginfo>"
        )
        self.assertEqual((info.version, info.state), (3, "full"))
        [registration] = info.registrations
        [contact] = registration.contacts
        self.assertEqual((registration.aor, contact.state, contact.event, contact.uri), ("sip:a@x", "terminated", "rejected", "sip:a@h.invalid"))

    def test_what_is_not_a_usable_document(self) -> None:
        for body in (
            b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><reginfo>&e;</reginfo>',
            b'<reginfo xmlns="urn:other" version="1" state="full"/>',
            b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" state="full"/>',
            b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="-1" state="full"/>',
            b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="1" state="full"><registration id="r"/></reginfo>',
            b"x" * 70000,
        ):
            self.assertRaises(ReginfoError, parse_reginfo, body)
