"""SIP over WebSocket (RFC 7118) against real WebSocket clients on 127.0.0.1.

The clients are the ``websockets`` library (asyncio, on the reactor's own loop) and, where
a misbehaving peer is needed (one that never answers Pings), a raw TCP client speaking the
opening handshake by hand.  Run with ``--reactor=asyncio``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import ssl
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.trial import unittest

from tests.support.certificates import self_signed_certificate as support_certificate
from tests.support.reactor import asyncio_loop

from epcscf.sip.connection import Connection, ConnectionLost
from epcscf.sip.message import Message, Request, Response, make_response
from epcscf.ws.connection import CloseReason, WsConnection
from epcscf.sip.tls import HTTP_PROTOCOLS, server_tls_from_files
from epcscf.ws.protocol import WsListenerSettings, listen_ws, normalise_origin

REGISTER = (
    "REGISTER sip:ims.localdomain SIP/2.0\r\n"
    "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK{branch}\r\n"
    "Max-Forwards: 70\r\n"
    "To: <sip:alice@ims.localdomain>\r\n"
    "From: <sip:alice@ims.localdomain>;tag=a73kszlfl\r\n"
    "Call-ID: {call_id}\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>;expires=600\r\n"
    "{extra}"
    "\r\n"
)


def register(branch: str = "1", call_id: str = "reg-1", extra: str = "") -> str:
    return REGISTER.format(branch=branch, call_id=call_id, extra=extra)


def asyncio_test(method: Callable[..., Awaitable[None]]) -> Callable[..., Deferred[None]]:
    """Run an ``async def`` test on the asyncio loop under the reactor (trial cannot await asyncio futures)."""

    @functools.wraps(method)
    def wrapper(self: unittest.TestCase) -> Deferred[None]:
        return Deferred.fromFuture(asyncio.ensure_future(asyncio.wait_for(method(self), 20)))

    return wrapper


class RecordingSink:
    """A MessageSink that records events and answers REGISTER with 200 (plus ``reply_body``)."""

    def __init__(self) -> None:
        self.opened: asyncio.Queue[WsConnection] = asyncio.Queue()
        self.messages: asyncio.Queue[tuple[Message, WsConnection]] = asyncio.Queue()
        self.closed: asyncio.Queue[tuple[WsConnection, CloseReason]] = asyncio.Queue()
        self.reply_body = b""

    def connection_opened(self, connection: WsConnection) -> None:
        self.opened.put_nowait(connection)

    def message_received(self, message: Message, connection: WsConnection) -> None:
        self.messages.put_nowait((message, connection))
        if isinstance(message, Request) and message.method == "REGISTER":
            response = make_response(message, 200, to_tag="srv1")
            if self.reply_body:
                response.headers.add("Content-Type", "application/octet-stream")
                response.body = self.reply_body
            connection.send_message(response)

    def connection_closed(self, connection: WsConnection, reason: CloseReason) -> None:
        self.closed.put_nowait((connection, reason))


def self_signed_certificate(directory: str) -> tuple[str, str, bytes]:
    """(key path, cert path, cert PEM), in the order these tests use."""
    cert_path, key_path, pem = support_certificate(directory)
    return key_path, cert_path, pem


class WsTestCase(unittest.TestCase):
    settings = WsListenerSettings(
        allowed_origins=("https://wic.example.com",),
        allow_missing_origin=True,
        max_message_size=4096,
        ping_interval=0,
    )

    def setUp(self) -> None:
        from twisted.internet import reactor

        asyncio_loop()
        self.reactor = reactor
        self.sink = RecordingSink()
        self.clients: list[Any] = []

    async def listen(
        self, settings: WsListenerSettings | None = None, endpoint: "str | IStreamServerEndpoint" = "tcp:0:interface=127.0.0.1"
    ) -> int:
        port = await listen_ws(self.reactor, endpoint, settings or self.settings, self.sink).asFuture(
            asyncio.get_running_loop()
        )
        self.addCleanup(port.stopListening)
        self.addCleanup(self._close_clients)
        self.ws_factory = port.ws_factory
        return port.getHost().port

    async def _close_clients_async(self) -> None:
        for client in self.clients:
            await client.close()

    def _close_clients(self) -> Deferred[None]:
        return Deferred.fromFuture(asyncio.ensure_future(self._close_clients_async()))

    async def connect(self, port: int, scheme: str = "ws", **options: Any) -> Any:
        from websockets.asyncio.client import connect

        options.setdefault("subprotocols", ["sip"])
        options.setdefault("compression", None)
        options.setdefault("proxy", None)
        options.setdefault("ping_interval", None)
        options.setdefault("close_timeout", 2)
        client = await connect(f"{scheme}://127.0.0.1:{port}/", **options)
        self.clients.append(client)
        return client

    async def handshake_status(self, port: int, **options: Any) -> int:
        from websockets.exceptions import InvalidStatus

        try:
            await self.connect(port, **options)
        except InvalidStatus as refusal:
            return refusal.response.status_code
        return 101


class HandshakeTests(WsTestCase):
    @asyncio_test
    async def test_sip_subprotocol_is_selected_when_offered_among_others(self) -> None:
        port = await self.listen()
        client = await self.connect(port, subprotocols=["chat", "sip"])
        self.assertEqual(client.subprotocol, "sip")
        connection = await self.sink.opened.get()
        self.assertEqual(connection.transport, "WS")
        self.assertEqual(connection.remote.host, "127.0.0.1")
        self.assertEqual(connection.remote.port, client.local_address[1])
        self.assertEqual(connection.local.port, port)
        self.assertTrue(connection.reliable)
        self.assertTrue(connection.connected)
        self.assertIsInstance(connection, Connection)

    @asyncio_test
    async def test_handshake_state_is_released_once_open_and_still_reads_safely(self) -> None:
        port = await self.listen()
        client = await self.connect(port, origin="https://wic.example.com")
        connection = await self.sink.opened.get()
        protocol = connection._sender
        attributes = vars(protocol)
        self.assertNotIn("http_request_uri", attributes)
        self.assertNotIn("allowedOriginsPatterns", attributes)
        self.assertLess(len(attributes), 85)  # a 128-slot instance dict, not 256
        self.assertEqual(protocol.send_queue, ())  # Autobahn's unused write queue is not kept
        # A late reader gets the factory's option or an empty value, not an AttributeError.
        self.assertEqual(protocol.http_request_uri, "")
        self.assertEqual(protocol.http_headers, {})
        self.assertEqual(protocol.versions, protocol.factory.versions)
        with self.assertRaises(AttributeError):
            protocol.no_such_attribute
        # The connection still works both ways after the release.
        await client.send("\r\n\r\n")  # RFC 7118 §6 keep-alive ping
        self.assertEqual(await asyncio.wait_for(client.recv(), 5), "\r\n")

    @asyncio_test
    async def test_handshake_without_sip_subprotocol_is_refused_with_406(self) -> None:
        from websockets.exceptions import InvalidStatus

        port = await self.listen()
        with self.assertRaises(InvalidStatus) as raised:
            await self.connect(port, subprotocols=["chat"])
        self.assertEqual(raised.exception.response.status_code, 406)
        self.assertIn("sip", raised.exception.response.reason_phrase)
        self.assertEqual(await self.handshake_status(port, subprotocols=None), 406)
        self.assertTrue(self.sink.opened.empty())

    @asyncio_test
    async def test_disallowed_origin_is_refused_with_403(self) -> None:
        port = await self.listen()
        self.assertEqual(await self.handshake_status(port, origin="https://evil.example"), 403)
        # same host, other scheme or port: another origin (RFC 6454)
        self.assertEqual(await self.handshake_status(port, origin="http://wic.example.com"), 403)
        self.assertEqual(await self.handshake_status(port, origin="https://wic.example.com:8443"), 403)
        self.assertTrue(self.sink.opened.empty())

    @asyncio_test
    async def test_allowed_origin_is_accepted_with_or_without_default_port(self) -> None:
        port = await self.listen()
        await self.connect(port, origin="https://wic.example.com")
        first = await self.sink.opened.get()
        await self.connect(port, origin="https://WIC.example.com:443")
        second = await self.sink.opened.get()
        self.assertEqual(first.origin, "https://wic.example.com:443")
        self.assertEqual(second.origin, "https://wic.example.com:443")
        self.assertNotEqual(first.id, second.id)

    @asyncio_test
    async def test_missing_origin_follows_the_policy(self) -> None:
        port = await self.listen()
        await self.connect(port)
        self.assertIsNone((await self.sink.opened.get()).origin)
        strict = WsListenerSettings(allowed_origins=("https://wic.example.com",), allow_missing_origin=False)
        strict_port = await self.listen(strict)
        self.assertEqual(await self.handshake_status(strict_port), 403)
        self.assertEqual(await self.handshake_status(strict_port, origin="https://wic.example.com"), 101)

    @asyncio_test
    async def test_empty_origin_list_refuses_browsers_unless_any_origin_is_allowed(self) -> None:
        closed = await self.listen(WsListenerSettings())
        self.assertEqual(await self.handshake_status(closed, origin="https://wic.example.com"), 403)
        self.assertEqual(await self.handshake_status(closed), 101)
        open_port = await self.listen(WsListenerSettings(allow_any_origin=True))
        self.assertEqual(await self.handshake_status(open_port, origin="https://anything.example:1234"), 101)


class MessageTests(WsTestCase):
    @asyncio_test
    async def test_register_in_text_frame_without_content_length_reaches_sink_and_gets_answer(self) -> None:
        port = await self.listen()
        client = await self.connect(port)
        await client.send(register())
        message, connection = await self.sink.messages.get()
        self.assertIsInstance(message, Request)
        self.assertEqual(message.method, "REGISTER")
        self.assertEqual(message.body, b"")
        self.assertEqual(connection.messages_received, 1)
        answer = await client.recv()
        self.assertIsInstance(answer, str)  # valid UTF-8 goes out as a text frame (RFC 7118 §4.2)
        self.assertTrue(answer.startswith("SIP/2.0 200 OK\r\n"))
        self.assertIn("branch=z9hG4bK1", answer)

    @asyncio_test
    async def test_binary_frame_is_accepted_and_non_utf8_reply_is_sent_binary(self) -> None:
        port = await self.listen()
        client = await self.connect(port)
        self.sink.reply_body = b"\xff\xfe not utf-8"
        await client.send(register().encode())  # bytes → binary frame
        message, _ = await self.sink.messages.get()
        self.assertEqual(message.method, "REGISTER")
        answer = await client.recv()
        self.assertIsInstance(answer, bytes)
        self.assertTrue(answer.startswith(b"SIP/2.0 200 OK\r\n"))
        self.assertTrue(answer.endswith(b"\xff\xfe not utf-8"))

    @asyncio_test
    async def test_double_crlf_is_answered_with_crlf_and_lone_crlf_is_ignored(self) -> None:
        port = await self.listen()
        client = await self.connect(port)
        await client.send("\r\n\r\n")
        self.assertEqual(await client.recv(), "\r\n")
        await client.send("\r\n")  # a pong: no answer
        await client.send("")  # empty padding: nothing either
        await client.send("\n\r\n")
        await client.send(register())
        self.assertTrue((await client.recv()).startswith("SIP/2.0 200 OK"))
        self.assertEqual(self.sink.messages.qsize(), 1)

    @asyncio_test
    async def test_malformed_sip_gets_400_and_the_connection_stays_usable(self) -> None:
        port = await self.listen()
        client = await self.connect(port)
        bad = register(extra="CSeq: 2 REGISTER\r\n")  # two CSeq lines (RFC 4475 §3.3.8 family)
        await client.send(bad)
        answer = await client.recv()
        self.assertTrue(answer.startswith("SIP/2.0 400 "), answer)
        await client.send("this is not SIP at all\r\n\r\n")  # no response can be routed: dropped
        await client.send(register(branch="2", call_id="reg-2"))
        answer = await client.recv()
        self.assertTrue(answer.startswith("SIP/2.0 200 OK"))
        self.assertIn("branch=z9hG4bK2", answer)
        message, _ = await self.sink.messages.get()
        self.assertEqual(message.headers.get("call-id"), "reg-2")
        self.assertTrue(self.sink.messages.empty())

    @asyncio_test
    async def test_two_sip_messages_in_one_websocket_message_get_400(self) -> None:
        port = await self.listen()
        client = await self.connect(port)
        first = register(extra="Content-Length: 0\r\n")
        await client.send(first + register(branch="2", call_id="reg-2"))
        answer = await client.recv()
        self.assertTrue(answer.startswith("SIP/2.0 400 "), answer)
        self.assertIn("more than one SIP message", answer.split("\r\n")[0])
        self.assertIn("branch=z9hG4bK1", answer)
        self.assertTrue(self.sink.messages.empty())

    @asyncio_test
    async def test_sending_on_a_closed_connection_raises_connection_lost(self) -> None:
        port = await self.listen()
        client = await self.connect(port)
        connection = await self.sink.opened.get()
        await client.close()
        closed, reason = await self.sink.closed.get()
        self.assertIs(closed, connection)
        self.assertFalse(connection.connected)
        self.assertEqual(reason.code, 1000)
        self.assertFalse(reason.by_us)
        self.assertRaises(ConnectionLost, connection.send_message, Response(200, "OK"))
        self.assertEqual(self.ws_factory.connections, set())


class RobustnessTests(WsTestCase):
    @asyncio_test
    async def test_ping_from_the_client_is_answered_with_pong(self) -> None:
        port = await self.listen()
        client = await self.connect(port)
        pong = await client.ping(b"are you there")
        await asyncio.wait_for(pong, 5)

    @asyncio_test
    async def test_a_failing_sink_does_not_take_the_connection_down(self) -> None:
        port = await self.listen()
        client = await self.connect(port)
        original = self.sink.message_received
        calls: list[str] = []

        def explode(message: Message, connection: WsConnection) -> None:
            calls.append(message.headers.get("call-id") or "")
            if len(calls) == 1:
                raise RuntimeError("bug in the P-CSCF")
            original(message, connection)

        self.sink.message_received = explode  # type: ignore[method-assign]
        await client.send(register(call_id="first"))
        await client.send(register(branch="2", call_id="second"))
        answer = await client.recv()
        self.assertIn("Call-ID: second", answer)
        self.assertEqual(calls, ["first", "second"])
        self.flushLoggedErrors(RuntimeError)

    @asyncio_test
    async def test_tcp_client_that_never_sends_a_handshake_is_dropped(self) -> None:
        port = await self.listen(WsListenerSettings(open_handshake_timeout=1.0))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.addCleanup(writer.close)
        started = asyncio.get_running_loop().time()
        try:
            self.assertEqual(await reader.read(1024), b"")
        except ConnectionResetError:
            pass
        self.assertLess(asyncio.get_running_loop().time() - started, 4.0)
        self.assertTrue(self.sink.opened.empty())
        self.assertTrue(self.sink.closed.empty())


class CloseTests(WsTestCase):
    @asyncio_test
    async def test_oversize_message_closes_with_1009(self) -> None:
        from websockets.exceptions import ConnectionClosedError

        port = await self.listen()
        client = await self.connect(port)
        await client.send("x" * (self.settings.max_message_size + 1))
        with self.assertRaises(ConnectionClosedError) as raised:
            await client.recv()
        self.assertEqual(raised.exception.rcvd.code, 1009)
        _, reason = await self.sink.closed.get()
        self.assertEqual(reason.code, 1009)
        self.assertIn("exceeds payload limit", reason.reason)
        self.assertTrue(reason.by_us)

    @asyncio_test
    async def test_invalid_utf8_in_text_message_closes_with_1007(self) -> None:
        from websockets.exceptions import ConnectionClosedError

        port = await self.listen()
        client = await self.connect(port)
        await client.send(b"REGISTER \xff\xfe", text=True)
        with self.assertRaises(ConnectionClosedError) as raised:
            await client.recv()
        self.assertEqual(raised.exception.rcvd.code, 1007)
        _, reason = await self.sink.closed.get()
        self.assertEqual(reason.code, 1007)
        self.assertIn("UTF-8", reason.reason)
        self.assertTrue(reason.by_us)

    @asyncio_test
    async def test_server_close_sends_the_given_code(self) -> None:
        from websockets.exceptions import ConnectionClosedOK

        port = await self.listen()
        client = await self.connect(port)
        connection = await self.sink.opened.get()
        connection.close(1001, "shutting down")
        with self.assertRaises(ConnectionClosedOK) as raised:
            await client.recv()
        self.assertEqual(raised.exception.rcvd.code, 1001)
        _, reason = await self.sink.closed.get()
        self.assertTrue(reason.by_us)
        self.assertFalse(connection.connected)

    @asyncio_test
    async def test_peer_that_never_answers_pings_is_closed_and_healthy_peer_is_not(self) -> None:
        settings = WsListenerSettings(ping_interval=0.5, ping_timeout=1.0)
        port = await self.listen(settings)
        healthy = await self.connect(port)  # websockets answers Pings by itself
        healthy_connection = await self.sink.opened.get()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.addCleanup(writer.close)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        dead_connection = await self.sink.opened.get()
        started = asyncio.get_running_loop().time()
        closed, reason = await self.sink.closed.get()
        elapsed = asyncio.get_running_loop().time() - started
        self.assertIs(closed, dead_connection)
        self.assertTrue(reason.by_us)
        self.assertFalse(reason.clean)
        self.assertIn("ping", reason.reason.lower())
        self.assertLess(elapsed, 5.0)
        # the socket really is gone: reading reaches EOF after the Ping frames
        try:
            while await reader.read(1024):
                pass
        except ConnectionResetError:
            pass  # aborted: RST instead of FIN
        self.assertTrue(healthy_connection.connected)
        await healthy.send(register())
        self.assertTrue((await healthy.recv()).startswith("SIP/2.0 200 OK"))


class SecureTests(WsTestCase):
    async def listen_wss(self) -> tuple[int, bytes]:
        """A WSS listener as epcscf runs it (epcscf.sip.tls); (port, certificate PEM)."""
        key_path, cert_path, pem = self_signed_certificate(self.mktemp())
        tls = server_tls_from_files(cert_path, key_path, HTTP_PROTOCOLS)
        return await self.listen(endpoint=SSL4ServerEndpoint(self.reactor, 0, tls, interface="127.0.0.1")), pem

    @asyncio_test
    async def test_wss_with_a_trusted_certificate_and_alpn_like_a_browser(self) -> None:
        port, pem = await self.listen_wss()
        context = ssl.create_default_context(cadata=pem.decode())
        context.set_alpn_protocols(["http/1.1"])  # what a browser offers for a WebSocket
        client = await self.connect(port, scheme="wss", ssl=context)
        self.assertEqual(client.transport.get_extra_info("ssl_object").selected_alpn_protocol(), "http/1.1")
        connection = await self.sink.opened.get()
        self.assertEqual(connection.transport, "WSS")
        await client.send(register())
        self.assertTrue((await client.recv()).startswith("SIP/2.0 200 OK"))

    @asyncio_test
    async def test_wss_client_offering_only_other_protocols_continues_without_alpn(self) -> None:
        port, pem = await self.listen_wss()
        context = ssl.create_default_context(cadata=pem.decode())
        context.set_alpn_protocols(["h2"])
        client = await self.connect(port, scheme="wss", ssl=context)
        self.assertIsNone(client.transport.get_extra_info("ssl_object").selected_alpn_protocol())
        await client.send(register())
        self.assertTrue((await client.recv()).startswith("SIP/2.0 200 OK"))

    @asyncio_test
    async def test_wss_client_not_trusting_the_certificate_fails(self) -> None:
        port, _ = await self.listen_wss()
        with self.assertRaises(ssl.SSLCertVerificationError):
            await self.connect(port, scheme="wss", ssl=ssl.create_default_context())
        self.assertTrue(self.sink.opened.empty())


class OriginTests(unittest.TestCase):
    def test_default_ports_are_made_explicit(self) -> None:
        self.assertEqual(normalise_origin("https://WIC.Example.com"), "https://wic.example.com:443")
        self.assertEqual(normalise_origin("http://127.0.0.1"), "http://127.0.0.1:80")
        self.assertEqual(normalise_origin("http://127.0.0.1:8080/"), "http://127.0.0.1:8080")
        self.assertEqual(normalise_origin("https://[::1]:8443"), "https://[::1]:8443")

    def test_non_origins_are_rejected_with_a_clear_error(self) -> None:
        for bad in ("wic.example.com", "ftp://wic.example.com", "https://wic.example.com/path", "https://a:99999", "null"):
            with self.assertRaises(ValueError) as raised:
                normalise_origin(bad)
            self.assertIn("is not an origin", str(raised.exception))

    def test_settings_reject_a_bad_configured_origin(self) -> None:
        self.assertRaises(ValueError, WsListenerSettings, allowed_origins=("https://ok.example", "nonsense"))

    def test_origin_decisions(self) -> None:
        settings = WsListenerSettings(allowed_origins=("https://wic.example.com:443",), allow_missing_origin=False)
        self.assertTrue(settings.origin_decision("https://wic.example.com")[0])
        self.assertFalse(settings.origin_decision("null")[0])
        self.assertFalse(settings.origin_decision(None)[0])
        self.assertTrue(WsListenerSettings(allow_any_origin=True).origin_decision("null")[0])
