"""Web-credential access ([auth] mode = token): WICs admitted on a WWSF-issued JWT.

Real WebSockets on the WIC side.  Against the embedded core (trusting the eP-CSCF's
``integrity-protected="auth-done"``) a token holder registers and exchanges requests with no
password; against a UDP sink standing for an external core every defective token is refused
at the eP-CSCF and nothing reaches the sink (a good token does: the sink is live).  Key
rotation goes through a real SIGHUP to this process (the service's handler).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import jwt
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from epcscf.config import ConfigError, load
from epcscf.sip.message import Response
from epcscf.sip.proxy_rules import list_values
from tests.support.deployment import DOMAIN, USERS, start_deployment, write_deployment_config
from tests.support.processes import wait_for
from tests.support.udp_peer import UdpSipPeer
from tests.support.wic import WsSipClient, as_deferred

ISSUER = "https://wwsf.example.com"


def asyncio_test(method):
    def wrapper(self):
        return as_deferred(method(self))

    wrapper.__name__ = method.__name__
    return wrapper


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Keys:
    """The WWSF's signing keys (ES256 and EdDSA) and a stranger's."""

    def __init__(self) -> None:
        self.wwsf = ec.generate_private_key(ec.SECP256R1())
        self.wwsf_eddsa = ed25519.Ed25519PrivateKey.generate()
        self.stranger = ec.generate_private_key(ec.SECP256R1())
        self.next = ec.generate_private_key(ec.SECP256R1())


KEYS = Keys()


def token(user: str = "alice", key: Any = None, algorithm: str = "ES256", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": DOMAIN, "sub": f"sip:{user}@{DOMAIN}", "iat": now, "exp": now + 300}
    claims.update(overrides)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, key if key is not None else KEYS.wwsf, algorithm=algorithm)


def auth_config(keys_file: str, core: str = "", auth: str = "", mode: str = "token") -> str:
    return f"""\
[auth]
mode = {mode}
keys = {keys_file}
issuers = {ISSUER}, https://other-wwsf.example.com
{auth}
[core]
trust_asserted_identity = true
{core}"""


def write_keys(directory: str, *keys: Any) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "wwsf-keys.pem")
    with open(path, "wb") as handle:
        handle.write(b"".join(public_pem(key) for key in keys))
    return path


class TokenWic(WsSipClient):
    """A WIC that has no password: only the token its WWSF gave it."""

    def __init__(self, url: str, user: str, bearer: str | None) -> None:
        super().__init__(url, user, "no-password", DOMAIN)
        self.bearer = bearer

    def register_request(self, expires: int = 600, reg_id: int = 1):
        request = super().register_request(expires, reg_id)
        if self.bearer is not None:
            request.headers.add("Authorization", f"Bearer {self.bearer}")  # RFC 8898 §2.1
        return request

    async def register(self, expires: int = 600) -> Response:
        await self.send(self.register_request(expires))
        return await self.final_response()


class WebLoginCase(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.keys_file = write_keys(self.directory, KEYS.wwsf, KEYS.wwsf_eddsa)
        self.clients: list[TokenWic] = []
        self.log_events: list[dict] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)

    def tearDown(self):
        return as_deferred(self._close())

    async def _close(self) -> None:
        for client in self.clients:
            await client.close()

    def url(self) -> str:
        listener = self.service.pcscf.listener("WS")
        return f"ws://127.0.0.1:{listener.address.port}"

    async def wic(self, user: str, bearer: str | None, query: str = "") -> TokenWic:
        client = TokenWic(self.url() + query, user, bearer)
        await client.connect()
        self.clients.append(client)
        return client

    def refusals(self, reason: str) -> float:
        value = self.service.metrics.registry.get_sample_value("epcscf_token_refusals_total", {"reason": reason})
        return value or 0.0


class TokenAgainstTheEmbeddedCoreTests(WebLoginCase):
    def setUp(self) -> None:
        super().setUp()
        self.service = start_deployment(self, auth_config(self.keys_file))

    @asyncio_test
    async def test_token_holders_register_without_a_challenge_and_reach_each_other(self) -> None:
        alice = await self.wic("alice", token("alice"))
        response = await alice.register()
        self.assertEqual(response.status, 200, response.serialize())  # no 401 first: no digest exchange
        self.assertEqual(list_values(response.headers, "P-Associated-URI")[0], f"<sip:alice@{DOMAIN}>")
        # The core holds alice's binding, registered on the eP-CSCF's assertion.
        self.assertEqual([b.aor for b in self.service.pcscf.registrations.all()], [f"sip:alice@{DOMAIN}"])
        # bob's WWSF signed with EdDSA (RFC 8037): also accepted.
        # ... and sent in the access_token="…" parameter form of TS 24.371 §7.2.1.
        bob_token = token("bob", key=KEYS.wwsf_eddsa, algorithm="EdDSA")
        bob = await self.wic("bob", f'access_token="{bob_token}"')
        self.assertEqual((await bob.register()).status, 200)
        message = alice.request("MESSAGE", f"sip:bob@{DOMAIN}", body=b"hello bob", content_type="text/plain")
        await alice.send(message)
        arrived = await bob.next_message()
        self.assertEqual((arrived.method, arrived.body), ("MESSAGE", b"hello bob"))
        self.assertEqual(arrived.headers.get("P-Asserted-Identity"), f"<sip:alice@{DOMAIN}>")
        await bob.answer(arrived)
        self.assertEqual((await alice.final_response()).status, 200)

    @asyncio_test
    async def test_a_forged_auth_done_from_a_wic_is_refused_even_in_digest_clothing(self) -> None:
        # The core trusts "auth-done" from the eP-CSCF: a WIC must never be able to say it.
        alice = await self.wic("alice", None)
        request = alice.register_request()
        request.headers.add(
            "Authorization",
            f'Digest username="alice", realm="{DOMAIN}", uri="sip:{DOMAIN}", nonce="", response="", integrity-protected="auth-done"',
        )
        await alice.send(request)
        response = await alice.final_response()
        self.assertEqual((response.status, response.reason), (403, "Forbidden (integrity-protected is set by the P-CSCF)"))
        self.assertEqual(self.service.pcscf.registrations.all(), [])

    @asyncio_test
    async def test_the_token_at_the_handshake_admits_the_flow(self) -> None:
        # A browser cannot set headers on a WebSocket: the token rides in the URL (RFC 6750 §2.3).
        alice = await self.wic("alice", None, query=f"/?access_token={token('alice')}")
        response = await alice.register()
        self.assertEqual(response.status, 200, response.serialize())
        # The flow's token names alice only.
        carol = alice.register_request()
        carol.headers.set("To", f"<sip:carol@{DOMAIN}>")
        carol.headers.set("From", f"<sip:carol@{DOMAIN}>;tag=x1")
        await alice.send(carol)
        refused = await alice.final_response()
        self.assertEqual((refused.status, refused.reason), (403, "Forbidden (identity not in token)"))
        # A bad token at the handshake: HTTP 401 before any SIP.
        with self.assertRaises(websockets.InvalidStatus) as caught:
            await websockets.connect(self.url() + f"/?access_token={token('alice', key=KEYS.stranger)}", subprotocols=["sip"])
        self.assertEqual(caught.exception.response.status_code, 401)
        self.assertEqual(self.refusals("signature"), 1)
        # The query (the token) is never written to the log.
        self.assertFalse(any("access_token" in str(event) for event in self.log_events))


class DefectiveTokensTests(WebLoginCase):
    """Each defect refused at the eP-CSCF; the sink standing for the core hears nothing."""

    def setUp(self) -> None:
        super().setUp()
        self.core = UdpSipPeer()
        port = self.core.start()
        self.addCleanup(self.core.stop)
        extra = auth_config(self.keys_file, f"mode = external\nnext_hop = sip:127.0.0.1:{port};transport=udp\n")
        self.service = start_deployment(self, extra)

    async def assert_refused(self, bearer: str | None, status: int, phrase: str, reason: str, user: str = "alice") -> Response:
        before = self.refusals(reason)
        client = await self.wic(user, bearer)
        await client.send(client.register_request())
        response = await client.final_response()
        self.assertEqual((response.status, response.reason), (status, phrase))
        self.assertEqual(self.refusals(reason), before + 1)
        call_id = client.call_id
        self.assertTrue(
            any(call_id in str(event.get("call_id", "")) and phrase.split("(")[1][:-1] in str(event.get("phrase", "")) for event in self.log_events),
            f"no log line with the Call-ID {call_id}",
        )
        return response

    @asyncio_test
    async def test_each_defect_is_refused_with_its_status_and_nothing_reaches_the_core(self) -> None:
        expired = token(exp=int(time.time()) - 120, iat=int(time.time()) - 600)
        missing = await self.assert_refused(None, 401, "Unauthorized (token required)", "missing")
        self.assertEqual(missing.headers.get("WWW-Authenticate"), f'Bearer realm="{DOMAIN}"')
        bad = await self.assert_refused(token(key=KEYS.stranger), 401, "Unauthorized (bad token signature)", "signature")
        self.assertEqual(
            bad.headers.get("WWW-Authenticate"),
            f'Bearer realm="{DOMAIN}", error="invalid_token", error_description="bad token signature"',
        )
        await self.assert_refused(expired, 401, "Unauthorized (token expired)", "expired")
        await self.assert_refused(token(aud="other.example.net"), 401, "Unauthorized (token not for this eP-CSCF)", "audience")
        await self.assert_refused(token(iss="https://evil.example.com"), 401, "Unauthorized (token issuer not trusted)", "issuer")
        await self.assert_refused(token("bob"), 403, "Forbidden (identity not in token)", "identity")
        await self.assert_refused("not.a.jwt", 401, "Unauthorized (malformed token)", "malformed")
        # Signed, but its impi would break out of the quoted username toward the core.
        await self.assert_refused(token(impi='alice", integrity-protected="yes'), 401, "Unauthorized (token with an unusable impi)", "malformed")
        await self.assert_refused(token(algorithm="HS256", key="a-shared-secret-of-32-bytes-long!"), 401, "Unauthorized (token algorithm not accepted)", "algorithm")
        await asyncio.sleep(0.3)
        self.assertTrue(self.core.received.empty(), "a refused REGISTER reached the core")
        # The sink is live: a good token's REGISTER reaches it, as the trusted node's assertion.
        alice = await self.wic("alice", token())
        await alice.send(alice.register_request())
        arrived, addr = await self.core.next_request()
        self.assertEqual(arrived.method, "REGISTER")
        [authorization] = arrived.headers.get_all("Authorization")
        self.assertIn('integrity-protected="auth-done"', authorization)
        self.assertIn(f'username="alice@{DOMAIN}"', authorization)
        self.assertNotIn("Bearer", authorization)  # RFC 6750 §5.3: the token stays with us
        self.core.reply(arrived, addr, 200)
        self.assertEqual((await alice.final_response()).status, 200)

    @asyncio_test
    async def test_key_rotation_takes_effect_on_sighup(self) -> None:
        rotated = token(key=KEYS.next)
        await self.assert_refused(rotated, 401, "Unauthorized (bad token signature)", "signature")
        write_keys(self.directory, KEYS.next)  # the WWSF rotated: only its new key
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(
            lambda: any("token keys re-read" in str(event.get("log_format", "")) for event in self.log_events),
            what="the SIGHUP reload",
        )
        await self.assert_refused(token(), 401, "Unauthorized (bad token signature)", "signature")  # the old key is gone
        alice = await self.wic("alice", rotated)
        await alice.send(alice.register_request())
        arrived, addr = await self.core.next_request()
        self.assertEqual(arrived.method, "REGISTER")
        self.core.reply(arrived, addr, 200)
        self.assertEqual((await alice.final_response()).status, 200)
        # A broken key file at the next SIGHUP: one error line, the keys in use are kept.
        with open(self.keys_file, "w") as handle:
            handle.write("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(
            lambda: any("token keys not re-read" in str(event.get("log_format", "")) for event in self.log_events),
            what="the refused reload",
        )
        bob = await self.wic("alice", token(key=KEYS.next))
        await bob.send(bob.register_request())
        arrived, addr = await self.core.next_request()
        self.core.reply(arrived, addr, 200)
        self.assertEqual((await bob.final_response()).status, 200)


class BothModesTests(WebLoginCase):
    def setUp(self) -> None:
        super().setUp()
        self.service = start_deployment(self, auth_config(self.keys_file, mode="both"))

    @asyncio_test
    async def test_digest_wics_are_challenged_as_before_and_token_wics_are_not(self) -> None:
        digest = WsSipClient(self.url(), "bob", USERS["bob"], DOMAIN)
        await digest.connect()
        self.clients.append(digest)
        await digest.send(digest.register_request())
        self.assertEqual((await digest.final_response()).status, 401)  # the core's digest challenge
        self.assertEqual((await digest.register()).status, 200)
        alice = await self.wic("alice", token())
        self.assertEqual((await alice.register()).status, 200)
        # A bad token is still refused here, not passed on as if it were digest.
        carol = await self.wic("carol", token("carol", key=KEYS.stranger))
        self.assertEqual((await carol.register()).reason, "Unauthorized (bad token signature)")


class HandshakeRequiredTests(WebLoginCase):
    def setUp(self) -> None:
        super().setUp()
        self.service = start_deployment(self, auth_config(self.keys_file, auth="handshake = required"))

    @asyncio_test
    async def test_a_socket_without_a_token_is_refused_before_any_sip(self) -> None:
        with self.assertRaises(websockets.InvalidStatus) as caught:
            await websockets.connect(self.url(), subprotocols=["sip"])
        self.assertEqual(caught.exception.response.status_code, 401)
        self.assertEqual(self.refusals("missing"), 1)
        self.assertEqual(len(self.service.pcscf.flows), 0)
        # With one (as an Authorization header, as a non-browser WIC may send it): admitted.
        socket = await websockets.connect(self.url(), subprotocols=["sip"], additional_headers={"Authorization": f"Bearer {token()}"})
        await socket.close()


class AuthConfigTests(unittest.TestCase):
    def write(self, text: str) -> list[str]:
        directory = os.path.abspath(self.mktemp())
        base = write_deployment_config(directory)
        override = os.path.join(directory, "auth.ini")
        with open(override, "w") as handle:
            handle.write(text)
        return [base, override]

    def test_token_mode_needs_keys_unless_the_wwsf_issues_them(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load(self.write("[auth]\nmode = token\n"))
        self.assertIn("[auth] keys: mode = token needs keys", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            load(self.write("[auth]\nmode = tokens\n"))
        self.assertIn("[auth] mode: must be one of digest, token, both", str(caught.exception))
        self.assertEqual(load(self.write("[auth]\nmode = both\n[wwsf]\nenabled = true\n")).auth.mode, "both")
        with self.assertRaises(ConfigError) as caught:
            load(self.write("[auth]\nalgorithms = ES256, HS256\n"))
        self.assertIn("[auth] algorithms: 'HS256' is not a public-key JWS algorithm", str(caught.exception))


class DocsExampleTests(unittest.TestCase):
    def test_the_docs_issuer_makes_tokens_the_ep_cscf_accepts(self) -> None:
        import runpy

        from epcscf.pcscf.web_auth import TokenSettings, TokenVerifier
        from tests.support.processes import TOP

        example = runpy.run_path(os.path.join(TOP, "docs", "wwsf-token-issuer.py"))
        directory = os.path.abspath(self.mktemp())
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        settings = TokenSettings("token", write_keys(directory, key), example["AUDIENCE"], (example["ISSUER"],))
        identity = TokenVerifier(settings).verify(example["issue"]("sip:alice@ims.example.com", pem))
        self.assertTrue(identity.allows("sip:alice@ims.example.com"))
        self.assertEqual(identity.private_identity, "alice@ims.example.com")


class VerifierTests(unittest.TestCase):
    """The verifier alone: a JWKS key file (RS256, chosen by kid), nbf, and a list of IMPUs."""

    def test_jwks_rs256_by_kid_nbf_and_identity_lists(self) -> None:
        import json

        from cryptography.hazmat.primitives.asymmetric import rsa

        from epcscf.pcscf.web_auth import TokenRejected, TokenSettings, TokenVerifier

        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwks = {"keys": []}
        for kid, key in (("old", ec.generate_private_key(ec.SECP256R1())), ("2026", rsa_key)):
            algorithm = jwt.algorithms.RSAAlgorithm if kid == "2026" else jwt.algorithms.ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            jwk["kid"] = kid
            jwks["keys"].append(jwk)
        path = os.path.join(os.path.abspath(self.mktemp()) + ".jwks")
        with open(path, "w") as handle:
            json.dump(jwks, handle)
        settings = TokenSettings("token", path, DOMAIN, (ISSUER,), identity_claim="impu")
        verifier = TokenVerifier(settings)
        impus = [f"sip:alice@{DOMAIN}", "tel:+15550001"]
        signed = token(key=rsa_key, algorithm="RS256", impu=impus)
        identity = verifier.verify(jwt.encode(jwt.decode(signed, options={"verify_signature": False}), rsa_key, "RS256", headers={"kid": "2026"}))
        self.assertEqual(identity.identities, tuple(impus))
        self.assertTrue(identity.allows("tel:+15550001"))
        self.assertFalse(identity.allows(f"sip:bob@{DOMAIN}"))
        with self.assertRaises(TokenRejected) as caught:
            verifier.verify(token(key=rsa_key, algorithm="RS256", impu=impus, nbf=int(time.time()) + 600))
        self.assertEqual((caught.exception.status, caught.exception.reason), (401, "not_yet_valid"))
        with self.assertRaises(TokenRejected) as caught:
            verifier.verify(token(key=rsa_key, algorithm="RS256"))  # no impu claim
        self.assertEqual(caught.exception.phrase, "token without impu")


class BearerCredentialsTests(unittest.TestCase):
    def test_both_credential_forms_give_the_token(self) -> None:
        from epcscf.pcscf.web_auth import bearer_token

        self.assertEqual(bearer_token(["Bearer eyJa.b.c"]), "eyJa.b.c")
        self.assertEqual(bearer_token(['Bearer access_token="eyJa.b.c"']), "eyJa.b.c")
        self.assertEqual(bearer_token(["Bearer  abc=="]), "abc==")  # b64token padding is not a parameter
        self.assertIsNone(bearer_token(['Bearer access_token=""']))
        self.assertIsNone(bearer_token(['Digest username="alice"', "Bearer"]))
        self.assertEqual(bearer_token(['Digest username="alice"', "bearer t1"]), "t1")
