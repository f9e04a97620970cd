"""aioice's `Connection.connect()` as plain calls and a Ta timer, not as a task (RFC 8445 §6.1.4, §7).

Theory of operation.  aioice's `connect()` is a coroutine: it forms the pairs (RFC 8445 §6.1.2),
unfreezes the first ones (§6.1.2.6), answers the checks that came before it (§7.3), then ticks
every Ta = 20 ms (§6.1.4.2) while `_check_periodic` asks for another tick, waits on a queue for
the check list's outcome, cancels the checks still running and starts aioice's `query_consent` in
a task.  Run per call that is a task, a queue getter's future and a loop turn for each step, and
a consent task we do not use: RFC 7675 consent is the agent's `ConsentFreshness`, whose checks
`FullGeneration.send_consent_check` sends.

`start_checks` makes the same calls to aioice's own methods in the same order, with the ticks
on the loop's `call_later`, and takes the outcome where aioice puts it: the check list's queue
(`_check_list_state`, read by `connect()` alone) is replaced by `_CheckListOutcome`, whose
`put_nowait` is a call.  What `connect()` then does comes one loop turn later as before: the
checks still running are cancelled; a failure is reported (`connect()` raised it to its task).
The checks themselves (`check_start`, one task each, with aioice's STUN transaction) are aioice's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aioice.ice

# Ta (RFC 8445 §6.1.4.2), aioice's pacing in connect().
TA = 0.02


class _CheckListOutcome:
    """In place of aioice's `_check_list_state` queue: its one `put_nowait` becomes a call."""

    __slots__ = ("settled",)

    def __init__(self, settled: Callable[[int], None]) -> None:
        self.settled = settled

    def put_nowait(self, outcome: int) -> None:
        self.settled(outcome)


def _report_nothing(reason: str) -> None:
    """The failure report of a connection whose checks were not started by `start_checks`, or closed."""


def _settled_nothing(outcome: int) -> None:
    """A closed connection's outcome: nobody waits for it."""


class ConnectWithoutTask(aioice.ice.Connection):
    """An aioice Connection whose `connect()` can also run as `start_checks` (no task)."""

    _ta_tick: asyncio.TimerHandle | None = None
    _checks_failed: Callable[[str], None] = staticmethod(_report_nothing)

    def start_checks(self, failed: Callable[[str], None]) -> None:
        """`connect()`'s work up to its wait, as calls; `failed(reason)` later (a loop turn, as
        `connect()` raised) when the checks fail.  Success is `check_complete`'s, as before."""
        self._checks_failed = failed
        loop = asyncio.get_running_loop()
        if not self._local_candidates_end:
            loop.call_soon(failed, "Local candidates gathering was not performed")
            return
        if self.remote_username is None or self.remote_password is None:
            loop.call_soon(failed, "Remote username or password is missing")
            return
        self._check_list_state = _CheckListOutcome(self._check_list_settled)  # type: ignore[assignment]
        # Forming candidate pairs (RFC 8445 §6.1.2.2), as connect().
        for remote_candidate in self._remote_candidates:
            self._pair_remote_candidate(remote_candidate)
        self.sort_check_list()
        self._unfreeze_initial()
        # The checks received before connect() (RFC 8445 §7.3).
        for early_check in self._early_checks:
            self.check_incoming(*early_check)
        self._early_checks.clear()
        self._early_checks_done = True
        self._tick()

    def _tick(self) -> None:
        """One Ta tick (RFC 8445 §6.1.4.2): another in 20 ms while aioice asks for one."""
        self._ta_tick = None
        if self._check_periodic():
            self._ta_tick = asyncio.get_running_loop().call_later(TA, self._tick)
        elif not self._check_list and not self._closing:
            # connect(): nothing to check once the ticks end is a failure.
            asyncio.get_running_loop().call_soon(self._checks_failed, "ICE negotiation failed")

    def _check_list_settled(self, outcome: int) -> None:
        """aioice put the check list's outcome (`_check_list_maybe_complete`, `_maybe_fail`, `close`)."""
        if self._closing:
            return  # close() fails the list to end connect(): nothing to report
        loop = asyncio.get_running_loop()
        if outcome != aioice.ice.ICE_COMPLETED:
            loop.call_soon(self._checks_failed, "ICE negotiation failed")
        if any(pair.task is not None for pair in self._check_list):
            loop.call_soon(self._cancel_running_checks)

    def _cancel_running_checks(self) -> None:
        # connect(): "Cancel the remaining checks" once the check list has its outcome.
        for pair in self._check_list:
            if pair.task:
                pair.task.cancel()

    async def close(self) -> None:
        if self._ta_tick is not None:
            self._ta_tick.cancel()
            self._ta_tick = None
        await super().close()
        # The outcome's bound method and the failure report would keep cycles through this
        # connection (and its generation) for the collector.
        if isinstance(self._check_list_state, _CheckListOutcome):
            self._check_list_state.settled = _settled_nothing
        self._checks_failed = _report_nothing
