"""LiteResponder: the STUN Binding side of ICE-lite, fed crafted messages (RFC 8445 §7.3)."""

from __future__ import annotations

from aioice import stun
from twisted.trial import unittest

from epcscf.ice.lite import LiteResponder
from epcscf.ice.types import IceCredentials

OURS = IceCredentials("ourufrag", "our-password-is-long-enough".replace("-", "x"))
SOURCE = ("192.0.2.7", 50000)


def binding_request(username: str | None = "ourufrag:wic1", key: str | None = OURS.pwd, **attributes: object) -> stun.Message:
    """A request as the WIC sends it, round-tripped through bytes like the wire does."""
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    if username is not None:
        message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853817087
    message.attributes.update(attributes)
    if key is not None:
        message.add_message_integrity(key.encode())
    else:
        message.add_fingerprint()
    return stun.parse_message(bytes(message))


class LiteResponderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.responder = LiteResponder(OURS)

    def reparse(self, message: stun.Message | None) -> stun.Message:
        assert message is not None
        return stun.parse_message(bytes(message))  # also checks FINGERPRINT

    def test_authenticated_request_gets_signed_success_with_xor_mapped_address(self) -> None:
        request = binding_request(**{"ICE-CONTROLLING": 1})
        outcome = self.responder.answer(request, SOURCE)
        response = self.reparse(outcome.response)
        self.assertEqual(response.message_class, stun.Class.RESPONSE)
        self.assertEqual(response.transaction_id, request.transaction_id)
        self.assertEqual(response.attributes["XOR-MAPPED-ADDRESS"], SOURCE)
        self.assertTrue(response.check_message_integrity(OURS.pwd.encode()))
        self.assertIn("FINGERPRINT", response.attributes)
        self.assertTrue(outcome.authenticated)
        self.assertFalse(outcome.use_candidate)

    def test_use_candidate_is_reported(self) -> None:
        outcome = self.responder.answer(binding_request(**{"ICE-CONTROLLING": 1, "USE-CANDIDATE": None}), SOURCE)
        self.assertTrue(outcome.use_candidate and outcome.current_generation)

    def test_ice_controlled_peer_still_gets_success_not_487(self) -> None:
        # Chrome may claim controlled against a lite agent (webrtc bug 7478).
        outcome = self.responder.answer(binding_request(**{"ICE-CONTROLLED": 5}), SOURCE)
        self.assertEqual(self.reparse(outcome.response).message_class, stun.Class.RESPONSE)

    def test_wrong_password_gets_unsigned_401(self) -> None:
        outcome = self.responder.answer(binding_request(key="x" * 22), SOURCE)
        response = self.reparse(outcome.response)
        self.assertEqual(response.attributes["ERROR-CODE"][0], 401)
        self.assertNotIn("MESSAGE-INTEGRITY", response.attributes)
        self.assertFalse(outcome.authenticated)

    def test_wrong_ufrag_gets_401(self) -> None:
        for username in ("otherufr:wic1", "ourufrag", "wic1:ourufrag"):
            outcome = self.responder.answer(binding_request(username=username), SOURCE)
            self.assertEqual(self.reparse(outcome.response).attributes["ERROR-CODE"][0], 401, username)

    def test_remote_ufrag_is_checked_once_known(self) -> None:
        self.responder.set_remote_ufrag("wic2")
        self.assertEqual(self.reparse(self.responder.answer(binding_request(), SOURCE).response).attributes["ERROR-CODE"][0], 401)
        ok = self.responder.answer(binding_request(username="ourufrag:wic2"), SOURCE)
        self.assertTrue(ok.authenticated)

    def test_missing_username_or_integrity_gets_400(self) -> None:
        for request in (binding_request(username=None), binding_request(key=None)):
            response = self.reparse(self.responder.answer(request, SOURCE).response)
            self.assertEqual(response.attributes["ERROR-CODE"][0], 400)

    def test_non_binding_request_gets_400_and_indications_are_ignored(self) -> None:
        allocate = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
        self.assertEqual(self.reparse(self.responder.answer(allocate, SOURCE).response).attributes["ERROR-CODE"][0], 400)
        indication = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.INDICATION)
        self.assertIsNone(self.responder.answer(indication, SOURCE).response)

    def test_restart_accepts_old_credentials_until_complete(self) -> None:
        new = IceCredentials("newufrag", "n" * 24)
        self.responder.restart(new)
        old = self.responder.answer(binding_request(), SOURCE)
        self.assertTrue(old.authenticated)
        self.assertFalse(old.current_generation)
        fresh = self.responder.answer(binding_request(username="newufrag:wic3", key=new.pwd), SOURCE)
        self.assertTrue(fresh.authenticated and fresh.current_generation)
        self.assertTrue(self.reparse(fresh.response).check_message_integrity(new.pwd.encode()))
        self.responder.restart_complete()
        self.assertFalse(self.responder.answer(binding_request(), SOURCE).authenticated)


class CredentialsTests(unittest.TestCase):
    def test_generated_credentials_meet_rfc_8839_randomness(self) -> None:
        # RFC 8839 §5.4: ufrag ≥ 24 bits, pwd ≥ 128 bits; 6 bits per ice-char.
        credentials = IceCredentials.generate()
        self.assertGreaterEqual(len(credentials.ufrag) * 6, 24)
        self.assertGreaterEqual(len(credentials.pwd) * 6, 128)
        credentials.validate_remote()
        self.assertNotEqual(credentials, IceCredentials.generate())


class _FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


class _FakeSocket:
    """Stands in for a bound _LiteSocket: a transport and a host candidate."""

    def __init__(self, port: int) -> None:
        from epcscf.ice.sockets import host_candidate

        self.transport = _FakeTransport()
        self.candidate = host_candidate(("192.0.2.1", port), None, 0)
        self.local_address = ("192.0.2.1", port)


class _Listener:
    def __init__(self) -> None:
        self.selected: list[object] = []
        self.data: list[bytes] = []
        self.evidence = 0

    def pair_selected(self, pair: object) -> None:
        self.selected.append(pair)

    def checks_failed(self, reason: str) -> None:
        raise AssertionError(reason)

    def datagram(self, data: bytes) -> None:
        self.data.append(data)

    def consent_evidence(self) -> None:
        self.evidence += 1

    def consent_revoked(self, reason: str) -> None:
        raise AssertionError(reason)


class LiteBackendRoutingTests(unittest.TestCase):
    """RFC 7675 §5.1: media only on the pair nominated by USE-CANDIDATE; renomination moves it."""

    def setUp(self) -> None:
        from epcscf.ice.lite import LiteBackend
        from epcscf.ice.types import IceAgentConfig, IceStats

        self.listener = _Listener()
        self.stats = IceStats()
        self.backend = LiteBackend(IceAgentConfig(mode="lite"), OURS, None, self.listener, self.stats)
        self.sock = _FakeSocket(30000)

    def check(self, source: tuple[str, int], **attributes: object) -> None:
        self.backend.received(self.sock, bytes(binding_request(**attributes)), source)  # type: ignore[arg-type]

    def test_no_data_before_nomination_then_early_data_of_the_pair_is_delivered(self) -> None:
        other = ("192.0.2.8", 40000)
        self.backend.received(self.sock, b"\x16early-dtls", SOURCE)  # type: ignore[arg-type]
        self.backend.received(self.sock, b"\x16spoofed", other)  # type: ignore[arg-type]
        self.assertEqual(self.listener.data, [])
        self.assertFalse(self.backend.send(b"\x80rtp"))
        self.check(SOURCE)  # a check without USE-CANDIDATE selects nothing
        self.assertEqual(self.listener.selected, [])
        self.check(SOURCE, **{"USE-CANDIDATE": None})
        self.assertEqual(len(self.listener.selected), 1)
        self.assertEqual(self.listener.data, [b"\x16early-dtls"])
        self.assertEqual(self.stats.datagrams_dropped, 1)
        self.assertTrue(self.backend.send(b"\x80rtp"))
        self.assertEqual(self.sock.transport.sent[-1], (b"\x80rtp", SOURCE))

    def test_renomination_moves_the_pair_and_consent_counts_only_on_it(self) -> None:
        other = ("192.0.2.8", 40000)
        self.check(SOURCE, **{"USE-CANDIDATE": None})
        evidence = self.listener.evidence
        self.check(other)  # authenticated, but not the selected pair
        self.assertEqual(self.listener.evidence, evidence)
        self.backend.received(self.sock, b"\x80from-other", other)  # type: ignore[arg-type]
        self.assertEqual(self.listener.data, [])
        self.check(other, **{"USE-CANDIDATE": None})
        self.assertEqual(len(self.listener.selected), 2)
        self.assertEqual(self.backend.selected.remote, other)  # type: ignore[union-attr]
        self.backend.received(self.sock, b"\x80from-other", other)  # type: ignore[arg-type]
        self.assertEqual(self.listener.data, [b"\x80from-other"])

    def test_malformed_stun_is_dropped_without_answer(self) -> None:
        self.backend.received(self.sock, b"\x00\x01\x00\x00garbage", SOURCE)  # type: ignore[arg-type]
        self.assertEqual(self.sock.transport.sent, [])
        self.assertEqual(self.stats.checks_rejected, 1)
