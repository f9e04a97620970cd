"""The WWSF's HTTP side: the page, its script, /config.json, headers and errors."""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest
from twisted.web import client
from twisted.web.http_headers import Headers

from epcscf.config import ConfigError, load
from epcscf.wwsf import DemoUser, WebSocketEndpoint, WwsfService, WwsfSettings, websocket_url
from epcscf.config import Listener
from tests.support.deployment import DOMAIN, USERS, write_deployment_config


async def fetch(url: str, method: bytes = b"GET", headers: dict[bytes, list[bytes]] | None = None) -> tuple[int, Headers, bytes]:
    from twisted.internet import reactor

    pool = client.HTTPConnectionPool(reactor, persistent=False)
    agent = client.Agent(reactor, pool=pool)
    response = await agent.request(method, url.encode(), Headers(headers or {}))
    body = await client.readBody(response)
    await pool.closeCachedConnections()
    return response.code, response.headers, body


class WebSocketUrlTests(unittest.TestCase):
    def test_http_page_prefers_ws_and_https_page_only_wss(self):
        both = [WebSocketEndpoint("wss", "192.0.2.1", 8443), WebSocketEndpoint("ws", "127.0.0.1", 8080)]
        self.assertEqual(websocket_url(both, False, "127.0.0.1"), "ws://127.0.0.1:8080")
        self.assertEqual(websocket_url(both, True, "wic.example.com"), "wss://192.0.2.1:8443")
        self.assertIsNone(websocket_url([WebSocketEndpoint("ws", "127.0.0.1", 8080)], True, "x"))

    def test_unspecified_listener_is_reached_at_the_page_host(self):
        self.assertEqual(websocket_url([WebSocketEndpoint("wss", "0.0.0.0", 8443)], True, "wic.example.com"), "wss://wic.example.com:8443")
        self.assertEqual(websocket_url([WebSocketEndpoint("ws", "::", 8080)], False, "::1"), "ws://[::1]:8080")


class WwsfConfigTests(unittest.TestCase):
    def load(self, wwsf: str) -> object:
        directory = os.path.abspath(self.mktemp())
        base = write_deployment_config(directory)
        overlay = os.path.join(directory, "overlay.ini")
        with open(overlay, "w") as handle:
            handle.write(f"[wwsf]\n{wwsf}")
        return load([base, overlay])

    def test_defaults_off_on_8081(self):
        config = self.load("")
        self.assertFalse(config.wwsf.enabled)
        self.assertEqual(config.wwsf.listen, (Listener("http", "127.0.0.1", 8081),))
        self.assertTrue(config.wwsf.demo_users)

    def test_https_needs_the_ws_certificate(self):
        with self.assertRaises(ConfigError) as caught:
            self.load("enabled = true\nlisten = https:127.0.0.1:8443\n")
        self.assertIn("[wwsf] listen", str(caught.exception))
        self.assertIn("certificate", str(caught.exception))

    def test_bad_listener_and_url_are_one_line_errors(self):
        with self.assertRaises(ConfigError) as caught:
            self.load("listen = ws:127.0.0.1:8081\n")
        self.assertIn("must be one of http, https", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            self.load("websocket_url = http://pcscf.example.com\n")
        self.assertIn("not a WebSocket URL", str(caught.exception))

    def test_shipped_config_enables_the_wwsf_whose_origin_ws_allows(self):
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = load([os.path.join(top, "etc", "epcscf.ini")])
        self.assertTrue(config.wwsf.enabled)
        for listener in config.wwsf.listen:
            self.assertIn(f"{listener.transport}://{listener.address}:{listener.port}", config.ws.allowed_origins)


class WwsfSiteTests(unittest.TestCase):
    """A WwsfService on its own (no SIP), port 0."""

    def start(self, bundle_dir: str, users: tuple[DemoUser, ...] = (), url: str = "") -> str:
        settings = WwsfSettings(
            domain=DOMAIN,
            websocket_endpoints=lambda: [WebSocketEndpoint("ws", "127.0.0.1", 8080), WebSocketEndpoint("wss", "0.0.0.0", 8443)],
            bundle_dir=bundle_dir,
            demo_users=users,
            websocket_url=url,
        )
        service = WwsfService(settings, (Listener("http", "127.0.0.1", 0),))
        service.startService()
        self.addCleanup(service.stopService)
        [origin] = service.origins
        return origin

    def bundle(self, text: str = "/* page */") -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "app.js"), "w") as handle:
            handle.write(text)
        return directory

    def test_page_style_and_script_with_security_headers(self):
        return defer.ensureDeferred(self._page())

    async def _page(self) -> None:
        origin = self.start(self.bundle("console.log('bundled')"))
        code, headers, body = await fetch(origin + "/")
        self.assertEqual(code, 200)
        self.assertIn(b"<title>epcscf WebRTC client</title>", body)
        self.assertIn(b'<script src="app.js" defer></script>', body)
        [csp] = headers.getRawHeaders(b"content-security-policy")
        self.assertIn(b"script-src 'self'", csp)
        self.assertIn(b"frame-ancestors 'none'", csp)
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        code, headers, body = await fetch(origin + "/app.js")
        self.assertEqual((code, body), (200, b"console.log('bundled')"))
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/javascript"))
        code, headers, _ = await fetch(origin + "/style.css")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/css"))

    def test_config_json_gives_websocket_url_domain_and_demo_users(self):
        return defer.ensureDeferred(self._config_json())

    async def _config_json(self) -> None:
        alice = DemoUser("alice", USERS["alice"], f"sip:alice@{DOMAIN}", (f"sip:alice@{DOMAIN}", "tel:+15550001"))
        origin = self.start(self.bundle(), (alice,))
        code, headers, body = await fetch(origin + "/config.json")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(
            json.loads(body),
            {
                "websocket_url": "ws://127.0.0.1:8080",
                "domain": DOMAIN,
                "users": [
                    {"name": "alice", "password": USERS["alice"], "uri": f"sip:alice@{DOMAIN}", "identities": [f"sip:alice@{DOMAIN}", "tel:+15550001"]}
                ],
            },
        )

    def test_configured_websocket_url_wins(self):
        return defer.ensureDeferred(self._configured_url())

    async def _configured_url(self) -> None:
        origin = self.start(self.bundle(), url="wss://pcscf.example.com:443")
        _, _, body = await fetch(origin + "/config.json")
        self.assertEqual(json.loads(body)["websocket_url"], "wss://pcscf.example.com:443")

    def test_unknown_paths_sources_and_methods_are_refused(self):
        return defer.ensureDeferred(self._refused())

    async def _refused(self) -> None:
        origin = self.start(self.bundle())
        for path in ("/wic.js", "/meter.js", "/static/index.html", "/../setup.cfg", "/style.css/x", "/nope"):
            code, _, _ = await fetch(origin + path)
            self.assertEqual(code, 404, path)
        code, _, _ = await fetch(origin + "/config.json", method=b"POST")
        self.assertEqual(code, 405)

    def test_missing_bundle_tells_the_page_to_run_setup(self):
        return defer.ensureDeferred(self._missing())

    async def _missing(self) -> None:
        directory = os.path.abspath(self.mktemp())
        with capturedLogs() as events:
            origin = self.start(directory)
        # One error line at start, naming the key and what to do.
        [error] = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(
            error,
            f"[wwsf] bundle_dir: the page script {directory}/app.js is not built: run bin/setup in a checkout, "
            f"or python -m epcscf.wwsf.bundle {directory} NODE_MODULES (npm's esbuild and jssip), "
            "or set [wwsf] enabled = false",
        )
        code, headers, body = await fetch(origin + "/app.js")
        self.assertEqual(code, 200)
        self.assertIn(f"[wwsf] bundle_dir: the page script {directory}/app.js is not built: run bin/setup".encode(), body)
        self.assertIn(b"page-status", body)
        # Built while running: served from then on.
        os.makedirs(directory)
        with open(os.path.join(directory, "app.js"), "w") as handle:
            handle.write("/* now built */")
        _, _, body = await fetch(origin + "/app.js")
        self.assertEqual(body, b"/* now built */")

    def test_stopping_closes_idle_keep_alive_connections(self):
        return defer.ensureDeferred(self._keep_alive())

    async def _keep_alive(self) -> None:
        from twisted.internet import reactor

        settings = WwsfSettings(DOMAIN, lambda: [], self.bundle())
        service = WwsfService(settings, (Listener("http", "127.0.0.1", 0),))
        service.startService()
        pool = client.HTTPConnectionPool(reactor, persistent=True)
        agent = client.Agent(reactor, pool=pool)
        response = await agent.request(b"GET", (service.origins[0] + "/config.json").encode())
        await client.readBody(response)
        self.assertEqual(len(service.factory.protocols), 1)  # kept alive by the client
        await service.stopService()
        self.assertEqual(len(service.factory.protocols), 0)
        await pool.closeCachedConnections()
        await defer.succeed(None)


class WwsfInTheServiceTests(unittest.TestCase):
    """[wwsf] in a whole epcscf: demo users from the embedded core, https with the [ws] certificate."""

    def test_https_page_gets_wss_and_http_page_gets_ws(self):
        return defer.ensureDeferred(self._https())

    async def _https(self) -> None:
        from twisted.internet import reactor, ssl

        from epcscf.service import EpcscfService
        from tests.support.certificates import self_signed_certificate

        directory = os.path.abspath(self.mktemp())
        cert, key, pem = self_signed_certificate(os.path.join(directory, "tls"))  # localhost + IP 127.0.0.1
        base = write_deployment_config(directory)
        overlay = os.path.join(directory, "tls.ini")
        with open(overlay, "w") as handle:
            handle.write(
                f"[ws]\nlisten = ws:127.0.0.1:0, wss:127.0.0.1:0\ncertificate = {cert}\nprivate_key = {key}\n"
                f"[wwsf]\nenabled = true\nlisten = https:127.0.0.1:0, http:127.0.0.1:0\nbundle_dir = {directory}\n"
            )
        service = EpcscfService(load([base, overlay]))
        service.startService()
        self.addCleanup(service.stopService)
        assert service.wwsf is not None
        https_origin, http_origin = service.wwsf.origins
        self.assertTrue(https_origin.startswith("https://127.0.0.1:"))
        wss = service.pcscf.listener("WSS")
        ws = service.pcscf.listener("WS")

        policy = client.BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(pem))
        pool = client.HTTPConnectionPool(reactor, persistent=False)
        response = await client.Agent(reactor, contextFactory=policy, pool=pool).request(b"GET", (https_origin + "/config.json").encode())
        page_config = json.loads(await client.readBody(response))
        await pool.closeCachedConnections()
        self.assertEqual(page_config["websocket_url"], f"wss://127.0.0.1:{wss.address.port}")
        # The demo users are the embedded core's users file, in its order.
        self.assertEqual([user["name"] for user in page_config["users"]], list(USERS))
        self.assertEqual(page_config["users"][0]["password"], USERS["alice"])

        _, _, body = await fetch(http_origin + "/config.json")
        self.assertEqual(json.loads(body)["websocket_url"], f"ws://127.0.0.1:{ws.address.port}")

    def test_demo_users_off_gives_none(self):
        return defer.ensureDeferred(self._no_users())

    async def _no_users(self) -> None:
        from epcscf.service import EpcscfService

        directory = os.path.abspath(self.mktemp())
        base = write_deployment_config(directory)
        overlay = os.path.join(directory, "wwsf.ini")
        with open(overlay, "w") as handle:
            handle.write(f"[wwsf]\nenabled = true\nlisten = http:127.0.0.1:0\ndemo_users = false\nbundle_dir = {directory}\n")
        service = EpcscfService(load([base, overlay]))
        service.startService()
        self.addCleanup(service.stopService)
        assert service.wwsf is not None
        _, _, body = await fetch(service.wwsf.origins[0] + "/config.json")
        self.assertEqual(json.loads(body)["users"], [])
        self.assertEqual(json.loads(body)["domain"], DOMAIN)

    def test_port_in_use_is_a_one_line_startup_error(self):
        import socket

        from epcscf.service import EpcscfService, StartupError

        directory = os.path.abspath(self.mktemp())
        base = write_deployment_config(directory)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            overlay = os.path.join(directory, "wwsf.ini")
            with open(overlay, "w") as handle:
                handle.write(f"[wwsf]\nenabled = true\nlisten = http:127.0.0.1:{port}\nbundle_dir = {directory}\n")
            service = EpcscfService(load([base, overlay]))
            with self.assertRaises(StartupError) as caught:
                service.startService()
            self.addCleanup(service.stopService)
        self.assertEqual(str(caught.exception), f"cannot listen on 127.0.0.1:{port}: Address already in use")
