"""Every TLS listener of a whole epcscf against a real TLS client, ``openssl s_client``: the WSS
listener toward WICs (RFC 7118 §5), the https WWSF page and the SIP TLS listener toward the
core (RFC 3261 §26.2.1).  Browsers offer ALPN (RFC 7301) on every connection: ``http/1.1`` for a
WebSocket, ``h2,http/1.1`` for a page.  Every offer completes the handshake; the HTTP listeners
select ``http/1.1`` when offered and continue without ALPN otherwise; SIP negotiates nothing.

The server certificate comes from a test PKI (root → intermediate → server) and the client
trusts the root alone, so a handshake verifies only if the listener sends the whole chain.
"""

from __future__ import annotations

import os
import re

from cryptography.hazmat.primitives import serialization
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from epcscf.config import ConfigError, load
from epcscf.sip.tls import HTTP_PROTOCOLS, CredentialsError, load_credentials, server_tls
from epcscf.wwsf.site import BUNDLE_NAME
from tests.support.certificates import CertificateChain, certificate_chain, self_signed_certificate
from tests.support.deployment import start_deployment, write_deployment_config
from tests.support.processes import child_env, require_program

#: ALPN offers: none, a WebSocket's, a page's, and only protocols epcscf does not speak
OFFERS: dict[str, list[str]] = {
    "no ALPN": [],
    "http/1.1 (a WebSocket)": ["-alpn", "http/1.1"],
    "h2,http/1.1 (a page)": ["-alpn", "h2,http/1.1"],
    "h2 only": ["-alpn", "h2"],
}
#: what the HTTP listeners (wss, https) negotiate for each offer
HTTP_SELECTION = {"no ALPN": None, "http/1.1 (a WebSocket)": "http/1.1", "h2,http/1.1 (a page)": "http/1.1", "h2 only": None}
ALPN_LINE = re.compile(r"^(ALPN protocol: (?P<protocol>\S+)|No ALPN negotiated)$", re.MULTILINE)


class Handshake:
    """What ``openssl s_client`` reported about one handshake."""

    def __init__(self, output: str, code: int) -> None:
        self.output, self.code = output, code
        # The session line says the handshake finished ("New, (NONE), Cipher is (NONE)" when it
        # did not); the exit code says how the connection ended afterwards, which is not under test.
        self.completed = bool(re.search(r"^New, TLSv1\.[23], Cipher is ", output, re.MULTILINE))
        self.verified = "Verify return code: 0 (ok)" in output
        found = ALPN_LINE.search(output)
        self.alpn_reported = found is not None
        self.alpn = found.group("protocol") if found else None
        version = re.search(r"^\s*Protocol\s*: (\S+)$", output, re.MULTILINE)
        self.version = version.group(1) if version else None


async def handshake(test: unittest.TestCase, port: int, pki: CertificateChain, *options: str) -> Handshake:
    """One TLS handshake with 127.0.0.1:port, verifying the chain up to the test root and the IP."""
    openssl = require_program(test, "openssl", "openssl")
    argv = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", pki.root_path]
    argv += ["-verify_return_error", "-verify_ip", "127.0.0.1", *options]
    # stdin closed at once: s_client ends after the handshake
    out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env=child_env(), stdinBytes=b"")
    return Handshake(out.decode(errors="replace") + err.decode(errors="replace"), code)


class ListenerHandshakeTests(unittest.TestCase):
    """One epcscf with all three TLS listeners, on the test PKI's certificate."""

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        self.pki = certificate_chain(os.path.join(directory, "pki"))
        bundle = os.path.join(directory, "bundle")
        os.makedirs(bundle)
        with open(os.path.join(bundle, BUNDLE_NAME), "w") as handle:
            handle.write("// the page script is not under test here\n")
        chain, key = self.pki.chain_path, self.pki.key_path
        self.service = start_deployment(
            self,
            f"[sip]\nlisten = udp:127.0.0.1:0, tls:127.0.0.1:0\ntls_certificate = {chain}\ntls_private_key = {key}\n"
            f"[ws]\nlisten = wss:127.0.0.1:0\ncertificate = {chain}\nprivate_key = {key}\n"
            f"[wwsf]\nenabled = true\nlisten = https:127.0.0.1:0\nbundle_dir = {bundle}\n",
        )

    def port(self, listener: str) -> int:
        if listener == "https":
            assert self.service.wwsf is not None
            return int(self.service.wwsf.origins[0].rsplit(":", 1)[1])
        bound = self.service.pcscf.listener(listener)
        assert bound is not None, listener
        return bound.address.port

    async def check_offers(self, listener: str, selection: dict[str, str | None]) -> None:
        port = self.port(listener)
        for offer, options in OFFERS.items():
            result = await handshake(self, port, self.pki, *options)
            self.assertTrue(result.completed, f"{listener}, {offer}: handshake failed:\n{result.output[-1500:]}")
            self.assertTrue(result.verified, f"{listener}, {offer}: chain not verified up to the test root")
            self.assertTrue(result.alpn_reported, f"{listener}, {offer}: no ALPN line in\n{result.output[-1500:]}")
            self.assertEqual(result.alpn, selection[offer], f"{listener}, {offer}")

    async def test_wss_completes_every_alpn_offer_and_selects_http_1_1(self) -> None:
        await self.check_offers("WSS", HTTP_SELECTION)

    async def test_https_wwsf_completes_every_alpn_offer_and_selects_http_1_1(self) -> None:
        await self.check_offers("https", HTTP_SELECTION)

    async def test_sip_tls_completes_every_alpn_offer_and_negotiates_none(self) -> None:
        await self.check_offers("TLS", {offer: None for offer in OFFERS})

    async def test_tls_1_1_is_refused_and_tls_1_2_accepted(self) -> None:
        # BCP 195 (RFC 9325 §3.1.1); SECLEVEL=0 so that it is the server that refuses, not the client.
        for listener in ("WSS", "https", "TLS"):
            old = await handshake(self, self.port(listener), self.pki, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
            self.assertFalse(old.completed, f"{listener} accepted TLS 1.1")
            self.assertIn("alert protocol version", old.output, listener)
            current = await handshake(self, self.port(listener), self.pki, "-tls1_2", "-alpn", "http/1.1")
            self.assertTrue(current.completed, f"{listener}: TLS 1.2 failed:\n{current.output[-1500:]}")
            self.assertEqual(current.version, "TLSv1.2", listener)


class CredentialsTests(unittest.TestCase):
    """Certificate and key files: the chain is kept, a wrong file is one line at start."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.pki = certificate_chain(os.path.join(self.directory, "pki"))

    def test_chain_keeps_the_intermediate_after_the_server_certificate(self) -> None:
        credentials = load_credentials(self.pki.chain_path, self.pki.key_path)
        self.assertEqual(credentials.certificate.subject.rfc4514_string(), "CN=localhost")
        self.assertEqual([c.subject.rfc4514_string() for c in credentials.chain], ["CN=epcscf test intermediate CA"])
        self.assertEqual(server_tls(credentials, HTTP_PROTOCOLS).protocols, (b"http/1.1",))

    def test_certificate_and_key_in_one_file(self) -> None:
        both = os.path.join(self.directory, "both.pem")
        with open(both, "wb") as handle, open(self.pki.key_path, "rb") as key, open(self.pki.chain_path, "rb") as chain:
            handle.write(key.read() + chain.read())
        self.assertEqual(len(load_credentials(both, both).chain), 1)

    def test_wrong_files_name_the_file_and_the_fix(self) -> None:
        other_cert, other_key, _ = self_signed_certificate(os.path.join(self.directory, "other"))
        encrypted = os.path.join(self.directory, "encrypted.pem")
        with open(self.pki.key_path, "rb") as plain, open(encrypted, "wb") as handle:
            key = serialization.load_pem_private_key(plain.read(), password=None)
            handle.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        cases = [
            (self.pki.chain_path, encrypted, "private_key", "is encrypted: store it unencrypted"),
            (self.pki.key_path, self.pki.key_path, "certificate", "holds no PEM certificate"),
            (self.pki.chain_path, self.pki.chain_path, "private_key", "holds no PEM private key"),
            (self.pki.chain_path, other_key, "private_key", "does not belong to the first certificate"),
            (os.path.join(self.directory, "absent.pem"), other_key, "certificate", "cannot read"),
        ]
        for certificate, key, culprit, reason in cases:
            with self.assertRaises(CredentialsError) as caught:
                load_credentials(certificate, key)
            self.assertEqual(caught.exception.culprit, culprit, reason)
            self.assertIn(reason, str(caught.exception))
        self.assertTrue(os.path.isfile(other_cert))

    def test_a_key_that_does_not_match_is_a_configuration_error(self) -> None:
        _, other_key, _ = self_signed_certificate(os.path.join(self.directory, "other"))
        base = write_deployment_config(self.directory)
        overlay = os.path.join(self.directory, "wss.ini")
        with open(overlay, "w") as handle:
            handle.write(f"[ws]\nlisten = wss:127.0.0.1:0\ncertificate = {self.pki.chain_path}\nprivate_key = {other_key}\n")
        with self.assertRaises(ConfigError) as caught:
            load([base, overlay])
        self.assertEqual(
            str(caught.exception),
            f"{overlay}: [ws] private_key: the private key in {other_key} does not belong to the first certificate "
            f"in {self.pki.chain_path}",
        )
