"""Timer C of the stateful proxy (RFC 3261 §16.6 step 11, §16.8), a mixin of ``StatefulProxy``.

Every INVITE branch has one, re-armed by each provisional (§16.7 step 2).  On expiry a
branch that had a provisional is CANCELled (and, should its 487 never come, given up
after another Timer C); one without is treated as if a 408 was received.  The timers
share one reactor call (``TimerQueue``): they are armed per INVITE and almost never fire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from epcscf.sip.message import Response
from epcscf.sip.proxy_policy import Branch, BranchState, ProxiedRequest

if TYPE_CHECKING:
    from epcscf.sip.proxy_ports import ProxySettings
    from epcscf.sip.timers import TimerQueue

# RFC 3261 §16.6 step 11: Timer C "MUST be set to be greater than 3 minutes".
TIMER_C = 181.0


class TimerC:
    """Arms, stops and handles Timer C for ``StatefulProxy`` (which owns ``_timers_c``)."""

    if TYPE_CHECKING:
        _timers_c: TimerQueue
        settings: ProxySettings

        def _send_cancel(self, branch: Branch) -> None: ...

        def _branch_final(self, context: ProxiedRequest, branch: Branch, response: Response) -> None: ...

        def _synthetic(self, context: ProxiedRequest, status: int, reason: str | None = None) -> Response: ...

    def _start_timer_c(self, context: ProxiedRequest, branch: Branch) -> None:
        if context.request.method != "INVITE":  # ``is_invite``, inlined: asked per branch of every request
            return
        timer = branch.timer_c
        if timer is not None and not branch.cancelled and timer.active():
            # RFC 3261 §16.7 step 2: a provisional resets Timer C.  The running one is moved (a
            # cancelled branch's may be the wait for its 487, ``_give_up``: that one is replaced):
            # it fires as a new one would, without a timer made and one cancelled per 1xx.
            timer.reset(self.settings.timer_c)
            return
        self._stop_timer_c(branch)
        branch.timer_c = self._timers_c.callLater(self.settings.timer_c, self._timer_c_fired, context, branch)

    def _stop_timer_c(self, branch: Branch) -> None:
        if branch.timer_c is not None and branch.timer_c.active():
            branch.timer_c.cancel()
        branch.timer_c = None

    def _timer_c_fired(self, context: ProxiedRequest, branch: Branch) -> None:
        branch.timer_c = None
        if branch.state is BranchState.DONE:
            return
        if branch.state is BranchState.PROCEEDING:
            # RFC 3261 §16.8: after a provisional, CANCEL the branch (its 487 ends it).
            self._send_cancel(branch)
            # The downstream UAS may never answer the CANCEL: bound the wait with another Timer C.
            branch.timer_c = self._timers_c.callLater(self.settings.timer_c, self._give_up, context, branch)
        else:
            # RFC 3261 §16.8: no provisional → as if a 408 was received.
            branch.targets.clear()
            self._branch_final(context, branch, self._synthetic(context, 408))

    def _give_up(self, context: ProxiedRequest, branch: Branch) -> None:
        branch.timer_c = None
        self._branch_final(context, branch, self._synthetic(context, 408))
