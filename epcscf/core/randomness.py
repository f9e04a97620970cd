"""Random tags and nonce bytes for the embedded core, from ``os.urandom`` in blocks.

Every REGISTER answered costs a To tag (RFC 3261 §19.3: at least 32 bits of randomness)
and every challenge a nonce (RFC 7616 §3.3); ``secrets.token_hex`` makes one
``getrandom`` system call for each.  ``RandomPool`` reads 4 KiB of the same
cryptographically secure source at once and hands out consecutive, never reused slices.
The block is dropped in a forked child so that parent and child never share bytes.
"""

from __future__ import annotations

import os

__all__ = ["RandomPool", "random_bytes", "random_hex"]

_BLOCK = 4096


class RandomPool:
    """Consecutive slices of one ``os.urandom`` block, refilled when spent."""

    def __init__(self, block: int = _BLOCK) -> None:
        self._block = block
        self._buffer = b""
        self._position = 0

    def take(self, count: int) -> bytes:
        """``count`` fresh random bytes (``count`` at most the block size)."""
        start = self._position
        end = start + count
        if end > len(self._buffer):
            self._buffer = os.urandom(max(self._block, count))
            start, end = 0, count
        self._position = end
        return self._buffer[start:end]

    def hex(self, count: int) -> str:
        """``count`` random bytes as lower-case hex (like ``secrets.token_hex(count)``)."""
        return self.take(count).hex()

    def forget(self) -> None:
        """Drop the unspent bytes (after ``fork``: the parent still has them)."""
        self._buffer = b""
        self._position = 0


_POOL = RandomPool()
os.register_at_fork(after_in_child=_POOL.forget)

random_bytes = _POOL.take
random_hex = _POOL.hex
