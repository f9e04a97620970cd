"""The reactor the edge runs on: Twisted's asyncio reactor, minus a log context per I/O event.

aioice needs an asyncio loop, so the edge runs ``AsyncioSelectorReactor`` on the standard
library's selector loop (uvloop below it was measured and left out: docs/performance.md,
"Event loop: uvloop under the asyncio reactor").  For every readable or writable descriptor
that reactor calls ``callWithLogger(selectable, _readOrWrite, ...)``, which asks the selectable
for its ``logPrefix()``, copies the current log context and pushes it for the duration of the
call.  That context's one use is the "system" field of a line logged through the legacy
``twisted.python.log`` while the event runs; epcscf logs through ``twisted.logger``, whose events
carry their namespace instead.  It costs about 14,500 instructions per event, as much as the
whole stdlib loop saves over uvloop (``benchmarks/event_loop_cost.py``), and about 3 % of a
REGISTER refresh's CPU (its self time in the edge's profile).

``EdgeReactor`` registers ``_readOrWrite`` with the loop itself (in a try that logs what escapes it,
as ``callWithLogger`` did).  ``_readOrWrite`` is unchanged:
it still logs a ``doRead``/``doWrite`` that raises and disconnects that selectable.  What changes:
a legacy ``twisted.python.log`` line written during an I/O event shows ``[-]`` where it showed the
protocol's logPrefix (such lines are Twisted's port and factory start/stop notices, shown at debug).

``twistd epcscf`` (``epcscf.tap``) and every worker (``epcscf.workers.run``) install it; so does
``twistd -r epcscf`` / ``trial --reactor=epcscf`` (``twisted/plugins/epcscf_plugin.py``), which
``bin/test`` uses so that the suite runs on the reactor the product runs on.

``callLater`` builds Twisted's ``DelayedCall`` as ``ReactorBase.callLater`` does, but hands every one
the same two bound methods of the reactor (its canceller and its resetter), made once, where Twisted
made two new ones per call: two objects fewer per timer for the collector to traverse for as long
as the timer lives (ICE consent, DTLS, registration expiry ...; docs/performance.md, "The collector's
share of a call"); and it re-arms the asyncio loop's wake-up only for a call due before it.

Nothing here imports ``twisted.internet.reactor``: it is used before a reactor is installed.
"""

from __future__ import annotations

import errno
from typing import Any, Callable

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.base import DelayedCall


class EdgeReactor(AsyncioSelectorReactor):
    """``AsyncioSelectorReactor`` that calls ``_readOrWrite`` without ``callWithLogger``.

    ``addReader``/``addWriter`` are Twisted's (26.10) with that one call changed; the rest,
    including the continuous polling of descriptors epoll refuses, is inherited.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Made once (``callLater``); the reactor lives as long as the process.
        self._canceller: Callable[[DelayedCall], None] = self._cancelCallLater
        self._resetter: Callable[[DelayedCall], None] = self._moveCallLaterSooner

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> DelayedCall:  # noqa: N802
        """``ReactorBase.callLater`` then ``AsyncioSelectorReactor.callLater`` (Twisted 26.10), with the
        reactor's canceller and resetter shared by every ``DelayedCall``."""
        assert delay >= 0, f"{delay} is not greater than or equal to 0 seconds"
        delayed_call = DelayedCall(self.seconds() + delay, callable, args, kw, self._canceller, self._resetter,
                                   seconds=self.seconds)
        self._newTimedCalls.append(delayed_call)
        # Twisted compares the loop's wake-up with "now + the earliest call's delay" (wall clock
        # read against the monotonic one): for a call that is not the earliest the two differ by
        # jitter, and each time it came out earlier Twisted re-armed the loop's TimerHandle (a
        # new one, with its Context; the cancelled one stays in the loop's heap).  Only a call
        # due before the loop wakes needs it re-armed.
        if self._scheduledAt is None or self._asyncioEventloop.time() + delay < self._scheduledAt:
            self._reschedule()
        return delayed_call

    def _dispatch(self, selectable: Any, read: bool) -> None:
        """Run one I/O event; log what escapes ``_readOrWrite`` itself.

        ``_readOrWrite`` logs a failing ``doRead``/``doWrite``, but not a ``connectionLost``
        that raises while it disconnects the selectable. ``callWithLogger`` logged that one;
        without this it would reach asyncio's exception handler, outside the edge's log.
        """
        try:
            self._readOrWrite(selectable, read)
        except Exception:
            self._log.failure("I/O event of {selectable!r} failed", selectable=selectable)

    def addReader(self, reader: Any) -> None:  # noqa: N802 (Twisted's name)
        if reader in self._readers.keys() or reader in self._continuousPolling._readers:
            return
        fd = reader.fileno()
        try:
            self._asyncioEventloop.add_reader(fd, self._dispatch, reader, True)
            self._readers[reader] = fd
        except OSError as error:
            self._unregisterFDInAsyncio(fd)
            if error.errno != errno.EPERM:
                raise
            # epoll(7) refuses some descriptors (regular files): poll those continuously.
            self._continuousPolling.addReader(reader)

    def addWriter(self, writer: Any) -> None:  # noqa: N802 (Twisted's name)
        if writer in self._writers.keys() or writer in self._continuousPolling._writers:
            return
        fd = writer.fileno()
        try:
            self._asyncioEventloop.add_writer(fd, self._dispatch, writer, False)
            self._writers[writer] = fd
        except PermissionError:
            self._unregisterFDInAsyncio(fd)
            self._continuousPolling.addWriter(writer)
        except BrokenPipeError:
            self._unregisterFDInAsyncio(fd)
        except BaseException:
            self._unregisterFDInAsyncio(fd)
            raise


def install() -> None:
    """Install ``EdgeReactor`` as the global reactor (twistd's and trial's reactor plugin API)."""
    from twisted.internet.main import installReactor

    installReactor(EdgeReactor())
