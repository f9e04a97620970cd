"""CANCEL in the stateful proxy (RFC 3261 §16.10, §9.1), a mixin of ``StatefulProxy``.

A CANCEL received is answered itself (200, or 481 when no INVITE matches) and CANCELs
every pending branch of its INVITE; the same ``_cancel_pending`` serves §16.7 step 10
(a 2xx or 6xx ends the other branches) and the call manager's ``cancel_branches``.
A branch is CANCELled only after its first provisional (§9.1): before that it is marked
and the CANCEL goes when the provisional arrives.  Our CANCELs' responses end here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from epcscf.sip import proxy_rules as rules
from epcscf.sip.message import Request, Response, new_tag
from epcscf.sip.proxy_policy import Branch, BranchState, ProxiedRequest, ProxyPolicy, ProxyState

if TYPE_CHECKING:
    from epcscf.sip.proxy_ports import TransactionSender

# The proxy's log namespace: these lines read as they did before the split.
log = Logger(namespace="epcscf.sip.proxy")


class AbsorbResponses:
    """Client-transaction user for our own CANCELs: their responses end here (§16.10)."""

    def response_received(self, response: Response, transaction: Any) -> None:
        pass

    def timed_out(self, transaction: Any) -> None:
        pass

    def transport_failed(self, transaction: Any, reason: Any) -> None:
        pass


class Cancelling:
    """CANCEL received and sent, for ``StatefulProxy`` (which owns ``_by_server`` and ``_absorb``)."""

    if TYPE_CHECKING:
        policy: ProxyPolicy
        _by_server: dict[int, ProxiedRequest]
        _absorb: AbsorbResponses

        def _layer(self) -> TransactionSender: ...

    def _cancel_received(self, cancel: Request, transaction: Any) -> None:
        invite_tx = self._layer().find_invite_server_transaction(cancel)
        if invite_tx is None:
            # RFC 3261 §16.10: no matching transaction → 481 (we do not forward it statelessly).
            transaction.respond(rules.make_local_response(cancel, 481, to_tag=new_tag()))
            return
        # RFC 3261 §16.10 / §9.2: the CANCEL itself is answered 200 at once.
        transaction.respond(rules.make_local_response(cancel, 200, to_tag=new_tag()))
        context = self._by_server.get(id(invite_tx))
        if context is None:
            return  # the INVITE already has its final response: nothing to cancel
        context.cancelled = True
        try:
            self.policy.cancel_received(context, cancel)
        except Exception:
            log.failure("policy.cancel_received failed")
        if context.state is ProxyState.FORWARDING:
            self._cancel_pending(context)

    def _cancel_pending(self, context: ProxiedRequest) -> None:
        """RFC 3261 §16.10 / §16.7 step 10: CANCEL every branch still without a final."""
        if not context.is_invite:
            return
        for branch in context.branches:
            if branch.state is BranchState.DONE or branch.cancelled:
                continue
            if branch.state is BranchState.PROCEEDING:
                self._send_cancel(branch)
            else:
                branch.cancel_wanted = True  # RFC 3261 §9.1: wait for a provisional
                branch.targets.clear()  # no failover for a cancelled branch

    def _send_cancel(self, branch: Branch) -> None:
        if branch.sent_request is None or branch.connection is None or branch.cancelled:
            return
        branch.cancelled = True
        branch.targets.clear()
        cancel = rules.make_cancel(branch.sent_request)
        self._layer().send_request(cancel, branch.connection, self._absorb)
