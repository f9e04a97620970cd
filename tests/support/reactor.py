"""The asyncio reactor the suite runs on (``bin/test`` runs trial with ``--reactor=epcscf``, the edge's
asyncio reactor; ``EPCSCF_TEST_REACTOR=asyncio`` for Twisted's stock one)."""

from __future__ import annotations

import asyncio

from twisted.trial import unittest


def asyncio_loop() -> asyncio.AbstractEventLoop:
    """The asyncio event loop under the global reactor, for tests whose peers are asyncio
    code (aioice, websockets); such a test is skipped under any other reactor."""
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise unittest.SkipTest("needs an asyncio reactor (trial --reactor=epcscf or asyncio)")
    return reactor._asyncioEventloop
