"""New INVITEs refused before any work is spent on them, while the node is full.

Theory of operation
-------------------
At twice the sustainable call rate about half of the INVITEs are refused, so what a refusal
costs decides how many calls the node still completes (issue figures: at ~0.9 ms of CPU a
refusal, 64 % of the sustainable rate; under ~0.3 ms for 90 %).  Through the ordinary path a
refused INVITE costs a server transaction, a 100 Trying, validation, a copy of the request,
the routing policy's first steps and an info log line before its 503; then its ACK is matched.

``EarlyInviteGate`` is the policy behind the transaction layer's early-admission hook
(``epcscf.sip.early_admission``): a new INVITE (no To tag; RFC 3261 §12.1: it would create a
dialog), from either side, that the window of calls in setup (``setup_window``) or the new-work
rate limits (``admission.OverloadController``) would refuse anyway is answered ``503 Service
Unavailable`` with ``Retry-After`` (RFC 3261 §21.5.4) statelessly, before a transaction exists
(§16.3, §8.2); its ACK is absorbed by the layer (§17.1.1.3).  It asks the same questions as
``admission.NewWorkGate`` in the same order, without spending anything on the INVITEs it lets
through: those go on to the gate, which admits and counts them.  So the decision is the
gate's; only its cost moves.  Everything else — in-dialog requests, ACK, BYE, CANCEL,
REGISTER and other new work — takes the ordinary path, where the gate and the guard judge it.

Refusals are counted by reason (``epcscf_overload_refusals_total``) and logged by
``admission.RefusalSampler``: at most one info line a second, naming the Call-ID of one refused
INVITE and how many were refused since the last line (a line for each would itself cost a
refusal's worth of CPU at these rates).  Nothing else is done per refusal: the refusals
themselves (status, reason, Retry-After) are made once per setting, not once per INVITE.

Retry-After (RFC 3261 §21.5.4) is spread (``admission.RetryAfter``, the draw every overload 503
uses): WICs refused in the same second and told the same delay would all come back in the same
second, a burst the node refuses again (RFC 6357 §4: synchronised retries).  Each refusal draws
a whole number of seconds in ``retry_after`` … ``retry_after + retry_after_spread``.
"""

from __future__ import annotations

import random
from typing import Callable

from epcscf.pcscf.admission import OverloadController, OverloadSettings, RefusalSampler, RetryAfter
from epcscf.pcscf.setup_window import SetupWindow
from epcscf.sip.connection import Connection
from epcscf.sip.early_admission import EarlyRefusal
from epcscf.sip.message import Request
from epcscf.sip.transaction_server import RequestIdentity

__all__ = ["EarlyInviteGate", "RetryAfter"]  # RetryAfter: re-exported from admission

REASON = "Service Unavailable (overloaded)"


class EarlyInviteGate:
    """The eP-CSCF's early-admission hook: a stateless 503 for the new INVITEs the node is too
    full to take (see the module docstring)."""

    def __init__(self, controller: OverloadController, window: SetupWindow,
                 on_refused: Callable[[str], None] | None = None, sampler: RefusalSampler | None = None,
                 uniform: Callable[[], float] = random.random) -> None:
        self.controller = controller
        self.window = window
        #: observer of every refusal, by reason (metrics)
        self.on_refused = on_refused
        self.sampler = sampler if sampler is not None else RefusalSampler(controller.clock)
        self._uniform = uniform
        self._settings: OverloadSettings | None = None  # those ``_refusals`` were made for
        self._retry_after = RetryAfter(1)
        self._refusals: tuple[EarlyRefusal, ...] = ()  # by Retry-After, from its base

    def __call__(self, request: Request, identity: RequestIdentity, connection: Connection) -> EarlyRefusal | None:
        if request.method != "INVITE" or identity.to_tag is not None:
            return None
        window = self.window
        # NewWorkGate's order: the configured rate (and, without a window, the lag throttle),
        # then the window, which counts its refusals.
        reason = self.controller.refuses_new(throttled=not window.enabled)
        if reason is None:
            if not window.refuses():
                return None
            reason = "calls_in_setup"
        if self.on_refused is not None:
            self.on_refused(reason)
        self.sampler.refused("INVITE", identity.call_id, reason, connection.remote)
        return self.refusal()

    def refusal(self) -> EarlyRefusal:
        """A 503 whose Retry-After is drawn from ``[overload] retry_after`` … ``+ retry_after_spread``."""
        settings = self.controller.settings
        if settings is not self._settings:  # made once per setting (start, SIGHUP), not per INVITE
            self._retry_after = RetryAfter.of(settings, self._uniform)
            base = self._retry_after.base
            self._refusals = tuple(EarlyRefusal(503, REASON, (("Retry-After", str(base + extra)),))
                                   for extra in range(self._retry_after.spread + 1))
            self._settings = settings
        return self._refusals[self._retry_after.seconds() - self._retry_after.base]
