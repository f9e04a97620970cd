"""Random bytes for tags and nonces (epcscf.core.randomness)."""

from __future__ import annotations

import re

from twisted.trial import unittest

from epcscf.core.randomness import RandomPool, random_bytes, random_hex


class RandomPoolTests(unittest.TestCase):
    def test_slices_are_consecutive_and_never_reused(self) -> None:
        pool = RandomPool(block=16)
        first = pool.take(6)
        second = pool.take(6)
        self.assertEqual((len(first), len(second)), (6, 6))
        block = pool._buffer
        self.assertEqual(block[:12], first + second)
        third = pool.take(6)  # 18 > 16: a new block
        self.assertIsNot(pool._buffer, block)
        self.assertEqual(pool._buffer[:6], third)

    def test_request_larger_than_block(self) -> None:
        pool = RandomPool(block=4)
        self.assertEqual(len(pool.take(10)), 10)
        self.assertEqual(len(pool.take(3)), 3)

    def test_forget_drops_the_rest(self) -> None:
        pool = RandomPool(block=64)
        pool.take(1)
        pool.forget()
        self.assertEqual(pool._buffer, b"")
        self.assertEqual(len(pool.take(8)), 8)

    def test_hex_tags(self) -> None:
        tags = {random_hex(6) for _ in range(2000)}
        self.assertEqual(len(tags), 2000)
        self.assertTrue(all(re.fullmatch(r"[0-9a-f]{12}", tag) for tag in tags))
        self.assertEqual(len(random_bytes(8)), 8)
