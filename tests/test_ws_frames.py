"""``epcscf.ws.frames``: the common-case RFC 6455 frame reader/writer, and what it leaves to Autobahn.

``tests.test_ws_protocol`` runs it on real connections (1007, 1009, pings, binary frames).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

from autobahn.websocket.xormasker import create_xor_masker
from twisted.trial import unittest

from epcscf.ws.frames import data_frame, read_data_frame, unmask, unmask_with_integers
from tests.test_ws_protocol import WsTestCase, asyncio_test, register


def client_frame(payload: bytes, first: int = 0x81, mask: bytes = b"\x12\x34\x56\x78", length_code: int | None = None) -> bytes:
    """A frame as a client writes it (RFC 6455 §5.2); ``length_code`` forces the 7-bit length field."""
    size = len(payload)
    if length_code is None:
        length_code = size if size < 126 else 126 if size < 65536 else 127
    header = bytes((first, 0x80 | length_code)) if mask else bytes((first, length_code))
    if length_code == 126:
        header += struct.pack("!H", size)
    elif length_code == 127:
        header += struct.pack("!Q", size)
    return header + mask + (unmask(payload, mask) if mask else payload)


class FrameReaderTests(unittest.TestCase):
    def test_whole_masked_frames_of_every_length_encoding_are_read(self) -> None:
        for size in (0, 1, 3, 125, 126, 1000, 4096, 65535):
            payload = (b"REGISTER sip:x SIP/2.0\r\n" * (size // 24 + 1))[:size]
            for first, binary in ((0x81, False), (0x82, True)):
                frame = client_frame(payload, first, os.urandom(4))
                read = read_data_frame(b"junk" + frame, 4, 0)
                self.assertIsNotNone(read, size)
                assert read is not None
                self.assertEqual((read.payload, read.binary, read.end), (payload, binary, 4 + len(frame)))

    def test_two_frames_in_one_read_are_read_one_after_the_other(self) -> None:
        buffer = client_frame(b"first") + client_frame(b"second", 0x82)
        one = read_data_frame(buffer, 0, 0)
        assert one is not None
        two = read_data_frame(buffer, one.end, 0)
        assert two is not None
        self.assertEqual((one.payload, two.payload, two.binary, two.end), (b"first", b"second", True, len(buffer)))

    def test_everything_but_a_whole_valid_final_data_frame_is_left_to_autobahn(self) -> None:
        cases = {
            "fragment (no FIN)": client_frame(b"abc", 0x01),
            "continuation": client_frame(b"abc", 0x80),
            "RSV1 (compressed)": client_frame(b"abc", 0xC1),
            "reserved opcode": client_frame(b"abc", 0x83),
            "close": client_frame(b"\x03\xe8", 0x88),
            "ping": client_frame(b"", 0x89),
            "pong": client_frame(b"", 0x8A),
            "unmasked (RFC 6455 §5.1)": client_frame(b"abcdef", 0x81, b""),
            "non-minimal 16-bit length": client_frame(b"abc", 0x81, length_code=126),
            "64-bit length": client_frame(b"x" * 70000),
            "invalid UTF-8 in text (§8.1)": client_frame(b"\xc3\x28 bad"),
            "UTF-16 surrogate in text": client_frame(b"\xed\xa0\x80"),
            "overlong encoding in text": client_frame(b"\xc0\xaf"),
            "incomplete payload": client_frame(b"abcdef")[:-1],
            "incomplete header": client_frame(b"x" * 300)[:3],
        }
        for why, buffer in cases.items():
            self.assertIsNone(read_data_frame(buffer, 0, 0), why)

    def test_a_frame_over_the_limit_is_left_to_autobahn(self) -> None:
        frame = client_frame(b"x" * 200)
        self.assertIsNone(read_data_frame(frame, 0, 199))
        self.assertIsNotNone(read_data_frame(frame, 0, 200))

    def test_binary_frames_need_not_be_utf8(self) -> None:
        read = read_data_frame(client_frame(b"\xff\xfe\xc3\x28", 0x82), 0, 0)
        assert read is not None
        self.assertEqual(read.payload, b"\xff\xfe\xc3\x28")

    def test_unmask_is_the_octet_by_octet_xor(self) -> None:
        # RFC 6455 §5.3: octet i XOR mask octet i mod 4, for every length mod 4.
        for size in [*range(0, 70), 125, 126, 450, 1023, 4095, 4096, 4097, 65535]:
            for mask in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04", os.urandom(4)):
                payload = os.urandom(size)
                expected = bytes(octet ^ mask[i % 4] for i, octet in enumerate(payload))
                self.assertEqual(unmask(payload, mask), expected, (size, mask))
                self.assertEqual(unmask_with_integers(payload, mask), expected, (size, mask))

    def test_unmask_is_websockets_c_helper_when_installed(self) -> None:
        # the fast helper is the one used when it is there (setup.cfg requires websockets)
        from websockets.speedups import apply_mask

        self.assertIs(unmask, apply_mask)

    def test_unmask_agrees_with_autobahn(self) -> None:
        for size in (1, 2, 3, 4, 5, 127, 1023):
            payload, mask = os.urandom(size), os.urandom(4)
            self.assertEqual(unmask(payload, mask), create_xor_masker(mask, size).process(payload))


class FrameWriterTests(unittest.TestCase):
    def test_server_frames_are_final_unmasked_and_minimally_encoded(self) -> None:
        self.assertEqual(data_frame(b"abc", False), b"\x81\x03abc")
        self.assertEqual(data_frame(b"\xff", True), b"\x82\x01\xff")
        self.assertEqual(data_frame(b"x" * 126, False)[:4], b"\x81\x7e\x00\x7e")
        self.assertEqual(data_frame(b"x" * 65536, False)[:10], b"\x81\x7f" + struct.pack("!Q", 65536))

    def test_a_written_frame_reads_back_once_masked(self) -> None:
        for size in (0, 125, 126, 65535):
            payload = b"y" * size
            frame = data_frame(payload, False)
            header = len(frame) - size
            masked = bytes((frame[0], frame[1] | 0x80)) + frame[2:header] + b"\0\0\0\0" + payload
            read = read_data_frame(masked, 0, 0)
            assert read is not None
            self.assertEqual(read.payload, payload)


class MixedTrafficTests(WsTestCase):
    """Whole frames, fragments and control frames in one TCP write, from a raw socket client."""

    @asyncio_test
    async def test_frames_the_fast_path_leaves_are_handled_in_order_by_autobahn(self) -> None:
        port = await self.listen()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.addCleanup(writer.close)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            ).encode()
        )
        handshake = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        self.assertTrue(handshake.startswith(b"HTTP/1.1 101"))
        first = register(branch="1", call_id="mix-1").encode()
        second = register(branch="2", call_id="mix-2").encode()
        third = register(branch="3", call_id="mix-3").encode()
        half = len(second) // 2
        writer.write(
            client_frame(first)  # whole: read here
            + client_frame(b"ping", 0x89)  # control: Autobahn from here on in this read
            + client_frame(second[:half], 0x01)  # a fragmented message (RFC 6455 §5.4)
            + client_frame(second[half:], 0x80)
            + client_frame(third)  # whole again, after the fragments
        )
        call_ids = [(await asyncio.wait_for(self.sink.messages.get(), 5))[0].headers.get("call-id") for _ in range(3)]
        self.assertEqual(call_ids, ["mix-1", "mix-2", "mix-3"])
        received = b""
        while received.count(b"SIP/2.0 200 OK") < 3 or b"\x8a\x04ping" not in received:
            received += await asyncio.wait_for(reader.read(65536), 5)
        self.assertIn(b"\x8a\x04ping", received)  # the pong, unmasked (RFC 6455 §5.5.3)
        self.assertEqual(received.count(b"\x81"), 3)  # three replies, each one text frame
